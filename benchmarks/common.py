"""Shared helpers for the benchmarks: IMDB text, random-weight BERT checkpoints with a real
vocabulary, one subprocess per measured arm (for a clean peak RSS), and markdown tables.

Checkpoints are plain Hugging Face folders (`transformers.BertForPreTraining.save_pretrained`)
cached under benchmarks/.cache/, so ours and spacy-transformers load exactly the same weights.
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
IMDB_DIR = BENCH_DIR.parent.parent / "shared" / "data" / "imdb"
VOCAB_SIZE = 30522  # BERT's vocabulary size; the pieces are learnt from IMDB train
VOCAB_TRAINING_DOCS = 20_000

# Hugging Face BertConfig keys of the two shapes measured.
SIZES: Dict[str, Dict[str, int]] = {
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def imdb_texts(split: str, limit: Optional[int] = None) -> List[str]:
    """The first `limit` review texts of an IMDB split (train, dev or test)."""
    path = IMDB_DIR / f"{split}.jsonl.gz"
    if not path.exists():
        sys.exit(
            f"IMDB data not found at {path}: the benchmarks need the shared data folder ../shared/data/imdb"
        )
    texts: List[str] = []
    with gzip.open(path, "rt", encoding="utf8") as file:
        for line in file:
            if limit is not None and len(texts) >= limit:
                break
            texts.append(json.loads(line)["text"])
    return texts


def vocab_folder() -> Path:
    """A ~30k-piece WordPiece vocabulary learnt from IMDB train (made once, then cached)."""
    folder = CACHE_DIR / "vocab"
    if not (folder / "vocab.txt").exists():
        from spacy_bert_plugin.pieces import WordPieces

        print(f"training a {VOCAB_SIZE}-piece WordPiece vocabulary on IMDB train ...", file=sys.stderr)
        pieces = WordPieces.train(imdb_texts("train", VOCAB_TRAINING_DOCS), VOCAB_SIZE)
        tmp = _fresh_folder(CACHE_DIR / ".vocab.tmp")
        pieces.to_disk(tmp)
        os.replace(tmp, folder)
    return folder


def checkpoint(size: str) -> Path:
    """A random-weight HF `BertForPreTraining` folder of the given shape (made once, then cached)."""
    folder = CACHE_DIR / f"bert-{size}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import BertConfig, BertForPreTraining, BertTokenizerFast

    vocab_file = vocab_folder() / "vocab.txt"
    n_pieces = len(vocab_file.read_text(encoding="utf8").splitlines())
    print(f"writing a random-weight BERT-{size} checkpoint to {folder} ...", file=sys.stderr)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=n_pieces, **SIZES[size])).eval()
    tmp = _fresh_folder(CACHE_DIR / f".bert-{size}.tmp")
    model.save_pretrained(tmp)
    BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=512).save_pretrained(
        tmp
    )
    os.replace(tmp, folder)
    return folder


def _fresh_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# Each measured arm lives in its own process (`script --worker SPEC`), so its peak RSS is its own.
# The driver sends it JSON requests on stdin, one per line, and reads one JSON reply per request;
# several workers stay alive side by side, so the driver can interleave their timed rounds.
REPLY_MARK = "@@bench "  # libraries may print to stdout too; replies carry this prefix


class Worker:
    def __init__(self, script: Path, spec: Dict[str, Any]):
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._reply()  # the worker answers once it has loaded

    def ask(self, request: Dict[str, Any]) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()

    def _reply(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY_MARK):
                return json.loads(line[len(REPLY_MARK) :])
        sys.exit(f"benchmark worker {self.spec} died (exit status {self.proc.wait()})")


def serve(ready: Dict[str, Any], handle: Callable[[Dict[str, Any]], Dict[str, Any]]) -> None:
    """The worker side, once loaded: announce `ready`, then answer each request line with `handle`."""
    print(REPLY_MARK + json.dumps(ready), flush=True)
    for line in sys.stdin:
        print(REPLY_MARK + json.dumps(handle(json.loads(line))), flush=True)


def run_once(script: Path, spec: Dict[str, Any], request: Dict[str, Any]) -> Dict[str, Any]:
    """A fresh worker process for a single request."""
    worker = Worker(script, spec)
    try:
        return worker.ask(request)
    finally:
        worker.close()


def memory_mib() -> Dict[str, float]:
    """This process's current (VmRSS) and peak (VmHWM) resident memory, in MiB."""
    values = {}
    with open("/proc/self/status") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux), so a later peak covers what follows only."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def add_run_options(parser: argparse.ArgumentParser, peer_spans: bool = False) -> None:
    """The options the arm-per-process benchmarks share: --threads, --json, the hidden --worker, and
    with `peer_spans` the peer's strided_spans window and stride."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per arm, 0 for torch's default "
        "(1 keeps a shared machine's noise out of the measurements)",
    )
    if peer_spans:
        parser.add_argument(
            "--peer-window", type=int, default=128, help="peer strided_spans window (its default)"
        )
        parser.add_argument(
            "--peer-stride", type=int, default=96, help="peer strided_spans stride (its default)"
        )
    parser.add_argument("--json", type=Path, help="also write all measurements to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def machine() -> Dict[str, str]:
    """Date, commit and CPU, for the results table."""
    import datetime

    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=BENCH_DIR).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "../spacy_bert_plugin"):
        commit += " (package code modified)"
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": f"{model}, {os.cpu_count()} cores",
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def drain(items: List[Any]) -> Iterator[Any]:
    """Yield the items while dropping the list's references, so that what a pipeline attaches
    to each processed Doc is freed once the consumer moves on (streaming, as in real use)."""
    items.reverse()
    while items:
        yield items.pop()
