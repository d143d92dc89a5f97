import numpy
import pytest

from spacy_bert_plugin.pretraining.masking import NOT_MASKED, mask_pieces

MASK_ID, VOCAB = 4, 1000


def positions(masked):
    return numpy.flatnonzero(masked.labels.ravel() != NOT_MASKED)


def random_batch(rng, rows=64, length=128, mean_word_pieces=1.6):
    ids = rng.integers(5, VOCAB, (rows, length))
    maskable = numpy.ones((rows, length), dtype=bool)
    maskable[:, 0] = maskable[:, -1] = False  # [CLS] ... [SEP]
    word_start = rng.random((rows, length)) < 1 / mean_word_pieces
    return ids, maskable, word_start


@pytest.mark.parametrize("unit", ["piece", "word", "span"])
@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_mask_rate_and_specials(unit, rate):
    rng = numpy.random.default_rng(0)
    ids, maskable, word_start = random_batch(rng)
    masked = mask_pieces(
        ids, maskable, word_start, rng, mask_id=MASK_ID, random_ids=(5, VOCAB), rate=rate, unit=unit
    )
    assert maskable.ravel()[positions(masked)].all(), "a special piece was masked"
    fraction = len(positions(masked)) / maskable.sum()
    assert fraction == pytest.approx(rate, abs=0.02)
    numpy.testing.assert_array_equal(masked.labels.ravel()[positions(masked)], ids.ravel()[positions(masked)])


def test_replacement_is_80_10_10():
    rng = numpy.random.default_rng(1)
    ids, maskable, word_start = random_batch(rng, rows=256)
    masked = mask_pieces(ids, maskable, word_start, rng, mask_id=MASK_ID, random_ids=(5, VOCAB), unit="piece")
    new = masked.input_ids.ravel()[positions(masked)]
    as_mask = (new == MASK_ID).mean()
    unchanged = (new == masked.labels.ravel()[positions(masked)]).mean()
    randomized = 1 - as_mask - unchanged
    assert as_mask == pytest.approx(0.8, abs=0.02)
    # A random replacement equals the original 1 time in 995: "unchanged" absorbs that.
    assert unchanged == pytest.approx(0.1, abs=0.02)
    assert randomized == pytest.approx(0.1, abs=0.02)
    assert ((new >= 5) | (new == MASK_ID)).all(), "random replacements must not be special pieces"
    untouched = numpy.ones(ids.size, dtype=bool)
    untouched[positions(masked)] = False
    numpy.testing.assert_array_equal(masked.input_ids.ravel()[untouched], ids.ravel()[untouched])


def test_whole_word_masking_takes_all_pieces_of_a_word():
    rng = numpy.random.default_rng(2)
    ids, maskable, word_start = random_batch(rng, mean_word_pieces=3.0)
    masked = mask_pieces(ids, maskable, word_start, rng, mask_id=MASK_ID, random_ids=(5, VOCAB), unit="word")
    chosen = numpy.zeros(ids.size, dtype=bool)
    chosen[positions(masked)] = True
    word_of_piece = numpy.cumsum(word_start.ravel() | ~maskable.ravel())
    for word in numpy.unique(word_of_piece[chosen]):
        in_word = (word_of_piece == word) & maskable.ravel()
        assert chosen[in_word].all(), "a word was masked only in part"
    assert (numpy.bincount(word_of_piece[chosen]) > 1).any(), "multi-piece words should occur"


def test_piece_masking_splits_words():
    rng = numpy.random.default_rng(3)
    ids, maskable, word_start = random_batch(rng, mean_word_pieces=3.0)
    masked = mask_pieces(ids, maskable, word_start, rng, mask_id=MASK_ID, random_ids=(5, VOCAB), unit="piece")
    chosen = numpy.zeros(ids.size, dtype=bool)
    chosen[positions(masked)] = True
    word_of_piece = numpy.cumsum(word_start.ravel() | ~maskable.ravel())
    partial = [
        w
        for w in numpy.unique(word_of_piece[chosen])
        if not chosen[(word_of_piece == w) & maskable.ravel()].all()
    ]
    assert partial, "piece masking should sometimes mask part of a word"


def test_span_masking_masks_runs_of_words():
    rng = numpy.random.default_rng(4)
    ids, maskable, _ = random_batch(rng)
    word_start = numpy.ones_like(maskable)  # one piece per word: runs of pieces are runs of words
    masked = mask_pieces(
        ids,
        maskable,
        word_start,
        rng,
        mask_id=MASK_ID,
        random_ids=(5, VOCAB),
        unit="span",
        mean_span_words=3.0,
    )
    chosen = numpy.zeros(ids.size, dtype=bool)
    chosen[positions(masked)] = True
    run_starts = chosen & ~numpy.concatenate([[False], chosen[:-1]])
    mean_run = chosen.sum() / run_starts.sum()
    assert mean_run > 2.0, f"spans should average about 3 words, got {mean_run:.2f}"


def test_at_least_one_position_is_masked():
    rng = numpy.random.default_rng(5)
    ids = numpy.array([[2, 10, 11, 3]])
    maskable = numpy.array([[False, True, True, False]])
    for _ in range(20):
        masked = mask_pieces(
            ids, maskable, numpy.ones_like(maskable), rng, mask_id=MASK_ID, random_ids=(5, VOCAB), rate=0.01
        )
        assert len(positions(masked)) >= 1
