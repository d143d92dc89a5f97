"""BERT's masking for the masked-LM objectives (MLM, RTD), by piece, whole word or span of words."""

from dataclasses import dataclass
from typing import Tuple

import numpy
import torch
from torch import Tensor

from ..errors import SettingsError
from ..pieces import WordPieces
from .instances import Batch

MASK_UNITS = ("piece", "word", "span")


NOT_MASKED = -100  # label of the positions the loss ignores (as in Hugging Face)


@dataclass
class Masked:
    input_ids: numpy.ndarray  # (batch, length) with the chosen positions replaced
    labels: numpy.ndarray  # (batch, length): the original piece id where chosen, else NOT_MASKED


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
    labels = numpy.full(input_ids.size, NOT_MASKED, dtype=numpy.int64)
    labels[positions] = input_ids.ravel()[positions]
    replaced = input_ids.copy().ravel()
    action = rng.random(len(positions))
    replaced[positions[action < 0.8]] = mask_id
    randomized = positions[(action >= 0.8) & (action < 0.9)]
    replaced[randomized] = rng.integers(random_ids[0], random_ids[1], len(randomized))
    return Masked(replaced.reshape(input_ids.shape), labels.reshape(input_ids.shape))


def _span_units(
    n_units: int, rate: float, mean_span_words: float, rng: numpy.random.Generator
) -> numpy.ndarray:
    """SpanBERT-style spans of geometric length (mean `mean_span_words`, at most 10) at random
    starts, added until they cover `rate` of the words (overlaps count once)."""
    chosen = numpy.zeros(n_units, dtype=bool)
    budget = int(round(rate * n_units))
    covered = 0
    while covered < budget:
        n_spans = max(1, int((budget - covered) / mean_span_words))
        starts = rng.integers(0, n_units, n_spans)
        lengths = numpy.minimum(rng.geometric(1.0 / mean_span_words, n_spans), 10)
        for start, length in zip(starts, lengths):
            covered -= int(chosen[start : start + length].sum())
            chosen[start : start + length] = True
            covered += len(chosen[start : start + length])
            if covered >= budget:
                break
    return chosen


def check_masking(name: str, mask_rate: float, unit: str) -> None:
    if not 0 < mask_rate < 1:
        raise SettingsError(
            f"[bert_pretraining.objectives.{name}] mask_rate = {mask_rate} must be between 0 and 1 (exclusive)"
        )
    if unit not in MASK_UNITS:
        raise SettingsError(
            f"[bert_pretraining.objectives.{name}] unit = {unit!r} is not a masking unit; use one of "
            + ", ".join(f'"{u}"' for u in MASK_UNITS)
        )


def mask_batch(
    batch: Batch,
    pieces: WordPieces,
    rng: numpy.random.Generator,
    rate: float,
    unit: str,
    mean_span_words: float,
) -> numpy.ndarray:
    """Mask the batch's input as BERT does; returns the labels (original id where masked)."""
    masked = mask_pieces(
        batch.input_ids,
        batch.maskable,
        batch.word_start,
        rng,
        mask_id=pieces.mask_id,
        random_ids=(len(pieces.special_ids), pieces.vocab_size),
        rate=rate,
        unit=unit,
        mean_span_words=mean_span_words,
    )
    batch.input_ids = masked.input_ids
    return masked.labels


def masked_positions(labels: numpy.ndarray, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Flat indices of the masked positions and their original ids, on `device`."""
    flat = labels.ravel()
    positions = numpy.flatnonzero(flat != NOT_MASKED)
    return torch.from_numpy(positions).to(device), torch.from_numpy(flat[positions]).to(device)
