"""GPU benchmark (issue 5e), the Python part of benchmarks/gpu.sh: BERT-base pretraining in bf16
on one GPU (tokens/s and model FLOPs utilization) and bert_encoder inference words/s.

Stages, each skipped (and reported as skipped) when the time budget would not allow it:

1. corpus: real text, IMDB train reviews from a carried .jsonl.gz (gpu.sh prepare puts one in
   benchmarks/.cache/gpu/), else from ../shared/data/imdb, else the repo's own Markdown and Python
   text (small; marked in the results). The vocabulary and piece cache are built first on the CPU
   (`pretrain()` with a tiny model and one step, before CUDA starts, so spaCy can fork).
2. ours: `spacy_bert_plugin.pretraining.pretrain` on the GPU (what `spacy bert-pretrain -g 0` runs),
   bf16 autocast, tokens/s from its log.jsonl windows after the warm-up ones. MFU =
   (6 x non-embedding params + 12 x layers x seq x hidden) x tokens / (elapsed x 989e12).
3. profile: a few more of our steps under torch.profiler: host phases, GPU kernel time, GPU idle.
4. ours + torch.compile (`[bert_pretraining] compile = true`), same measurement.
5. hf: the plain Hugging Face loop of benchmarks/pretraining.py (BertForPreTraining +
   DataCollatorForLanguageModeling + AdamW, bf16 autocast) on the same text and batch.
6. inference: words/s of `nlp.pipe` with the bert_encoder component (the checkpoint stage 2
   wrote) on reviews not used for training, fp32 and bf16.

    python benchmarks/gpu.py --out DIR              # on the GPU machine (gpu.sh runs this)
    python benchmarks/gpu.py --device cpu --tiny    # a CPU smoke test of every stage, ~2 minutes
"""

import argparse
import gzip
import io
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(REPO), str(BENCH_DIR)]

PEAK_FLOPS = {"bf16": 989e12, "fp32": 989e12}  # H100/H200 SXM dense bf16 (the MFU denominator asked for)
MEASURED_BF16_FLOPS = 790e12  # what an 8192^3 bf16 matmul reached on the lent H200 (KINDS.md)
SEQ_LENGTH = 128
CARRIED_TEXT = BENCH_DIR / ".cache" / "gpu" / "imdb-train.jsonl.gz"
SHARED_TEXT = REPO.parent / "shared" / "data" / "imdb" / "train.jsonl.gz"
SHAPES = {
    "base": dict(hidden_width=768, num_layers=12, num_heads=12, intermediate_width=3072),
    "mini": dict(hidden_width=256, num_layers=4, num_heads=4, intermediate_width=1024),
    "tiny": dict(hidden_width=64, num_layers=2, num_heads=2, intermediate_width=256),
}


class Budget:
    """Wall-clock budget for the whole run; stages ask before they start."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, needed: float) -> bool:
        return self.elapsed + needed <= self.seconds


def log(message: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {message}", flush=True)


def register_plugin() -> None:
    """The plugin's spaCy registrations without its installed entry points (the GPU machine runs
    the repo from PYTHONPATH): the factory registers on import, the architecture by hand."""
    from spacy.util import registry

    import spacy_bert_plugin.pipeline  # noqa: F401  (registers the bert_encoder factory)
    from spacy_bert_plugin.layers import BertEncoder
    from spacy_bert_plugin.pretraining import objectives  # noqa: F401  (registers MLM/NSP/SOP)

    if "spacy_bert_plugin.BertEncoder.v1" not in registry.architectures:
        registry.architectures.register("spacy_bert_plugin.BertEncoder.v1", func=BertEncoder)


# ---- corpus ------------------------------------------------------------------------------------


def read_corpus(args: argparse.Namespace) -> Dict[str, Any]:
    """Training texts and held-apart inference texts."""
    source = next((p for p in (args.text, CARRIED_TEXT, SHARED_TEXT) if p and Path(p).exists()), None)
    texts: List[str] = []
    wanted = args.train_docs + args.infer_docs
    if source is not None:
        opener = gzip.open if str(source).endswith(".gz") else open
        with opener(source, "rt", encoding="utf8") as file:
            for line in file:
                if len(texts) >= wanted:
                    break
                if line.strip():
                    texts.append(json.loads(line)["text"])
        name = str(source)
    else:  # the repo's own prose: real text, but little of it
        for path in sorted(REPO.rglob("*")):
            if (
                path.suffix in (".md", ".py", ".cfg")
                and ".venv" not in path.parts
                and ".cache" not in path.parts
            ):
                texts.extend(
                    p.strip()
                    for p in path.read_text(encoding="utf8", errors="ignore").split("\n\n")
                    if p.strip()
                )
        name = "repo text (*.md, *.py, *.cfg; no IMDB file was carried)"
    if len(texts) < 2:
        raise SystemExit("no text found for the corpus")
    n_infer = min(args.infer_docs, len(texts) // 5)
    return {"source": name, "train": texts[: len(texts) - n_infer], "infer": texts[len(texts) - n_infer :]}


def write_jsonl(texts: List[str], path: Path) -> Path:
    with path.open("w", encoding="utf8") as file:
        for text in texts:
            file.write(json.dumps({"text": text}) + "\n")
    return path


# ---- pretraining -------------------------------------------------------------------------------


def pretrain_config(
    args: argparse.Namespace,
    corpus: Path,
    cache: Path,
    shape: Dict[str, int],
    max_steps: int,
    log_every: int,
    autocast: Optional[str],
    compile_: bool = False,
):
    from spacy import util

    overrides = {
        "paths.raw_text": str(corpus),
        "components.bert_encoder.vocab_size": args.vocab_size,
        "bert_pretraining.max_steps": max_steps,
        "bert_pretraining.max_length": SEQ_LENGTH,
        "bert_pretraining.batch_tokens": args.batch_tokens,
        "bert_pretraining.log_every": log_every,
        "bert_pretraining.eval_every": 10**9,  # evaluate and save after the last step only
        "bert_pretraining.save_every": 10**9,
        "bert_pretraining.eval_batches": 1,
        "bert_pretraining.heldout_docs": 20,
        "bert_pretraining.n_process": args.n_process,
        "bert_pretraining.cache_dir": str(cache),
        "bert_pretraining.autocast": autocast,
        "bert_pretraining.compile": compile_,
    }
    overrides.update({f"components.bert_encoder.model.{k}": v for k, v in shape.items()})
    return util.load_config(REPO / "configs" / "pretrain.cfg", overrides=overrides, interpolate=False)


def prepare_caches(args: argparse.Namespace, corpus: Path, cache: Path, work: Path) -> float:
    """Vocabulary and piece cache, with a tiny model on the CPU (the caches do not depend on the
    model's shape), in a child process that sees no GPU (CUDA_VISIBLE_DEVICES=""), so spaCy's
    worker processes fork from a process without CUDA (thinc initializes CUDA through cupy on import)."""
    import subprocess

    start = time.perf_counter()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *sys.argv[1:],
        "--prepare-only",
        "--corpus-file",
        str(corpus),
        "--cache-dir",
        str(cache),
        "--work-dir",
        str(work),
    ]
    subprocess.run(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=True)
    return time.perf_counter() - start


def prepare_only(args: argparse.Namespace) -> None:
    from spacy_bert_plugin.pretraining import pretrain

    config = pretrain_config(args, args.corpus_file, args.cache_dir, SHAPES["tiny"], 1, 1, None)
    pretrain(config, args.work_dir / "prepare", gpu_id=-1, stdout=io.StringIO())


def model_flops_per_token(shape: Dict[str, int]) -> Dict[str, float]:
    h, layers, inter = shape["hidden_width"], shape["num_layers"], shape["intermediate_width"]
    per_layer = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h  # qkv+out, FFN, 2 LayerNorms
    non_embedding = layers * per_layer
    attention = 12 * layers * SEQ_LENGTH * h
    return {"non_embedding_params": non_embedding, "flops_per_token": 6 * non_embedding + attention}


def run_ours(
    args: argparse.Namespace,
    corpus: Path,
    cache: Path,
    work: Path,
    shape: Dict[str, int],
    gpu_id: int,
    compile_: bool,
    tag: str,
) -> Dict[str, Any]:
    """The unmodified loop; tokens/s from log.jsonl, warm-up windows dropped."""
    from spacy_bert_plugin.pretraining import pretrain

    windows = args.warmup_windows + args.windows
    config = pretrain_config(
        args, corpus, cache, shape, windows * args.log_every, args.log_every, args.autocast, compile_
    )
    out = work / f"ours-{tag}"
    start = time.perf_counter()
    pretrain(config, out, gpu_id=gpu_id, stdout=io.StringIO())
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r]
    tokens, seconds, previous = [], [], 0
    for record in steps:
        tokens.append(record["tokens"] - previous)
        seconds.append(tokens[-1] / record["tokens_per_s"])
        previous = record["tokens"]
    kept_t, kept_s = tokens[args.warmup_windows :], seconds[args.warmup_windows :]
    result = {
        "arm": f"ours{' + compile' if compile_ else ''}",
        "autocast": args.autocast or "fp32",
        "steps_measured": args.windows * args.log_every,
        "tokens": sum(kept_t),
        "seconds": sum(kept_s),
        "tokens_per_s": sum(kept_t) / sum(kept_s),
        "window_tokens_per_s": [t / s for t, s in zip(kept_t, kept_s)],
        "warmup_seconds": sum(seconds[: args.warmup_windows]),
        "run_wall_s": wall,
        "final_mlm_loss": steps[-1].get("mlm_loss"),
        "checkpoint": str(out / "model-last"),
    }
    result["median_window_tokens_per_s"] = statistics.median(result["window_tokens_per_s"])
    return result


def add_mfu(result: Dict[str, Any], shape: Dict[str, int], precision: str) -> None:
    flops = model_flops_per_token(shape)
    result["model_tflops_per_s"] = result["tokens_per_s"] * flops["flops_per_token"] / 1e12
    result["mfu"] = result["tokens_per_s"] * flops["flops_per_token"] / PEAK_FLOPS[precision]
    result["of_measured_matmul_peak"] = (
        result["tokens_per_s"] * flops["flops_per_token"] / MEASURED_BF16_FLOPS
    )


def profile_ours(
    args: argparse.Namespace, corpus: Path, cache: Path, work: Path, shape: Dict[str, int], gpu_id: int
) -> Dict[str, Any]:
    """A few steps of our loop under torch.profiler: host phases, GPU kernel time and idle share."""
    import pretraining as bench

    config = pretrain_config(args, corpus, cache, shape, 10**6, 10**6, args.autocast)
    trainer = bench.capture_trainer(config, work / "profile", gpu_id)
    phase_s, restore = bench.instrument(trainer)
    try:
        return _profile_steps(args, trainer, phase_s, gpu_id, bench)
    finally:
        restore()


def _profile_steps(
    args: argparse.Namespace, trainer, phase_s: Dict[str, float], gpu_id: int, bench
) -> Dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity

    for _ in range(3):
        trainer.train_step()
    for name in phase_s:
        phase_s[name] = 0.0
    cuda = gpu_id >= 0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = args.profile_steps
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(n):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    from torch.autograd import DeviceType

    kernels = []  # GPU-side events (kernels, memcpy, memset): their self time is the GPU's busy time
    for e in events:
        if getattr(e, "device_type", None) == DeviceType.CUDA:
            device_us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            kernels.append((e.key, device_us / 1e6 / n))
    kernel_s = sum(s for _, s in kernels)
    result = {
        "steps": n,
        "step_s": wall / n,
        "phases_s": {k: v / n for k, v in phase_s.items()},
        "gpu_kernel_s_per_step": kernel_s if cuda else None,
        "gpu_busy": kernel_s / (wall / n) if cuda else None,
        "top_kernels": sorted(kernels, key=lambda kv: -kv[1])[:12],
    }
    if not cuda:
        result["op_groups_s"] = bench.group_ops([e for e in events if e.key.startswith("aten::")], n)
    return result


def run_hf(
    args: argparse.Namespace,
    vocab: Path,
    train_texts: List[str],
    work: Path,
    shape: Dict[str, int],
    device: str,
) -> Dict[str, Any]:
    """benchmarks/pretraining.py's HF loop on the same text, vocabulary and batch."""
    import numpy
    import pretraining as bench
    import transformers

    tokenizer_class = getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer
    tokenizer = tokenizer_class(vocab_file=str(vocab), do_lower_case=True)
    ids = tokenizer(train_texts, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    flat = numpy.fromiter((i for doc in ids for i in doc), dtype=numpy.int32)
    n_blocks = len(flat) // SEQ_LENGTH
    blocks = work / "hf-blocks.npy"
    numpy.save(blocks, flat[: n_blocks * SEQ_LENGTH].reshape(n_blocks, SEQ_LENGTH))
    spec = dict(
        vocab=str(vocab),
        blocks=str(blocks),
        size="custom",
        shape=shape,
        batch_tokens=args.batch_tokens,
        precision="bf16" if args.autocast == "bf16" else "fp32",
        device=device,
    )
    arm = bench.HFArm(spec)
    warmup, steps = args.warmup_windows * args.log_every, args.windows * args.log_every
    tokens, seconds = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        n = arm.step()  # ends with float(loss): synchronized
        if i >= warmup:
            tokens.append(n)
            seconds.append(time.perf_counter() - start)
    return {
        "arm": "hf",
        "autocast": args.autocast or "fp32",
        "transformers": transformers.__version__,
        "steps_measured": steps,
        "tokens": sum(tokens),
        "seconds": sum(seconds),
        "tokens_per_s": sum(tokens) / sum(seconds),
        "median_window_tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
    }


# ---- inference ---------------------------------------------------------------------------------


def use_gpu_ops(gpu_id: int) -> str:
    """thinc's GPU ops (cupy) when they work; else 'torch-only' (the encoder's torch module is
    moved to the GPU and its outputs come back to numpy, see move_encoder)."""
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


def move_encoder(nlp, device: str) -> None:
    shim = nlp.get_pipe("bert_encoder").model.layers[0].shims[0]
    shim._model.to(device)


def run_inference(
    args: argparse.Namespace,
    checkpoint: str,
    texts: List[str],
    autocast: Optional[str],
    ops_mode: str,
    gpu_id: int,
) -> Dict[str, Any]:
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
    if ops_mode == "torch-only":
        move_encoder(nlp, f"cuda:{gpu_id}")
    docs = [nlp.make_doc(text) for text in texts]  # tokenization outside the clock, as in inference.py
    warm = docs[: max(1, len(docs) // 10)]
    for _ in nlp.pipe(warm, batch_size=args.infer_batch_size):
        pass
    if gpu_id >= 0:
        torch.cuda.synchronize()
    words = sum(len(doc) for doc in docs)
    start = time.perf_counter()
    for _ in nlp.pipe(docs, batch_size=args.infer_batch_size):
        pass
    if gpu_id >= 0:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "autocast": autocast or "fp32",
        "ops": ops_mode,
        "docs": len(docs),
        "words": words,
        "seconds": seconds,
        "words_per_s": words / seconds,
        "batch_size": args.infer_batch_size,
        "max_batch_pieces": args.infer_batch_pieces,
    }


def inference_all(
    args: argparse.Namespace,
    checkpoint: str,
    texts: List[str],
    gpu_id: int,
    results: Dict[str, Any],
    out: Path,
    budget: Budget,
) -> None:
    """fp32 and bf16; with thinc's cupy ops when they work, else the torch-only fallback."""
    from thinc.api import NumpyOps, set_current_ops

    mode = use_gpu_ops(gpu_id)
    try:
        for autocast in (None, "bf16"):
            try:
                r = run_inference(args, checkpoint, texts, autocast, mode, gpu_id)
            except Exception as err:  # noqa: BLE001
                if mode != "cupy":
                    raise
                log(f"inference with cupy ops failed ({type(err).__name__}: {err}); retrying torch-only")
                set_current_ops(NumpyOps())
                mode = "torch-only"
                r = run_inference(args, checkpoint, texts, autocast, mode, gpu_id)
            results["inference"].append(r)
            log(f"inference {r['autocast']}: {r['words_per_s']:,.0f} words/s ({r['ops']})")
            save(results, out, budget)
    finally:
        set_current_ops(NumpyOps())  # later stages build their pipelines on the CPU ops again


# ---- driver ------------------------------------------------------------------------------------


class StageTimeout(Exception):
    pass


def stage(results: Dict[str, Any], name: str, budget: Budget, needed: float, func: Callable[[], Any]) -> Any:
    """Run one stage if the budget leaves `needed` seconds; it is stopped (SIGALRM) when the budget
    runs out, and a failure is recorded without losing the other stages."""
    if not budget.allows(needed):
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

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    try:
        info["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        info["commit"] = "unknown"
    if gpu_id >= 0:
        props = torch.cuda.get_device_properties(gpu_id)
        info.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
        )
    else:
        info["gpu"] = "none (CPU run)"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model and data: a smoke test of every stage"
    )
    parser.add_argument(
        "--size", default=None, choices=sorted(SHAPES), help="model shape (default: base; tiny with --tiny)"
    )
    parser.add_argument("--autocast", default="bf16", choices=["bf16", "none"])
    parser.add_argument(
        "--batch-tokens", type=int, default=None, help="pieces per step (default 32768 = 256 x 128)"
    )
    parser.add_argument("--vocab-size", type=int, default=None, help="WordPiece vocabulary (default 30522)")
    parser.add_argument("--train-docs", type=int, default=None, help="reviews to pretrain on (default 23000)")
    parser.add_argument(
        "--infer-docs", type=int, default=None, help="reviews held apart for inference (default 2000)"
    )
    parser.add_argument("--log-every", type=int, default=None, help="steps per log window (default 20)")
    parser.add_argument("--warmup-windows", type=int, default=None, help="windows dropped (default 2)")
    parser.add_argument("--windows", type=int, default=None, help="windows measured (default 8)")
    parser.add_argument(
        "--profile-steps", type=int, default=None, help="steps under the profiler (default 10)"
    )
    parser.add_argument(
        "--n-process", type=int, default=None, help="spaCy processes for the corpus (default 8)"
    )
    parser.add_argument("--text", type=Path, default=None, help='a .jsonl(.gz) of {"text": ...} lines to use')
    parser.add_argument("--infer-batch-size", type=int, default=256)
    parser.add_argument(
        "--infer-batch-pieces", type=int, default=None, help="bert_encoder max_batch_pieces (default 32768)"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated stages to skip: profile,compile,hf,inference"
    )
    parser.add_argument(
        "--budget-s", type=float, default=420, help="wall-clock budget; later stages are skipped past it"
    )
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for gpu.json and gpu.md (default $OUT or benchmarks/results/gpu)",
    )
    args = parser.parse_args()
    tiny = args.tiny
    defaults = dict(
        size="tiny" if tiny else "base",
        batch_tokens=1024 if tiny else 32768,
        vocab_size=1000 if tiny else 30522,
        train_docs=300 if tiny else 23000,
        infer_docs=30 if tiny else 2000,
        log_every=2 if tiny else 20,
        warmup_windows=1 if tiny else 2,
        windows=2 if tiny else 8,
        profile_steps=2 if tiny else 10,
        n_process=1 if tiny else 8,
        infer_batch_pieces=4096 if tiny else 32768,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.autocast = None if args.autocast == "none" else args.autocast
    if args.prepare_only:
        register_plugin()
        prepare_only(args)
        return
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
    shape = SHAPES[args.size]
    precision = args.autocast or "fp32"
    results: Dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shape": shape,
        "flops": model_flops_per_token(shape),
        "skipped": [],
        "errors": {},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    cache = work / "cache"

    corpus = read_corpus(args)
    corpus_file = write_jsonl(corpus["train"], work / "corpus.jsonl")
    results["corpus"] = {
        "source": corpus["source"],
        "train_docs": len(corpus["train"]),
        "infer_docs": len(corpus["infer"]),
    }
    log(
        f"corpus: {len(corpus['train'])} training texts, {len(corpus['infer'])} for inference, from {corpus['source']}"
    )
    results["prepare_s"] = stage(
        results,
        "prepare (vocabulary + piece cache, CPU)",
        budget,
        0,
        lambda: prepare_caches(args, corpus_file, cache, work),
    )
    results["machine"] = machine_info(gpu_id)  # CUDA starts here, after spaCy's worker processes
    log(f"machine: {results['machine']}")
    save(results, out, budget)

    ours = stage(
        results,
        "ours",
        budget,
        60,
        lambda: run_ours(args, corpus_file, cache, work, shape, gpu_id, False, "eager"),
    )
    if ours:
        add_mfu(ours, shape, precision)
        results["ours"] = ours
        log(f"ours: {ours['tokens_per_s']:,.0f} tokens/s, MFU {100 * ours['mfu']:.1f} %")
    save(results, out, budget)
    if "profile" not in skip:
        results["profile"] = stage(
            results,
            "profile",
            budget,
            40,
            lambda: profile_ours(args, corpus_file, cache, work, shape, gpu_id),
        )
        save(results, out, budget)
    if "hf" not in skip:
        vocab = Path(ours["checkpoint"]) / "vocab.txt" if ours else None
        hf = stage(
            results,
            "hf",
            budget,
            60,
            lambda: run_hf(args, vocab, corpus["train"][:4000], work, shape, args.device),
        )
        if hf:
            add_mfu(hf, shape, precision)
            results["hf"] = hf
            log(f"hf: {hf['tokens_per_s']:,.0f} tokens/s, MFU {100 * hf['mfu']:.1f} %")
        save(results, out, budget)
    if ours and "inference" not in skip:
        results["inference"] = []
        stage(
            results,
            "inference",
            budget,
            60,
            lambda: inference_all(args, ours["checkpoint"], corpus["infer"], gpu_id, results, out, budget),
        )
        save(results, out, budget)
    if "compile" not in skip:  # last: its compilation time is the least predictable
        compiled = stage(
            results,
            "ours + compile",
            budget,
            150,
            lambda: run_ours(args, corpus_file, cache, work, shape, gpu_id, True, "compiled"),
        )
        if compiled:
            add_mfu(compiled, shape, precision)
            results["ours_compiled"] = compiled
            log(
                f"ours + compile: {compiled['tokens_per_s']:,.0f} tokens/s, MFU {100 * compiled['mfu']:.1f} %"
            )
    print(save(results, out, budget))


def report(results: Dict[str, Any]) -> str:
    m, a = results.get("machine", {}), results["args"]
    lines = [
        f"{m.get('date')}, commit {m.get('commit')}, {m.get('gpu')}, torch {m.get('torch')} (CUDA {m.get('cuda')}), "
        f"{m.get('cpu_count')} CPUs; BERT-{a['size']} "
        f"({results['shape']['num_layers']} x {results['shape']['hidden_width']}), vocab {a['vocab_size']}, "
        f"length {SEQ_LENGTH}, {a['batch_tokens']} pieces/step, autocast {a['autocast'] or 'none'}; "
        f"text: {results['corpus']['source']}; total {results['total_s']:.0f} s",
        "",
        "| pretraining | tokens/s | median window tokens/s | model TFLOP/s | MFU (of 989 TFLOP/s) "
        "| of measured 790 TFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("ours", "ours_compiled", "hf"):
        r = results.get(key)
        if r:
            lines.append(
                f"| {r['arm']} | {r['tokens_per_s']:,.0f} | {r['median_window_tokens_per_s']:,.0f} | "
                f"{r['model_tflops_per_s']:.1f} | **{100 * r['mfu']:.1f} %** | "
                f"{100 * r['of_measured_matmul_peak']:.1f} % |"
            )
    if results.get("ours") and results.get("hf"):
        lines.append(
            f"\nours/HF tokens/s: **{results['ours']['tokens_per_s'] / results['hf']['tokens_per_s']:.2f}x**"
        )
    prof = results.get("profile")
    if prof:
        busy = (
            f", GPU kernels {1e3 * prof['gpu_kernel_s_per_step']:.1f} ms/step, GPU busy {100 * prof['gpu_busy']:.0f} %"
            if prof.get("gpu_busy") is not None
            else ""
        )
        lines += [
            "",
            f"Profile of ours ({prof['steps']} steps, profiler on): {1e3 * prof['step_s']:.1f} ms/step{busy}",
            "",
            "| host phase | ms/step |",
            "|---|---|",
        ]
        lines += [f"| {k} | {1e3 * v:.2f} |" for k, v in prof["phases_s"].items()]
        if prof.get("top_kernels"):
            lines += ["", "| top GPU kernels | ms/step |", "|---|---|"]
            lines += [f"| {k[:90]} | {1e3 * v:.2f} |" for k, v in prof["top_kernels"]]
    if results.get("inference"):
        lines += ["", "| bert_encoder inference | ops | docs | words | words/s |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['autocast']} (batch {r['batch_size']} docs, {r['max_batch_pieces']} pieces) | {r['ops']} | "
            f"{r['docs']} | {r['words']:,} | **{r['words_per_s']:,.0f}** |"
            for r in results["inference"]
        ]
    if results["skipped"]:
        lines.append(f"\nskipped (time budget): {', '.join(results['skipped'])}")
    for name, error in results["errors"].items():
        lines.append(f"\nstage {name} failed: {error}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
