"""Docs -> windows of word pieces, ready for the encoder.

A doc becomes `[CLS] pieces [SEP]` when it fits in the window. A longer doc of n pieces is cut
into about k = ceil(n / window) windows of about n / k pieces (600 pieces, window 510: 300 + 300,
not 510 + 90), breaking at the sentence start nearest each equal share where one fits, else at
the nearest word start; a word never straddles two windows. Windows from all docs are sorted by
length and grouped into chunks of at most `max_batch_pieces` pieces, each holding only windows
longer than half its longest, so little compute goes into padding.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc

from ..pieces import WordPieces

Chunk = Tuple[numpy.ndarray, Optional[numpy.ndarray]]


@dataclass
class PieceBatch:
    chunks: List[Chunk]  # (input_ids (windows, length), padding mask or None when unpadded)
    piece_word: numpy.ndarray  # word row of each piece in the flattened chunks; n_words = none
    n_words: int
    doc_lengths: List[int]


def docs_to_batch(docs: Sequence[Doc], pieces: WordPieces, window: int, max_batch_pieces: int) -> PieceBatch:
    encoded = pieces.encode_words([[token.text for token in doc] for doc in docs])
    windows: List[Tuple[numpy.ndarray, numpy.ndarray]] = []  # (piece ids, global word rows)
    offset = 0
    for doc, (ids, word_ids) in zip(docs, encoded):
        ids, word_ids = _cap_pieces_per_word(ids, word_ids, window)
        for start, end in window_bounds(word_ids, _sentence_start_words(doc), window):
            windows.append((ids[start:end], word_ids[start:end] + offset))
        offset += len(doc)
    return _chunk_windows(windows, pieces, offset, [len(doc) for doc in docs], max_batch_pieces)


def window_bounds(
    word_ids: numpy.ndarray, sentence_starts: numpy.ndarray, window: int
) -> List[Tuple[int, int]]:
    """Piece ranges of at most `window` pieces that cover the doc. Each break aims at an equal
    share of what is left over ceil(left / window) windows: the nearest sentence start that fits,
    else the nearest word start that fits."""
    n_pieces = len(word_ids)
    if n_pieces <= window:
        return [(0, n_pieces)] if n_pieces else []
    word_starts = numpy.flatnonzero(numpy.diff(word_ids)) + 1
    sentence_of_piece = numpy.searchsorted(sentence_starts, word_ids, side="right")
    sentence_breaks = numpy.flatnonzero(numpy.diff(sentence_of_piece)) + 1
    bounds = []
    start = 0
    while n_pieces - start > window:
        n_windows = -(-(n_pieces - start) // window)
        target = start + -(-(n_pieces - start) // n_windows)
        # A break that leaves the rest n_windows - 1 windows is nearer `target` than any that does not.
        end = _nearest_break(sentence_breaks, start, start + window, target)
        if end is None:
            end = _nearest_break(word_starts, start, start + window, target)
        bounds.append((start, end))
        start = end
    bounds.append((start, n_pieces))
    return bounds


def _nearest_break(breaks: numpy.ndarray, start: int, limit: int, target: int) -> Optional[int]:
    """The break in (start, limit] nearest `target`, or None."""
    lo, hi = numpy.searchsorted(breaks, [start, limit], side="right")
    if lo == hi:
        return None
    candidates = breaks[lo:hi]
    return int(candidates[numpy.abs(candidates - target).argmin()])


def _cap_pieces_per_word(
    ids: numpy.ndarray, word_ids: numpy.ndarray, window: int
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Keep at most `window` pieces of any one word (a 10,000-character token of punctuation
    would otherwise need a window of its own that does not exist)."""
    first_piece = numpy.searchsorted(word_ids, word_ids, side="left")
    keep = numpy.arange(len(ids)) - first_piece < window
    return (ids, word_ids) if keep.all() else (ids[keep], word_ids[keep])


def _sentence_start_words(doc: Doc) -> numpy.ndarray:
    if not (doc.has_annotation("SENT_START") or doc.has_annotation("DEP")):
        return numpy.zeros(0, dtype=numpy.int64)
    return numpy.asarray([sent.start for sent in doc.sents], dtype=numpy.int64)


def _chunk_windows(
    windows: List[Tuple[numpy.ndarray, numpy.ndarray]],
    pieces: WordPieces,
    n_words: int,
    doc_lengths: List[int],
    max_batch_pieces: int,
) -> PieceBatch:
    windows.sort(key=lambda w: len(w[0]), reverse=True)
    lengths = numpy.array([len(ids) + 2 for ids, _ in windows], dtype=numpy.int64)
    chunks: List[Chunk] = []
    piece_word: List[numpy.ndarray] = []
    i = 0
    while i < len(windows):
        length = int(lengths[i])
        # At most max_batch_pieces // length windows, all longer than half of the longest.
        similar = int(numpy.searchsorted(-lengths, -(length // 2), side="left"))
        group = windows[i : min(i + max(1, max_batch_pieces // length), similar)]
        input_ids = numpy.full((len(group), length), pieces.pad_id, dtype=numpy.int64)
        rows = numpy.full((len(group), length), n_words, dtype=numpy.int64)
        for row, (ids, words) in enumerate(group):
            input_ids[row, 0] = pieces.cls_id
            input_ids[row, 1 : len(ids) + 1] = ids
            input_ids[row, len(ids) + 1] = pieces.sep_id
            rows[row, 1 : len(ids) + 1] = words
        group_lengths = lengths[i : i + len(group)]
        padded = group_lengths.min() < length
        mask = numpy.arange(length)[None, :] < group_lengths[:, None] if padded else None
        chunks.append((input_ids, mask))
        piece_word.append(rows.ravel())
        i += len(group)
    flat = numpy.concatenate(piece_word) if piece_word else numpy.zeros(0, dtype=numpy.int64)
    return PieceBatch(chunks, flat, n_words, doc_lengths)
