"""Pretraining heads: masked-LM (tied to the word embeddings) and the segment-pair classifier
(NSP or SOP; its weights keep HF's `cls.seq_relationship` name in checkpoints)."""

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import BertConfig
from .encoder import BertEncoder, init_weights


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> logits over the vocabulary, with the decoder weight tied to
    the input word embeddings (passed in, so the state dict holds them once). Call it on the masked
    positions only: the vocabulary projection is the most expensive matrix product in pretraining.
    `input_width`: the width of the states it reads, when not the embeddings' (a smaller generator's)."""

    def __init__(self, config: BertConfig, input_width: Optional[int] = None):
        super().__init__()
        self.transform = nn.Linear(input_width or config.hidden_width, config.hidden_width)
        self.norm = nn.LayerNorm(config.hidden_width, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_weights(self.transform)

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        h = self.norm(F.gelu(self.transform(hidden)))
        return F.linear(h, word_embeddings, self.bias)


class SegmentPairHead(nn.Module):
    """Binary classifier over BERT's pooled [CLS] vector: is segment B the continuation of A (NSP),
    or are A and B in order (SOP)?"""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.classifier = nn.Linear(config.hidden_width, 2)
        init_weights(self.classifier)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled)


class BertForPretraining(nn.Module):
    """The encoder plus both pretraining heads; the objectives decide which heads they use."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config)
        self.mlm_head = MaskedLMHead(config)
        self.pair_head = SegmentPairHead(config)
