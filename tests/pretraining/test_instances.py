import numpy
import pytest
from pretraining_data import synthetic_corpus

from spacy_bert_plugin.errors import CorpusError
from spacy_bert_plugin.pretraining.instances import (
    bucket_batches,
    build_batch,
    iterate_batches,
    make_instances,
)

CLS, SEP, PAD = 2, 3, 0


def doc_and_sentence(corpus, offset):
    piece = int(corpus.ids[offset])
    return piece // 1000, piece % 1000


def test_nsp_pairs_are_half_continuations_half_random():
    corpus = synthetic_corpus([8, 1, 3] * 40)
    rng = numpy.random.default_rng(0)
    instances = make_instances(corpus, max_length=40, pairing="next", rng=rng)
    labels = instances[:, 4]
    assert 0.44 < labels.mean() < 0.56
    for a0, a1, b0, b1, label in instances:
        assert a1 > a0 and b1 > b0
        assert (a1 - a0) + (b1 - b0) + 3 <= 40
        a_doc, _ = doc_and_sentence(corpus, a1 - 1)
        b_doc, _ = doc_and_sentence(corpus, b0)
        if label == 0:
            assert b_doc == a_doc, "a continuation must come from the same document"
        else:
            assert b_doc != a_doc, "a random next segment must come from another document"


def test_nsp_continuations_follow_a_directly_when_untruncated():
    corpus = synthetic_corpus([6] * 20, sentence_length=5)
    instances = make_instances(corpus, max_length=128, pairing="next", rng=numpy.random.default_rng(1))
    continuations = instances[instances[:, 4] == 0]
    assert len(continuations)
    assert (continuations[:, 1] == continuations[:, 2]).all(), "B must start where A ends"


def test_sop_pairs_are_in_order_or_swapped():
    corpus = synthetic_corpus([6] * 200, sentence_length=5)
    instances = make_instances(corpus, max_length=128, pairing="order", rng=numpy.random.default_rng(2))
    assert 0.44 < instances[:, 4].mean() < 0.56
    for a0, a1, b0, b1, label in instances:
        assert doc_and_sentence(corpus, a0)[0] == doc_and_sentence(corpus, b0)[0]
        assert (a1 == b0) if label == 0 else (b1 == a0)


def test_without_pairs_sequences_fill_the_budget():
    corpus = synthetic_corpus([30] * 5, sentence_length=10)
    instances = make_instances(corpus, max_length=64, pairing=None, rng=numpy.random.default_rng(3))
    assert (instances[:, 3] == instances[:, 2]).all()
    lengths = instances[:, 1] - instances[:, 0] + 2
    assert lengths.max() <= 64
    assert numpy.median(lengths) >= 50, "most sequences should be near max_length"


def test_build_batch_layout():
    corpus = synthetic_corpus([4, 4], sentence_length=3)
    instances = numpy.array([[0, 6, 6, 9, 0], [12, 15, 3, 6, 1]])
    batch = build_batch(corpus, instances, CLS, SEP, PAD)
    assert batch.input_ids.shape == (2, 12)
    assert batch.padding_mask is not None and batch.padding_mask[1].sum() == 9
    row = batch.input_ids[0]
    assert row[0] == CLS and row[7] == SEP and row[11] == SEP
    numpy.testing.assert_array_equal(batch.token_type_ids[0], [0] * 8 + [1] * 4)
    assert not batch.maskable[0, [0, 7, 11]].any() and batch.maskable[0, 1:7].all()
    assert (batch.input_ids[1, 9:] == PAD).all() and not batch.maskable[1, 9:].any()
    assert batch.n_pieces == 12 + 9
    numpy.testing.assert_array_equal(batch.pair_labels, [0, 1])


def test_bucketing_bounds_batches_and_padding():
    corpus = synthetic_corpus([10] * 200, sentence_length=9)
    rng = numpy.random.default_rng(4)
    instances = make_instances(corpus, max_length=128, pairing="next", rng=rng)
    batches = bucket_batches(instances, batch_tokens=1024, rng=rng)
    used = numpy.sort(numpy.concatenate(batches))
    numpy.testing.assert_array_equal(used, numpy.arange(len(instances)))
    padded = real = 0
    for indices in batches:
        batch = build_batch(corpus, instances[indices], CLS, SEP, PAD)
        assert batch.input_ids.size <= 1024 or len(indices) == 1
        padded += batch.input_ids.size
        real += batch.n_pieces
    assert real / padded > 0.95, f"length bucketing should leave little padding, got {1 - real / padded:.1%}"


def test_batch_stream_is_determined_by_seed_and_epoch():
    corpus = synthetic_corpus([5] * 30)
    first = [b for _, (_, _, b) in zip(range(10), iterate_batches(corpus, 64, "next", 512, seed=7))]
    again = [b for _, (_, _, b) in zip(range(10), iterate_batches(corpus, 64, "next", 512, seed=7))]
    other = [b for _, (_, _, b) in zip(range(10), iterate_batches(corpus, 64, "next", 512, seed=8))]
    assert all(numpy.array_equal(x, y) for x, y in zip(first, again))
    assert not all(numpy.array_equal(x, y) for x, y in zip(first, other) if x.shape == y.shape)


def test_unknown_pairing():
    with pytest.raises(ValueError, match="pairing"):
        make_instances(synthetic_corpus([2]), 32, "shuffle", numpy.random.default_rng(0))


def test_nsp_on_one_document_is_refused_not_mislabelled():
    """With one document there is no other one to draw a random next segment from."""
    corpus = synthetic_corpus([40])
    with pytest.raises(CorpusError, match="NSP needs at least two documents"):
        make_instances(corpus, max_length=40, pairing="next", rng=numpy.random.default_rng(0))
    # SOP pairs within a document and needs no second one.
    instances = make_instances(corpus, max_length=40, pairing="order", rng=numpy.random.default_rng(0))
    assert len(instances) and set(instances[:, 4]) == {0, 1}
