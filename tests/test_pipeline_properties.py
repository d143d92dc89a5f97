"""Property-based checks: whatever text comes in, every token gets a finite vector."""

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_bert import ALICE

ALICE_WORDS = ALICE.read_text(encoding="utf8").split()

AWKWARD = [
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u202e",
    "\u2067",
    "\u00ad",  # zero-width, bidi, soft hyphen
    "\x00",
    "\x07",
    "\x1b[31m",
    "\r\n",
    "\t",
    "\u2028",  # control and line separators
    "😀",
    "👩‍👩‍👧",
    "🇩🇪",
    "中文字符",
    "日本語",
    "한국어",
    "العربية",
    "עברית",
    "e\u0301",
    "a" * 10_000,
    "." * 10_000,
    "ab-" * 3_000,
    " " * 50,
    "\n\n\n",
]
texts = st.lists(
    st.one_of(
        st.text(max_size=80), st.sampled_from(AWKWARD), st.sampled_from(["Alice", "rabbit", "down,", "well!"])
    ),
    max_size=30,
).map("".join)


def assert_finite_vectors(doc, width):
    assert doc.tensor.shape == (len(doc), width)
    assert doc.tensor.dtype == numpy.float32
    assert numpy.isfinite(doc.tensor).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts, min_size=1, max_size=6))
def test_any_text_gets_finite_vectors(nlp, batch):
    width = nlp.get_pipe("bert_encoder").model.get_dim("nO")
    for doc in nlp.pipe(batch, batch_size=4):
        assert_finite_vectors(doc, width)


def test_tokens_without_pieces_get_zero_vectors(nlp):
    doc = nlp("Alice \n\n  ran \u200b away")
    width = nlp.get_pipe("bert_encoder").model.get_dim("nO")
    assert_finite_vectors(doc, width)
    no_pieces = [t.i for t in doc if not t.text.strip() or t.text == "\u200b"]
    assert no_pieces and not doc.tensor[no_pieces].any()
    assert doc.tensor[[t.i for t in doc if t.text == "Alice"]].any()


def test_hundred_thousand_word_doc(nlp):
    words = (ALICE_WORDS * (100_000 // len(ALICE_WORDS) + 1))[:100_000]
    doc = nlp(" ".join(words))
    assert len(doc) >= 100_000
    assert_finite_vectors(doc, nlp.get_pipe("bert_encoder").model.get_dim("nO"))


@pytest.mark.slow
def test_multiprocess_pipe_matches_single_process(nlp):
    batch = ["Alice was beginning to get very tired.", "", "   ", "😀 中文 \u202e x", "a" * 10_000] * 3
    single = [doc.tensor for doc in nlp.pipe(batch)]
    multi = [doc.tensor for doc in nlp.pipe(batch, n_process=2, batch_size=4)]
    for one, two in zip(single, multi):
        numpy.testing.assert_allclose(one, two, atol=1e-5)
