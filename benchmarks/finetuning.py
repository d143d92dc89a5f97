"""Fine-tuning benchmark: words/s and achieved GFLOP/s of `spacy train`'s update loop for NER on
CoNLL-2003, `bert_encoder` vs spacy-transformers' `transformer`, with the same BERT weights.

Both pipelines are [encoder, ner]: the same NER head (`spacy.TransitionBasedParser.v2`, state type
ner, hidden width 64, maxout 2, no upper layer, as in configs/ner.cfg) reads the encoder through a
listener, and every update fine-tunes the encoder end to end:

* ours: `bert_encoder` with `{"checkpoint": DIR}`, `spacy.Tok2VecListener.v1` (configs/ner.cfg);
* peer: `transformer` with `spacy-transformers.TransformerModel.v3`, `name = DIR`, its default span
  getter (`strided_spans.v1`, window 128, stride 96), `spacy-transformers.TransformerListener.v1`
  with `reduce_mean.v1` pooling and grad_factor 1.0;
* ours-bf16: ours with `autocast = "bf16"` in `[components.bert_encoder.model]`;
* optional (`--arms`): `ours-wN` / `ours-bf16-wN`, ours with `window = N` pieces per window
  (default 510); `ours-w126` gives windows of 128 positions like the peer's, but without overlap.
  `-a0` after any of these: attention dropout 0 (torch's fused attention kernel) instead of 0.1.

The loop is `spacy train`'s own (`spacy.training.loop.train_while_improving`, accumulate_gradient 1):
CoNLL-2003 train articles (converted like `spacy convert -c ner`, read with `spacy.Corpus.v1`)
shuffled with a fixed seed, cut by `spacy.batch_by_words.v1` (size 1000, tolerance 0.2), each
batch sorted by length, then `nlp.update(batch, drop=0.1, sgd=False)` and `finish_update` of every
component, with the Adam.v1 of configs/ner.cfg. Every arm runs in its own process and updates on
the same batches; after warm-up steps the arms take each step one after the other (order
alternating), so each step's ratio to the peer saw the same machine load. Model FLOPs: the
encoder passes each arm ran, forward and backward, plus the NER head's dense layers per token
(flops.py); the limit is torch's matrix-product speed at those shapes (forward and backward) in
the arm's precision, measured by its process.

    python benchmarks/finetuning.py                    # BERT-Mini, 30 steps: ~2 minutes on a busy 2-core box
    python benchmarks/finetuning.py --quick            # 10 steps: about a minute
    python benchmarks/finetuning.py --sizes mini,base  # base: 8 steps, ~10x slower per step
    python benchmarks/finetuning.py --quick --arms ours,peer,ours-bf16,ours-w126,ours-bf16-w126
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from common import (
    SIZES,
    Worker,
    achieved,
    add_run_options,
    arm_limit,
    aten_breakdown,
    checkpoint,
    conll_docbin,
    header,
    log,
    machine,
    markdown_table,
    memory_mib,
    percent,
    pipeline_meter,
    reset_peak_rss,
    serve,
    set_threads,
)
from flops import encoder_flops, head_flops, training_flops

SCRIPT = Path(__file__).resolve()
ARMS = ("ours", "peer", "ours-bf16")
DEFAULT_STEPS = {"mini": 30, "base": 8}
QUICK_STEPS = 10
SEED = 0
DROPOUT = 0.1
# configs/ner.cfg's optimizer, with a constant learning rate (a schedule costs nothing).
OPTIMIZER = dict(
    learn_rate=5e-5,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    L2=0.01,
    L2_is_weight_decay=True,
    grad_clip=1.0,
    use_averages=False,
)
NER_HIDDEN = 64
NER_MODEL = {
    "@architectures": "spacy.TransitionBasedParser.v2",
    "state_type": "ner",
    "extra_state_tokens": False,
    "hidden_width": NER_HIDDEN,
    "maxout_pieces": 2,
    "use_upper": False,
    "nO": None,
}
NER_FEATURES = 3  # state tokens per action for state_type ner
# --profile: nlp.update (every component's forward and backward), then finish_update (Adam)
PHASES = ("nlp.update", "finish_update")


def build(arm: str, size: str, window: int, stride: int):
    import spacy

    nlp = spacy.blank("en")
    if arm == "peer":
        model = {
            "@architectures": "spacy-transformers.TransformerModel.v3",
            "name": str(checkpoint(size)),
            "tokenizer_config": {"use_fast": True},
            "get_spans": {
                "@span_getters": "spacy-transformers.strided_spans.v1",
                "window": window,
                "stride": stride,
            },
        }
        nlp.add_pipe("transformer", config={"model": model})
        listener = {
            "@architectures": "spacy-transformers.TransformerListener.v1",
            "grad_factor": 1.0,
            "pooling": {"@layers": "reduce_mean.v1"},
            "upstream": "*",
        }
    else:
        # "ours", "ours-bf16", with a window of N pieces (default: 510) "ours-wN", "ours-bf16-wN",
        # and without attention dropout "ours-a0" (also "ours-bf16-a0", "ours-w126-a0")
        parts = arm.split("-")[1:]
        windows = [int(part[1:]) for part in parts if part.startswith("w")]
        model = {
            "@architectures": "spacy_bert_plugin.BertEncoder.v1",
            "autocast": "bf16" if "bf16" in parts else None,
            "window": windows[0] if windows else None,
            "attention_dropout": 0.0 if "a0" in parts else 0.1,
        }
        nlp.add_pipe("bert_encoder", config={"checkpoint": str(checkpoint(size)), "model": model})
        listener = {
            "@architectures": "spacy.Tok2VecListener.v1",
            "width": SIZES[size]["hidden_width"],
            "upstream": "bert_encoder",
        }
    ner = {"model": dict(NER_MODEL, tok2vec=listener), "update_with_oracle_cut_size": 100}
    nlp.add_pipe("ner", config=ner)
    return nlp


class ArmWorker:
    """One arm: its pipeline initialized on CoNLL train, the batches cut, warm-up steps taken; then
    times one update step per request."""

    def __init__(self, spec: Dict[str, Any]):
        from spacy.training import Corpus
        from spacy.training.loop import subdivide_batch
        from spacy.util import fix_random_seed, registry
        from thinc.api import Adam

        self.threads = set_threads(spec["threads"])
        self.precision = "bf16" if "bf16" in spec["arm"] else "fp32"
        fix_random_seed(SEED)
        self.nlp = build(spec["arm"], spec["size"], spec["peer_window"], spec["peer_stride"])
        examples = list(Corpus(spec["train"], gold_preproc=False, max_length=0, limit=0)(self.nlp))
        self.nlp.initialize(lambda: examples)
        self.meter = pipeline_meter(self.nlp)
        width = SIZES[spec["size"]]["hidden_width"]
        n_actions = self.nlp.get_pipe("ner").moves.n_moves
        # The parser's per-token layers: a dense map to its hidden width, then the precomputed
        # features of each state token (nF x actions x maxout pieces, without an upper layer).
        self.head = (width, NER_HIDDEN, NER_FEATURES * n_actions * NER_MODEL["maxout_pieces"])
        self.optimizer = Adam(**OPTIMIZER)
        random.Random(SEED).shuffle(examples)
        batcher = registry.batchers.get("spacy.batch_by_words.v1")(
            size=spec["batch_words"], tolerance=0.2, discard_oversize=False
        )
        needed = spec["warmup"] + spec["steps"]
        batches = []
        for batch in batcher(examples):
            batches.append(next(subdivide_batch(batch, 1)))  # what spacy train does: sorted by length
            if len(batches) == needed:
                break
        if len(batches) < needed:
            sys.exit(f"only {len(batches)} batches in CoNLL train: ask for fewer steps")
        self.batches = batches[spec["warmup"] :]
        self.load_rss, self.load_peak = memory_mib()["VmRSS"], memory_mib()["VmHWM"]
        reset_peak_rss()  # from here on, VmHWM is the peak while training (warm-up included)
        for batch in batches[: spec["warmup"]]:
            self.update(batch)
        self.meter.take()

    def update(self, batch: List[Any]) -> Dict[str, float]:
        """One step of spacy.training.loop.train_while_improving (accumulate_gradient = 1)."""
        from torch.profiler import record_function

        losses: Dict[str, float] = {}
        with record_function(PHASES[0]):
            self.nlp.update(batch, drop=DROPOUT, losses=losses, sgd=False)
        with record_function(PHASES[1]):
            for _name, proc in self.nlp.pipeline:
                if getattr(proc, "is_trainable", False) and proc.model not in (True, False, None):
                    proc.finish_update(self.optimizer)
            self.optimizer.step_schedules()
        return losses

    def profile(self) -> Dict[str, Any]:
        """The timed steps under torch.profiler: the two phases and the aten ops in them."""
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for batch in self.batches:
                self.update(batch)
            elapsed = time.perf_counter() - start  # without the profiler's processing at exit
        n = len(self.batches)
        events = prof.key_averages()
        return {
            "step_s": elapsed / n,
            "phases_s": {e.key: e.cpu_time_total / 1e6 / n for e in events if e.key in PHASES},
            **aten_breakdown(events, n),
        }

    def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if request.get("profile"):
            return self.profile()
        if request.get("memory"):
            return {
                "load_rss_mib": self.load_rss,
                "load_peak_mib": self.load_peak,
                "train_peak_mib": memory_mib()["VmHWM"],
                "threads": self.threads,
                "limit_gflops": arm_limit(self.meter, self.precision, training=True, head=self.head),
            }
        batch = self.batches[request["step"]]
        wall, cpu = time.perf_counter(), time.process_time()
        losses = self.update(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        words = sum(len(eg.predicted) for eg in batch)
        forward = encoder_flops(self.meter.config, self.meter.take()) + head_flops(words, self.head)
        return {
            "words": words,
            "wall": wall,
            "cpu": cpu,
            "flops": training_flops(forward),
            "ner_loss": float(losses.get("ner", 0.0)),
        }


def worker_spec(size: str, steps: int, args: argparse.Namespace) -> Dict[str, Any]:
    return dict(
        size=size,
        threads=args.threads,
        peer_window=args.peer_window,
        peer_stride=args.peer_stride,
        train=str(conll_docbin("train")),
        batch_words=args.batch_words,
        warmup=args.warmup,
        steps=steps,
    )


def profile_size(size: str, arms: List[str], steps: int, args: argparse.Namespace) -> str:
    """Each arm's timed steps under torch.profiler, one arm at a time: its phases, and the aten ops
    by group; what is left of nlp.update beside aten ops is spaCy's and thinc's (the NER head)."""
    lines = []
    for arm in arms:
        worker = Worker(SCRIPT, dict(worker_spec(size, steps, args), arm=arm))
        r = worker.ask({"profile": True})
        worker.close()
        step = r["step_s"]
        rows = [[phase, 1e3 * seconds, percent(seconds / step)] for phase, seconds in r["phases_s"].items()]
        rows += [[f"aten: {group}", 1e3 * s, percent(s / step)] for group, s in r["op_groups_s"].items()]
        rows.append(
            [
                "not aten (spaCy, thinc, numpy, Python)",
                1e3 * (step - r["aten_s"]),
                percent(1 - r["aten_s"] / step),
            ]
        )
        lines += ["", f"{size} {arm}: {1e3 * step:.0f} ms/step with the profiler on, {steps} steps", ""]
        lines += [markdown_table(["where", "ms/step", "share"], rows), ""]
        lines.append(
            markdown_table(
                ["top aten op", "calls/step", "ms/step"], [[k, c, 1e3 * v] for k, c, v in r["top_ops"]]
            )
        )
    return "\n".join(lines)


def measure_size(size: str, arms: List[str], steps: int, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """All arms of one size alive side by side; step i is taken by every arm on the same batch,
    one arm after the other (order alternating), so noise hits all arms alike."""
    spec = worker_spec(size, steps, args)
    workers = {}
    for arm in arms:
        start = time.perf_counter()
        workers[arm] = Worker(SCRIPT, dict(spec, arm=arm))
        log(f"{size} {arm}: loaded, initialized and warmed up in {time.perf_counter() - start:.0f} s")
    rounds: List[Dict[str, Any]] = []
    for step in range(steps):
        for arm in arms if step % 2 == 0 else arms[::-1]:
            rounds.append(dict(workers[arm].ask({"step": step}), arm=arm, size=size, step=step))
        line = ", ".join(f"{r['arm']} {r['words'] / r['wall']:,.0f}" for r in rounds[-len(arms) :])
        log(f"{size} step {step} ({rounds[-1]['words']} words): words/s {line}")
    for arm, worker in workers.items():
        rounds.append(dict(worker.ask({"memory": True}), arm=arm, size=size))
        worker.close()
    return rounds


def summarize(rounds: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    memory = {(r["size"], r["arm"]): r for r in rounds if "train_peak_mib" in r}
    timed = [r for r in rounds if "wall" in r]
    rows = []
    for size, arm in dict.fromkeys((r["size"], r["arm"]) for r in timed):
        mine = [r for r in timed if (r["size"], r["arm"]) == (size, arm)]
        peer = {r["step"]: r for r in timed if (r["size"], r["arm"]) == (size, "peer")}
        ratio = {
            clock: statistics.median(peer[r["step"]][clock] / r[clock] for r in mine)
            if peer
            else float("nan")
            for clock in ("wall", "cpu")
        }
        words, wall = sum(r["words"] for r in mine), sum(r["wall"] for r in mine)
        info = memory[size, arm]
        rows.append(
            {
                "size": size,
                "arm": arm,
                "steps": len(mine),
                "words": words,
                "words_per_s": words / wall,
                "ratio_wall": ratio["wall"],
                "ratio_cpu": ratio["cpu"],
                "ner_loss": f"{mine[0]['ner_loss']:,.0f} / {mine[-1]['ner_loss']:,.0f}",
                **achieved(
                    sum(r["flops"] for r in mine), wall, sum(r["cpu"] for r in mine), info["limit_gflops"]
                ),
                **{k: info[k] for k in ("load_rss_mib", "train_peak_mib", "threads", "limit_gflops")},
            }
        )
    return rows


def report(rows: List[Dict[str, Any]], info: Dict[str, str], args: argparse.Namespace) -> str:
    details = (
        f"batch_by_words {args.batch_words}, {args.warmup} warm-up step(s), "
        f"peer strided_spans {args.peer_window}/{args.peer_stride}"
    )
    headers = [
        "size",
        "arm",
        "steps",
        "words",
        "words/s",
        "vs peer (wall)",
        "vs peer (CPU)",
        "GFLOP/s",
        "limit GFLOP/CPU-s",
        "share of limit",
        "NER loss first / last step",
        "RSS after load MiB",
        "train peak MiB",
    ]
    keys = ("size", "arm", "steps", "words", "words_per_s")
    table = markdown_table(
        headers,
        [
            [r[k] for k in keys]
            + [
                f"{r['ratio_wall']:.2f}x",
                f"{r['ratio_cpu']:.2f}x",
                f"{r['gflops']:.1f}",
                f"{r['limit_gflops']:.1f}",
            ]
            + [percent(r["share"]), r["ner_loss"], r["load_rss_mib"], r["train_peak_mib"]]
            for r in rows
        ],
    )
    return f"\n{header(info, rows[0]['threads'], details)}\n\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="mini", help="comma-separated: mini (4x256), base (12x768)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"timed steps per arm (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; --quick 1)")
    parser.add_argument("--batch-words", type=int, default=1000, help="spacy.batch_by_words.v1 size")
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated, from {ARMS}; also ours-wN, ours-bf16-wN, and -a0 (no attention dropout)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_STEPS} timed steps after 1 warm-up step"
    )
    parser.add_argument(
        "--profile", action="store_true", help="where each arm's step goes (torch.profiler), not speed"
    )
    add_run_options(parser, peer_spans=True)
    args = parser.parse_args()
    if args.worker:
        arm = ArmWorker(json.loads(args.worker))
        serve({}, arm.handle)
        return

    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.threads:  # BLAS (the NER head) and torch's OpenMP pool in the workers
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[key] = str(args.threads)
    info = machine()  # the commit measured, before any run
    sizes = args.sizes.split(",")
    for size in sizes:
        checkpoint(size)  # make the cached checkpoints and DocBins before any clock runs
    conll_docbin("train")
    rounds = []
    for size in sizes:
        steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS.get(size, 10))
        if args.profile:
            print(profile_size(size, args.arms.split(","), steps, args))
            continue
        rounds.extend(measure_size(size, args.arms.split(","), steps, args))
    if args.profile:
        return
    print(report(summarize(rounds), info, args))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
