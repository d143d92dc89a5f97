"""Pretraining objectives, in the `bert_objectives` registry (settings.py), registered through
the `spacy_bert_objectives` entry-point group (setup.cfg), which other packages extend too.

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
from torch import Tensor, nn
from torch.nn import functional as F

from ..bert.heads import BertForPretraining
from ..errors import SettingsError
from ..pieces import WordPieces
from .instances import Batch
from .masking import check_masking, mask_batch, masked_positions

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


class SegmentPairObjective(Objective):
    """Binary classification of the segment pair from the pooled [CLS] vector."""

    heads = ("pair_head",)

    def __init__(self, weight: float):
        super().__init__(weight)

    def loss(
        self, model: BertForPretraining, hidden: Tensor, batch: Batch, tensors: Tensors
    ) -> Tuple[Tensor, Metrics]:
        labels = torch.from_numpy(batch.pair_labels).to(hidden.device)
        logits = model.pair_head(model.encoder.pool(hidden)).float()
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


def make_mlm(
    weight: float = 1.0, mask_rate: float = 0.15, unit: str = "word", mean_span_words: float = 3.0
) -> Objective:
    """Masked LM; `unit` is "piece", "word" (all pieces of a spaCy token) or "span" of words."""
    return MaskedLanguageModel(weight, mask_rate, unit, mean_span_words)


def make_nsp(weight: float = 1.0) -> Objective:
    return NextSentencePrediction(weight)


def make_sop(weight: float = 1.0) -> Objective:
    return SentenceOrderPrediction(weight)
