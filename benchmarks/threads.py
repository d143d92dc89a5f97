"""Threads benchmark: pieces/s of `spacy bert-pretrain` with the CPU recipe (configs/pretrain-cpu.cfg)
at each torch thread count, on an idle machine and beside one busy process (a Python loop, as
another job on a shared machine would be).

    python benchmarks/threads.py [--threads 1 2] [--steps 300]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    header,
    imdb_texts,
    log_windows,
    machine,
    markdown_table,
    pretraining_config,
    read_log,
    write_texts,
)

BUSY_LOOP = "while True: pass"


def pieces_per_s(corpus: Path, cache: Path, threads: int, steps: int, out: Path) -> float:
    overrides = {
        "bert_pretraining.max_steps": steps,
        "bert_pretraining.threads": threads,
        "bert_pretraining.cache_dir": str(cache),
        "bert_pretraining.eval_every": 10**9,
        "bert_pretraining.save_every": 10**9,
        "bert_pretraining.eval_batches": 1,
        "bert_pretraining.logger": None,
    }
    config_path = out / "pretrain.cfg"
    out.mkdir(parents=True)
    pretraining_config(corpus, overrides, base="pretrain-cpu.cfg").to_disk(config_path)
    command = [sys.executable, "-m", "spacy", "bert-pretrain", str(config_path), str(out / "run")]
    subprocess.run(command, check=True, capture_output=True)
    windows = log_windows(read_log(out / "run" / "log.jsonl"))[2:]  # the first windows warm up
    return statistics.median(pieces / seconds for pieces, seconds in windows) if windows else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--docs", type=int, default=5000, help="IMDB train reviews in the corpus")
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus = write_texts(imdb_texts("train", args.docs), tmp_path / "imdb.jsonl")
        cache = tmp_path / "cache"
        pieces_per_s(corpus, cache, 1, 1, tmp_path / "warm")  # builds the vocabulary and piece cache
        rows = []
        for load in ("idle", "one busy process"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if load != "idle" else None
            try:
                speeds = {
                    threads: pieces_per_s(corpus, cache, threads, args.steps, tmp_path / f"{load}-{threads}")
                    for threads in args.threads
                }
            finally:
                if busy is not None:
                    busy.kill()
            rows.append([load, *(f"{speeds[t]:,.0f}" for t in args.threads)])
    print(header(info, "/".join(map(str, args.threads)), f"CPU recipe, {args.steps} steps"))
    print()
    print(markdown_table(["machine", *(f"{t} thread{'s' * (t > 1)} (pieces/s)" for t in args.threads)], rows))


if __name__ == "__main__":
    main()
