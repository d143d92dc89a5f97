"""Helpers for the pretraining tests: synthetic and real corpora, a tiny pretraining config."""

import json
import re
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import List

import numpy
import torch
from safetensors.torch import load_file
from spacy import util
from spacy.training import Example
from spacy.training.converters import conll_ner_to_docs

from spacy_bert_plugin.pretraining.corpus import PieceCorpus

REPO_ROOT = Path(__file__).parents[2]
ALICE = REPO_ROOT / "tests" / "data" / "alice.txt"


def synthetic_corpus(sentences_per_doc: List[int], sentence_length: int = 7) -> PieceCorpus:
    """Docs of equal-length sentences; piece ids encode (doc, sentence) so tests can trace where
    each segment came from: id = 1000 * doc + sentence."""
    ids, sentence_offsets, doc_offsets = [], [0], [0]
    for d, n_sentences in enumerate(sentences_per_doc):
        for s in range(n_sentences):
            ids.extend([1000 * d + s] * sentence_length)
            sentence_offsets.append(len(ids))
        doc_offsets.append(len(sentence_offsets) - 1)
    word_start = numpy.ones(len(ids), dtype=bool)
    return PieceCorpus(
        numpy.array(ids, dtype=numpy.int32),
        word_start,
        numpy.array(sentence_offsets),
        numpy.array(doc_offsets),
    )


def conll_sentences(path: Path, limit: int) -> List[str]:
    """The first `limit` sentences of a CoNLL-2003 file (conll2003/train.iob of ../shared/data)."""
    sentences, words = [], []
    for line in path.read_text(encoding="utf8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(" ".join(words))
                words = []
                if len(sentences) == limit:
                    break
            continue
        words.append(line.split()[0])
    return sentences


def conll_examples(path: Path, nlp, n_docs: int) -> List[Example]:
    """The first CoNLL-2003 documents of `path` (10 sentences each) as NER examples."""
    text = path.read_text(encoding="utf8")
    docs = conll_ner_to_docs(text, n_sents=10, no_print=True)
    return [Example(nlp.make_doc(doc.text), doc) for doc in islice(docs, n_docs)]


def write_jsonl(path: Path, texts: List[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf8")
    return path


TINY_OVERRIDES = {
    "components.bert_encoder.model.hidden_width": 32,
    "components.bert_encoder.model.num_layers": 2,
    "components.bert_encoder.model.num_heads": 2,
    "components.bert_encoder.model.intermediate_width": 64,
    "components.bert_encoder.model.max_positions": 64,
    "components.bert_encoder.vocab_size": 600,
    "bert_pretraining.max_length": 64,
    "bert_pretraining.batch_tokens": 1024,
    "bert_pretraining.heldout_docs": 4,
    "bert_pretraining.eval_batches": 4,
    "bert_pretraining.log_every": 1,
    "bert_pretraining.optimizer.warmup_steps": 2,
}


PRETRAIN_CFG = REPO_ROOT / "configs" / "pretrain.cfg"


def tiny_config(raw_text: Path, cache: Path, **overrides):
    """configs/pretrain.cfg with a tiny model, reading `raw_text` and caching pieces in `cache`."""
    values = {
        **TINY_OVERRIDES,
        "paths.raw_text": str(raw_text),
        "bert_pretraining.cache_dir": str(cache),
        **overrides,
    }
    return util.load_config(PRETRAIN_CFG, overrides=values, interpolate=False)


# Command-line runs (`python -m spacy bert-pretrain` in a subprocess) and their output.


def cli(*args, **kwargs) -> subprocess.Popen:
    """`python -m spacy bert-pretrain ARGS`, stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, "-m", "spacy", "bert-pretrain", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def run_cli(*args):
    """The bert-pretrain command in this process (no interpreter start-up): (exit code, output,
    the exception it let out or None)."""
    from spacy.cli._util import app
    from typer.testing import CliRunner

    import spacy_bert_plugin.cli  # noqa: F401 (registers bert-pretrain)

    result = CliRunner().invoke(app, ["bert-pretrain", *map(str, args)])
    escaped = None if isinstance(result.exception, SystemExit) else result.exception
    return result.exit_code, result.output, escaped


def cli_overrides(raw_text: Path, cache: Path, **extra) -> List[str]:
    """TINY_OVERRIDES and `extra` as command-line options."""
    values = {**TINY_OVERRIDES, "paths.raw_text": raw_text, "bert_pretraining.cache_dir": cache, **extra}
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


def read_log(output_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


def assert_resumed_run_matches(straight: Path, split: Path, files=("model.safetensors",)) -> None:
    """The run in `split`, interrupted and resumed, ended where the uninterrupted one in
    `straight` did: the same tensors in each of `files` of model-last, the same log but timing."""
    for name in files:
        expected, got = load_file(straight / "model-last" / name), load_file(split / "model-last" / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")

    def without_timing(rows: List[dict]) -> List[dict]:
        return [{key: value for key, value in row.items() if key != "tokens_per_s"} for row in rows]

    assert without_timing(read_log(split)) == without_timing(read_log(straight))


def training_rows(output_dir: Path) -> List[dict]:
    return [row for row in read_log(output_dir) if "loss" in row]


def wait_for_log(out: Path, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait for a new line in out/log.jsonl: True while the run goes on, False if it ended."""
    path = out / "log.jsonl"
    deadline = time.monotonic() + timeout
    start_size = path.stat().st_size if path.exists() else 0
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > start_size:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"pretraining wrote no log line in {timeout} s")


def failure_message(output: str) -> str:
    """The text of the CLI's `✘` message, its lines as wasabi wrapped them joined again."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    assert "✘" in plain, f"no failure message in:\n{output}"
    block = plain[plain.index("✘") + 1 :].split("\n\n")[0]
    return " ".join(block.split())


# A custom objective for `--code`: its own module trains with the encoder, and it reports
# torch's intra-op thread count as a metric, so the log shows what the run used.
PROBE_CODE = """
import torch
from spacy.util import registry
from torch import nn

from spacy_bert_plugin.pretraining.objectives import Objective


class Probe(Objective):
    name = "probe"

    def __init__(self, weight: float, width: int):
        super().__init__(weight)
        self.width = width
        self.project = None

    def setup(self, model, pieces):
        self.project = nn.Linear(model.config.hidden_width, self.width)

    def loss(self, model, hidden, batch, tensors):
        loss = self.project(hidden[:, 0]).pow(2).mean()
        threads = torch.tensor(float(torch.get_num_threads()))
        return self.weight * loss, {"probe_loss": loss.detach(), "probe_threads": threads}


@registry.bert_objectives("test.Probe.v1")
def make_probe(weight: float = 0.1, width: int = 4):
    return Probe(weight, width)
"""

PROBE_SECTION = '[bert_pretraining.objectives.probe]\n@bert_objectives = "test.Probe.v1"\n'


def write_probe_code(folder: Path) -> Path:
    path = folder / "probe_objective.py"
    path.write_text(PROBE_CODE, encoding="utf8")
    return path


def config_with(path: Path, *sections: str) -> Path:
    """configs/pretrain.cfg with `sections` (config text) added at the end, written to `path`."""
    path.write_text(PRETRAIN_CFG.read_text(encoding="utf8") + "\n" + "\n".join(sections), encoding="utf8")
    return path
