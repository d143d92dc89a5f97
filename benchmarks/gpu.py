"""GPU benchmark, the Python part of benchmarks/gpu.sh: BERT-base pretraining in bf16 on one GPU
(pieces/s, achieved TFLOP/s and its share of the nominal and of the measured limit) and
bert_encoder inference words/s.

Stages, each skipped (and reported as skipped) when the time budget would not allow it:

1. corpus: IMDB train reviews from a carried .jsonl.gz (gpu.sh prepare puts one in
   benchmarks/.cache/gpu/), else from ../shared/data/imdb, else the repo's own Markdown and Python
   text (small; marked in the results). The vocabulary, piece cache and HF blocks are built first
   on the CPU (benchmarks/pretraining.py's preparation, in a process that sees no GPU, so spaCy
   can fork its corpus workers).
2. ours: benchmarks/pretraining.py's arm (`build_trainer` + `Trainer.step`, what `spacy
   bert-pretrain -g 0` runs), bf16 autocast.
3. profile: a few more of our steps under torch.profiler: the trainer's phases (host time),
   GPU kernel time, GPU busy share.
4. hf: benchmarks/pretraining.py's plain Hugging Face loop on the same text and batch size.
5. inference: words/s of `nlp.pipe` with the bert_encoder component on reviews not used for
   training, fp32 and bf16.
6. ours + torch.compile (`[bert_pretraining] compile = true`), last: its compilation time is the
   least predictable.

Model FLOPs are flops.py's count of each timed step (forward and backward, the MLM head at the
masked positions); the limit is torch's matrix-product speed at the step's shapes on this GPU,
beside the nominal dense bf16 peak.

    python benchmarks/gpu.py --out DIR              # on the GPU machine (gpu.sh runs this)
    python benchmarks/gpu.py --device cpu --tiny    # a CPU smoke test of every stage, ~2 minutes
"""

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pretraining as bench  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR,
    IMDB_DIR,
    REPO,
    SIZES,
    achieved,
    markdown_table,
    matmul_limit,
    model_gemms,
    percent,
    pipeline_meter,
    read_jsonl,
    register_plugin,
    run_once,
    write_texts,
)
from flops import encoder_flops  # noqa: E402

NOMINAL_FLOPS = 989e12  # H100/H200 SXM dense bf16
CARRIED_TEXT = BENCH_DIR / ".cache" / "gpu" / "imdb-train.jsonl.gz"


class Budget:
    """Wall-clock budget for the whole run; stages ask before they start."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def log(message: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_corpus(args: argparse.Namespace) -> Dict[str, Any]:
    """Training texts and held-apart inference texts."""
    wanted = args.train_docs + args.infer_docs
    source = next(
        (p for p in (args.text, CARRIED_TEXT, IMDB_DIR / "train.jsonl.gz") if p and p.exists()), None
    )
    if source is not None:
        texts, name = [r["text"] for r in read_jsonl(source, wanted)], str(source)
    else:  # the repo's own prose: real text, but little of it
        paths = [
            p
            for p in sorted(REPO.rglob("*"))
            if p.suffix in (".md", ".py", ".cfg") and ".venv" not in p.parts
        ]
        texts = [t.strip() for p in paths for t in p.read_text(errors="ignore").split("\n\n") if t.strip()]
        name = "repo text (*.md, *.py, *.cfg; no IMDB file was carried)"
    n_infer = min(args.infer_docs, len(texts) // 5)
    return {"source": name, "train": texts[: len(texts) - n_infer], "infer": texts[len(texts) - n_infer :]}


def measure_arm(arm, args: argparse.Namespace, device: str, name: str) -> Dict[str, Any]:
    """Warm-up steps, then timed ones; pieces/s, TFLOP/s and the shares of the nominal peak and of
    the matrix-product limit at the step's shapes (measured here, in the arm's precision)."""
    for _ in range(args.warmup_steps):
        arm.step()
    steps = [bench.timed_step(arm) for _ in range(args.steps)]
    rows = statistics.mean(s["rows"] for s in steps)
    gemms = bench.step_gemms(arm.config, rows, arm.spec)
    precision = args.autocast or "fp32"
    result = bench.summarize_steps(steps, matmul_limit(gemms, precision, device), device)
    result.pop("steps")
    seconds = sum(s["seconds"] for s in steps)
    result.update(
        arm=name,
        tokens=sum(s["tokens"] for s in steps),
        median_step_tokens_per_s=statistics.median(s["tokens"] / s["seconds"] for s in steps),
        nominal_share=sum(s["flops"] for s in steps) / seconds / NOMINAL_FLOPS,
    )
    return result


def arm_spec(args: argparse.Namespace, prepared: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return dict(prepared["spec"], vocab=prepared["vocab"], blocks=prepared["blocks"], **extra)


def run_ours(args, prepared, gpu_id: int, compile_: bool, save_to: Optional[Path] = None) -> Dict[str, Any]:
    """Our steps; with `save_to`, the model they trained is kept there for the inference stage."""
    arm = bench.OursArm(arm_spec(args, prepared, compile=compile_), gpu_id)
    try:
        result = measure_arm(arm, args, args.device, "ours + compile" if compile_ else "ours")
        if save_to is not None:
            arm.trainer.save_last()
            shutil.copytree(arm.trainer.last_dir, save_to)
        return result
    finally:
        arm.close()


def run_hf(args, prepared) -> Dict[str, Any]:
    import transformers

    result = measure_arm(bench.HFArm(arm_spec(args, prepared), args.device), args, args.device, "hf")
    return dict(result, transformers=transformers.__version__)


def run_profile(args, prepared, gpu_id: int) -> Dict[str, Any]:
    spec = arm_spec(args, prepared, warmup=3, steps=args.profile_steps)
    result = bench.profile(spec, gpu_id)
    return {k: result[k] for k in ("steps", "step_s", "phases_s", "gpu_busy", "top_kernels", "op_groups_s")}


# ---- inference ---------------------------------------------------------------------------------


def use_gpu_ops(gpu_id: int) -> str:
    """thinc's GPU ops (cupy) when they work; else 'torch-only' (the encoder's torch module on the
    GPU, its outputs back to numpy)."""
    if gpu_id < 0:
        return "cpu"
    try:
        import spacy
        from thinc.api import set_gpu_allocator

        set_gpu_allocator("pytorch")
        spacy.require_gpu(gpu_id)
        return "cupy"
    except Exception as err:  # noqa: BLE001  (any failure: fall back, and say so)
        log(
            f"spacy.require_gpu failed ({type(err).__name__}: {err}); running the encoder's torch module on the GPU"
        )
        return "torch-only"


def run_inference(
    args, checkpoint: str, texts: List[str], autocast: Optional[str], ops: str, gpu_id: int
) -> Dict:
    import spacy
    import torch

    nlp = spacy.blank("en")
    model = {
        "@architectures": "spacy_bert_plugin.BertEncoder.v1",
        "autocast": autocast,
        "max_batch_pieces": args.infer_batch_pieces,
    }
    nlp.add_pipe("bert_encoder", config={"checkpoint": checkpoint, "model": model})
    nlp.initialize()
    if ops == "torch-only":
        nlp.get_pipe("bert_encoder").model.layers[0].shims[0]._model.to(f"cuda:{gpu_id}")
    meter = pipeline_meter(nlp)
    docs = [nlp.make_doc(text) for text in texts]  # tokenization outside the clock
    sync = torch.cuda.synchronize if gpu_id >= 0 else (lambda: None)
    for _ in nlp.pipe(docs[: max(1, len(docs) // 10)], batch_size=args.infer_batch_size):
        pass
    sync()
    meter.take()
    start = time.perf_counter()
    for _ in nlp.pipe(docs, batch_size=args.infer_batch_size):
        pass
    sync()
    seconds = time.perf_counter() - start
    flops = encoder_flops(meter.config, meter.take())
    limit = matmul_limit(model_gemms(meter.config, **meter.shape()), autocast or "fp32", args.device)
    words = sum(len(doc) for doc in docs)
    return {
        "autocast": autocast or "fp32",
        "ops": ops,
        "docs": len(docs),
        "words": words,
        "words_per_s": words / seconds,
        "limit_gflops": limit,
        **achieved(flops, seconds, seconds, limit),
    }


def inference_all(args, checkpoint: str, texts: List[str], gpu_id: int) -> List[Dict[str, Any]]:
    """fp32 and bf16; with thinc's cupy ops when they work, else the torch-only fallback."""
    from thinc.api import NumpyOps, set_current_ops

    ops, results = use_gpu_ops(gpu_id), []
    try:
        for autocast in (None, "bf16"):
            try:
                r = run_inference(args, checkpoint, texts, autocast, ops, gpu_id)
            except Exception as err:  # noqa: BLE001
                if ops != "cupy":
                    raise
                log(f"inference with cupy ops failed ({type(err).__name__}: {err}); retrying torch-only")
                set_current_ops(NumpyOps())
                ops = "torch-only"
                r = run_inference(args, checkpoint, texts, autocast, ops, gpu_id)
            results.append(r)
            log(f"inference {r['autocast']}: {r['words_per_s']:,.0f} words/s ({r['ops']})")
        return results
    finally:
        set_current_ops(NumpyOps())  # later stages build their pipelines on the CPU ops again


# ---- driver ------------------------------------------------------------------------------------


class StageTimeout(Exception):
    pass


def stage(results: Dict[str, Any], name: str, budget: Budget, needed: float, func: Callable[[], Any]) -> Any:
    """Run one stage if the budget leaves `needed` seconds; it is stopped (SIGALRM) when the budget
    runs out, and a failure is recorded without losing the other stages."""
    import torch

    if budget.elapsed + needed > budget.seconds:
        log(
            f"{name}: skipped, {budget.elapsed:.0f} s of {budget.seconds:.0f} s used and it needs about {needed:.0f} s"
        )
        results["skipped"].append(name)
        return None
    log(f"{name}: start")
    start = time.perf_counter()

    def on_alarm(signum, frame):
        raise StageTimeout(f"stopped at the time budget ({budget.seconds:.0f} s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(budget.seconds - budget.elapsed)))
    try:
        value = func()
    except (Exception, StageTimeout) as err:  # noqa: BLE001  (a failed stage must not lose the others)
        if not isinstance(err, StageTimeout):
            traceback.print_exc()
        results["errors"][name] = f"{type(err).__name__}: {err}"
        log(f"{name}: FAILED ({type(err).__name__}: {err})")
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        gc.collect()  # the stage's model and optimizer, before the next stage's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log(f"{name}: done in {time.perf_counter() - start:.0f} s")
    return value


def save(results: Dict[str, Any], out: Path, budget: Budget) -> str:
    """Write gpu.json and gpu.md (after every stage, so a run stopped from outside keeps what it had)."""
    results["total_s"] = budget.elapsed
    (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
    table = report(results)
    (out / "gpu.md").write_text(table + "\n")
    return table


def machine_info(gpu_id: int) -> Dict[str, Any]:
    import subprocess

    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip() or "unknown",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "gpu": "none (CPU run)",
    }
    if gpu_id >= 0:
        props = torch.cuda.get_device_properties(gpu_id)
        info.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
        )
    return info


DEFAULTS = {  # (GPU run, --tiny)
    "size": ("base", "tiny"),
    "batch_tokens": (32768, 1024),
    "vocab_size": (30522, 1000),
    "train_docs": (23000, 300),
    "infer_docs": (2000, 30),
    "warmup_steps": (20, 2),
    "steps": (100, 4),
    "profile_steps": (10, 2),
    "n_process": (8, 1),
    "infer_batch_pieces": (32768, 4096),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model and data: a smoke test of every stage"
    )
    parser.add_argument("--autocast", default="bf16", choices=["bf16", "none"])
    parser.add_argument("--text", type=Path, default=None, help='a .jsonl(.gz) of {"text": ...} lines to use')
    parser.add_argument("--infer-batch-size", type=int, default=256)
    parser.add_argument(
        "--skip", default="", help="comma-separated stages to skip: profile,compile,hf,inference"
    )
    parser.add_argument(
        "--budget-s", type=float, default=420, help="wall-clock budget; later stages skipped past it"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for gpu.json and gpu.md ($OUT by default)"
    )
    for key, (gpu, tiny) in DEFAULTS.items():
        choices = sorted(SIZES) if key == "size" else None
        kind = str if key == "size" else int
        parser.add_argument(
            f"--{key.replace('_', '-')}", type=kind, choices=choices, help=f"default {gpu}; --tiny {tiny}"
        )
    args = parser.parse_args()
    for key, (gpu, tiny) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else gpu)
    args.autocast = None if args.autocast == "none" else args.autocast
    out = args.out or Path(os.environ.get("OUT") or BENCH_DIR / "results" / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    budget = Budget(args.budget_s)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA GPU visible to PyTorch: run with --device cpu (and --tiny) to test on a CPU"
        )
    gpu_id = 0 if args.device == "cuda" else -1
    register_plugin()
    recipe = bench.recipe("pretrain.cfg")
    results: Dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "length": recipe["length"],
        "skipped": [],
        "errors": {},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    corpus = read_corpus(args)
    results["corpus"] = {
        "source": corpus["source"],
        "train_docs": len(corpus["train"]),
        "infer_docs": len(corpus["infer"]),
    }
    log(
        f"corpus: {len(corpus['train'])} training texts, {len(corpus['infer'])} for inference, from {corpus['source']}"
    )
    spec = dict(
        recipe,
        size=args.size,
        vocab_size=args.vocab_size,
        batch_tokens=args.batch_tokens,
        threads=0,
        n_process=args.n_process,
        precision=args.autocast or "fp32",
        work_dir=str(work),
        cache_dir=str(work / "cache"),
        corpus=str(write_texts(corpus["train"], work / "corpus.jsonl")),
    )
    prepared = stage(
        results,
        "prepare (CPU)",
        budget,
        0,
        lambda: dict(
            run_once(bench.SCRIPT, dict(spec, task="prepare"), env={"CUDA_VISIBLE_DEVICES": ""}), spec=spec
        ),
    )
    results["machine"] = machine_info(gpu_id)  # CUDA starts here, after spaCy's worker processes
    log(f"machine: {results['machine']}")
    if prepared is None:
        print(save(results, out, budget))
        return
    checkpoint = work / "model"
    stages = [
        ("ours", "ours", 60, lambda: run_ours(args, prepared, gpu_id, False, checkpoint)),
        ("profile", "profile", 40, lambda: run_profile(args, prepared, gpu_id)),
        ("hf", "hf", 60, lambda: run_hf(args, prepared)),
        ("inference", "inference", 60, lambda: inference_all(args, str(checkpoint), corpus["infer"], gpu_id)),
        ("compile", "ours_compiled", 150, lambda: run_ours(args, prepared, gpu_id, True)),
    ]
    for name, key, needed, func in stages:
        if name in skip or (name == "inference" and not checkpoint.exists()):
            continue
        results[key] = r = stage(results, name, budget, needed, func)
        if r and "tokens_per_s" in r:
            log(
                f"{name}: {r['tokens_per_s']:,.0f} pieces/s, {r['gflops'] / 1e3:.1f} TFLOP/s, "
                f"{percent(r['share'])} of the limit"
            )
        save(results, out, budget)
    print(save(results, out, budget))


def report(results: Dict[str, Any]) -> str:
    m, a = results.get("machine", {}), results["args"]
    lines = [
        f"{m.get('date')}, commit {m.get('commit')}, {m.get('gpu')}, torch {m.get('torch')} (CUDA {m.get('cuda')}), "
        f"{m.get('cpu_count')} CPUs; BERT-{a['size']}, vocab {a['vocab_size']}, length {results['length']}, "
        f"{a['batch_tokens']} pieces/step, autocast {a['autocast']}; text: {results['corpus']['source']}; "
        f"total {results['total_s']:.0f} s",
        "",
    ]
    arms = [results[key] for key in ("ours", "ours_compiled", "hf") if results.get(key)]
    if arms:
        headers = ["pretraining", "pieces/s", "median step pieces/s", "model TFLOP/s", "of 989 TFLOP/s"]
        headers += ["limit TFLOP/s at these shapes", "share of limit"]
        rows = [
            [r["arm"], r["tokens_per_s"], r["median_step_tokens_per_s"], f"{r['gflops'] / 1e3:.1f}"]
            + [percent(r["nominal_share"]), f"{r['limit_gflops'] / 1e3:.1f}", f"**{percent(r['share'])}**"]
            for r in arms
        ]
        lines.append(markdown_table(headers, rows))
    if results.get("ours") and results.get("hf"):
        lines.append(
            f"\nours/HF pieces/s: **{results['ours']['tokens_per_s'] / results['hf']['tokens_per_s']:.2f}x**"
        )
    prof = results.get("profile")
    if prof:
        busy = f", GPU busy {percent(prof['gpu_busy'])}" if prof.get("gpu_busy") is not None else ""
        lines += [
            "",
            f"Profile of ours ({prof['steps']} steps, profiler on): {1e3 * prof['step_s']:.1f} ms/step{busy}",
            "",
        ]
        lines.append(
            markdown_table(["phase (host)", "ms/step"], [[k, 1e3 * v] for k, v in prof["phases_s"].items()])
        )
        if prof.get("top_kernels"):
            lines += [
                "",
                markdown_table(
                    ["top GPU kernels", "ms/step"], [[k[:90], 1e3 * v] for k, v in prof["top_kernels"]]
                ),
            ]
    if results.get("inference"):
        headers = ["bert_encoder inference", "ops", "docs", "words", "words/s", "TFLOP/s", "share of limit"]
        rows = [
            [r["autocast"], r["ops"], r["docs"], r["words"], f"**{r['words_per_s']:,.0f}**"]
            + [f"{r['gflops'] / 1e3:.2f}", percent(r["share"])]
            for r in results["inference"]
        ]
        lines += ["", markdown_table(headers, rows)]
    if results["skipped"]:
        lines.append(f"\nskipped (time budget): {', '.join(results['skipped'])}")
    for name, error in results["errors"].items():
        lines.append(f"\nstage {name} failed: {error}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
