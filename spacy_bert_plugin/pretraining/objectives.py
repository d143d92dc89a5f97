"""Pretraining objectives, in the `bert_objectives` registry that other packages extend through
the `spacy_bert_objectives` entry-point group.

An objective is a torch module: the modules it owns (e.g. RTD's generator) train with the
encoder, and are saved and resumed with it. A step calls, in order: `prepare` on the numpy batch
(e.g. masking), `before_encoder` on its tensors (e.g. a generator's replacements), the encoder,
then `loss`, which turns the encoder's output into the objective's weighted loss and metrics.
`pairing` tells the data which segment pairs it needs: None, "next" (NSP) or "order" (SOP); at
most one objective may ask for pairs. The objective that masks the input prepares first and
leaves its labels in `batch.extra[MASK_LABELS]`, where others (distillation) find the masked
positions. `loss` finds every layer's states in `tensors[LAYER_STATES]`.
"""

from typing import Dict, Optional, Tuple

import numpy
import torch
from spacy.util import registry
from torch import Tensor, nn
from torch.nn import functional as F

from ..bert.heads import BertForPretraining
from ..pieces import WordPieces
from .instances import Batch
from .masking import MASK_UNITS, NOT_MASKED, mask_pieces
from .settings import SettingsError

if not hasattr(registry, "bert_objectives"):
    registry.create("bert_objectives", entry_points=True)

Metrics = Dict[str, Tensor]  # detached scalars, read only when logged


Tensors = Dict[str, Tensor]  # the batch on the device: input_ids, token_type_ids, padding_mask
# batch.extra key of the masked input's labels: the original id where masked, NOT_MASKED elsewhere.
MASK_LABELS = "mask_labels"
# tensors key of the encoder's states: the embeddings' output and each layer's (a list).
LAYER_STATES = "layer_states"


class Objective(nn.Module):
    name: str = ""
    pairing: Optional[str] = None
    masks_input: bool = False  # at most one objective may mask the pieces
    heads: Tuple[str, ...] = ()  # the BertForPretraining heads it trains

    @property
    def score_keys(self) -> Tuple[str, ...]:
        """The held-out metrics a logger shows as scores."""
        return (f"eval_{self.name}_accuracy",)

    def __init__(self, weight: float = 1.0):
        super().__init__()
        if weight < 0:
            raise SettingsError(
                f"[bert_pretraining.objectives.{self.name}] weight = {weight} must not be negative"
            )
        self.weight = weight

    def fit_vocabulary(self, pieces: Optional[WordPieces], source: str) -> Optional[WordPieces]:
        """The vocabulary to train with, given the checkpoint's (`pieces`, read from `source`;
        None: one to be learnt from the corpus): `pieces`, unless the objective needs another (a
        teacher's), which it returns, or refuses `pieces` with a PretrainingError."""
        return pieces

    def setup(self, model: BertForPretraining, pieces: WordPieces) -> None:
        """Build the modules that depend on the model's sizes or vocabulary, before training."""

    def prepare(self, batch: Batch, pieces: WordPieces, rng: numpy.random.Generator) -> None:
        """Change the numpy batch in place before it goes to the device."""

    def before_encoder(self, model: BertForPretraining, tensors: Tensors, batch: Batch) -> Tensors:
        """The tensors the encoder reads (and anything `loss` needs later)."""
        return tensors

    def loss(
        self, model: BertForPretraining, hidden: Tensor, batch: Batch, tensors: Tensors
    ) -> Tuple[Tensor, Metrics]:
        """(weighted loss, metrics) from the encoder's last hidden states."""
        raise NotImplementedError


class MaskedLanguageModel(Objective):
    name = "mlm"
    masks_input = True
    heads = ("mlm_head",)

    def __init__(self, weight: float, mask_rate: float, unit: str, mean_span_words: float):
        super().__init__(weight)
        check_masking(self.name, mask_rate, unit)
        self.mask_rate = mask_rate
        self.unit = unit
        self.mean_span_words = mean_span_words

    def prepare(self, batch: Batch, pieces: WordPieces, rng: numpy.random.Generator) -> None:
        batch.extra[MASK_LABELS] = mask_batch(
            batch, pieces, rng, self.mask_rate, self.unit, self.mean_span_words
        )

    def loss(
        self, model: BertForPretraining, hidden: Tensor, batch: Batch, tensors: Tensors
    ) -> Tuple[Tensor, Metrics]:
        positions, labels = masked_positions(batch.extra[MASK_LABELS], hidden.device)
        # Vocabulary logits only at the masked positions.
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        logits = model.mlm_head(selected, model.encoder.embeddings.word.weight).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return self.weight * loss, {"mlm_loss": loss.detach(), "mlm_accuracy": accuracy}


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


class SegmentPairObjective(Objective):
    """Binary classification of the segment pair from the pooled [CLS] vector."""

    heads = ("nsp_head",)

    def __init__(self, weight: float):
        super().__init__(weight)

    def loss(
        self, model: BertForPretraining, hidden: Tensor, batch: Batch, tensors: Tensors
    ) -> Tuple[Tensor, Metrics]:
        labels = torch.from_numpy(batch.pair_labels).to(hidden.device)
        logits = model.nsp_head(model.encoder.pool(hidden)).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return self.weight * loss, {f"{self.name}_loss": loss.detach(), f"{self.name}_accuracy": accuracy}


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
