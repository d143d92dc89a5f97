"""BERT's masking for the masked-LM objective, by piece, whole word or span of words."""
from dataclasses import dataclass
from typing import Tuple

import numpy

MASK_UNITS = ("piece", "word", "span")


@dataclass
class Masked:
    input_ids: numpy.ndarray  # (batch, length) with the chosen positions replaced
    positions: numpy.ndarray  # flat indices into (batch * length) of the chosen positions
    labels: numpy.ndarray  # the original piece ids at those positions


def mask_pieces(
    input_ids: numpy.ndarray,
    maskable: numpy.ndarray,
    word_start: numpy.ndarray,
    rng: numpy.random.Generator,
    *,
    mask_id: int,
    random_ids: Tuple[int, int],
    rate: float = 0.15,
    unit: str = "word",
    mean_span_words: float = 3.0,
) -> Masked:
    """Choose about `rate` of the maskable pieces, whole units at a time, and replace them as BERT
    does: 80 % by [MASK], 10 % by a random piece from `random_ids` (a half-open id range), 10 %
    unchanged. `word_start` marks the first piece of each word; special pieces are not maskable."""
    if unit not in MASK_UNITS:
        raise ValueError(f"unknown masking unit {unit!r}; choose one of {MASK_UNITS}")
    flat_maskable = maskable.ravel()
    # Each piece's unit id: one per piece, or one per word (a word = a piece starting one, plus
    # the continuation pieces after it).
    starts = numpy.ones_like(flat_maskable) if unit == "piece" else word_start.ravel() | ~flat_maskable
    unit_of_piece = numpy.cumsum(starts) - 1
    n_units = int(unit_of_piece[-1]) + 1 if len(unit_of_piece) else 0
    if unit == "span":
        chosen_units = _span_units(n_units, rate, mean_span_words, rng)
    else:
        chosen_units = rng.random(n_units) < rate
    chosen = chosen_units[unit_of_piece] & flat_maskable
    if not chosen.any() and flat_maskable.any():
        chosen[rng.choice(numpy.flatnonzero(flat_maskable))] = True
    positions = numpy.flatnonzero(chosen)
    labels = input_ids.ravel()[positions]
    replaced = input_ids.copy().ravel()
    action = rng.random(len(positions))
    replaced[positions[action < 0.8]] = mask_id
    randomized = positions[(action >= 0.8) & (action < 0.9)]
    replaced[randomized] = rng.integers(random_ids[0], random_ids[1], len(randomized))
    return Masked(replaced.reshape(input_ids.shape), positions, labels)


def _span_units(n_units: int, rate: float, mean_span_words: float, rng: numpy.random.Generator) -> numpy.ndarray:
    """SpanBERT-style spans: starts drawn so that spans of geometric length (mean
    `mean_span_words`, at most 10) cover about `rate` of the words."""
    chosen = numpy.zeros(n_units, dtype=bool)
    starts = numpy.flatnonzero(rng.random(n_units) < rate / mean_span_words)
    lengths = numpy.minimum(rng.geometric(1.0 / mean_span_words, len(starts)), 10)
    for start, length in zip(starts, lengths):
        chosen[start : start + length] = True
    return chosen
