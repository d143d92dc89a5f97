"""Helpers for the pretraining tests: synthetic and real corpora, a tiny pretraining config."""

import json
from itertools import islice
from pathlib import Path
from typing import List, Optional

import numpy
from spacy import util
from spacy.training import Example
from spacy.training.converters import conll_ner_to_docs

from spacy_bert_plugin.pretraining.corpus import PieceCorpus

REPO_ROOT = Path(__file__).parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
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


def conll_sentences(limit: int) -> Optional[List[str]]:
    """Sentences of the CoNLL-2003 train split (../shared/data), or None when it is absent."""
    path = SHARED_DATA / "conll2003" / "train.iob"
    if not path.exists():
        return None
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


def conll_examples(nlp, n_docs: int) -> List[Example]:
    """The first CoNLL-2003 train documents (10 sentences each) as NER examples."""
    text = (SHARED_DATA / "conll2003" / "train.iob").read_text(encoding="utf8")
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
