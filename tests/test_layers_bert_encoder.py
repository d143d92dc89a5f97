"""The `spacy_bert_plugin.BertEncoder.v1` layer's settings: `quantize = "int8"` (CPU inference)."""

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from tiny_bert import alice_paragraphs, bert_nlp

from spacy_bert_plugin.checkpoint import read_weights
from spacy_bert_plugin.layers import EncoderConfigError, bert_encoder, get_encoder
from spacy_bert_plugin.pipeline import DEFAULT_MODEL_CONFIG

transformers = pytest.importorskip("transformers")

INT8 = {"components": {"bert_encoder": {"model": {"quantize": "int8"}}}}
DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def int8_nlp(hf_checkpoint):
    return bert_nlp(hf_checkpoint, hidden_width=32, quantize="int8")


def word_vectors(nlp, texts) -> numpy.ndarray:
    return numpy.concatenate([doc.tensor for doc in nlp.pipe(texts)])


def cosines(a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    norms = numpy.linalg.norm(a, axis=1) * numpy.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1)[norms > 0] / norms[norms > 0]  # tokens without pieces: zero vectors


def test_int8_vectors_are_close_to_float32_but_not_equal(nlp, int8_nlp):
    texts = alice_paragraphs()
    fp32, int8 = word_vectors(nlp, texts), word_vectors(int8_nlp, texts)
    assert fp32.shape == int8.shape and int8.dtype == numpy.float32
    cos = cosines(fp32, int8)
    assert len(cos) > 1000 and cos.mean() > 0.99 and cos.min() > 0.95
    assert numpy.abs(fp32 - int8).max() > 1e-3  # quantization did run


def test_int8_replaces_every_linear_layer_of_the_forward_copy(int8_nlp):
    model = int8_nlp.get_pipe("bert_encoder").model
    running = model.layers[0].shims[0]._model.encoder
    kinds = [type(m) for m in running.modules()]
    assert torch.nn.Linear not in kinds
    assert kinds.count(DynamicLinear) == 4 * running.config.num_layers + 1  # qkv, output, FFN x2; pooler
    saved = get_encoder(model)
    assert saved is not running and DynamicLinear not in [type(m) for m in saved.modules()]
    # Embeddings and LayerNorms are float32 in both, and shared rather than copied.
    assert running.embeddings.word.weight is saved.embeddings.word.weight


def test_training_with_int8_is_refused(int8_nlp):
    doc = int8_nlp.make_doc("Alice ran")
    with pytest.raises(ValueError, match=r'"int8" is for inference only.*quantize = null to train'):
        int8_nlp.update([Example(doc, doc)])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"quantize": "int4"}, r'quantize must be null \(None\) or "int8", not \'int4\''),
        ({"quantize": "int8", "autocast": "bf16"}, r"cannot be combined"),
    ],
)
def test_bad_quantize_settings_are_refused(settings, message):
    model = {"@architectures": "spacy_bert_plugin.BertEncoder.v1", **settings}
    with pytest.raises(ValueError, match=message):
        spacy.blank("en").add_pipe("bert_encoder", config={"model": model})


def test_int8_on_a_gpu_is_refused(hf_checkpoint, monkeypatch):
    monkeypatch.setattr(bert_encoder, "get_torch_default_device", lambda: torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"CPU only.*quantize = null on a GPU"):
        bert_nlp(hf_checkpoint, hidden_width=32, quantize="int8")


def test_int8_pipeline_saves_float32_weights_and_round_trips(nlp, int8_nlp, hf_checkpoint, tmp_path):
    texts = alice_paragraphs()[:3]
    nlp.to_disk(tmp_path / "fp32")
    int8_nlp.to_disk(tmp_path / "int8")
    _, expected = read_weights(tmp_path / "fp32" / "bert_encoder" / "model")
    _, saved = read_weights(tmp_path / "int8" / "bert_encoder" / "model")
    assert saved.keys() == expected.keys()
    for key in expected:
        assert saved[key].dtype == torch.float32
        torch.testing.assert_close(saved[key], expected[key], rtol=0, atol=0)
    # The saved config keeps quantize = "int8"; overriding it loads the float32 encoder.
    numpy.testing.assert_array_equal(
        word_vectors(spacy.load(tmp_path / "int8"), texts), word_vectors(int8_nlp, texts)
    )
    no_int8 = {"components": {"bert_encoder": {"model": {"quantize": None}}}}
    numpy.testing.assert_array_equal(
        word_vectors(spacy.load(tmp_path / "int8", config=no_int8), texts), word_vectors(nlp, texts)
    )
    # A float32 pipeline, turned int8 at load time (as in the README).
    loaded = spacy.load(tmp_path / "fp32", config=INT8)
    numpy.testing.assert_array_equal(word_vectors(loaded, texts), word_vectors(int8_nlp, texts))
    # to_bytes / from_bytes keep the float32 weights too.
    restored = spacy.blank("en")
    restored.add_pipe(
        "bert_encoder", config={"model": {"@architectures": "spacy_bert_plugin.BertEncoder.v1"}}
    )
    restored.from_bytes(int8_nlp.to_bytes())
    numpy.testing.assert_array_equal(word_vectors(restored, texts), word_vectors(nlp, texts))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_heads": 3}, "num_heads = 3 does not divide hidden_width = 256; each head gets an equal share"),
        ({"num_heads": 0}, "num_heads = 0 must be at least 1"),
        ({"hidden_width": 0}, "hidden_width = 0 must be at least 1"),
        ({"num_layers": 0}, "num_layers = 0 must be at least 1"),
        ({"window": 0}, "window = 0 leaves no room for pieces: set at least 1, or null"),
        ({"max_batch_pieces": 0}, "max_batch_pieces = 0 must be at least 1"),
        ({"max_positions": 2}, "max_positions = 2 leaves no room for a piece between [CLS] and [SEP]"),
        ({"dropout": 1.0}, "dropout = 1.0 must be at least 0 and below 1"),
        ({"pooling": "max"}, "pooling must be one of ('mean', 'first', 'last'), not 'max'"),
    ],
)
def test_unworkable_settings_are_refused_at_construction(settings, message):
    model = {"@architectures": "spacy_bert_plugin.BertEncoder.v1", **settings}
    with pytest.raises(EncoderConfigError) as info:
        spacy.blank("en").add_pipe("bert_encoder", config={"model": model})
    assert str(info.value).startswith(f"[components.bert_encoder.model] {message}")
    assert "\n" not in str(info.value)


def test_num_heads_error_suggests_a_divisor():
    with pytest.raises(EncoderConfigError, match=r"use a divisor such as 4$"):
        settings = {key: value for key, value in DEFAULT_MODEL_CONFIG.items() if key != "@architectures"}
        bert_encoder.build_bert_encoder_v1(**{**settings, "hidden_width": 256, "num_heads": 3})
