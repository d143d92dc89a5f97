"""Task distillation with spaCy's own tools: a teacher pipeline labels unlabeled text with
`spacy apply`, and a student trains on gold plus teacher-labelled docs through
`spacy_bert_plugin.MixedCorpus.v1` (real data: CoNLL-2003 for ner, SST-2 for textcat)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import spacy
from spacy.cli.train import train as spacy_train
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.training.converters import conll_ner_to_docs
from spacy.util import registry
from tiny_bert import REPO_ROOT

TINY_ENCODER = {
    "components.bert_encoder.model.hidden_width": 32,
    "components.bert_encoder.model.num_layers": 1,
    "components.bert_encoder.model.num_heads": 2,
    "components.bert_encoder.model.intermediate_width": 64,
    "components.bert_encoder.vocab_size": 1000,
}
N_GOLD, N_DEV, N_UNLABELED = 60, 20, 40
STEPS = 30


def conll_docs(path: Path) -> List[Doc]:
    blocks = path.read_text(encoding="utf8").split("\n\n")
    sentences = [block for block in blocks if block.strip() and not block.startswith("-DOCSTART-")]
    docs = list(
        conll_ner_to_docs("\n\n".join(sentences[: N_GOLD + N_DEV + N_UNLABELED]), n_sents=1, no_print=True)
    )
    assert len(docs) == N_GOLD + N_DEV + N_UNLABELED
    return docs


def sst2_docs(path: Path) -> List[Doc]:
    nlp = spacy.blank("en")
    docs = []
    for line in path.read_text(encoding="utf8").splitlines()[: N_GOLD + N_DEV + N_UNLABELED]:
        record = json.loads(line)
        doc = nlp.make_doc(record["text"])
        positive = record["label"] in (1, "1", "pos", "positive")
        doc.cats = {"pos": float(positive), "neg": float(not positive)}
        docs.append(doc)
    return docs


def distill_task(tmp_path: Path, config: str, docs: List[Doc]) -> Path:
    """Teacher trained on the gold docs, `spacy apply` on the unlabeled texts, student trained on
    both through MixedCorpus.v1; returns the teacher-labelled DocBin's path."""
    gold, dev, unlabeled = docs[:N_GOLD], docs[N_GOLD : N_GOLD + N_DEV], docs[N_GOLD + N_DEV :]
    DocBin(docs=gold).to_disk(tmp_path / "train.spacy")
    DocBin(docs=dev).to_disk(tmp_path / "dev.spacy")
    (tmp_path / "unlabeled.jsonl").write_text("".join(json.dumps({"text": d.text}) + "\n" for d in unlabeled))
    overrides = {
        **TINY_ENCODER,
        "paths.train": str(tmp_path / "train.spacy"),
        "paths.dev": str(tmp_path / "dev.spacy"),
        "training.max_steps": STEPS,
        "training.eval_frequency": STEPS,
    }
    spacy_train(REPO_ROOT / "configs" / config, tmp_path / "teacher", overrides=overrides)
    labelled = tmp_path / "teacher.spacy"
    command = [
        "-m",
        "spacy",
        "apply",
        str(tmp_path / "teacher" / "model-last"),
        str(tmp_path / "unlabeled.jsonl"),
    ]
    result = subprocess.run(
        [sys.executable, *command, str(labelled)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    student = {
        **overrides,
        "corpora.train.@readers": "spacy_bert_plugin.MixedCorpus.v1",
        "corpora.train.teacher_path": str(labelled),
        "corpora.train.teacher_ratio": 0.5,
    }
    spacy_train(REPO_ROOT / "configs" / config, tmp_path / "student", overrides=student)
    assert spacy.load(tmp_path / "student" / "model-last").pipe_names[0] == "bert_encoder"
    return labelled


def applied_and_direct(tmp_path: Path):
    """The teacher's docs as `spacy apply` saved them, and as the teacher labels the same texts."""
    nlp = spacy.load(tmp_path / "teacher" / "model-last")
    saved = list(DocBin().from_disk(tmp_path / "teacher.spacy").get_docs(nlp.vocab))
    texts = [json.loads(line)["text"] for line in (tmp_path / "unlabeled.jsonl").read_text().splitlines()]
    return nlp, saved, list(nlp.pipe(texts))


def mixed(nlp, labelled: Path, tmp_path: Path, **settings) -> List[Example]:
    reader = registry.resolve(
        {
            "corpus": {
                "@readers": "spacy_bert_plugin.MixedCorpus.v1",
                "path": str(tmp_path / "train.spacy"),
                "teacher_path": str(labelled),
                **settings,
            }
        }
    )["corpus"]
    return list(reader(nlp))


@pytest.mark.slow
def test_ner_student_trains_on_gold_and_teacher_entities(shared_data, tmp_path):
    labelled = distill_task(tmp_path, "ner.cfg", conll_docs(shared_data("conll2003/train.iob")))
    nlp, saved, direct = applied_and_direct(tmp_path)
    assert len(saved) == N_UNLABELED
    # spacy apply keeps the entities, "O" included: the teacher's docs are fully annotated.
    assert all(doc.has_annotation("ENT_IOB") for doc in saved)
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in saved] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in direct
    ]
    examples = mixed(nlp, labelled, tmp_path, teacher_ratio=0.5)
    assert len(examples) == N_GOLD + N_GOLD // 2
    texts = {doc.text for doc in saved}
    assert sum(eg.reference.text in texts for eg in examples) == N_GOLD // 2


@pytest.mark.slow
def test_textcat_student_trains_on_the_teacher_decisions(shared_data, tmp_path):
    labelled = distill_task(tmp_path, "textcat.cfg", sst2_docs(shared_data("sst2/train.jsonl")))
    nlp, saved, direct = applied_and_direct(tmp_path)
    # spacy apply keeps doc.cats: the teacher's probabilities, not 0/1 decisions.
    for got, expected in zip(saved, direct):
        assert got.cats == pytest.approx(expected.cats, abs=1e-6)
    assert any(0 < score < 1 for doc in saved for score in doc.cats.values())
    examples = mixed(nlp, labelled, tmp_path, teacher_ratio=1.0)
    assert len(examples) == 2 * N_GOLD
    for eg in examples:
        assert sorted(eg.reference.cats.values()) == [0.0, 1.0]


def test_spacy_textcat_refuses_soft_targets():
    """Why MixedCorpus turns the teacher's probabilities into decisions: spaCy's textcat takes
    category values of 0 or 1 only, though its loss (scores - targets) could read others."""
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("textcat")
    doc = nlp.make_doc("a fine film")
    doc.cats = {"pos": 1.0, "neg": 0.0}
    nlp.initialize(lambda: [Example(nlp.make_doc(doc.text), doc)])
    soft = nlp.make_doc("a fine film")
    soft.cats = {"pos": 0.8, "neg": 0.2}
    with pytest.raises(ValueError, match="E851"):
        nlp.update([Example(nlp.make_doc(soft.text), soft)])
    hard = nlp.make_doc("a fine film")
    hard.cats = {"pos": 1.0, "neg": 0.0}
    assert nlp.update([Example(nlp.make_doc(hard.text), hard)])[textcat.name] > 0


def test_mixed_corpus_names_missing_paths():
    with pytest.raises(ValueError, match="teacher_path"):
        registry.resolve(
            {"c": {"@readers": "spacy_bert_plugin.MixedCorpus.v1", "path": "x.spacy", "teacher_path": None}}
        )
