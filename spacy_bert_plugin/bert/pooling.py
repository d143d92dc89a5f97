"""Encode batches of piece windows and pool the pieces of each word into one vector."""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .encoder import BertEncoder
from .precision import AUTOCAST_DTYPES, mixed_precision

POOLING_MODES = ("mean", "first", "last")


def pool_pieces(hidden: Tensor, piece_word: Tensor, n_words: int, mode: str) -> Tensor:
    """hidden (pieces, width) -> (n_words, width). `piece_word[i]` is the word of piece i, or
    `n_words` for pieces that belong to no word ([CLS], [SEP], padding). Words without pieces
    get a zero vector."""
    width = hidden.shape[1]
    if mode == "mean":
        sums = hidden.new_zeros(n_words + 1, width).index_add_(0, piece_word, hidden)
        counts = torch.bincount(piece_word, minlength=n_words + 1).clamp_(min=1)
        return (sums / counts[:, None].to(hidden.dtype))[:n_words]
    positions = torch.arange(len(piece_word), device=hidden.device)
    if mode == "first":
        start = torch.full((n_words + 1,), len(piece_word), device=hidden.device)
        chosen = start.scatter_reduce(0, piece_word, positions, "amin")
    elif mode == "last":
        start = torch.full((n_words + 1,), -1, device=hidden.device)
        chosen = start.scatter_reduce(0, piece_word, positions, "amax")
        chosen = torch.where(chosen < 0, len(piece_word), chosen)
    else:
        raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING_MODES}")
    padded = torch.cat([hidden, hidden.new_zeros(1, width)])
    return padded[chosen[:n_words]]


class WordEncoder(nn.Module):
    """BERT over windows of pieces, pooled to one float32 vector per word."""

    def __init__(self, encoder: BertEncoder, pooling: str = "mean", autocast: Optional[str] = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLING_MODES}")
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast {autocast!r}; choose one of {list(AUTOCAST_DTYPES)} or None")
        self.encoder = encoder
        self.pooling = pooling
        self.autocast = autocast

    def forward(
        self, chunks: Sequence[Tuple[Tensor, Optional[Tensor]]], piece_word: Tensor, n_words: int
    ) -> Tensor:
        """`chunks`: (input_ids (windows, length), padding mask or None) each; their pieces,
        flattened in order, are the pieces `piece_word` describes."""
        hidden: List[Tensor] = []
        with mixed_precision(self.autocast, piece_word.device):
            for input_ids, padding_mask in chunks:
                out = self.encoder(input_ids, padding_mask)
                hidden.append(out.reshape(-1, out.shape[-1]).float())
        return pool_pieces(torch.cat(hidden), piece_word, n_words, self.pooling)
