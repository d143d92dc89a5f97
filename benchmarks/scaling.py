"""Scaling benchmark: time and peak RSS of `bert_encoder` against document length and
against corpus size. Time should be linear in the words (a flat time per word once docs fill a
window) and memory bounded by the window and batch, not by the document or corpus.

Each point runs in its own process, so its peak RSS is its own; "pipe peak - load" is what the
measured `nlp.pipe` added on top of the loaded pipeline. Docs are tokenized before the clock starts.
Achieved GFLOP/s: the encoder's model FLOPs (flops.py on its real window lengths) over the time;
the limit is float32 matrix-product speed at those shapes, measured by the same process.

    python benchmarks/scaling.py            # lengths 100 .. 20,000 words, corpora of 100 .. 800 reviews
    python benchmarks/scaling.py --quick
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import spacy
from common import (
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
from spacy.tokens import Doc

SCRIPT = Path(__file__).resolve()
WORDS_PER_LENGTH_POINT = 20_000  # every length point encodes this many words (one or more docs)
CORPUS_BATCH_SIZE = 64


def concatenated_docs(nlp: spacy.Language, length: int, n_docs: int) -> List[Doc]:
    """`n_docs` docs of exactly `length` tokens, cut from consecutive IMDB test reviews."""
    needed, texts, n_tokens = length * n_docs, [], 0
    for text in imdb_texts("test"):
        texts.append(text)
        n_tokens += len(nlp.make_doc(text))
        if n_tokens >= needed:
            break
    whole = nlp.make_doc("\n\n".join(texts))
    if len(whole) < needed:
        sys.exit(f"IMDB test has fewer than {needed} tokens")
    return [whole[i * length : (i + 1) * length].as_doc() for i in range(n_docs)]


def run_point(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Load the pipeline, make the docs, then time one `nlp.pipe` over them (in this process)."""
    threads = set_threads(spec["threads"])
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(checkpoint(spec["size"]))})
    nlp.initialize()
    meter = pipeline_meter(nlp)
    for _ in nlp.pipe(imdb_texts("test", 4)):  # warm up
        pass
    meter.take()
    if spec["kind"] == "length":
        n_docs = max(1, WORDS_PER_LENGTH_POINT // spec["length"])
        docs, batch_size = concatenated_docs(nlp, spec["length"], n_docs), 1
    else:
        docs, batch_size = [nlp.make_doc(t) for t in imdb_texts("test", spec["docs"])], CORPUS_BATCH_SIZE
    words = sum(len(doc) for doc in docs)
    load = memory_mib()["VmRSS"]
    reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in nlp.pipe(drain(docs), batch_size=batch_size):
        pass
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    flops = encoder_flops(meter.config, meter.take())
    return {
        **spec,
        "n_docs": n_docs if spec["kind"] == "length" else spec["docs"],
        "words": words,
        "wall": wall,
        "cpu": cpu,
        "load_mib": load,
        "pipe_peak_mib": memory_mib()["VmHWM"],
        "threads": threads,
        **achieved(flops, wall, cpu, arm_limit(meter, "fp32")),
    }


def table(points: List[Dict[str, Any]], first: str) -> str:
    rows = [
        [
            p["length"] if first == "doc length" else p["docs"],
            p["n_docs"],
            p["words"],
            p["wall"],
            1e6 * p["wall"] / p["words"],
            1e6 * p["cpu"] / p["words"],
            p["load_mib"],
            p["pipe_peak_mib"],
            p["pipe_peak_mib"] - p["load_mib"],
            f"{p['gflops']:.1f} ({percent(p['share'])})",
        ]
        for p in points
    ]
    headers = [
        first,
        "docs",
        "words",
        "seconds",
        "µs/word (wall)",
        "µs/word (CPU)",
        "RSS after load MiB",
        "pipe peak MiB",
        "pipe peak - load MiB",
        "GFLOP/s (share of limit)",
    ]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini", help="mini (4x256) or base (12x768)")
    parser.add_argument(
        "--lengths", default="100,1000,5000,20000", help="doc lengths in words (spaCy tokens)"
    )
    parser.add_argument("--corpus-sizes", default="100,200,400,800", help="numbers of IMDB test reviews")
    parser.add_argument(
        "--quick", action="store_true", help="lengths up to 5,000 words, corpora up to 200 reviews"
    )
    add_run_options(parser)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        serve({}, lambda _request: run_point(spec))
        return

    info = machine()  # the commit measured, before any run
    lengths = [100, 1000, 5000] if args.quick else [int(n) for n in args.lengths.split(",")]
    corpus_sizes = [50, 100, 200] if args.quick else [int(n) for n in args.corpus_sizes.split(",")]
    checkpoint(args.size)  # make the cached checkpoint before any clock runs
    common_spec = {"size": args.size, "threads": args.threads}
    by_length = [run_once(SCRIPT, dict(common_spec, kind="length", length=n), {}) for n in lengths]
    by_corpus = [run_once(SCRIPT, dict(common_spec, kind="corpus", docs=n), {}) for n in corpus_sizes]
    print(f"\n{header(info, by_length[0]['threads'], f'BERT-{args.size}')}\n")
    print(f"Document length (nlp.pipe batch size 1, about {WORDS_PER_LENGTH_POINT:,} words per point):\n")
    print(table(by_length, "doc length"))
    print(f"\nCorpus size (IMDB test reviews, nlp.pipe batch size {CORPUS_BATCH_SIZE}):\n")
    print(table(by_corpus, "reviews"))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "by_length": by_length, "by_corpus": by_corpus}, indent=2)
        )


if __name__ == "__main__":
    main()
