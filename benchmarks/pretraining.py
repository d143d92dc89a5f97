"""Pretraining benchmark (issue 5c): tokens/s of `spacy bert-pretrain` vs a plain Hugging Face loop.

Both arms train the same model shape (BERT-Mini, 4 x 256, by default) from scratch on the same
IMDB train reviews with the same WordPiece vocabulary (the one `spacy bert-pretrain` learns from
the text), sequence length 128, batches of 4096 pieces (32 full-length sequences):

* ours: `spacy_bert_plugin.pretraining.pretrain` (what `python -m spacy bert-pretrain
  configs/pretrain.cfg OUT --paths.raw_text X.jsonl ...` runs) with the default objectives
  (whole-word MLM at 15 % + NSP), length-bucketed batches of `batch_tokens = 4096`, set up as the
  CLI does and stepped through the loop's own `Trainer.train_step`; the vocabulary and piece cache
  are built once before any clock runs. A separate check runs the unmodified loop alone and reads
  tokens_per_s from its log.jsonl (logged every step, warm-up steps dropped).
* hf: the `run_mlm.py`-style loop: `BertTokenizerFast`, texts grouped into 128-piece blocks,
  `DataCollatorForLanguageModeling(mlm_probability=0.15)`, `transformers.BertForPreTraining`
  (MLM + NSP loss; the NSP labels are random, which costs the same as real pairs), torch AdamW
  with the same decay groups, linear warmup schedule, gradient clipping at 1.0, 32 blocks per step.

Tokens are real pieces ([CLS]/[SEP] included, padding not). Per round and precision both arms
live in one process and take one step each in turn (who goes first alternates), so each pair of
steps saw the same machine load; the table gives medians over rounds and the ratio ours/HF as the
median of the paired per-step ratios. `--profile` instead shows where ours' step goes.

    python benchmarks/pretraining.py            # default run, ~6 minutes on a busy 2-core machine
    python benchmarks/pretraining.py --quick    # a smoke run of about 2 minutes
    python benchmarks/pretraining.py --profile  # phases and aten ops of ours' step
"""

import argparse
import gzip
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from common import CACHE_DIR, IMDB_DIR, machine, markdown_table, memory_mib

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
CONFIG = REPO / "configs" / "pretrain.cfg"
WORK_DIR = CACHE_DIR / "pretraining"
SIZES = {
    "mini": dict(hidden_width=256, num_layers=4, num_heads=4, intermediate_width=1024),
    "base": dict(hidden_width=768, num_layers=12, num_heads=12, intermediate_width=3072),
}
ARMS = ("ours", "hf")
SEQ_LENGTH = 128


# ---- data --------------------------------------------------------------------------------------


def corpus_file(n_docs: int) -> Path:
    """The first n_docs IMDB train reviews as a .jsonl corpus (written once: its size and mtime
    key the pretraining caches)."""
    path = WORK_DIR / f"imdb-train-{n_docs}.jsonl"
    if not path.exists():
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with gzip.open(IMDB_DIR / "train.jsonl.gz", "rt", encoding="utf8") as src, tmp.open("w") as out:
            for i, line in enumerate(src):
                if i >= n_docs:
                    break
                out.write(json.dumps({"text": json.loads(line)["text"]}) + "\n")
        tmp.replace(path)
    return path


def ours_config(spec: Dict[str, Any], out_dir: Path, max_steps: int):
    from spacy import util

    overrides = {
        "paths.raw_text": spec["corpus"],
        "components.bert_encoder.vocab_size": spec["vocab_size"],
        "bert_pretraining.max_steps": max_steps,
        "bert_pretraining.max_length": SEQ_LENGTH,
        "bert_pretraining.batch_tokens": spec["batch_tokens"],
        "bert_pretraining.log_every": 1,
        "bert_pretraining.eval_every": 10**9,  # evaluation and saving only after the last step,
        "bert_pretraining.save_every": 10**9,  # outside the measured window
        "bert_pretraining.eval_batches": 1,
        "bert_pretraining.cache_dir": str(WORK_DIR / "cache"),
        "bert_pretraining.autocast": "bf16" if spec["precision"] == "bf16" else None,
        "bert_pretraining.compile": bool(spec.get("compile", False)),
    }
    shape = spec.get("shape") or SIZES[spec["size"]]
    overrides.update({f"components.bert_encoder.model.{k}": v for k, v in shape.items()})
    return util.load_config(CONFIG, overrides=overrides, interpolate=False)


def vocab_file(spec: Dict[str, Any]) -> Path:
    """The vocabulary `bert-pretrain` learnt from the corpus (see pretraining.loop._learned_vocab)."""
    corpus = Path(spec["corpus"])
    found = sorted(
        (WORK_DIR / "cache").glob(
            f"vocab-{spec['vocab_size']}-1-{corpus.stat().st_size}-*/{corpus.name}/vocab.txt"
        )
    )
    if not found:
        sys.exit(f"no learnt vocabulary for {corpus} under {WORK_DIR / 'cache'}: the preparation step failed")
    return found[-1]


def hf_blocks(spec: Dict[str, Any]) -> Path:
    """run_mlm.py's preprocessing: tokenize every text ([CLS] ... [SEP]), concatenate, cut into
    SEQ_LENGTH blocks. Cached as an int32 .npy."""
    import numpy
    from transformers import BertTokenizerFast

    vocab = vocab_file(spec)
    path = WORK_DIR / f"hf-blocks-{Path(spec['corpus']).stem}-{spec['vocab_size']}-{SEQ_LENGTH}.npy"
    if path.exists() and path.stat().st_mtime >= vocab.stat().st_mtime:
        return path
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    texts = [json.loads(line)["text"] for line in Path(spec["corpus"]).open(encoding="utf8")]
    ids = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    flat = numpy.fromiter((i for doc in ids for i in doc), dtype=numpy.int32)
    n_blocks = len(flat) // SEQ_LENGTH
    numpy.save(path, flat[: n_blocks * SEQ_LENGTH].reshape(n_blocks, SEQ_LENGTH))
    return path


# ---- workers (one process each) ----------------------------------------------------------------


def run_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run this script with `--worker SPEC` in a fresh interpreter; its last stdout line is the result."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"benchmark worker failed ({proc.returncode}) for {spec}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Build ours' vocabulary and piece cache with a one-step run, then the HF blocks."""
    from spacy_bert_plugin.pretraining import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pretrain(ours_config(spec, Path(tmp), 1), Path(tmp) / "out", stdout=io.StringIO())
        seconds = time.perf_counter() - start
    blocks = hf_blocks(spec)
    return {"vocab": str(vocab_file(spec)), "blocks": str(blocks), "prepare_s": seconds}


def capture_trainer(config, out_dir: Path, gpu_id: int = -1):
    """`pretrain()` as the CLI calls it, with `Trainer.run` intercepted: the real setup
    (vocabulary, piece cache, model, optimizer, batch stream) happens, and the Trainer is returned
    instead of run, so a benchmark can call its `train_step` itself."""
    from spacy_bert_plugin.pretraining import loop

    captured = []
    original = loop.Trainer.run
    loop.Trainer.run = lambda trainer, interrupted: captured.append(trainer)
    try:
        loop.pretrain(config, out_dir, gpu_id=gpu_id, stdout=io.StringIO())
    finally:
        loop.Trainer.run = original
    return captured[0]


class OursArm:
    """Our pretraining step: the loop's own `Trainer.train_step` (what `Trainer.run` calls every
    step; `run` only adds logging and the evaluations/saves that we push past the measured steps)."""

    def __init__(self, spec: Dict[str, Any], config=None, gpu_id: int = -1):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
        self.trainer = capture_trainer(config or ours_config(spec, self.tmp, 10**6), self.tmp / "out", gpu_id)

    def step(self) -> int:
        metrics, tokens = self.trainer.train_step()
        return tokens

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class HFArm:
    """The run_mlm.py-style loop: collator (dynamic masking) + BertForPreTraining + AdamW."""

    def __init__(self, spec: Dict[str, Any]):
        import numpy
        import torch
        from transformers import (
            BertConfig,
            BertForPreTraining,
            BertTokenizerFast,
            DataCollatorForLanguageModeling,
            get_linear_schedule_with_warmup,
        )

        self.torch = torch
        torch.manual_seed(0)
        tokenizer = BertTokenizerFast(vocab_file=spec["vocab"], do_lower_case=True)
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
        shape = spec.get("shape") or SIZES[spec["size"]]
        config = BertConfig(
            vocab_size=len(tokenizer.vocab),
            hidden_size=shape["hidden_width"],
            num_hidden_layers=shape["num_layers"],
            num_attention_heads=shape["num_heads"],
            intermediate_size=shape["intermediate_width"],
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
        self.model = BertForPreTraining(config).to(spec.get("device", "cpu")).train()
        self.device = next(self.model.parameters()).device
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
            lr=5e-4,
            betas=(0.9, 0.999),
            eps=1e-6,
            fused=self.device.type == "cuda",
        )
        self.schedule = get_linear_schedule_with_warmup(self.optimizer, 100, 2000)
        self.blocks = numpy.load(spec["blocks"])
        self.rows = spec["batch_tokens"] // SEQ_LENGTH
        self.order = numpy.random.default_rng(0).permutation(len(self.blocks))
        self.bf16 = spec["precision"] == "bf16"
        self.n = 0

    def step(self) -> int:
        torch = self.torch
        start = (self.n * self.rows) % max(1, len(self.order) - self.rows)
        chosen = self.order[start : start + self.rows]
        self.n += 1
        batch = self.collator([{"input_ids": self.blocks[i].tolist()} for i in chosen])
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        nsp_labels = torch.randint(0, 2, (len(chosen),), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
                next_sentence_label=nsp_labels,
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        float(out.loss.detach())  # a logger reads the loss; ours reads its metrics every step
        return int(batch["attention_mask"].sum())

    def close(self) -> None:
        pass


def measure_paired(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Both arms in one process, one step each in turn (who goes first alternates), so each
    ours/HF pair of steps saw the same machine load."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    arms = {"ours": OursArm(spec), "hf": HFArm(spec)}
    times: Dict[str, List[float]] = {name: [] for name in arms}
    cpu: Dict[str, List[float]] = {name: [] for name in arms}
    tokens: Dict[str, List[int]] = {name: [] for name in arms}
    for i in range(spec["warmup"] + spec["steps"]):
        for name in ARMS if i % 2 == 0 else ARMS[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            n = arms[name].step()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            tokens[name].append(n)
    for arm in arms.values():
        arm.close()
    w = spec["warmup"]
    result = {**spec, "threads": torch.get_num_threads(), "peak_mib": memory_mib()["VmHWM"]}
    for name in arms:
        result[name] = {
            "tokens": tokens[name][w:],
            "seconds": times[name][w:],
            "cpu_seconds": cpu[name][w:],
            "tokens_per_s": sum(tokens[name][w:]) / sum(times[name][w:]),
            "tokens_per_cpu_s": sum(tokens[name][w:]) / sum(cpu[name][w:]),
        }
    result["pair_ratios"] = [
        (to / so) / (th / sh)
        for to, so, th, sh in zip(tokens["ours"][w:], times["ours"][w:], tokens["hf"][w:], times["hf"][w:])
    ]
    return result


def measure_cli(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The unmodified loop (`pretrain`, as the CLI runs it) alone, tokens/s from its log.jsonl
    (one record per step; warm-up steps dropped): checks that the paired measurement of
    `train_step` is what a user sees."""
    import torch

    from spacy_bert_plugin.pretraining import pretrain

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    try:
        pretrain(ours_config(spec, tmp, spec["warmup"] + spec["steps"]), tmp / "out", stdout=io.StringIO())
        records = [json.loads(line) for line in (tmp / "out" / "log.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens, seconds, previous = [], [], 0
    for record in (r for r in records if "tokens_per_s" in r):  # log_every = 1; `tokens` is cumulative
        tokens.append(record["tokens"] - previous)
        seconds.append(tokens[-1] / record["tokens_per_s"])
        previous = record["tokens"]
    w = spec["warmup"]
    return {**spec, "tokens_per_s": sum(tokens[w:]) / sum(seconds[w:]), "threads": torch.get_num_threads()}


# ---- profile ------------------------------------------------------------------------------------

# aten ops grouped into what the time is spent on (by self CPU time; the first matching group wins).
OP_GROUPS = [
    (
        "matmul (linear/mm/bmm)",
        ("addmm", "aten::mm", "bmm", "matmul", "linear", "baddbmm", "mkldnn", "onednn"),
    ),
    ("attention kernel (sdpa)", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("softmax", ("softmax",)),
    ("dropout RNG + masks", ("bernoulli", "dropout", "native_dropout")),
    ("gelu", ("gelu",)),
    ("layer norm", ("layer_norm",)),
    ("embedding", ("embedding",)),
    ("loss (log_softmax/nll/argmax)", ("log_softmax", "nll_loss", "cross_entropy", "argmax")),
    (
        "optimizer + grad clip (foreach/elementwise on params)",
        ("_foreach", "addcdiv", "lerp", "sqrt", "norm"),
    ),
    ("copies/casts", ("copy_", "to_copy", "_to_copy", "clone", "contiguous", "cat")),
    (
        "elementwise add/mul/div",
        ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::tanh"),
    ),
    ("index/select/scatter", ("index", "gather", "scatter", "select_backward", "embedding_dense")),
    ("zeros/fill/empty", ("zero", "fill", "empty", "full", "ones")),
]
_ABSENT = object()
PHASES = (
    "data: next(stream) make_instances/bucketing",
    "data: build_batch",
    "data: MLM masking (prepare)",
    "data: to tensors",
    "forward (encoder)",
    "forward (MLM head + loss)",
    "forward (NSP head + loss)",
    "backward",
    "grad clip",
    "optimizer step",
)


def instrument(trainer) -> Tuple[Dict[str, float], Callable[[], None]]:
    """Wall-clock timers (and profiler labels) around the loop's own calls, by phase; returns the
    dict they add to (seconds) and a function that takes the timers out again. Host time only:
    on a GPU a phase's time is what the host spent."""
    import torch
    from torch.profiler import record_function

    from spacy_bert_plugin.pretraining import loop, objectives

    phase_s: Dict[str, float] = {name: 0.0 for name in PHASES}

    def timed(name, func):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            with record_function(name):
                result = func(*args, **kwargs)
            phase_s[name] += time.perf_counter() - start
            return result

        return wrapper

    stream = trainer.stream
    targets = [  # (owner, attribute, phase)
        (trainer, "stream", PHASES[0]),
        (loop, "build_batch", PHASES[1]),
        (objectives.MaskedLanguageModel, "prepare", PHASES[2]),
        (loop, "_to_tensors", PHASES[3]),
        (trainer.model.encoder, "forward", PHASES[4]),
        (objectives.MaskedLanguageModel, "loss", PHASES[5]),
        (objectives.SegmentPairObjective, "loss", PHASES[6]),
        (torch.Tensor, "backward", PHASES[7]),
        (torch.nn.utils, "clip_grad_norm_", PHASES[8]),
        (trainer.optimizer, "step", PHASES[9]),
    ]
    saved = [
        (owner, name, owner.__dict__.get(name, _ABSENT) if hasattr(owner, "__dict__") else _ABSENT)
        for owner, name, _ in targets
    ]
    for owner, name, phase in targets:
        if owner is trainer:
            setattr(owner, name, iter(timed(phase, lambda: next(stream)), None))
        else:
            setattr(owner, name, timed(phase, getattr(owner, name)))

    def restore() -> None:
        for owner, name, value in saved:
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)

    return phase_s, restore


def group_ops(events, per: int) -> Dict[str, float]:
    groups: Dict[str, float] = {}
    for event in events:
        group = next((g for g, keys in OP_GROUPS if any(k in event.key for k in keys)), "other aten")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6 / per
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def profile(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Where one step of ours goes: phases (timers around the loop's own calls) and aten ops."""
    import torch
    from torch.profiler import ProfilerActivity

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    arm = OursArm(spec)
    phase_s, _ = instrument(arm.trainer)
    for _ in range(spec["warmup"]):
        arm.step()
    for name in phase_s:
        phase_s[name] = 0.0
    start = time.perf_counter()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(spec["steps"]):
            arm.step()
    total = time.perf_counter() - start
    arm.close()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    return {
        **spec,
        "step_s": total / spec["steps"],
        "phases_s": {k: v / spec["steps"] for k, v in phase_s.items()},
        "op_groups_s": group_ops(events, spec["steps"]),
        "top_ops": [
            (e.key, e.count // spec["steps"], e.self_cpu_time_total / 1e6 / spec["steps"]) for e in top
        ],
    }


def profile_report(results: List[Dict[str, Any]]) -> str:
    lines = []
    for r in results:
        step = r["step_s"]
        lines += [
            "",
            f"### ours, {r['precision']}: {step:.2f} s/step (profiler on), "
            f"{r['batch_tokens'] / step:,.0f} tokens/s",
            "",
        ]
        lines.append(
            markdown_table(
                ["phase", "ms/step", "% of step"],
                [[k, v * 1e3, f"{100 * v / step:.1f}"] for k, v in r["phases_s"].items()],
            )
        )
        lines.append("")
        lines.append(
            markdown_table(
                ["aten ops (self CPU time)", "ms/step", "% of step"],
                [[k, v * 1e3, f"{100 * v / step:.1f}"] for k, v in r["op_groups_s"].items()],
            )
        )
        lines.append("")
        lines.append(
            markdown_table(
                ["top aten op", "calls/step", "ms/step"], [[k, n, v * 1e3] for k, n, v in r["top_ops"]]
            )
        )
    return "\n".join(lines)


# ---- driver ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="mini", choices=sorted(SIZES), help="model shape (default: mini, 4 x 256)"
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
    parser.add_argument("--batch-tokens", type=int, default=4096, help="pieces per step (HF: /128 blocks)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; default: 1 when the machine is already busy (load average above "
        "cores - 0.5: then OpenMP's thread barriers stall on descheduled threads), else all cores",
    )
    parser.add_argument(
        "--no-cli-check", action="store_true", help="skip the unpaired `pretrain()` + log.jsonl runs"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 4 steps, no CLI check")
    parser.add_argument(
        "--profile", action="store_true", help="profile ours' steps instead (phases, aten ops)"
    )
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        task = {"prepare": prepare, "paired": measure_paired, "cli": measure_cli, "profile": profile}[
            spec["task"]
        ]
        print(json.dumps(task(spec)), flush=True)
        return
    if not (IMDB_DIR / "train.jsonl.gz").exists():
        print(
            f"skipped: IMDB train reviews not found at {IMDB_DIR / 'train.jsonl.gz'} (the shared data folder "
            "../shared/data/imdb); this benchmark needs real text"
        )
        return
    if args.quick:
        args.rounds, args.steps, args.warmup, args.no_cli_check = 1, 4, 1, True
    precisions = args.precisions.split(",")
    if not args.threads:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        args.threads = 1 if load > cores - 0.5 else cores
        log(
            f"torch threads: {args.threads} (load average {load:.1f} on {cores} cores; set --threads to choose)"
        )
    base = dict(
        size=args.size,
        vocab_size=args.vocab_size,
        batch_tokens=args.batch_tokens,
        warmup=args.warmup,
        steps=args.steps,
        threads=args.threads,
        corpus=str(corpus_file(args.docs)),
    )
    prepared = run_worker(dict(base, task="prepare", precision="fp32"))
    base.update(vocab=prepared["vocab"], blocks=prepared["blocks"])
    log(f"prepared vocabulary, piece cache and HF blocks in {prepared['prepare_s']:.0f} s")
    if args.profile:
        results = [run_worker(dict(base, task="profile", precision=p)) for p in precisions]
        print(profile_report(results))
        if args.json:
            args.json.write_text(
                json.dumps({"machine": machine(), "profile": results}, indent=2, default=str)
            )
        return
    runs: List[Dict[str, Any]] = []
    for round_ in range(args.rounds):
        for precision in precisions if round_ % 2 == 0 else precisions[::-1]:
            result = run_worker(dict(base, task="paired", precision=precision, round=round_))
            log(
                f"round {round_} {precision}: ours {result['ours']['tokens_per_s']:,.0f} tokens/s, "
                f"hf {result['hf']['tokens_per_s']:,.0f} tokens/s, "
                f"pair ratio median {statistics.median(result['pair_ratios']):.2f}"
            )
            runs.append(result)
    cli = []
    if not args.no_cli_check:
        for precision in precisions:
            cli.append(
                run_worker(dict(base, task="cli", precision=precision, steps=max(2, args.steps * 3 // 4)))
            )
            log(f"bert-pretrain loop alone, {precision}: {cli[-1]['tokens_per_s']:,.0f} tokens/s (log.jsonl)")
    info = machine()
    print(report(runs, cli, precisions, args, info))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "args": vars(args), "runs": runs, "cli": cli}, indent=2, default=str)
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quartiles(values: List[float]) -> str:
    if len(values) < 4:
        return f"{min(values):.2f}-{max(values):.2f}"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.2f}-{q[2]:.2f}"


def report(
    runs: List[Dict[str, Any]],
    cli: List[Dict[str, Any]],
    precisions: List[str],
    args: argparse.Namespace,
    info: Dict[str, str],
) -> str:
    lines = [
        f"{info['date']}, commit {info['commit']}, {info['machine']}, torch threads {runs[0]['threads']}; "
        f"BERT-{args.size}, vocab {args.vocab_size}, sequence length {SEQ_LENGTH}, {args.batch_tokens} pieces/step; "
        f"{args.rounds} round(s) x {args.steps} paired steps per precision (after {args.warmup} warm-up)",
        "",
    ]
    rows = []
    for precision in precisions:
        rs = [r for r in runs if r["precision"] == precision]
        speed = {arm: statistics.median(r[arm]["tokens_per_s"] for r in rs) for arm in ARMS}
        step_s = {arm: statistics.median(s for r in rs for s in r[arm]["seconds"]) for arm in ARMS}
        per_step = {arm: statistics.mean(t for r in rs for t in r[arm]["tokens"]) for arm in ARMS}
        ratios = [x for r in rs for x in r["pair_ratios"]]
        alone = [c["tokens_per_s"] for c in cli if c["precision"] == precision]
        per_cpu = {arm: statistics.median(r[arm]["tokens_per_cpu_s"] for r in rs) for arm in ARMS}
        rows.append(
            [
                precision,
                speed["ours"],
                speed["hf"],
                f"**{statistics.median(ratios):.2f}x**",
                quartiles(ratios),
                f"{speed['ours'] / speed['hf']:.2f}x",
                f"{per_cpu['ours'] / per_cpu['hf']:.2f}x",
                f"{step_s['ours']:.2f} / {step_s['hf']:.2f}",
                f"{per_step['ours']:,.0f} / {per_step['hf']:,.0f}",
                f"{alone[0]:,.0f}" if alone else "-",
            ]
        )
    headers = [
        "precision",
        "ours tokens/s",
        "HF tokens/s",
        "ours/HF (median of paired steps)",
        "IQR",
        "ratio of medians",
        "ratio per CPU-second",
        "s/step ours / HF",
        "tokens/step ours / HF",
        "ours alone, log.jsonl tokens/s",
    ]
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
