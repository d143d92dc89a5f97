"""Pretraining benchmark: pieces/s and achieved GFLOP/s of `spacy bert-pretrain` vs a plain
Hugging Face loop, with the same model shape, text, vocabulary and batch size.

* ours: the trainer `spacy bert-pretrain configs/RECIPE` runs (`pretraining.build_trainer`,
  stepped with `Trainer.step`), the recipe's objectives (pretrain.cfg: whole-word MLM at 15 % +
  NSP, 128-piece rows; pretrain-cpu.cfg: MLM on 30 % of the pieces, 64-piece rows) and
  length-bucketed batches of `batch_tokens` pieces. A separate check runs `pretrain()` alone and
  reads pieces/s from its log.jsonl (logged every step, warm-up steps dropped).
* hf: the `run_mlm.py`-style loop: `BertTokenizerFast`, texts grouped into blocks of the recipe's
  length, `DataCollatorForLanguageModeling(mlm_probability=the recipe's mask rate)`,
  `transformers.BertForPreTraining` with NSP in the recipe (random NSP labels cost the same as real
  pairs), `BertForMaskedLM` without, the recipe's dropout, torch AdamW with the same decay groups,
  linear warmup, gradient clipping at 1.0, batch_tokens / length blocks per step.

Both train BERT-Mini (4 x 256) from scratch by default on IMDB train reviews, with the vocabulary
ours learns from them; `--recipe pretrain-cpu.cfg --size tiny` is the CPU recipe's step. Pieces
are real pieces ([CLS]/[SEP] included, padding not). Per round and precision both arms live in one
process and take one step each in turn (who goes first alternates), so each pair of steps saw the
same machine load: the table gives medians over rounds and the ratio ours/HF as the median of the
paired per-step ratios. Model FLOPs (flops.py: both arms counted alike, the MLM head at the
masked positions) over the step time give the achieved GFLOP/s; the limit is torch's
matrix-product speed at the step's shapes, forward and backward, measured in the same process and
precision. `--compile` adds ours with `compile = true` (torch.compile of the step; it compiles in
its first warm-up step, whose time the table gives). `--profile` shows where ours' step goes instead.

    python benchmarks/pretraining.py            # about 6 minutes on a busy 2-core machine
    python benchmarks/pretraining.py --quick    # one round of 4 steps, about 2 minutes
    python benchmarks/pretraining.py --profile  # ours' step by phase and aten op
    python benchmarks/pretraining.py --recipe pretrain-cpu.cfg --size tiny --precisions fp32
"""

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from common import (
    CACHE_DIR,
    IMDB_DIR,
    SIZES,
    TIMED_RUN,
    EncoderMeter,
    achieved,
    aten_breakdown,
    effective_precision,
    header,
    imdb_texts,
    log,
    log_windows,
    machine,
    markdown_table,
    matmul_limit,
    memory_mib,
    model_gemms,
    percent,
    pretraining_config,
    read_log,
    register_plugin,
    run_once,
    serve,
    set_threads,
    write_texts,
)
from flops import pretraining_flops

from spacy_bert_plugin.bert.config import BertConfig

SCRIPT = Path(__file__).resolve()
WORK_DIR = CACHE_DIR / "pretraining"
COMPILED = "ours + compile"  # --compile: ours with `bert_pretraining.compile = true`


def recipe(base: str) -> Dict[str, Any]:
    """What the HF loop and the limit take from configs/`base`: sequence length, mask rate, NSP,
    dropout and the batch size."""
    config = pretraining_config(Path(), {}, base=base)
    settings, objectives = config["bert_pretraining"], config["bert_pretraining"]["objectives"]
    model = config["components"]["bert_encoder"]["model"]
    return {
        "recipe": base,
        "length": settings["max_length"],
        "mask_rate": objectives["mlm"]["mask_rate"],
        "nsp": bool(objectives.get("nsp")),
        "dropout": model["dropout"],
        "attention_dropout": model["attention_dropout"],
        "recipe_batch_tokens": settings["batch_tokens"],
    }


def ours_config(spec: Dict[str, Any], max_steps: int):
    overrides = {
        "components.bert_encoder.vocab_size": spec["vocab_size"],
        "bert_pretraining.max_steps": max_steps,
        "bert_pretraining.batch_tokens": spec["batch_tokens"],
        "bert_pretraining.log_every": 1,
        "bert_pretraining.threads": spec.get("threads") or None,
        "bert_pretraining.n_process": spec.get("n_process", 1),
        "bert_pretraining.cache_dir": spec.get("cache_dir", str(WORK_DIR / "cache")),
        "bert_pretraining.autocast": "bf16" if spec["precision"] == "bf16" else None,
        "bert_pretraining.compile": bool(spec.get("compile")),
        **TIMED_RUN,
    }
    shape = spec.get("shape") or SIZES[spec["size"]]
    return pretraining_config(Path(spec["corpus"]), overrides, shape, base=spec["recipe"])


def prepare(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Build ours' vocabulary and piece cache (the trainer's setup), then HF's blocks: the
    run_mlm.py preprocessing (tokenize with [CLS] ... [SEP], concatenate, cut into blocks of the
    recipe's length)."""
    import numpy
    from transformers import BertTokenizerFast

    from spacy_bert_plugin.pretraining import build_trainer

    work = Path(spec["work_dir"])
    start = time.perf_counter()
    trainer = build_trainer(ours_config(spec, 1), work / "prepare", stdout=io.StringIO(), dry_run=True)
    (work / "vocab").mkdir(parents=True, exist_ok=True)
    trainer.pieces.to_disk(work / "vocab")
    seconds = time.perf_counter() - start
    tokenizer = BertTokenizerFast(vocab_file=str(work / "vocab" / "vocab.txt"), do_lower_case=True)
    texts = [json.loads(line)["text"] for line in Path(spec["corpus"]).open(encoding="utf8")]
    ids = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    flat = numpy.fromiter((i for doc in ids for i in doc), dtype=numpy.int32)
    length = spec["length"]
    n_blocks = len(flat) // length
    numpy.save(work / "hf-blocks.npy", flat[: n_blocks * length].reshape(n_blocks, length))
    return {
        "vocab": str(work / "vocab" / "vocab.txt"),
        "blocks": str(work / "hf-blocks.npy"),
        "prepare_s": seconds,
    }


class OursArm:
    """Our trainer, one `Trainer.step` per call; hooks on its encoder and heads count the model FLOPs."""

    def __init__(self, spec: Dict[str, Any], gpu_id: int = -1):
        from spacy_bert_plugin.pretraining import build_trainer

        self.spec = spec
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
        self.trainer = build_trainer(
            ours_config(spec, 10**6), self.tmp / "out", gpu_id=gpu_id, stdout=io.StringIO(), dry_run=True
        )
        model = self.trainer.model
        self.config: BertConfig = model.config
        self.meter = EncoderMeter(model.encoder, model.config)
        self.masked: List[int] = []
        self.pairs: List[int] = []
        model.mlm_head.register_forward_pre_hook(lambda _m, args: self.masked.append(args[0].shape[0]))
        model.pair_head.register_forward_pre_hook(lambda _m, args: self.pairs.append(args[0].shape[0]))

    def step(self) -> Dict[str, Any]:
        before = self.trainer.state["tokens"]
        self.trainer.step()
        lengths = self.meter.take()
        flops = pretraining_flops(self.config, lengths, sum(self.masked), sum(self.pairs))
        self.masked.clear()
        self.pairs.clear()
        return {"tokens": self.trainer.state["tokens"] - before, "flops": flops, "rows": sum(lengths)}

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class HFArm:
    """The run_mlm.py-style loop: collator (dynamic masking) + BertForPreTraining (BertForMaskedLM
    without NSP) + AdamW."""

    def __init__(self, spec: Dict[str, Any], device: str = "cpu"):
        import numpy
        import torch
        import transformers

        self.torch, self.spec = torch, spec
        torch.manual_seed(0)
        tokenizer = transformers.BertTokenizerFast(vocab_file=spec["vocab"], do_lower_case=True)
        self.collator = transformers.DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=spec["mask_rate"], return_tensors="pt"
        )
        shape = spec.get("shape") or SIZES[spec["size"]]
        self.config = BertConfig(
            vocab_size=len(tokenizer.vocab),
            pad_token_id=tokenizer.pad_token_id,
            dropout=spec["dropout"],
            attention_dropout=spec["attention_dropout"],
            **shape,
        )
        hf_config = transformers.BertConfig(**self.config.to_hf())
        self.nsp = spec["nsp"]
        model_class = transformers.BertForPreTraining if self.nsp else transformers.BertForMaskedLM
        self.model = model_class(hf_config).to(device).train()
        self.device = next(self.model.parameters()).device
        params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=5e-4,
            betas=(0.9, 0.999),
            eps=1e-6,
            fused=self.device.type == "cuda",
        )
        self.schedule = transformers.get_linear_schedule_with_warmup(self.optimizer, 100, 2000)
        self.blocks = numpy.load(spec["blocks"])
        self.rows = spec["batch_tokens"] // spec["length"]
        self.order = numpy.random.default_rng(0).permutation(len(self.blocks))
        self.bf16 = spec["precision"] == "bf16"
        self.meter = EncoderMeter(self.model.bert, self.config)
        self.n = 0

    def step(self) -> Dict[str, Any]:
        torch = self.torch
        start = (self.n * self.rows) % max(1, len(self.order) - self.rows)
        chosen = self.order[start : start + self.rows]
        self.n += 1
        batch = self.collator([{"input_ids": self.blocks[i].tolist()} for i in chosen])
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        if self.nsp:
            batch["next_sentence_label"] = torch.randint(0, 2, (len(chosen),), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        float(out.loss.detach())  # a logger reads the loss; ours reads its metrics every step
        lengths = self.meter.take()
        n_masked = int((batch["labels"] != -100).sum())
        flops = pretraining_flops(self.config, lengths, n_masked, len(chosen) if self.nsp else 0)
        return {"tokens": int(batch["attention_mask"].sum()), "flops": flops, "rows": sum(lengths)}

    def close(self) -> None:
        pass


def step_gemms(config: BertConfig, rows: float, spec: Dict[str, Any]):
    """The matrix products of a training step over `rows` pieces in the recipe's sequences."""
    return model_gemms(config, rows, spec["length"], rows * spec["mask_rate"], training=True)


def limits(
    config: BertConfig, rows: float, spec: Dict[str, Any], precisions: Dict[str, str], device: str = "cpu"
) -> Dict[str, float]:
    """GFLOP/s of matrix products at a pretraining step's shapes, per arm's effective precision."""
    gemms = step_gemms(config, rows, spec)
    measured = {p: matmul_limit(gemms, p, device) for p in set(precisions.values())}
    return {arm: measured[p] for arm, p in precisions.items()}


def timed_step(arm) -> Dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    step = arm.step()  # ends in float(loss): synchronized on a GPU
    return dict(step, seconds=time.perf_counter() - start, cpu=time.process_time() - cpu)


def summarize_steps(steps: List[Dict[str, Any]], limit: float, device: str = "cpu") -> Dict[str, Any]:
    """Pieces/s, FLOPs per piece, achieved GFLOP/s and share of the limit (by CPU time on a CPU,
    by the wall clock on a GPU) of timed steps."""
    tokens, flops, seconds = (sum(s[key] for s in steps) for key in ("tokens", "flops", "seconds"))
    cpu = sum(s["cpu"] for s in steps) if device == "cpu" else seconds
    return {
        "steps": steps,
        "tokens_per_s": tokens / seconds,
        "flops_per_token": flops / tokens,
        "limit_gflops": limit,
        **achieved(flops, seconds, cpu, limit),
    }


def measure_paired(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The arms in one process, one step each in turn (the order reverses every step). A compiled
    arm compiles in its warm-up steps (`first_step_s`)."""
    threads = set_threads(spec["threads"])
    arms = {"ours": OursArm(spec), "hf": HFArm(spec)}
    if spec["compile_arm"]:
        arms[COMPILED] = OursArm(dict(spec, compile=True))
    names = list(arms)
    steps: Dict[str, List[Dict[str, Any]]] = {name: [] for name in arms}
    for i in range(spec["warmup"] + spec["steps"]):
        for name in names if i % 2 == 0 else names[::-1]:
            steps[name].append(timed_step(arms[name]))
    ours_precision = effective_precision(spec["precision"])
    precisions = {name: spec["precision"] if name == "hf" else ours_precision for name in arms}
    rows = statistics.mean(s["rows"] for s in steps["ours"])
    limit = limits(arms["ours"].config, rows, spec, precisions)
    for arm in arms.values():
        arm.close()
    result = {**spec, "threads": threads, "peak_mib": memory_mib()["VmHWM"], "precisions": precisions}
    result["arms"] = {}
    for name in arms:
        measured = summarize_steps(steps[name][spec["warmup"] :], limit[name])
        measured["first_step_s"] = steps[name][0]["seconds"]
        measured["hf_ratios"] = [
            (a["tokens"] / a["seconds"]) / (h["tokens"] / h["seconds"])
            for a, h in zip(measured["steps"], steps["hf"][spec["warmup"] :])
        ]
        result["arms"][name] = measured
    return result


def measure_cli(spec: Dict[str, Any]) -> Dict[str, Any]:
    """`pretrain()` alone, as the CLI runs it; pieces/s from its log.jsonl, warm-up steps dropped."""
    from spacy_bert_plugin.pretraining import pretrain

    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    try:
        pretrain(ours_config(spec, spec["warmup"] + spec["steps"]), tmp / "out", stdout=io.StringIO())
        windows = log_windows(read_log(tmp / "out" / "log.jsonl"))[spec["warmup"] :]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**spec, "tokens_per_s": sum(t for t, _ in windows) / sum(s for _, s in windows)}


PHASES = ("batch", "forward", "backward", "optimizer")  # the trainer's record_function ranges


def profile(spec: Dict[str, Any], gpu_id: int = -1) -> Dict[str, Any]:
    """Where ours' step goes, under torch.profiler: the trainer's phases (host time), aten ops,
    and on a GPU its kernels' time and busy share."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    set_threads(spec["threads"])
    arm = OursArm(spec, gpu_id)
    for _ in range(spec["warmup"]):
        arm.step()
    n, cuda = spec["steps"], gpu_id >= 0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(n):
            arm.step()
    step_s = (time.perf_counter() - start) / n
    arm.close()
    events = prof.key_averages()
    kernels = [
        (e.key, e.self_device_time_total / 1e6 / n) for e in events if e.device_type == DeviceType.CUDA
    ]
    return {
        **spec,
        "step_s": step_s,
        "phases_s": {e.key: e.cpu_time_total / 1e6 / n for e in events if e.key in PHASES},
        **aten_breakdown(events, n),
        "gpu_busy": sum(s for _, s in kernels) / step_s if cuda else None,
        "top_kernels": sorted(kernels, key=lambda kv: -kv[1])[:10],
    }


def profile_report(results: List[Dict[str, Any]]) -> str:
    lines = []
    for r in results:
        step = r["step_s"]
        lines += ["", f"ours, {r['precision']}: {step:.2f} s/step with the profiler on", ""]
        for title, values in (("phase", r["phases_s"]), ("aten ops (self CPU time)", r["op_groups_s"])):
            rows = [[k, v * 1e3, f"{100 * v / step:.1f}"] for k, v in values.items()]
            lines += [markdown_table([title, "ms/step", "% of step"], rows), ""]
        lines.append(
            markdown_table(
                ["top aten op", "calls/step", "ms/step"], [[k, c, v * 1e3] for k, c, v in r["top_ops"]]
            )
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="mini", choices=sorted(SIZES), help="model size (default mini, 4 x 256)"
    )
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (CPU autocast)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="paired processes per precision")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per arm and round")
    parser.add_argument("--warmup", type=int, default=2, help="steps per arm dropped before measuring")
    parser.add_argument("--docs", type=int, default=3000, help="IMDB train reviews in the corpus")
    parser.add_argument(
        "--vocab-size", type=int, default=8000, help="WordPiece vocabulary learnt from the corpus"
    )
    parser.add_argument(
        "--recipe",
        default="pretrain.cfg",
        choices=("pretrain.cfg", "pretrain-cpu.cfg"),
        help="the config whose objectives, sequence length and dropout both arms use",
    )
    parser.add_argument(
        "--batch-tokens", type=int, help="pieces per step (default the recipe's; HF: / length blocks)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads, 0 for half the cores")
    parser.add_argument(
        "--compile", action="store_true", help=f"add the arm '{COMPILED}' (torch.compile of the step)"
    )
    parser.add_argument("--no-cli-check", action="store_true", help="skip the `pretrain()` + log.jsonl runs")
    parser.add_argument("--quick", action="store_true", help="1 round of 4 steps, no CLI check")
    parser.add_argument("--profile", action="store_true", help="profile ours' steps instead")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        register_plugin()
        spec = json.loads(args.worker)
        task = {"prepare": prepare, "paired": measure_paired, "cli": measure_cli, "profile": profile}[
            spec["task"]
        ]
        serve({}, lambda _request: task(spec))
        return
    if not (IMDB_DIR / "train.jsonl.gz").exists():
        print(f"skipped: {IMDB_DIR / 'train.jsonl.gz'} not found; this benchmark needs real text")
        return
    if args.quick:
        args.rounds, args.steps, args.warmup, args.no_cli_check = 1, 4, 1, True
    info = machine()
    precisions = args.precisions.split(",")
    recipe_spec = recipe(args.recipe)
    args.batch_tokens = args.batch_tokens or recipe_spec["recipe_batch_tokens"]
    work_dir = WORK_DIR / f"{args.docs}-{args.vocab_size}-{recipe_spec['length']}"
    base = dict(
        recipe_spec,
        size=args.size,
        vocab_size=args.vocab_size,
        batch_tokens=args.batch_tokens,
        warmup=args.warmup,
        steps=args.steps,
        threads=args.threads,
        compile_arm=args.compile,
        work_dir=str(work_dir),
        corpus=str(write_texts(imdb_texts("train", args.docs), WORK_DIR / f"imdb-train-{args.docs}.jsonl")),
    )
    prepared = run_once(SCRIPT, dict(base, task="prepare", precision="fp32"))
    base.update(vocab=prepared["vocab"], blocks=prepared["blocks"])
    log(f"prepared vocabulary, piece cache and HF blocks in {prepared['prepare_s']:.0f} s")
    if args.profile:
        results = [run_once(SCRIPT, dict(base, task="profile", precision=p)) for p in precisions]
        print(header(info, args.threads, f"BERT-{args.size}"))
        print(profile_report(results))
        return
    runs: List[Dict[str, Any]] = []
    for round_ in range(args.rounds):
        for precision in precisions if round_ % 2 == 0 else precisions[::-1]:
            r = run_once(SCRIPT, dict(base, task="paired", precision=precision, round=round_))
            speeds = ", ".join(f"{name} {a['tokens_per_s']:,.0f}" for name, a in r["arms"].items())
            log(f"round {round_} {precision}: pieces/s {speeds}")
            runs.append(r)
    cli = []
    if not args.no_cli_check:
        for precision in precisions:
            for arm in ["ours", *([COMPILED] if args.compile else [])]:
                steps = max(2, args.steps * 3 // 4)
                spec = dict(base, task="cli", precision=precision, steps=steps, compile=arm == COMPILED)
                cli.append(dict(run_once(SCRIPT, spec), arm=arm))
                log(
                    f"bert-pretrain alone, {arm}, {precision}: {cli[-1]['tokens_per_s']:,.0f} pieces/s (log.jsonl)"
                )
    print(report(runs, cli, precisions, args, info))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": runs, "cli": cli}, indent=2, default=str))


def report(runs: List[Dict[str, Any]], cli: List[Dict[str, Any]], precisions: List[str], args, info) -> str:
    rows = []
    for precision in precisions:
        rs = [r for r in runs if r["precision"] == precision]
        alone = {c["arm"]: c["tokens_per_s"] for c in cli if c["precision"] == precision}
        for name in rs[0]["arms"]:
            med = {
                k: statistics.median(r["arms"][name][k] for r in rs)
                for k in ("tokens_per_s", "gflops", "share", "limit_gflops", "first_step_s")
            }
            ratios = [x for r in rs for x in r["arms"][name]["hf_ratios"]]
            rows.append(
                [
                    precision,
                    name,
                    rs[0]["precisions"][name],
                    med["tokens_per_s"],
                    "1.00x" if name == "hf" else f"**{statistics.median(ratios):.2f}x**",
                    "" if name == "hf" else f"{min(ratios):.2f}-{max(ratios):.2f}",
                    f"{med['gflops']:.1f} ({percent(med['share'])})",
                    f"{med['limit_gflops']:.1f}",
                    f"{med['first_step_s']:.1f}",
                    f"{alone[name]:,.0f}" if name in alone else "-",
                ]
            )
    headers = [
        "precision",
        "arm",
        "products run in",
        "pieces/s",
        "vs HF (median of paired steps)",
        "range",
        "GFLOP/s (share of limit)",
        "limit GFLOP/CPU-s",
        "first step s",
        "alone, log.jsonl pieces/s",
    ]
    details = (
        f"{args.recipe}, BERT-{args.size}, vocab {args.vocab_size}, length {runs[0]['length']}, "
        f"{args.batch_tokens} pieces/step, "
        f"{args.rounds} round(s) x {args.steps} paired steps (after {args.warmup} warm-up)"
    )
    return "\n".join(["", header(info, runs[0]["threads"], details), "", markdown_table(headers, rows)])


if __name__ == "__main__":
    main()
