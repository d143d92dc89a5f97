"""Docs longer than the window: windows, sentence boundaries, capped words, batching."""
from typing import List

import numpy
import pytest
import torch
from spacy.tokens import Doc

from tiny_bert import alice_paragraphs, bert_nlp
from spacy_bert_plugin.layers.windows import docs_to_batch

transformers = pytest.importorskip("transformers")

WINDOW = 16
# Pieces per sentence with the alice vocabulary: 6, 9, 6, 10 (checked in the tests).
SENTENCES = [
    "down , down , down .".split(),
    "alice was very tired of the book .".split(),
    "down , down , down .".split(),
    "she had peeped into the book .".split(),
]


@pytest.fixture(scope="module")
def windowed(hf_checkpoint):
    return bert_nlp(hf_checkpoint, hidden_width=32, window=WINDOW)


@pytest.fixture(scope="module")
def hf_model(hf_checkpoint):
    tokenizer = transformers.BertTokenizerFast.from_pretrained(hf_checkpoint)
    return tokenizer, transformers.BertModel.from_pretrained(hf_checkpoint).eval()


def hf_vectors(hf_model, words: List[str]) -> numpy.ndarray:
    """Reference vectors for words encoded as one window: `[CLS] pieces [SEP]`, mean-pooled."""
    tokenizer, model = hf_model
    encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoding).last_hidden_state[0].numpy()
    word_ids = numpy.array([-1 if w is None else w for w in encoding.word_ids()])
    return numpy.stack([hidden[word_ids == i].mean(0) for i in range(len(words))])


def n_pieces(hf_model, words: List[str]) -> int:
    return len(hf_model[0](words, is_split_into_words=True, add_special_tokens=False).input_ids)


def window_pieces(batch) -> List[List[int]]:
    """The word row of each piece, per window of a PieceBatch (in the order of the chunks' rows)."""
    windows = []
    flat = 0
    for input_ids, _ in batch.chunks:
        for _ in range(input_ids.shape[0]):
            rows = batch.piece_word[flat : flat + input_ids.shape[1]]
            windows.append(rows[rows < batch.n_words].tolist())
            flat += input_ids.shape[1]
    return windows


def batch_windows(batch) -> List[List[int]]:
    """The words of each window, sorted."""
    return [sorted(set(rows)) for rows in window_pieces(batch)]


def pieces_of(nlp):
    return nlp.get_pipe("bert_encoder").model.attrs["pieces"]


def sentence_doc(nlp, sentences: List[List[str]], mark_sentences: bool) -> Doc:
    words = [word for sentence in sentences for word in sentence]
    sent_starts = [i == 0 for sentence in sentences for i in range(len(sentence))]
    return Doc(nlp.vocab, words=words, sent_starts=sent_starts if mark_sentences else None)


def test_sentences_fixture_piece_counts(hf_model):
    assert [n_pieces(hf_model, s) for s in SENTENCES] == [6, 9, 6, 10]


def test_long_doc_one_vector_per_token(windowed):
    text = " ".join(alice_paragraphs()[:3])
    doc = windowed(text)
    batch = docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096)
    assert len(batch_windows(batch)) > 5
    assert doc.tensor.shape == (len(doc), 32)
    assert numpy.isfinite(doc.tensor).all()
    # Every token of this text has pieces, so none is left with a zero vector.
    assert (numpy.abs(doc.tensor).sum(axis=1) > 0).all()


def test_windows_never_exceed_window_nor_split_words(windowed):
    doc = windowed.make_doc(" ".join(alice_paragraphs()[:3]))
    batch = docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096)
    assert max(ids.shape[1] for ids, _ in batch.chunks) <= WINDOW + 2
    seen = set()
    for rows in window_pieces(batch):
        assert 0 < len(rows) <= WINDOW
        words = set(rows)
        assert not words & seen, "a word straddles two windows"
        seen |= words
    assert seen == set(range(len(doc)))


def test_windows_split_on_sentence_boundaries(windowed, hf_model):
    doc = sentence_doc(windowed, SENTENCES, mark_sentences=True)
    windows = batch_windows(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096))
    # 6 + 9 fit in 16, 6 + 10 too; breaking at words would give 16 + 15 pieces instead.
    first, second = SENTENCES[0] + SENTENCES[1], SENTENCES[2] + SENTENCES[3]
    assert sorted(map(tuple, windows)) == [tuple(range(len(first))), tuple(range(len(first), len(doc)))]
    # Each window is encoded on its own: its vectors are the reference's for its words alone.
    tensor = windowed.get_pipe("bert_encoder")(doc).tensor
    numpy.testing.assert_allclose(tensor[: len(first)], hf_vectors(hf_model, first), atol=1e-4, rtol=0)
    numpy.testing.assert_allclose(tensor[len(first) :], hf_vectors(hf_model, second), atol=1e-4, rtol=0)


def test_windows_without_sentences_break_at_words(windowed, hf_model):
    doc = sentence_doc(windowed, SENTENCES, mark_sentences=False)
    windows = sorted(batch_windows(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096)))
    words = [t.text for t in doc]
    assert len(windows) == 2
    first = [words[i] for i in windows[0]]
    # Greedy: the first window is full up to a word boundary, not cut at a sentence.
    assert n_pieces(hf_model, first) <= WINDOW < n_pieces(hf_model, first + [words[len(first)]])
    assert len(first) != len(SENTENCES[0] + SENTENCES[1])
    tensor = windowed.get_pipe("bert_encoder")(doc).tensor
    numpy.testing.assert_allclose(tensor[: len(first)], hf_vectors(hf_model, first), atol=1e-4, rtol=0)


def test_sentence_longer_than_window_breaks_at_words(windowed):
    long_sentence = "alice was very tired of the book and she had peeped into the book .".split()
    doc = sentence_doc(windowed, [SENTENCES[0], long_sentence], mark_sentences=True)
    windows = batch_windows(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096))
    assert sorted(w[0] for w in windows)[:2] == [0, len(SENTENCES[0])]
    assert all(len(w) <= WINDOW for w in window_pieces(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096)))
    assert sorted(i for w in windows for i in w) == list(range(len(doc)))


def test_word_with_more_pieces_than_window_is_capped(windowed, hf_model):
    long_token = "," * 40  # punctuation: one piece per character
    doc = Doc(windowed.vocab, words=["Alice", long_token, "ran", "."])
    batch = docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096)
    counts = numpy.bincount(batch.piece_word, minlength=batch.n_words + 1)[: batch.n_words]
    assert counts.tolist() == [1, WINDOW, 1, 1]
    tensor = windowed.get_pipe("bert_encoder")(doc).tensor
    assert numpy.isfinite(tensor).all()
    # The capped word fills a window of its own: the reference sees its first WINDOW pieces.
    expected = hf_vectors(hf_model, ["," * WINDOW])[0]
    numpy.testing.assert_allclose(tensor[1], expected, atol=1e-4, rtol=0)


def test_chunking_by_max_batch_pieces(hf_checkpoint, windowed):
    small = bert_nlp(hf_checkpoint, hidden_width=32, window=WINDOW, max_batch_pieces=40)
    texts = alice_paragraphs()[:4]
    docs = [small.make_doc(text) for text in texts]
    batch = docs_to_batch(docs, pieces_of(small), WINDOW, 40)
    assert len(batch.chunks) > 3
    for input_ids, mask in batch.chunks:
        assert input_ids.size <= 40 or input_ids.shape[0] == 1
        if mask is not None:
            assert mask.shape == input_ids.shape and not mask.all()
    # Windows are sorted longest first, so chunks come out in non-increasing length.
    lengths = [ids.shape[1] for ids, _ in batch.chunks]
    assert lengths == sorted(lengths, reverse=True)
    chunked = [doc.tensor for doc in small.pipe(texts)]
    whole = [doc.tensor for doc in windowed.pipe(texts)]
    for a, b in zip(chunked, whole):
        numpy.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_doc_within_window_equals_unsplit(nlp, windowed):
    text = "Alice was very tired of the book."
    doc = windowed.make_doc(text)
    assert len(batch_windows(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096))) == 1
    numpy.testing.assert_allclose(windowed(text).tensor, nlp(text).tensor, atol=1e-6, rtol=0)


def test_invalid_window_is_rejected(hf_checkpoint):
    nlp = bert_nlp(hf_checkpoint, hidden_width=32, window=63)  # max_positions 64 - 2 = 62
    with pytest.raises(ValueError, match="window must be between 1 and"):
        nlp("Alice")
