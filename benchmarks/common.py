"""The benchmarks' shared harness: data, model sizes, random-weight checkpoints, pretraining configs,
log.jsonl reading, one subprocess per measured arm, model FLOPs and the matrix-product limit they
are compared with, the machine header and markdown tables.

Checkpoints are plain Hugging Face folders (`transformers.BertForPreTraining.save_pretrained`)
cached under benchmarks/.cache/, so ours and the peers load exactly the same weights.
"""

import argparse
import datetime
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # the package from this checkout, also where it is not installed
from spacy_bert_plugin.bert.config import BertConfig  # noqa: E402

CONFIGS = REPO / "configs"
CACHE_DIR = BENCH_DIR / ".cache"
SHARED_DATA = REPO.parent / "shared" / "data"
IMDB_DIR = SHARED_DATA / "imdb"
CONLL_DIR = SHARED_DATA / "conll2003"
VOCAB_SIZE = 30522  # BERT's vocabulary size; the pieces are learnt from IMDB train
VOCAB_TRAINING_DOCS = 20_000

# [components.bert_encoder.model] shapes: BERT-Tiny, BERT-Mini and BERT-base.
SIZES: Dict[str, Dict[str, int]] = {
    "tiny": dict(hidden_width=128, num_layers=2, num_heads=2, intermediate_width=512),
    "mini": dict(hidden_width=256, num_layers=4, num_heads=4, intermediate_width=1024),
    "base": dict(hidden_width=768, num_layers=12, num_heads=12, intermediate_width=3072),
}


# ---- data and checkpoints ------------------------------------------------------------------------


def require(path: Path, what: str) -> Path:
    if not path.exists():
        sys.exit(f"{path} not found: {what} needs the shared data folder {SHARED_DATA}")
    return path


def read_jsonl(path: Path, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """The first `limit` records of a .jsonl or .jsonl.gz file."""
    records: List[Dict[str, Any]] = []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf8") as file:
        for line in file:
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                records.append(json.loads(line))
    return records


def imdb_texts(split: str, limit: Optional[int] = None) -> List[str]:
    """The first `limit` review texts of an IMDB split (train, dev or test)."""
    path = require(IMDB_DIR / f"{split}.jsonl.gz", "this benchmark")
    return [record["text"] for record in read_jsonl(path, limit)]


def write_texts(texts: Sequence[str], path: Path) -> Path:
    """A pretraining corpus: one {"text": ...} per line, written once (its size and mtime key the
    pretraining caches)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf8")
        tmp.replace(path)
    return path


def conll_docbin(split: str) -> Path:
    """CoNLL-2003 `split` as a DocBin, one Doc per -DOCSTART- article, as `spacy convert SPLIT.iob
    OUT -c ner` writes it (converted once, then cached)."""
    path = CACHE_DIR / "conll" / f"{split}.spacy"
    if not path.exists():
        from spacy.tokens import DocBin
        from spacy.training.converters import conll_ner_to_docs

        text = require(CONLL_DIR / f"{split}.iob", "this benchmark").read_text(encoding="utf8")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        DocBin(docs=conll_ner_to_docs(text, n_sents=1, no_print=True), store_user_data=False).to_disk(tmp)
        os.replace(tmp, path)
    return path


def vocab_folder() -> Path:
    """A ~30k-piece WordPiece vocabulary learnt from IMDB train (made once, then cached)."""
    folder = CACHE_DIR / "vocab"
    if not (folder / "vocab.txt").exists():
        from spacy_bert_plugin.pieces import WordPieces

        log(f"training a {VOCAB_SIZE}-piece WordPiece vocabulary on IMDB train ...")
        pieces = WordPieces.train(imdb_texts("train", VOCAB_TRAINING_DOCS), VOCAB_SIZE)
        tmp = _fresh_folder(CACHE_DIR / ".vocab.tmp")
        pieces.to_disk(tmp)
        os.replace(tmp, folder)
    return folder


def checkpoint(size: str) -> Path:
    """A random-weight HF `BertForPreTraining` folder of the given size (made once, then cached)."""
    folder = CACHE_DIR / f"bert-{size}"
    if (folder / "config.json").exists():
        return folder
    import torch
    import transformers

    vocab_file = vocab_folder() / "vocab.txt"
    n_pieces = len(vocab_file.read_text(encoding="utf8").splitlines())
    log(f"writing a random-weight BERT-{size} checkpoint to {folder} ...")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**BertConfig(vocab_size=n_pieces, **SIZES[size]).to_hf())
    model = transformers.BertForPreTraining(hf_config).eval()
    tmp = _fresh_folder(CACHE_DIR / f".bert-{size}.tmp")
    model.save_pretrained(tmp)
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def _fresh_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---- pretraining configs and logs ---------------------------------------------------------------


def pretraining_config(
    corpus: Path,
    overrides: Dict[str, Any],
    shape: Optional[Dict[str, int]] = None,
    base: str = "pretrain.cfg",
):
    """configs/`base` with the corpus, an encoder shape and dotted-key overrides, as
    `spacy bert-pretrain BASE OUT --paths.raw_text CORPUS --key value ...` would read it."""
    from spacy import util

    flat = {"paths.raw_text": str(corpus), **overrides}
    flat.update({f"components.bert_encoder.model.{key}": value for key, value in (shape or {}).items()})
    return util.load_config(CONFIGS / base, overrides=flat, interpolate=False)


# Overrides for timed runs: evaluation and saving only after the last step, outside the clock.
TIMED_RUN = {
    "bert_pretraining.eval_every": 10**9,
    "bert_pretraining.save_every": 10**9,
    "bert_pretraining.eval_batches": 1,
}


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The records of a `spacy bert-pretrain` log.jsonl, in order."""
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def log_windows(records: List[Dict[str, Any]]) -> List[Tuple[int, float]]:
    """(pieces, seconds) of each logged training window (`tokens` is cumulative; evaluation and
    saving are outside `tokens_per_s`)."""
    windows, previous = [], 0
    for record in records:
        if "tokens_per_s" in record:
            windows.append(
                (record["tokens"] - previous, (record["tokens"] - previous) / record["tokens_per_s"])
            )
            previous = record["tokens"]
    return windows


# ---- arms in subprocesses -----------------------------------------------------------------------

# Each measured arm lives in its own process (`script --worker SPEC`), so its peak RSS is its own.
# The driver sends it JSON requests on stdin, one per line, and reads one JSON reply per request;
# several workers stay alive side by side, so the driver can interleave their timed rounds.
REPLY_MARK = "@@bench "  # libraries may print to stdout too; replies carry this prefix


class Worker:
    def __init__(self, script: Path, spec: Dict[str, Any], env: Optional[Dict[str, str]] = None):
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
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


def run_once(script: Path, spec: Dict[str, Any], request: Optional[Dict[str, Any]] = None, **kwargs) -> Dict:
    """A fresh worker process for a single request."""
    worker = Worker(script, spec, **kwargs)
    try:
        return worker.ask(request or {})
    finally:
        worker.close()


def register_plugin() -> None:
    """The package's spaCy registrations where it runs from PYTHONPATH without its installed entry
    points (the GPU machine): the factory registers on import, the rest as setup.cfg lists them."""
    import configparser
    import importlib

    from spacy.util import registry

    import spacy_bert_plugin.pipeline  # noqa: F401
    import spacy_bert_plugin.pretraining.settings  # noqa: F401  (creates registry.bert_objectives)

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    for group, table in (("spacy_architectures", registry.architectures), ("spacy_bert_objectives", None)):
        table = table or registry.bert_objectives
        for line in setup["options.entry_points"][group].strip().splitlines():
            name, target = (part.strip() for part in line.split("="))
            module, function = target.split(":")
            if name not in table:
                table.register(name, func=getattr(importlib.import_module(module), function))


def set_threads(threads: int) -> int:
    """torch's threads (0: its default); returns the number in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


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
        help="torch threads per arm, 0 for torch's default (1 keeps a shared machine's noise out)",
    )
    if peer_spans:
        parser.add_argument("--peer-window", type=int, default=128, help="peer strided_spans window")
        parser.add_argument("--peer-stride", type=int, default=96, help="peer strided_spans stride")
    parser.add_argument("--json", type=Path, help="also write all measurements to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def drain(items: List[Any]) -> Iterator[Any]:
    """Yield the items while dropping the list's references, so that what a pipeline attaches
    to each processed Doc is freed once the consumer moves on (streaming, as in real use)."""
    items.reverse()
    while items:
        yield items.pop()


# ---- model FLOPs --------------------------------------------------------------------------------


class EncoderMeter:
    """Records the real sequence lengths of every forward pass of a BERT encoder module (ours, or
    a Hugging Face `BertModel`) through a forward pre-hook, for `flops.py` and the limit's shapes."""

    def __init__(self, module, config: BertConfig):
        self.config = config
        self.lengths: List[int] = []  # since the last take
        self.pieces = self.sequences = self.calls = 0  # all along
        module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = next(
            (kwargs[key] for key in ("padding_mask", "attention_mask") if kwargs.get(key) is not None),
            args[1] if len(args) > 1 else None,
        )
        lengths = mask.sum(1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
        self.lengths.extend(lengths)
        self.pieces += sum(lengths)
        self.sequences += len(lengths)
        self.calls += 1

    def take(self) -> List[int]:
        """The sequence lengths recorded since the last take."""
        lengths, self.lengths = self.lengths, []
        return lengths

    def shape(self) -> Dict[str, float]:
        """Mean pieces per forward pass and mean sequence length, for `model_gemms`."""
        return {"rows": self.pieces / max(1, self.calls), "length": self.pieces / max(1, self.sequences)}


def pipeline_meter(nlp) -> EncoderMeter:
    """An EncoderMeter on a pipeline's torch encoder: ours, or the Hugging Face `BertModel` inside
    spacy-transformers' `transformer`."""
    for _name, pipe in nlp.pipeline:
        for node in pipe.model.walk() if hasattr(pipe, "model") else ():
            for shim in node.shims:
                for module in shim._model.modules():
                    if type(module).__name__ in ("BertEncoder", "BertModel"):
                        config = module.config
                        if not isinstance(config, BertConfig):
                            config = BertConfig.from_hf(config.to_dict())
                        return EncoderMeter(module, config)
    raise ValueError(f"no BERT encoder in the pipeline {nlp.pipe_names}")


def achieved(flops: float, wall_s: float, cpu_s: float, limit: float) -> Dict[str, float]:
    """GFLOP/s by the wall clock, and the share of the limit by CPU time (see `matmul_limit`)."""
    return {"gflops": flops / wall_s / 1e9, "share": flops / cpu_s / 1e9 / limit}


# ---- the matrix-product limit -------------------------------------------------------------------

# (batch, m, k, n, count): `count` products of a (batch, m, k) and a (batch, k, n) tensor.
Gemm = Tuple[int, int, int, int, int]
LIMIT_ROWS = 2048  # product rows at most: the speed per FLOP is flat beyond


def model_gemms(
    config: BertConfig,
    rows: float,
    length: float,
    n_masked: float = 0,
    training: bool = False,
    head: Sequence[int] = (),
) -> List[Gemm]:
    """The matrix products of one encoder forward pass over `rows` pieces in sequences of
    `length` (with the masked-LM head at `n_masked` pieces, a fine-tuning head of dense `head`
    widths), with their backward products for `training`. Rows are capped at LIMIT_ROWS."""
    h, i, heads = config.hidden_width, config.intermediate_width, config.num_heads
    layers = config.num_layers
    rows, length = max(1, min(int(rows), LIMIT_ROWS)), max(1, min(int(length), int(rows), LIMIT_ROWS))
    sequences = max(1, rows // length)
    dense = [(rows, h, 3 * h, layers), (rows, h, h, layers), (rows, h, i, layers), (rows, i, h, layers)]
    if n_masked:
        masked = max(1, min(int(n_masked), LIMIT_ROWS))
        dense += [(masked, h, h, 1), (masked, h, config.vocab_size, 1)]
    dense += [(rows, n_in, n_out, 1) for n_in, n_out in zip(head, head[1:])]
    gemms = [(1, m, k, n, count) for m, k, n, count in dense]
    d = h // heads
    attention = [
        (sequences * heads, length, d, length, layers),
        (sequences * heads, length, length, d, layers),
    ]
    gemms += attention
    if training:  # input gradients (m, n) @ (n, k) and weight gradients (k, m) @ (m, n)
        gemms += [(b, m, n, k, c) for b, m, k, n, c in gemms] + [(b, k, m, n, c) for b, m, k, n, c in gemms]
    return gemms


def matmul_limit(gemms: List[Gemm], precision: str, device: str = "cpu") -> float:
    """GFLOP/s of torch's matrix products at the model's shapes, in this process (its threads):
    total FLOPs over the total of each product's best time. On a CPU the time is CPU time (all
    threads), as arms' shares are: with one thread, the time a shared machine keeps it waiting
    for a core counts in neither. `precision` is fp32, bf16 (products in bfloat16) or int8 (dense
    products through PyTorch's dynamic int8 Linear, as `quantize = "int8"` runs them; attention
    products stay float32)."""
    import torch

    total_flops = total_s = 0.0
    for batch, m, k, n, count in gemms:
        run = _product(batch, m, k, n, precision, torch.device(device))
        total_flops += count * 2 * batch * m * k * n
        total_s += count * _best_time(run, device)
    return total_flops / total_s / 1e9


def _product(batch: int, m: int, k: int, n: int, precision: str, device) -> Callable[[], Any]:
    import torch

    if precision == "int8" and batch == 1:
        from spacy_bert_plugin.layers.bert_encoder import quantize_int8

        layer, x = quantize_int8(torch.nn.Sequential(torch.nn.Linear(k, n))), torch.randn(m, k)
        return lambda: layer(x)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(batch, m, k, device=device, dtype=dtype)
    b = torch.randn(batch, k, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a[0], b[0])) if batch == 1 else (lambda: torch.bmm(a, b))


def _best_time(run: Callable[[], Any], device: str, min_s: float = 0.05, max_repeats: int = 5) -> float:
    import torch

    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    run()
    best, spent, repeats = float("inf"), 0.0, 0
    while repeats < max_repeats and (spent < min_s or repeats < 2):
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        run()
        if cuda:
            torch.cuda.synchronize()
        seconds = clock() - start
        best, spent, repeats = min(best, seconds), spent + seconds, repeats + 1
    return best


def arm_limit(meter: EncoderMeter, precision: str, training: bool = False, head: Sequence[int] = ()) -> float:
    """The limit of an arm at the shapes its encoder ran (`meter`), in the precision it runs."""
    gemms = model_gemms(meter.config, **meter.shape(), training=training, head=head)
    return matmul_limit(gemms, effective_precision(precision))


def effective_precision(precision: str) -> str:
    """What a CPU arm's products run in: bf16 autocast runs float32 on a CPU without bf16
    instructions (bert.precision); fp32 and int8 as asked."""
    if precision != "bf16":
        return precision
    from spacy_bert_plugin.bert.precision import cpu_computes_natively

    return "bf16" if cpu_computes_natively("bf16") else "fp32"


# ---- machine and tables -------------------------------------------------------------------------


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as file:
            return set(next(line for line in file if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def machine() -> Dict[str, str]:
    """Date, commit, CPU model, its bf16 instructions and the load, for the header."""
    model = "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "spacy_bert_plugin", "benchmarks"):
        commit += " (with uncommitted changes)"
    flags = cpu_flags()
    bf16 = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in BF16_FLAGS.items())
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "cpu": f"{model}, {os.cpu_count()} cores",
        "bf16": bf16,
        "load": f"load average {os.getloadavg()[0]:.1f}",
    }


BF16_FLAGS = {"AVX512-BF16": "avx512_bf16", "AMX-BF16": "amx_bf16"}


def header(info: Dict[str, str], threads: Any, *details: str) -> str:
    parts = [info["date"], f"commit {info['commit']}", info["cpu"], info["bf16"], f"torch threads {threads}"]
    return "; ".join([*parts, info["load"], *details])


# A task head's tok2vec block that reads the bert_encoder listener alone, whatever the configs ship.
LISTENER = {
    "@architectures": "spacy.Tok2VecListener.v1",
    "width": "${components.bert_encoder.model.hidden_width}",
    "upstream": "bert_encoder",
}


# aten ops grouped by what the time goes to (self CPU time; the first matching group wins).
OP_GROUPS = {
    "matmul": ("addmm", "aten::mm", "bmm", "matmul", "linear", "mkldnn", "onednn"),
    "attention kernel": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "softmax, GELU, LayerNorm": ("softmax", "gelu", "layer_norm"),
    "dropout": ("bernoulli", "dropout", "aten::random_", "aten::ge"),
    "loss": ("log_softmax", "nll_loss", "cross_entropy", "argmax"),
    "optimizer, grad clip": ("_foreach", "_fused_adam", "addcdiv", "lerp", "sqrt", "norm"),
    "copies, casts": ("copy_", "_to_copy", "clone", "contiguous", "cat"),
    "elementwise": ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::tanh"),
    "index, embedding": ("index", "gather", "scatter", "embedding"),
}


def aten_breakdown(events: Any, steps: int) -> Dict[str, Any]:
    """Self CPU seconds per step of a profile's aten ops (`prof.key_averages()`): by OP_GROUPS,
    in all, and the top 12 ops with their calls per step."""
    ops = [e for e in events if e.key.startswith("aten::")]
    groups: Dict[str, float] = {}
    for event in ops:
        group = next((g for g, keys in OP_GROUPS.items() if any(k in event.key for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6 / steps
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:12]
    return {
        "op_groups_s": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "aten_s": sum(groups.values()),
        "top_ops": [(e.key, e.count // steps, e.self_cpu_time_total / 1e6 / steps) for e in top],
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
