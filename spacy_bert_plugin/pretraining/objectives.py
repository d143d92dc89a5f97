"""Pretraining objectives, in the `bert_objectives` registry that other packages extend through
the `spacy_bert_objectives` entry-point group.

An objective may change the batch before the encoder runs (`prepare`, e.g. masking) and turns
the encoder's output into a loss and metrics (`loss`). `pairing` tells the data which segment
pairs it needs: None, "next" (NSP) or "order" (SOP); at most one objective may ask for pairs.
"""

from typing import Dict, Optional, Tuple

import numpy
import torch
from spacy.util import registry
from torch import Tensor
from torch.nn import functional as F

from ..bert.heads import BertForPretraining
from ..pieces import WordPieces
from .instances import Batch
from .masking import MASK_UNITS, NOT_MASKED, mask_pieces

if not hasattr(registry, "bert_objectives"):
    registry.create("bert_objectives", entry_points=True)

Metrics = Dict[str, Tensor]  # detached scalars, read only when logged


class Objective:
    name: str = ""
    pairing: Optional[str] = None

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def prepare(self, batch: Batch, pieces: WordPieces, rng: numpy.random.Generator) -> None:
        """Change the batch in place before the forward pass."""

    def loss(self, model: BertForPretraining, hidden: Tensor, batch: Batch) -> Tuple[Tensor, Metrics]:
        raise NotImplementedError


class MaskedLanguageModel(Objective):
    name = "mlm"

    def __init__(self, weight: float, mask_rate: float, unit: str, mean_span_words: float):
        super().__init__(weight)
        if not 0 < mask_rate < 1:
            raise ValueError(f"mask_rate must be between 0 and 1, not {mask_rate}")
        if unit not in MASK_UNITS:
            raise ValueError(f"unit must be one of {MASK_UNITS}, not {unit!r}")
        self.mask_rate = mask_rate
        self.unit = unit
        self.mean_span_words = mean_span_words

    def prepare(self, batch: Batch, pieces: WordPieces, rng: numpy.random.Generator) -> None:
        masked = mask_pieces(
            batch.input_ids,
            batch.maskable,
            batch.word_start,
            rng,
            mask_id=pieces.mask_id,
            random_ids=(len(pieces.special_ids), pieces.vocab_size),
            rate=self.mask_rate,
            unit=self.unit,
            mean_span_words=self.mean_span_words,
        )
        batch.input_ids = masked.input_ids
        batch.extra["mlm_labels"] = masked.labels

    def loss(self, model: BertForPretraining, hidden: Tensor, batch: Batch) -> Tuple[Tensor, Metrics]:
        device = hidden.device
        flat_labels = batch.extra["mlm_labels"].ravel()
        positions = numpy.flatnonzero(flat_labels != NOT_MASKED)
        labels = torch.from_numpy(flat_labels[positions]).to(device)
        positions = torch.from_numpy(positions).to(device)
        # Vocabulary logits only at the masked positions.
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        logits = model.mlm_head(selected, model.encoder.embeddings.word.weight).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"mlm_loss": loss.detach(), "mlm_accuracy": accuracy}


class SegmentPairObjective(Objective):
    """Binary classification of the segment pair from the pooled [CLS] vector."""

    def __init__(self, weight: float):
        super().__init__(weight)

    def loss(self, model: BertForPretraining, hidden: Tensor, batch: Batch) -> Tuple[Tensor, Metrics]:
        labels = torch.from_numpy(batch.pair_labels).to(hidden.device)
        logits = model.nsp_head(model.encoder.pool(hidden)).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {f"{self.name}_loss": loss.detach(), f"{self.name}_accuracy": accuracy}


class NextSentencePrediction(SegmentPairObjective):
    """Is segment B the text that follows A (label 0) or from another document (label 1)?"""

    name = "nsp"
    pairing = "next"


class SentenceOrderPrediction(SegmentPairObjective):
    """Are two consecutive segments in order (label 0) or swapped (label 1)? (ALBERT)"""

    name = "sop"
    pairing = "order"


@registry.bert_objectives("spacy_bert_plugin.MLM.v1")
def make_mlm(
    weight: float = 1.0, mask_rate: float = 0.15, unit: str = "word", mean_span_words: float = 3.0
) -> Objective:
    """Masked LM; `unit` is "piece", "word" (all pieces of a spaCy token) or "span" of words."""
    return MaskedLanguageModel(weight, mask_rate, unit, mean_span_words)


@registry.bert_objectives("spacy_bert_plugin.NSP.v1")
def make_nsp(weight: float = 1.0) -> Objective:
    return NextSentencePrediction(weight)


@registry.bert_objectives("spacy_bert_plugin.SOP.v1")
def make_sop(weight: float = 1.0) -> Objective:
    return SentenceOrderPrediction(weight)
