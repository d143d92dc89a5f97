"""`spacy_bert_plugin.BertTokenFeatures.v1`: bert_encoder vectors with spaCy's hash-embedded token
features, under ner, tagger, textcat, textcat_multilabel and spancat."""

from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import pytest
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example, biluo_tags_to_spans, iob_to_biluo
from thinc.api import Adam, Config, Model
from tiny_bert import alice_paragraphs

from spacy_bert_plugin.layers import get_encoder
from spacy_bert_plugin.layers.token_features import build_bert_token_features_v1

WIDTH = 32  # the tiny checkpoints' hidden width
FEATURE_WIDTH = 16
COMPONENTS = ["ner", "tagger", "textcat", "textcat_multilabel", "spancat"]
ENTITY_TYPES = ["PER", "LOC", "ORG", "MISC"]

TOK2VEC = """
@architectures = "spacy_bert_plugin.BertTokenFeatures.v1"
width = ${components.bert_encoder.model.hidden_width}
upstream = "bert_encoder"
feature_width = 16
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
rows = [1000, 200, 500, 500]
include_static_vectors = false
combine = "concat"
depth = 0
window_size = 1
maxout_pieces = 3
"""

CONFIG = """
[nlp]
lang = "en"
pipeline = ["bert_encoder", "ner", "tagger", "textcat", "textcat_multilabel", "spancat"]

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
TOK2VEC

[components.tagger]
factory = "tagger"

[components.tagger.model]
@architectures = "spacy.Tagger.v2"
nO = null
normalize = false

[components.tagger.model.tok2vec]
TOK2VEC

[components.textcat]
factory = "textcat"

[components.textcat.model]
@architectures = "spacy.TextCatReduce.v1"
exclusive_classes = true
use_reduce_first = false
use_reduce_last = false
use_reduce_max = true
use_reduce_mean = true
nO = null

[components.textcat.model.tok2vec]
TOK2VEC

[components.textcat_multilabel]
factory = "textcat_multilabel"

[components.textcat_multilabel.model]
@architectures = "spacy.TextCatReduce.v1"
exclusive_classes = false
use_reduce_first = false
use_reduce_last = false
use_reduce_max = true
use_reduce_mean = true
nO = null

[components.textcat_multilabel.model.tok2vec]
TOK2VEC

[components.spancat]
factory = "spancat"
spans_key = "sc"

[components.spancat.suggester]
@misc = "spacy.ngram_suggester.v1"
sizes = [1, 2, 3]

[components.spancat.model]
@architectures = "spacy.SpanCategorizer.v1"

[components.spancat.model.reducer]
@layers = "spacy.mean_max_reducer.v1"
hidden_size = 32

[components.spancat.model.scorer]
@layers = "spacy.LinearLogistic.v1"
nO = null
nI = null

[components.spancat.model.tok2vec]
TOK2VEC
""".replace("TOK2VEC", TOK2VEC.strip())


def conll_docs(path: Path, vocab, limit: int) -> List[Doc]:
    """The first `limit` sentences of CoNLL-2003 dev: POS tags, entities (also as spans for
    spancat), an exclusive ENTITY / NONE category and a multi-label category per entity type."""
    sentences: List[List[List[str]]] = [[]]
    with path.open(encoding="utf8") as file:
        for line in file:
            if line.startswith("-DOCSTART-"):
                continue
            if line.strip():
                sentences[-1].append(line.split())
            elif sentences[-1]:
                if len(sentences) == limit:
                    break
                sentences.append([])
    docs = []
    for rows in sentences:
        words, tags, _, iob = zip(*rows)
        doc = Doc(vocab, words=list(words), tags=list(tags))
        doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(list(iob)))
        doc.spans["sc"] = [Span(doc, ent.start, ent.end, ent.label_) for ent in doc.ents]
        present = {ent.label_ for ent in doc.ents}
        doc.cats = {"ENTITY": float(bool(present)), "NONE": float(not present)}
        doc.user_data["multilabel"] = {label: float(label in present) for label in ENTITY_TYPES}
        docs.append(doc)
    return docs


def make_nlp(checkpoint: Path, overrides: Dict[str, object]) -> Language:
    config = Config().from_str(
        CONFIG, overrides={"components.bert_encoder.checkpoint": str(checkpoint), **overrides}
    )
    return spacy.util.load_model_from_config(config, auto_fill=True, validate=True)


def make_examples(nlp: Language, docs: List[Doc], component: str) -> List[Example]:
    """textcat and textcat_multilabel both read doc.cats: each is given its own categories."""
    examples = []
    for doc in docs:
        reference = doc.copy()
        if component == "textcat_multilabel":
            reference.cats = doc.user_data["multilabel"]
        examples.append(Example(nlp.make_doc(doc.text), reference))
    return examples


def train(nlp: Language, examples: List[Example], steps: int, batch_size: int) -> Dict[str, List[float]]:
    """Update an initialized `nlp` on `examples` in fixed batches; the losses of each step."""
    optimizer = Adam(0.01)
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    history: Dict[str, List[float]] = {}
    for step in range(steps):
        losses: Dict[str, float] = {}
        nlp.update(batches[step % len(batches)], sgd=optimizer, losses=losses)
        for name, loss in losses.items():
            history.setdefault(name, []).append(loss)
    return history


def mean(values: List[float]) -> float:
    return sum(values) / len(values)


def token_features(model: Model) -> Model:
    """The BertTokenFeatures model inside a component's model."""
    return next(node for node in model.walk() if node.has_ref("features"))


@pytest.fixture(
    scope="module",
    params=[
        ("ner", "concat", 0),
        ("ner", "sum", 1),
        ("tagger", "sum", 0),
        ("textcat", "concat", 1),
        ("textcat_multilabel", "sum", 0),
        ("spancat", "concat", 0),
    ],
    ids=lambda param: f"{param[0]}-{param[1]}-depth{param[2]}",
)
def trained(request, hf_checkpoint, shared_data) -> Tuple[Language, Dict[str, List[float]], List[Example]]:
    """A pipeline of bert_encoder and one component, trained 16 steps on 32 CoNLL-2003 sentences."""
    component, combine, depth = request.param
    overrides = {
        "nlp.pipeline": ["bert_encoder", component],
        f"components.{component}.model.tok2vec.combine": combine,
        f"components.{component}.model.tok2vec.depth": depth,
    }
    spacy.util.fix_random_seed(0)
    nlp = make_nlp(hf_checkpoint, overrides)
    examples = make_examples(nlp, conll_docs(shared_data("conll2003/dev.iob"), nlp.vocab, 32), component)
    nlp.initialize(lambda: examples)
    history = train(nlp, examples, steps=16, batch_size=16)
    return nlp, history, examples


def test_component_learns(trained):
    nlp, history, _ = trained
    component = nlp.pipe_names[1]
    assert nlp.get_pipe("bert_encoder").listening_components == [component]
    losses = history[component]
    # Two batches alternate: compare the same batches at the start and at the end.
    assert mean(losses[-4:]) < 0.7 * mean(losses[:4]), losses


def predictions(doc: Doc) -> dict:
    """What each of the five components sets, scores included."""
    spans = doc.spans.get("sc", [])
    return {
        "ents": [(e.start, e.end, e.label_) for e in doc.ents],
        "tags": [t.tag_ for t in doc],
        "cats": doc.cats,
        "spans": [(s.start, s.end, s.label_) for s in spans],
        "span_scores": spans.attrs.get("scores") if spans else None,
    }


def test_saved_pipeline_predicts_the_same(trained, tmp_path):
    nlp, _, examples = trained
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    texts = [eg.reference.text for eg in examples]
    for before, after in zip(map(predictions, nlp.pipe(texts)), map(predictions, loaded.pipe(texts))):
        assert before["ents"] == after["ents"]
        assert before["tags"] == after["tags"]
        assert before["cats"].keys() == after["cats"].keys()
        for label, score in before["cats"].items():
            assert after["cats"][label] == pytest.approx(score, abs=1e-5), label
        assert before["spans"] == after["spans"]
        if before["span_scores"] is not None:
            numpy.testing.assert_allclose(before["span_scores"], after["span_scores"], atol=1e-5)


def test_frozen_encoder_keeps_its_weights(hf_checkpoint, shared_data):
    spacy.util.fix_random_seed(0)
    nlp = make_nlp(
        hf_checkpoint, {"components.bert_encoder.frozen": True, "nlp.pipeline": ["bert_encoder", "ner"]}
    )
    examples = make_examples(nlp, conll_docs(shared_data("conll2003/dev.iob"), nlp.vocab, 32), "ner")
    nlp.initialize(lambda: examples)
    encoder_before = {
        k: v.clone() for k, v in get_encoder(nlp.get_pipe("bert_encoder").model).state_dict().items()
    }
    features = token_features(nlp.get_pipe("ner").model).get_ref("features")
    tables_before = [node.get_param("E").copy() for node in features.walk() if node.name == "hashembed"]
    history = train(nlp, examples, steps=12, batch_size=16)
    ner = history["ner"]
    assert mean(ner[-4:]) < 0.7 * mean(ner[:4]), ner
    assert set(history["bert_encoder"]) == {0.0}
    encoder_after = get_encoder(nlp.get_pipe("bert_encoder").model).state_dict()
    for key, value in encoder_before.items():
        assert torch.equal(value, encoder_after[key]), key
    tables_after = [node.get_param("E") for node in features.walk() if node.name == "hashembed"]
    assert len(tables_after) == 4
    for before, after in zip(tables_before, tables_after):
        assert not numpy.array_equal(before, after)


@pytest.mark.parametrize(
    "combine,depth,width", [("concat", 0, 48), ("concat", 2, 48), ("sum", 0, 32), ("sum", 1, 32)]
)
def test_output_width(nlp, combine, depth, width):
    """concat: BERT's columns first, then the features; sum: BERT plus the projected features."""
    docs = list(nlp.pipe(alice_paragraphs()[:4]))
    model = build_bert_token_features_v1(
        WIDTH, feature_width=FEATURE_WIDTH, rows=[100, 50, 50, 50], combine=combine, depth=depth
    )
    model.initialize(X=docs)
    assert model.get_dim("nO") == width
    vectors = model.predict(docs)
    assert [v.shape for v in vectors] == [(len(doc), width) for doc in docs]
    if depth > 0:
        return
    if combine == "concat":
        features = model.get_ref("features").predict(docs)
        for doc, v, f in zip(docs, vectors, features):
            numpy.testing.assert_array_equal(v[:, :WIDTH], doc.tensor)
            numpy.testing.assert_array_equal(v[:, WIDTH:], f)
    else:
        projected = model.layers[1].predict(docs)
        for doc, v, p in zip(docs, vectors, projected):
            assert p.shape == (len(doc), WIDTH)
            numpy.testing.assert_allclose(v, doc.tensor + p, rtol=1e-6)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"combine": "mean"}, "combine must be one of"),
        ({"rows": [100, 100]}, "rows has 2 entries but attrs 4"),
        ({"depth": -1}, "depth must be 0"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        build_bert_token_features_v1(WIDTH, **settings)
