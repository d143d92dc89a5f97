"""Docs longer than the window: windows, sentence boundaries, capped words, batching."""

from typing import List

import numpy
import pytest
import torch
from spacy.tokens import Doc
from tiny_bert import alice_paragraphs, bert_nlp

from spacy_bert_plugin.layers.windows import docs_to_batch, window_bounds

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
    second = [words[i] for i in windows[1]]
    # 31 pieces: two windows of 16 + 15, cut at a word, not at the sentence (after 15 pieces).
    assert (n_pieces(hf_model, first), n_pieces(hf_model, second)) == (16, 15)
    assert len(first) != len(SENTENCES[0] + SENTENCES[1])
    tensor = windowed.get_pipe("bert_encoder")(doc).tensor
    numpy.testing.assert_allclose(tensor[: len(first)], hf_vectors(hf_model, first), atol=1e-4, rtol=0)


NO_SENTENCES = numpy.zeros(0, dtype=numpy.int64)


def test_long_doc_splits_into_equal_windows():
    # One piece per word: 600 pieces -> 300 + 300, not 510 + 90; 1021 -> 341 + 340 + 340.
    assert window_bounds(numpy.arange(600), NO_SENTENCES, 510) == [(0, 300), (300, 600)]
    assert window_bounds(numpy.arange(1021), NO_SENTENCES, 510) == [(0, 341), (341, 681), (681, 1021)]
    assert window_bounds(numpy.arange(510), NO_SENTENCES, 510) == [(0, 510)]


def test_equal_windows_break_at_the_sentence_start_nearest_the_share():
    # Sentences of 100, 180, 170 and 150 words (one piece each): the break nearest 300 is at 280.
    assert window_bounds(numpy.arange(600), numpy.array([0, 100, 280, 450]), 510) == [(0, 280), (280, 600)]
    # No sentence start fits in the first window: break at the word start nearest the share.
    assert window_bounds(numpy.arange(600), numpy.array([0, 550]), 510) == [(0, 300), (300, 600)]


@pytest.mark.parametrize("window", [16, 64, 510])
@pytest.mark.parametrize("with_sentences", [False, True])
def test_window_bounds_cover_the_doc_in_about_equal_windows(window, with_sentences):
    rng = numpy.random.default_rng(window)
    for _ in range(50):
        n_words = int(rng.integers(window, 5 * window))
        word_ids = numpy.repeat(numpy.arange(n_words), rng.integers(1, 5, n_words))  # 1-4 pieces a word
        sentences = numpy.flatnonzero(rng.random(n_words) < 0.1) if with_sentences else NO_SENTENCES
        bounds = window_bounds(word_ids, sentences, window)
        n, k = len(word_ids), -(-len(word_ids) // window)
        # Every piece exactly once, in order; no window too long; no word cut in two.
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:]))
        lengths = [end - start for start, end in bounds]
        assert 0 < min(lengths) and max(lengths) <= window
        breaks = [start for start, _ in bounds[1:]]
        assert all(word_ids[b] != word_ids[b - 1] for b in breaks)
        if with_sentences:
            # A break is at a sentence start whenever one fits in the window it ends.
            starts = set(numpy.searchsorted(word_ids, sentences).tolist())
            for start, end in bounds[:-1]:
                fits = [s for s in starts if start < s <= start + window]
                assert end in starts or not fits
        else:
            # k windows of about n / k pieces (a window or two more when the doc nearly fills k).
            assert k <= len(bounds) <= k + 2
            if len(bounds) == k:
                assert max(lengths) - min(lengths) <= 8


def test_chunks_do_not_mix_long_and_short_windows(windowed):
    texts = [" ".join(alice_paragraphs()[:2]), "Alice ran.", "She was very tired of the book."]
    docs = [windowed.make_doc(text) for text in texts]
    batch = docs_to_batch(docs, pieces_of(windowed), WINDOW, 4096)
    assert len(batch.chunks) > 1
    for input_ids, mask in batch.chunks:
        if mask is not None:
            assert (mask.sum(axis=1) > input_ids.shape[1] // 2).all()
    # Chunked apart or together, every doc gets the vectors it gets alone.
    for text, doc in zip(texts, windowed.pipe(texts)):
        numpy.testing.assert_allclose(doc.tensor, windowed(text).tensor, atol=1e-5, rtol=0)


def test_sentence_longer_than_window_breaks_at_words(windowed):
    long_sentence = "alice was very tired of the book and she had peeped into the book .".split()
    doc = sentence_doc(windowed, [SENTENCES[0], long_sentence], mark_sentences=True)
    windows = batch_windows(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096))
    assert sorted(w[0] for w in windows)[:2] == [0, len(SENTENCES[0])]
    assert all(
        len(w) <= WINDOW for w in window_pieces(docs_to_batch([doc], pieces_of(windowed), WINDOW, 4096))
    )
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
