"""The cost of `quantize = "int8"` on a trained pipeline: the same pipeline loaded in float32 and
with the encoder's nn.Linear layers in dynamic int8, scored by `nlp.evaluate` on .spacy files, with
words/s, the encoder's achieved GFLOP/s and the agreement of the `bert_encoder` vectors.

    python benchmarks/quantization.py                       # the demo project's NER pipeline, WNUT-16 dev + test
    python benchmarks/quantization.py PIPELINE DATA.spacy [DATA.spacy ...] [--rounds 10] [--threads 1]

The int8 pipeline is what `spacy.load(PIPELINE, config={"components": {"bert_encoder": {"model":
{"quantize": "int8"}}}})` gives. Scores do not change between rounds; each round evaluates both
pipelines on the same file, one after the other in alternating order, and the table shows the median
words/s (of the whole pipeline, as `nlp.evaluate` times it: docs are tokenized before the clock)
and the median of the paired per-round ratios int8 / float32. GFLOP/s: the encoder's model FLOPs
(flops.py) over the evaluation's time; the limit is the matrix-product speed at the encoder's
shapes in float32 and through PyTorch's int8 Linear, measured in this process.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy
import spacy
from common import (
    REPO,
    achieved,
    arm_limit,
    header,
    machine,
    markdown_table,
    percent,
    pipeline_meter,
    set_threads,
)
from flops import encoder_flops
from inference import vector_agreement
from spacy.training import Corpus

PROJECT = REPO / "project"
DEFAULT_PIPELINE = PROJECT / "training" / "ner" / "model-best"
DEFAULT_DATA = [PROJECT / "corpus" / "ner" / "dev.spacy", PROJECT / "corpus" / "ner" / "test.spacy"]
INT8 = {"components": {"bert_encoder": {"model": {"quantize": "int8"}}}}
SCORES = ("ents_f", "ents_p", "ents_r", "cats_score", "cats_micro_f")  # those the pipeline reports


def measure(pipelines: Dict[str, Any], data: Path, rounds: int) -> Dict[str, Any]:
    examples = {
        name: list(Corpus(data)(nlp)) for name, (nlp, _) in pipelines.items()
    }  # docs in each one's vocab
    scores, speeds = {}, {name: [] for name in pipelines}
    flops = {name: 0 for name in pipelines}
    clocks = {name: [0.0, 0.0] for name in pipelines}
    for i in range(rounds):
        for name in pipelines if i % 2 == 0 else list(pipelines)[::-1]:
            nlp, meter = pipelines[name]
            wall, cpu = time.perf_counter(), time.process_time()
            result = nlp.evaluate(examples[name])
            clocks[name][0] += time.perf_counter() - wall
            clocks[name][1] += time.process_time() - cpu
            flops[name] += encoder_flops(meter.config, meter.take())
            scores[name] = {key: result[key] for key in SCORES if result.get(key) is not None}
            speeds[name].append(result["speed"])
    texts = [eg.reference.text for eg in examples["fp32"]]
    vectors = [
        numpy.concatenate([doc.tensor for doc in nlp.get_pipe("bert_encoder").pipe(map(nlp.make_doc, texts))])
        for nlp, _ in pipelines.values()
    ]
    return {
        "data": str(data),
        "docs": len(texts),
        "words": sum(len(eg.predicted) for eg in examples["fp32"]),
        "scores": scores,
        "words_per_s": {name: statistics.median(s) for name, s in speeds.items()},
        "ratio": statistics.median(q / f for f, q in zip(speeds["fp32"], speeds["int8"])),
        "vectors": vector_agreement(*vectors),
        "achieved": {
            name: achieved(flops[name], *clocks[name], arm_limit(meter, name))
            for name, (_, meter) in pipelines.items()
        },
    }


def report(results: List[Dict[str, Any]], pipeline: Path, threads: int) -> str:
    keys = [key for key in SCORES if key in results[0]["scores"]["fp32"]]
    rows = []
    for r in results:
        for name in ("fp32", "int8"):
            delta = [r["scores"]["int8"][k] - r["scores"]["fp32"][k] for k in keys] if name == "int8" else []
            cosines = f"{r['vectors']['mean_cosine']:.5f} / {r['vectors']['min_cosine']:.4f}"
            rows.append(
                [Path(r["data"]).name, name, r["docs"], r["words"]]
                + [f"{100 * r['scores'][name][k]:.2f}" for k in keys]
                + [" / ".join(f"{100 * d:+.2f}" for d in delta) or "-", f"{r['words_per_s'][name]:,.0f}"]
                + [f"{r['ratio']:.2f}x" if name == "int8" else "1.00x", cosines if name == "int8" else "-"]
                + [f"{r['achieved'][name]['gflops']:.1f}", percent(r["achieved"][name]["share"])]
            )
    headers = ["data", "encoder", "docs", "words", *keys, "int8 - fp32", "words/s", "vs fp32"]
    headers += ["vector cos mean / min", "encoder GFLOP/s", "share of limit"]
    return f"\n{header(machine(), threads, str(pipeline))}\n\n{markdown_table(headers, rows)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pipeline", nargs="?", type=Path, default=DEFAULT_PIPELINE, help="a trained pipeline folder"
    )
    parser.add_argument(
        "data", nargs="*", type=Path, default=DEFAULT_DATA, help=".spacy files to evaluate on"
    )
    parser.add_argument("--rounds", type=int, default=10, help="timed evaluations per pipeline and file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, 0 for torch's default")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    for path in [args.pipeline, *args.data]:
        if not path.exists():
            sys.exit(
                f"{path} not found: train the demo project's NER pipeline first, or name a pipeline and data"
            )
    pipelines = {}
    for name, config in (("fp32", {}), ("int8", INT8)):
        nlp = spacy.load(args.pipeline, config=config)
        pipelines[name] = (nlp, pipeline_meter(nlp))
    results = [measure(pipelines, data, args.rounds) for data in args.data]
    print(report(results, args.pipeline, threads))


if __name__ == "__main__":
    main()
