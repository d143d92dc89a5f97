"""Training sequences from a piece corpus: segment pairs for NSP/SOP, length-bucketed batches.

An instance is `(a_start, a_end, b_start, b_end, label)`, piece ranges in the corpus; segment B
is empty (b_start == b_end) when no pair objective is used. Each sequence is
`[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]`).
"""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import numpy

from ..errors import CorpusError
from .corpus import PieceCorpus

PAIRINGS = (None, "next", "order")  # no pairs; NSP (next or random); SOP (in order or swapped)
SHORT_SEQUENCE_PROB = 0.1  # as in BERT: some shorter sequences, so fine-tuning on short input works


@dataclass
class Batch:
    input_ids: numpy.ndarray  # (batch, length)
    token_type_ids: numpy.ndarray
    padding_mask: Optional[numpy.ndarray]  # None when every row is full length
    maskable: numpy.ndarray  # pieces that masking may choose (not [CLS], [SEP] or padding)
    word_start: numpy.ndarray
    pair_labels: numpy.ndarray  # 1 = B follows A (NSP) / segments swapped (SOP)
    n_pieces: int  # real pieces, without padding
    extra: Dict[str, numpy.ndarray] = field(default_factory=dict)  # per-row arrays objectives prepare

    def rows(self, selection: slice) -> "Batch":
        """The batch restricted to some rows (a data-parallel rank's share)."""
        mask = self.padding_mask[selection] if self.padding_mask is not None else None
        n_pieces = int(mask.sum()) if mask is not None else self.input_ids[selection].size
        if mask is not None and mask.all():
            mask = None
        return Batch(
            self.input_ids[selection],
            self.token_type_ids[selection],
            mask,
            self.maskable[selection],
            self.word_start[selection],
            self.pair_labels[selection],
            n_pieces,
            {key: value[selection] for key, value in self.extra.items()},
        )


def make_instances(
    corpus: PieceCorpus, max_length: int, pairing: Optional[str], rng: numpy.random.Generator
) -> numpy.ndarray:
    """All instances of one pass over the corpus, as an (n, 5) int64 array."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; choose one of {PAIRINGS}")
    check_pairing(corpus, pairing, "a corpus")
    budget = max_length - (3 if pairing else 2)
    sent = numpy.asarray(corpus.sentence_offsets)
    docs = numpy.asarray(corpus.doc_offsets)
    instances: List[tuple] = []
    for d in range(corpus.n_docs):
        first, last = int(docs[d]), int(docs[d + 1])
        i = first
        while i < last:
            target = budget if rng.random() >= SHORT_SEQUENCE_PROB else int(rng.integers(2, budget + 1))
            j = i + 1
            while j < last and sent[j] - sent[i] < target:
                j += 1
            if pairing is None:
                instances.append((sent[i], min(sent[j], sent[i] + budget), 0, 0, 0))
                i = j
                continue
            label = int(rng.random() < 0.5)
            if j - i >= 2:
                split = int(rng.integers(i + 1, j))
                middle = int(sent[split])
            else:  # one sentence: cut it at a word start near its middle
                split, middle = j, _middle_word_start(corpus, int(sent[i]), int(sent[j]))
            a, b = (int(sent[i]), middle), (middle, int(sent[j]))
            if pairing == "next" and (label == 1 or b[0] == b[1]):
                b = _random_segment(corpus, d, target - (a[1] - a[0]), rng)
                label = 1
                j = split  # the unused sentences start the next instance
            elif b[0] == b[1]:  # a one-word chunk cannot be split into a pair
                i = j
                continue
            elif pairing == "order" and label == 1:
                a, b = b, a
            a, b = _truncate_pair(a, b, budget, rng)
            instances.append((a[0], a[1], b[0], b[1], label))
            i = j
    return numpy.asarray(instances, dtype=numpy.int64).reshape(-1, 5)


def check_pairing(corpus: PieceCorpus, pairing: Optional[str], which: str) -> None:
    """That `corpus` can give `pairing`'s pairs: NSP draws a random next segment from another
    document, so a corpus of one document would label continuations "random"."""
    if pairing == "next" and corpus.n_docs == 1:
        raise CorpusError(
            f"NSP needs at least two documents (a random next segment comes from another one), and "
            f"{which} has one: separate documents by blank lines (.txt) or put one per line (.jsonl), "
            "set [bert_pretraining] heldout_docs to 0 or at least 2, or use SOP"
        )


def _middle_word_start(corpus: PieceCorpus, start: int, end: int) -> int:
    """The word start nearest the middle of pieces start:end (`end` if there is only one word)."""
    word_starts = start + numpy.flatnonzero(corpus.word_start[start:end])
    inner = word_starts[word_starts > start]
    if not len(inner):
        return end
    return int(inner[numpy.abs(inner - (start + end) / 2).argmin()])


def _random_segment(corpus: PieceCorpus, not_doc: int, target: int, rng: numpy.random.Generator) -> tuple:
    other = int(rng.integers(0, corpus.n_docs - 1))
    other += other >= not_doc
    first, last = int(corpus.doc_offsets[other]), int(corpus.doc_offsets[other + 1])
    start = int(rng.integers(first, last))
    end = start + 1
    while end < last and corpus.sentence_offsets[end] - corpus.sentence_offsets[start] < max(target, 1):
        end += 1
    return int(corpus.sentence_offsets[start]), int(corpus.sentence_offsets[end])


def _truncate_pair(a: tuple, b: tuple, budget: int, rng: numpy.random.Generator) -> tuple:
    """Trim the longer segment, from its front or back at random, until the pair fits."""
    a, b = list(a), list(b)
    while (a[1] - a[0]) + (b[1] - b[0]) > budget:
        longer, shorter = (a, b) if a[1] - a[0] >= b[1] - b[0] else (b, a)
        excess = (a[1] - a[0]) + (b[1] - b[0]) - budget
        cut = max(1, min(excess, (longer[1] - longer[0]) - (shorter[1] - shorter[0])))
        if rng.random() < 0.5:
            longer[0] += cut
        else:
            longer[1] -= cut
    return tuple(a), tuple(b)


def bucket_batches(
    instances: numpy.ndarray,
    batch_tokens: int,
    rng: numpy.random.Generator,
    min_rows: int = 1,
    pool_batches: int = 50,
) -> List[numpy.ndarray]:
    """Shuffle, then sort pools of about `pool_batches` batches by length and cut them into
    batches of at most `batch_tokens` padded pieces, so padding stays small; batch order is
    shuffled again. Every batch has at least `min_rows` rows (one per data-parallel rank): a
    shorter pool remainder is dropped. Returns index arrays into `instances`."""
    order = rng.permutation(len(instances))
    lengths = _lengths(instances)
    mean_length = max(1.0, float(lengths.mean())) if len(lengths) else 1.0
    pool = max(1, int(pool_batches * batch_tokens / mean_length))
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[numpy.argsort(-lengths[chunk], kind="stable")]
        i = 0
        while i < len(chunk):
            size = max(min_rows, batch_tokens // int(lengths[chunk[i]]))
            if len(chunk) - i >= min_rows:
                batches.append(chunk[i : i + size])
            i += size
    return [batches[i] for i in rng.permutation(len(batches))]


def _lengths(instances: numpy.ndarray) -> numpy.ndarray:
    has_b = instances[:, 3] > instances[:, 2]
    return instances[:, 1] - instances[:, 0] + instances[:, 3] - instances[:, 2] + 2 + has_b


def build_batch(
    corpus: PieceCorpus, instances: numpy.ndarray, cls_id: int, sep_id: int, pad_id: int
) -> Batch:
    lengths = _lengths(instances)
    width = int(lengths.max())
    rows = len(instances)
    input_ids = numpy.full((rows, width), pad_id, dtype=numpy.int64)
    token_type_ids = numpy.zeros((rows, width), dtype=numpy.int64)
    maskable = numpy.zeros((rows, width), dtype=bool)
    word_start = numpy.ones((rows, width), dtype=bool)
    for row, (a0, a1, b0, b1, _) in enumerate(instances):
        n_a = a1 - a0
        input_ids[row, 0] = cls_id
        input_ids[row, 1 : n_a + 1] = corpus.ids[a0:a1]
        word_start[row, 1 : n_a + 1] = corpus.word_start[a0:a1]
        word_start[row, 1] = True
        input_ids[row, n_a + 1] = sep_id
        maskable[row, 1 : n_a + 1] = True
        if b1 > b0:
            n_b = b1 - b0
            input_ids[row, n_a + 2 : n_a + 2 + n_b] = corpus.ids[b0:b1]
            word_start[row, n_a + 2 : n_a + 2 + n_b] = corpus.word_start[b0:b1]
            word_start[row, n_a + 2] = True
            input_ids[row, n_a + 2 + n_b] = sep_id
            token_type_ids[row, n_a + 2 : n_a + 3 + n_b] = 1
            maskable[row, n_a + 2 : n_a + 2 + n_b] = True
    padded = bool((lengths < width).any())
    padding_mask = numpy.arange(width)[None, :] < lengths[:, None] if padded else None
    return Batch(
        input_ids,
        token_type_ids,
        padding_mask,
        maskable,
        word_start,
        instances[:, 4].copy(),
        int(lengths.sum()),
    )


def iterate_batches(
    corpus: PieceCorpus,
    max_length: int,
    pairing: Optional[str],
    batch_tokens: int,
    seed: int,
    start_epoch: int = 0,
    min_rows: int = 1,
) -> Iterator[tuple]:
    """(epoch, index in epoch, instance indices) forever; each epoch's instances and batch order
    come from `seed` and the epoch number alone, so a resumed run sees the same stream."""
    epoch = start_epoch
    while True:
        rng = numpy.random.default_rng([seed, epoch])
        instances = make_instances(corpus, max_length, pairing, rng)
        if not len(instances):
            raise CorpusError("the training corpus yields no sequences: it has no text with pieces")
        for i, batch in enumerate(bucket_batches(instances, batch_tokens, rng, min_rows)):
            yield epoch, i, instances[batch]
        epoch += 1
