"""ELECTRA's replaced-token detection (Clark et al. 2020), `spacy_bert_plugin.RTD.v1`.

A small generator, a BERT of a fraction of the encoder's width that shares its embeddings, fills
the masked positions with pieces sampled from its masked-LM predictions; the encoder (the
discriminator) then tells at every position whether the piece is the original or a replacement.
The encoder learns from every position instead of the masked ones only. The sampling is discrete,
so no gradient flows from the discriminator's loss into the generator.
"""

from dataclasses import replace
from typing import Optional, Tuple

import numpy
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..bert.encoder import BertLayer, init_weights
from ..bert.heads import BertForPretraining, MaskedLMHead
from ..errors import SettingsError
from ..pieces import WordPieces
from .instances import Batch
from .masking import check_masking, mask_batch, masked_positions
from .objectives import MASK_LABELS, Metrics, Objective, Tensors


class Generator(nn.Module):
    """Embeddings (the encoder's, projected to the generator's width) -> transformer layers ->
    masked-LM logits over the vocabulary, tied to the encoder's word embeddings."""

    def __init__(self, model: BertForPretraining, width_fraction: float, num_layers: Optional[int]):
        super().__init__()
        config = model.config
        width = max(1, round(config.hidden_width * width_fraction))
        heads = max(1, round(config.num_heads * width_fraction))
        while width % heads:
            heads -= 1
        self.config = replace(
            config,
            hidden_width=width,
            num_heads=heads,
            intermediate_width=max(1, round(config.intermediate_width * width_fraction)),
            num_layers=num_layers or config.num_layers,
        )
        self.project = nn.Linear(config.hidden_width, width)
        self.layers = nn.ModuleList(BertLayer(self.config) for _ in range(self.config.num_layers))
        # The head maps back to the embedding width, where the tied vocabulary projection lives.
        self.head = MaskedLMHead(config, input_width=width)
        for module in (self.project, *self.layers):
            module.apply(init_weights)

    def forward(self, embedded: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        x = self.project(embedded)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


class ReplacedTokenDetection(Objective):
    name = "rtd"
    masks_input = True
    score_keys = ("eval_rtd_accuracy", "eval_rtd_replaced_recall", "eval_generator_mlm_accuracy")

    def __init__(
        self,
        weight: float,
        generator_weight: float,
        mask_rate: float,
        unit: str,
        mean_span_words: float,
        generator_width_fraction: float,
        generator_layers: Optional[int],
    ):
        super().__init__(weight)
        key = f"[bert_pretraining.objectives.{self.name}]"
        check_masking(self.name, mask_rate, unit)
        if generator_weight < 0:
            raise SettingsError(f"{key} generator_weight = {generator_weight} must not be negative")
        if not 0 < generator_width_fraction <= 1:
            raise SettingsError(
                f"{key} generator_width_fraction = {generator_width_fraction} must be in (0, 1]: the "
                "generator's width as a share of the encoder's"
            )
        if generator_layers is not None and generator_layers < 1:
            raise SettingsError(
                f"{key} generator_layers = {generator_layers} must be at least 1 (null: the encoder's layers)"
            )
        self.generator_weight = generator_weight
        self.mask_rate, self.unit, self.mean_span_words = mask_rate, unit, mean_span_words
        self.width_fraction, self.generator_layers = generator_width_fraction, generator_layers
        self.generator: Optional[Generator] = None
        self.head: Optional[nn.Module] = None

    def setup(self, model: BertForPretraining, pieces: WordPieces) -> None:
        width = model.config.hidden_width
        self.generator = Generator(model, self.width_fraction, self.generator_layers)
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        self.head.apply(init_weights)
        # Special pieces, and embedding rows past the vocabulary, are never sampled.
        never_sampled = [*pieces.special_ids, *range(pieces.vocab_size, model.config.vocab_size)]
        self.register_buffer("never_sampled", torch.tensor(never_sampled), persistent=False)

    def prepare(self, batch: Batch, pieces: WordPieces, rng: numpy.random.Generator) -> None:
        batch.extra[MASK_LABELS] = mask_batch(
            batch, pieces, rng, self.mask_rate, self.unit, self.mean_span_words
        )

    def before_encoder(self, model: BertForPretraining, tensors: Tensors, batch: Batch) -> Tensors:
        input_ids = tensors["input_ids"]
        positions, originals = masked_positions(batch.extra[MASK_LABELS], input_ids.device)
        padding = tensors.get("padding_mask")
        embedded = model.encoder.embeddings(input_ids, tensors["token_type_ids"])
        hidden = self.generator(embedded, None if padding is None else padding[:, None, None, :])
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        logits = self.generator.head(selected, model.encoder.embeddings.word.weight).float()
        generator_loss = F.cross_entropy(logits, originals)
        with torch.no_grad():
            sampled = sample(logits, self.never_sampled)
            replaced = input_ids.flatten().index_copy(0, positions, sampled)
            # A sample equal to the original is original: the discriminator cannot tell it apart.
            is_replaced = torch.zeros_like(replaced, dtype=torch.bool)
            is_replaced[positions] = sampled != originals
        return {
            **tensors,
            "input_ids": replaced.view_as(input_ids),
            "rtd_is_replaced": is_replaced.view_as(input_ids),
            "rtd_generator_loss": generator_loss,
            "rtd_generator_accuracy": (logits.argmax(-1) == originals).float().mean(),
        }

    def loss(
        self, model: BertForPretraining, hidden: Tensor, batch: Batch, tensors: Tensors
    ) -> Tuple[Tensor, Metrics]:
        logits = self.head(hidden).squeeze(-1).float()
        labels = tensors["rtd_is_replaced"]
        real = tensors.get("padding_mask")
        if real is not None:
            logits, labels = logits[real], labels[real]
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        generator_loss = tensors["rtd_generator_loss"]
        predicted = logits > 0
        metrics = {
            "rtd_loss": loss.detach(),
            "rtd_accuracy": (predicted == labels).float().mean(),
            "rtd_replaced_recall": (predicted & labels).sum() / labels.sum().clamp(min=1),
            # calling every piece original scores 1 - this share
            "rtd_replaced_share": labels.float().mean(),
            "generator_mlm_loss": generator_loss.detach(),
            "generator_mlm_accuracy": tensors["rtd_generator_accuracy"],
        }
        return self.weight * loss + self.generator_weight * generator_loss, metrics


def sample(logits: Tensor, never: Tensor) -> Tensor:
    """One id per row, drawn from softmax(logits) with the `never` ids left out. By the inverse
    of the cumulative distribution: one random number per row, where Gumbel-max takes one per
    logit and cost a fifth of a BERT-Tiny step."""
    probs = logits.softmax(-1)
    probs[:, never] = 0
    cumulative = probs.cumsum_(-1)
    threshold = torch.rand(len(cumulative), 1, device=logits.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, threshold).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def make_rtd(
    weight: float = 50.0,
    generator_weight: float = 1.0,
    mask_rate: float = 0.15,
    unit: str = "piece",
    mean_span_words: float = 3.0,
    generator_width_fraction: float = 0.25,
    generator_layers: Optional[int] = None,
) -> Objective:
    """Replaced-token detection; `weight` scales the discriminator's loss (50 in ELECTRA),
    `generator_weight` the generator's masked-LM loss; the generator is
    `generator_width_fraction` of the encoder's width with `generator_layers` layers (null: as
    many as the encoder)."""
    return ReplacedTokenDetection(
        weight, generator_weight, mask_rate, unit, mean_span_words, generator_width_fraction, generator_layers
    )
