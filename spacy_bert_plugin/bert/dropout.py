"""Dropout with a cheaper random mask on CPU.

torch's CPU dropout draws one Bernoulli sample per element, and in a BERT-Mini fine-tuning step
those draws took 13 % of the time, more than the softmax, GELU and LayerNorm together, and more
still with bf16 autocast, which makes the matrix products cheaper but not the draws
(docs/experiments.md, "CPU dropout"). Here four elements share one 64-bit draw,
16 bits each, which is about 6x cheaper; the drop rate is `p` rounded to a multiple of 1/65536.
On other devices torch's fused kernels are already fast and are used as they are. The encoder's
attention draws its mask with `keep_mask` when dropout is on (`encoder.attention`).
"""

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_LEVELS = 1 << 16  # values of a 16-bit random number


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability `p` and scale the rest by 1 / (1 - p), when training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be between 0 and 1, not {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    keep, scale = keep_mask(x.shape, p)
    # In place: the product is not saved for backward.
    return (x * keep).mul_(scale)


def keep_mask(shape: Sequence[int], p: float) -> Tuple[Tensor, float]:
    """A CPU bool mask of `shape`, True where an element is kept (with probability 1 - p), and
    the factor 1 / (1 - p) that keeps the expected sum."""
    dropped_levels = round(p * _LEVELS)
    if dropped_levels == _LEVELS:
        return torch.zeros(shape, dtype=torch.bool), 0.0
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = words.view(torch.int16)[:n].view(shape) >= dropped_levels - _LEVELS // 2
    return keep, _LEVELS / (_LEVELS - dropped_levels)


class Dropout(nn.Module):
    """`nn.Dropout` with the cheaper CPU mask of `dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
