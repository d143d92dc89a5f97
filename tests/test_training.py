"""`spacy train`: ner and textcat listen to one bert_encoder, fine-tuning reaches it, and the shipped
configs train, resume training after loading and pass `spacy debug data`."""

import gzip
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import spacy
import srsly
import torch
from spacy.cli.init_config import fill_config
from spacy.cli.train import train as spacy_train
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import filter_spans
from tiny_bert import REPO_ROOT, alice_paragraphs, run_python

from spacy_bert_plugin.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 24
FROZEN_STEPS = 8

CONFIG = """
[paths]
train = null
dev = null
init_bert = null

[system]
seed = 0
gpu_allocator = null

[nlp]
lang = "en"
pipeline = ["bert_encoder","ner","textcat"]
batch_size = 64

[components]

[components.bert_encoder]
factory = "bert_encoder"
frozen = false

[components.bert_encoder.model]
@architectures = "spacy_bert_plugin.BertEncoder.v1"
hidden_width = 32

[components.ner]
factory = "ner"

[components.ner.model]
@architectures = "spacy.TransitionBasedParser.v2"
state_type = "ner"
extra_state_tokens = false
hidden_width = 32
maxout_pieces = 2
use_upper = true
nO = null

[components.ner.model.tok2vec]
@architectures = "spacy.Tok2VecListener.v1"
width = ${components.bert_encoder.model.hidden_width}
upstream = "bert_encoder"

[components.textcat]
factory = "textcat"

[components.textcat.model]
@architectures = "spacy.TextCatReduce.v1"
exclusive_classes = true
use_reduce_first = false
use_reduce_last = false
use_reduce_max = false
use_reduce_mean = true
nO = null

[components.textcat.model.tok2vec]
@architectures = "spacy.Tok2VecListener.v1"
width = ${components.bert_encoder.model.hidden_width}
upstream = "bert_encoder"

[corpora]

[corpora.train]
@readers = "spacy.Corpus.v1"
path = ${paths.train}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${paths.dev}

[training]
seed = ${system.seed}
dropout = 0.0
max_steps = 24
max_epochs = 0
eval_frequency = 1
patience = 0

[training.batcher]
@batchers = "spacy.batch_by_sequence.v1"
size = 64
get_length = null

[training.optimizer]
@optimizers = "Adam.v1"
learn_rate = 0.02
use_averages = false

[training.logger]
@loggers = "spacy.ConsoleLogger.v3"
progress_bar = null
console_output = false
output_file = null

[initialize]

[initialize.components]

[initialize.components.bert_encoder]
checkpoint = ${paths.init_bert}
"""

NAMES = re.compile(r"\b(Alice|Dinah|(?:the )?White Rabbit|Rabbit)\b")


def make_corpus(folder: Path) -> None:
    """Sentences of alice.txt: PERSON entities found by string match; a QUESTION / OTHER label."""
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    docs = []
    for paragraph in alice_paragraphs():
        for sent in nlp(paragraph).sents:
            doc = sent.as_doc()
            spans = [doc.char_span(m.start(), m.end(), label="PERSON") for m in NAMES.finditer(doc.text)]
            doc.ents = filter_spans([span for span in spans if span is not None])
            question = "?" in doc.text
            doc.cats = {"QUESTION": float(question), "OTHER": float(not question)}
            docs.append(doc)
    assert sum(len(doc.ents) for doc in docs) >= 10
    assert 0 < sum(doc.cats["QUESTION"] for doc in docs) < len(docs)
    DocBin(docs=docs, store_user_data=True).to_disk(folder / "train.spacy")
    DocBin(docs=docs[:6], store_user_data=True).to_disk(folder / "dev.spacy")


def prepare(tmp_path: Path) -> Dict[str, str]:
    """Corpus and full config in `tmp_path`; returns the config overrides for `spacy train`."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    make_corpus(corpus)
    (tmp_path / "base.cfg").write_text(CONFIG)
    fill_config(tmp_path / "config.cfg", tmp_path / "base.cfg", silent=True)  # spaCy's defaults
    return {"paths.train": str(corpus / "train.spacy"), "paths.dev": str(corpus / "dev.spacy")}


def read_log(log: Path, steps: int) -> List[dict]:
    lines = list(srsly.read_jsonl(log))
    assert [line["step"] for line in lines] == list(range(steps + 1))
    return lines


def losses(lines: List[dict], name: str) -> List[float]:
    return [line["losses"][name] for line in lines]


def mean(values: List[float]) -> float:
    return sum(values) / len(values)


def encoder_state(folder: Path) -> Dict[str, torch.Tensor]:
    model, _ = load_checkpoint(folder)
    return model.encoder.state_dict()


def test_train_ner_and_textcat_on_shared_encoder(hf_checkpoint, tmp_path):
    """The real CLI in a fresh interpreter: `python -m spacy train`."""
    overrides = prepare(tmp_path)
    overrides.update(
        {
            "paths.init_bert": str(hf_checkpoint),
            "training.max_steps": str(MAX_STEPS),
            "training.logger.output_file": str(tmp_path / "log.jsonl"),
        }
    )
    args = [item for key, value in overrides.items() for item in (f"--{key}", value)]
    run_python("-m", "spacy", "train", str(tmp_path / "config.cfg"), "--output", str(tmp_path / "out"), *args)
    lines = read_log(tmp_path / "log.jsonl", MAX_STEPS)
    # Margins from runs with several random checkpoints: NER fell to < 0.1 of its start. The
    # textcat loss on 45 sentences is noisy: compare it with its first value, the chance level
    # (0.25 for two exclusive classes); runs reached 0.6-0.7 of it.
    ner = losses(lines, "ner")
    assert mean(ner[-5:]) < 0.25 * mean(ner[:5]), ner
    textcat = losses(lines, "textcat")
    assert mean(textcat[-5:]) < 0.8 * textcat[0], textcat
    # Fine-tuning reached the encoder: its weights moved away from the checkpoint's.
    before = encoder_state(hf_checkpoint)
    after = encoder_state(tmp_path / "out" / "model-last" / "bert_encoder" / "model")
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert "embeddings.word.weight" in changed and "layers.1.output_norm.weight" in changed
    # The trained pipeline loads and annotates.
    nlp = spacy.load(tmp_path / "out" / "model-last")
    doc = nlp("Alice said to Dinah: where is the White Rabbit?")
    assert doc.tensor.shape == (len(doc), 32)
    assert set(doc.cats) == {"QUESTION", "OTHER"}


def test_frozen_encoder_is_not_updated(hf_checkpoint, tmp_path):
    """In-process this time (spaCy's `train`), with `frozen = true`."""
    overrides = prepare(tmp_path)
    overrides.update(
        {
            "paths.init_bert": str(hf_checkpoint),
            "components.bert_encoder.frozen": True,
            "training.max_steps": FROZEN_STEPS,
            "training.logger.output_file": str(tmp_path / "log.jsonl"),
        }
    )
    spacy_train(tmp_path / "config.cfg", tmp_path / "out", overrides=overrides)
    lines = read_log(tmp_path / "log.jsonl", FROZEN_STEPS)
    ner = losses(lines, "ner")
    assert mean(ner[-3:]) < mean(ner[1:4])  # the listeners still learn
    assert set(losses(lines, "bert_encoder")) == {0.0}
    before = encoder_state(hf_checkpoint)
    after = encoder_state(tmp_path / "out" / "model-last" / "bert_encoder" / "model")
    for key in before:
        assert torch.equal(before[key], after[key]), key


# ---------------------------------------------------------------------------------------------
# The shipped fine-tuning configs (configs/*.cfg) with a tiny encoder

TINY_ENCODER = {
    "components.bert_encoder.model.hidden_width": 32,
    "components.bert_encoder.model.num_layers": 1,
    "components.bert_encoder.model.num_heads": 2,
    "components.bert_encoder.model.intermediate_width": 64,
    "components.bert_encoder.vocab_size": 1000,
}


def shipped_config_overrides(corpus: Path, steps: int) -> Dict[str, Any]:
    """Overrides that train a shipped config for `steps` steps on corpus/{train,dev}.spacy. The
    learning-rate schedule is the config's own: the tests of the saved config need it untouched."""
    return {
        **TINY_ENCODER,
        "paths.train": str(corpus / "train.spacy"),
        "paths.dev": str(corpus / "dev.spacy"),
        "training.max_steps": steps,
        "training.eval_frequency": steps,
    }


def test_pipeline_trained_from_ner_cfg_resumes_training_after_loading(tmp_path):
    """nlp.resume_training() and nlp.update() resolve [training.optimizer] of the saved config."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    make_corpus(corpus)
    spacy_train(
        REPO_ROOT / "configs" / "ner.cfg", tmp_path / "out", overrides=shipped_config_overrides(corpus, 4)
    )
    nlp = spacy.load(tmp_path / "out" / "model-last")
    examples = [
        Example(nlp.make_doc(doc.text), doc)
        for doc in DocBin().from_disk(corpus / "train.spacy").get_docs(nlp.vocab)
        if doc.ents
    ][:8]
    optimizer = nlp.resume_training()
    losses = nlp.update(examples, sgd=optimizer)
    assert losses["ner"] > 0.0 and losses["bert_encoder"] >= 0.0
    losses = nlp.update(examples)  # Language.update makes its own optimizer
    assert losses["ner"] > 0.0


def test_debug_data_on_the_shipped_ner_config(tmp_path):
    """`spacy debug data` initializes the pipeline (which resolves [training.optimizer]) and
    analyses the data; it exits with 1 here only because 50 examples are too few for its taste."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    make_corpus(corpus)
    args = [f"--{key}={value}" for key, value in shipped_config_overrides(corpus, 4).items()]
    cmd = [sys.executable, "-m", "spacy", "debug", "data", str(REPO_ROOT / "configs" / "ner.cfg"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "Pipeline can be initialized with data" in output, output
    assert "Low number of examples to train a new pipeline (50)" in output, output
    assert result.returncode == 1 and "1 error" in output, output


def imdb_two_label_sets(imdb_train: Path, folder: Path, n_docs: int, max_tokens: int) -> None:
    """IMDB reviews with two real, non-exclusive label sets: POSITIVE (the review's label) and
    EXTREME (a rating of 1 or 10 stars); every combination occurs. First `max_tokens` tokens."""
    nlp = spacy.blank("en")
    with gzip.open(imdb_train, "rt", encoding="utf8") as lines:
        rows = [json.loads(line) for line in lines]
    docs = []
    for row in random.Random(0).sample(rows, n_docs):
        doc = nlp.make_doc(row["text"])[:max_tokens].as_doc()
        doc.cats = {"POSITIVE": float(row["label"] == "pos"), "EXTREME": float(row["rating"] in (1, 10))}
        docs.append(doc)
    assert len({tuple(doc.cats.values()) for doc in docs}) == 4
    DocBin(docs=docs).to_disk(folder / "train.spacy")
    DocBin(docs=docs[:10]).to_disk(folder / "dev.spacy")


def test_textcat_multilabel_cfg_learns_two_label_sets(shared_data, tmp_path):
    """configs/textcat_multilabel.cfg on 120 real reviews: the labels are scored independently and
    the training set is learnt (a tiny encoder does not generalise from 120 reviews in 40 steps)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    imdb_two_label_sets(shared_data("imdb/train.jsonl.gz"), corpus, 120, 48)
    overrides = {
        **shipped_config_overrides(corpus, 40),
        "training.optimizer.learn_rate.total_steps": 40,
        "training.dropout": 0.0,
        "training.optimizer.learn_rate.warmup_steps": 2,
        "training.optimizer.learn_rate.initial_rate": 0.005,
    }
    spacy_train(REPO_ROOT / "configs" / "textcat_multilabel.cfg", tmp_path / "out", overrides=overrides)
    nlp = spacy.load(tmp_path / "out" / "model-last")
    gold = list(DocBin().from_disk(corpus / "train.spacy").get_docs(nlp.vocab))
    predicted = list(nlp.pipe(doc.text for doc in gold))
    scores = nlp.get_pipe("textcat_multilabel").score([Example(p, g) for p, g in zip(predicted, gold)])
    assert scores["cats_auc_per_type"]["POSITIVE"] > 0.9, scores
    assert scores["cats_auc_per_type"]["EXTREME"] > 0.9, scores
    # Not exclusive: texts with both labels score high on both, texts with neither low on both.
    both = [p.cats for p, g in zip(predicted, gold) if all(g.cats.values())]
    neither = [p.cats for p, g in zip(predicted, gold) if not any(g.cats.values())]
    assert sum(sum(cats.values()) for cats in both) / len(both) > 1.2
    assert sum(sum(cats.values()) for cats in neither) / len(neither) < 0.8
