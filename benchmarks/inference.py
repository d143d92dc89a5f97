"""Inference benchmark: words/s and achieved GFLOP/s of `nlp.pipe` over IMDB test reviews,
`bert_encoder` vs spacy-transformers' `transformer` with the same Hugging Face BERT weights.

Both arms produce one vector per token in `doc.tensor`: ours mean-pools word pieces itself; the
peer gets spacy-transformers' own alignment + mean pooling (what `TransformerListener` with
`reduce_mean` computes) as its `set_extra_annotations`. Docs are tokenized by spaCy before the
clock starts, so the timings cover the encoder component only. Every arm runs in its own process
(for a clean peak RSS); the driver interleaves them round by round on the same reviews and reports
the median of the per-round ratios to the peer, so machine noise hits all arms alike. Model FLOPs
are those of the encoder passes each arm ran (flops.py on their real window lengths, the peer's
overlapping spans included); the limit is torch's matrix-product speed at those shapes, measured
by each arm's process in its precision (float32, bf16, or int8 for the dense products).

    python benchmarks/inference.py            # about 10 minutes on 2 busy cores
    python benchmarks/inference.py --quick    # BERT-Mini, 40 reviews per arm: about 2 minutes
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy
import spacy
from common import (
    Worker,
    achieved,
    add_run_options,
    arm_limit,
    checkpoint,
    drain,
    header,
    imdb_texts,
    machine,
    markdown_table,
    memory_mib,
    percent,
    pipeline_meter,
    reset_peak_rss,
    run_once,
    serve,
    set_threads,
)
from flops import encoder_flops
from spacy.language import Language
from spacy.tokens import Doc

SCRIPT = Path(__file__).resolve()
ARMS = ("ours", "peer", "ours-bf16", "ours-int8")
# Our arms' [components.bert_encoder.model] settings, and the precision of their products.
OUR_SETTINGS: Dict[str, Dict[str, str]] = {
    "ours": {},
    "ours-bf16": {"autocast": "bf16"},
    "ours-int8": {"quantize": "int8"},
}
PRECISIONS = {"ours": "fp32", "peer": "fp32", "ours-bf16": "bf16", "ours-int8": "int8"}
# Reviews per arm, by model size and batch size (batch size 1 is slower, so fewer docs).
DEFAULT_DOCS = {("mini", 1): 100, ("mini", 64): 400, ("base", 1): 24, ("base", 64): 64}
QUICK_DOCS = 40
# Reviews for the vector checks: (bf16 and int8 vs fp32, ours vs peer on short reviews), by model size.
CHECK_DOCS = {"mini": (100, 100), "base": (32, 50)}
WARMUP_DOCS = 8
SHORT_WORDS = 100  # "short" reviews fit in one window for both: the vectors must agree there
MEAN_POOL_SETTER = "benchmarks.trf_mean_pool.v1"


def ours_pipeline(size: str, settings: Optional[Dict[str, str]] = None) -> Language:
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy_bert_plugin.BertEncoder.v1", **(settings or {})}
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(checkpoint(size)), "model": model})
    nlp.initialize()
    return nlp


def peer_pipeline(size: str, spans: Dict[str, Any]) -> Language:
    """spacy-transformers' `transformer` over the same HF folder; `spans` is its span getter."""
    from spacy_transformers.util import registry

    registry.annotation_setters.register(MEAN_POOL_SETTER, func=make_mean_pool_setter)
    nlp = spacy.blank("en")
    model = {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(checkpoint(size)),
        "tokenizer_config": {"use_fast": True},
        "get_spans": spans,
    }
    setter = {"@annotation_setters": MEAN_POOL_SETTER}
    nlp.add_pipe("transformer", config={"model": model, "set_extra_annotations": setter})
    nlp.initialize()
    return nlp


def make_mean_pool_setter() -> Callable[[List[Doc], Any], None]:
    """Write the mean of each token's aligned word-piece vectors (across overlapping spans) to
    doc.tensor, exactly as spacy-transformers' listener pooling does."""
    from spacy_transformers.align import apply_alignment
    from thinc.api import get_current_ops

    ops = get_current_ops()

    def set_tensors(docs: List[Doc], _batch: Any) -> None:
        for doc in docs:
            trf = doc._.trf_data
            hidden = trf.model_output.last_hidden_state.reshape(-1, trf.width)
            aligned, _ = apply_alignment(ops, trf.align, hidden)
            doc.tensor = ops.reduce_mean(aligned.dataXd, aligned.lengths)

    return set_tensors


def strided_spans(window: int, stride: int) -> Dict[str, Any]:
    return {"@span_getters": "spacy-transformers.strided_spans.v1", "window": window, "stride": stride}


class ArmWorker:
    """One arm, loaded once; times `nlp.pipe` over the slices of IMDB test the driver asks for."""

    def __init__(self, spec: Dict[str, Any]):
        self.threads = set_threads(spec["threads"])
        self.arm = spec["arm"]
        if self.arm == "peer":
            self.nlp = peer_pipeline(spec["size"], strided_spans(spec["peer_window"], spec["peer_stride"]))
        else:
            self.nlp = ours_pipeline(spec["size"], OUR_SETTINGS[self.arm])
        self.meter = pipeline_meter(self.nlp)
        self.texts = imdb_texts("test", spec["n_docs"])
        for _ in self.nlp.pipe(self.texts[:WARMUP_DOCS]):
            pass
        self.meter.take()
        self.load_rss, self.load_peak = memory_mib()["VmRSS"], memory_mib()["VmHWM"]
        reset_peak_rss()  # from here on, VmHWM is the peak while the timed rounds run

    def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if request.get("memory"):
            return {
                "load_rss_mib": self.load_rss,
                "load_peak_mib": self.load_peak,
                "pipe_peak_mib": memory_mib()["VmHWM"],
                "threads": self.threads,
                "limit_gflops": arm_limit(self.meter, PRECISIONS[self.arm]),
            }
        docs = [self.nlp.make_doc(text) for text in self.texts[request["start"] : request["end"]]]
        words = sum(len(doc) for doc in docs)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in self.nlp.pipe(drain(docs), batch_size=request["batch_size"]):
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {
            "words": words,
            "wall": wall,
            "cpu": cpu,
            "flops": encoder_flops(self.meter.config, self.meter.take()),
        }


def compare(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Vectors: ours vs the peer on short reviews (one window each, the whole doc as the peer's
    span), and ours in bf16 and in int8 vs fp32 on the benchmark's first reviews."""
    set_threads(spec["threads"])
    size = spec["size"]
    ours = ours_pipeline(size)
    pieces = ours.get_pipe("bert_encoder").model.attrs["pieces"]
    peer = peer_pipeline(size, {"@span_getters": "spacy-transformers.doc_spans.v1"})
    short = [t for t in imdb_texts("test", spec["scan_docs"]) if len(t.split()) < SHORT_WORDS][
        : spec["n_short"]
    ]
    agree, n_same_pieces = [], 0
    for ours_doc, peer_doc in zip(ours.pipe(short), peer.pipe(short)):
        trf = peer_doc._.trf_data
        peer_ids = trf.wordpieces.input_ids[0, 1 : trf.wordpieces.lengths[0] - 1]
        our_ids = pieces.encode_words([[token.text for token in ours_doc]])[0][0]
        if numpy.array_equal(peer_ids, our_ids):  # spaCy and HF split words alike ("don't" differs)
            n_same_pieces += 1
            agree.append(float(numpy.abs(ours_doc.tensor - peer_doc.tensor).max()))
    texts = imdb_texts("test", spec["n_docs"])
    fp32 = numpy.concatenate([doc.tensor for doc in ours.pipe(texts)])
    result = {
        **spec,
        "short_docs": len(short),
        "same_pieces": n_same_pieces,
        "max_abs_vs_peer": max(agree, default=float("nan")),
    }
    for arm in ("ours-bf16", "ours-int8"):
        other = numpy.concatenate([doc.tensor for doc in ours_pipeline(size, OUR_SETTINGS[arm]).pipe(texts)])
        name = arm.split("-")[1]
        result.update({f"{name}_{key}": value for key, value in vector_agreement(fp32, other).items()})
    return result


def vector_agreement(fp32: numpy.ndarray, other: numpy.ndarray) -> Dict[str, float]:
    """Max abs difference and min / mean cosine of two runs' token vectors (rows); tokens without
    pieces (zero vectors) are left out of the cosines."""
    norms = numpy.linalg.norm(fp32, axis=1) * numpy.linalg.norm(other, axis=1)
    cosine = (fp32 * other).sum(axis=1)[norms > 0] / norms[norms > 0]
    return {
        "max_abs": float(numpy.abs(fp32 - other).max()),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


def measure_size(
    size: str, arms: List[str], batch_sizes: List[int], args: argparse.Namespace
) -> List[Dict[str, Any]]:
    """All arms of one size alive side by side; each round gives every arm the same slice of
    reviews, one arm after the other (order alternating), so noise hits all arms alike."""
    n_docs = {
        b: args.n_docs or (QUICK_DOCS if args.quick else DEFAULT_DOCS.get((size, b), 100))
        for b in batch_sizes
    }
    base = dict(
        size=size,
        threads=args.threads,
        peer_window=args.peer_window,
        peer_stride=args.peer_stride,
        n_docs=max(n_docs.values()),
    )
    workers = {arm: Worker(SCRIPT, dict(base, arm=arm)) for arm in arms}
    rounds: List[Dict[str, Any]] = []
    for batch_size in batch_sizes:
        n_rounds = max(1, min(args.rounds, n_docs[batch_size] // batch_size))  # a round fills a batch
        bounds = numpy.linspace(0, n_docs[batch_size], n_rounds + 1).astype(int)
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            for arm in arms if i % 2 == 0 else arms[::-1]:
                timing = workers[arm].ask({"start": int(start), "end": int(end), "batch_size": batch_size})
                rounds.append(dict(timing, arm=arm, size=size, batch_size=batch_size, round=i))
            line = ", ".join(f"{r['arm']} {r['words'] / r['wall']:,.0f}" for r in rounds[-len(arms) :])
            print(f"{size} batch {batch_size} round {i}: words/s {line}", file=sys.stderr, flush=True)
    for arm, worker in workers.items():
        rounds.append(dict(worker.ask({"memory": True}), arm=arm, size=size))
        worker.close()
    return rounds


def summarize(rounds: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per size, batch size and arm: words/s and GFLOP/s over all rounds, and the median over
    rounds of the paired ratio to the peer (wall clock and CPU time)."""
    memory = {(r["size"], r["arm"]): r for r in rounds if "pipe_peak_mib" in r}
    timed = [r for r in rounds if "wall" in r]
    rows = []
    for size, batch_size, arm in dict.fromkeys((r["size"], r["batch_size"], r["arm"]) for r in timed):
        key = (size, batch_size)
        mine = [r for r in timed if (r["size"], r["batch_size"], r["arm"]) == (*key, arm)]
        peer = {r["round"]: r for r in timed if (r["size"], r["batch_size"], r["arm"]) == (*key, "peer")}
        ratio = {
            clock: statistics.median(peer[r["round"]][clock] / r[clock] for r in mine)
            if peer
            else float("nan")
            for clock in ("wall", "cpu")
        }
        words, wall = sum(r["words"] for r in mine), sum(r["wall"] for r in mine)
        info = memory[size, arm]
        rows.append(
            {
                "size": size,
                "batch_size": batch_size,
                "arm": arm,
                "words": words,
                "words_per_s": words / wall,
                "ratio_wall": ratio["wall"],
                "ratio_cpu": ratio["cpu"],
                **achieved(
                    sum(r["flops"] for r in mine), wall, sum(r["cpu"] for r in mine), info["limit_gflops"]
                ),
                **{
                    k: info[k]
                    for k in ("load_rss_mib", "load_peak_mib", "pipe_peak_mib", "threads", "limit_gflops")
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="mini,base", help="comma-separated: mini (4x256), base (12x768)")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated nlp.pipe batch sizes")
    parser.add_argument(
        "--n-docs", type=int, default=None, help="reviews per arm and batch size (default: by size)"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds (at most one per batch of reviews)"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {ARMS}")
    parser.add_argument("--quick", action="store_true", help=f"mini only, {QUICK_DOCS} reviews per arm")
    add_run_options(parser, peer_spans=True)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("task") == "compare":
            serve({}, lambda _request: compare(spec))
        else:
            arm = ArmWorker(spec)
            serve({}, arm.handle)
        return

    info = machine()  # the commit measured, before any run
    sizes = ["mini"] if args.quick and args.sizes == "mini,base" else args.sizes.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for size in sizes:
        checkpoint(size)  # make the cached checkpoints before any clock runs
    rounds = [r for size in sizes for r in measure_size(size, args.arms.split(","), batch_sizes, args)]
    checks = []
    for size in sizes:
        n_docs, n_short = (QUICK_DOCS, QUICK_DOCS) if args.quick else CHECK_DOCS[size]
        spec = dict(
            task="compare", size=size, n_docs=n_docs, n_short=n_short, scan_docs=3000, threads=args.threads
        )
        checks.append(run_once(SCRIPT, spec))
    print(report(summarize(rounds), checks, info))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rounds": rounds, "checks": checks}, indent=2))


def report(rows: List[Dict[str, Any]], checks: List[Dict[str, Any]], info: Dict[str, str]) -> str:
    speed = markdown_table(
        [
            "size",
            "batch",
            "arm",
            "words",
            "words/s",
            "vs peer (wall)",
            "vs peer (CPU)",
            "GFLOP/s",
            "limit GFLOP/CPU-s",
            "share of limit",
            "RSS after load MiB",
            "pipe peak MiB",
        ],
        [
            [
                r["size"],
                r["batch_size"],
                r["arm"],
                r["words"],
                r["words_per_s"],
                f"{r['ratio_wall']:.2f}x",
                f"{r['ratio_cpu']:.2f}x",
                f"{r['gflops']:.1f}",
                f"{r['limit_gflops']:.1f}",
                percent(r["share"]),
                r["load_rss_mib"],
                r["pipe_peak_mib"],
            ]
            for r in rows
        ],
    )
    names = ("bf16", "int8")
    vectors = markdown_table(
        ["size", "short docs", "same pieces", "max abs vs peer"]
        + [f"{name} {what}" for name in names for what in ("max abs", "min cos", "mean cos")],
        [
            [c["size"], c["short_docs"], c["same_pieces"], f"{c['max_abs_vs_peer']:.2e}"]
            + [
                cell
                for name in names
                for cell in (
                    f"{c[f'{name}_max_abs']:.2e}",
                    f"{c[f'{name}_min_cosine']:.6f}",
                    f"{c[f'{name}_mean_cosine']:.7f}",
                )
            ]
            for c in checks
        ],
    )
    return f"\n{header(info, rows[0]['threads'])}\n\n{speed}\n\n{vectors}"


if __name__ == "__main__":
    main()
