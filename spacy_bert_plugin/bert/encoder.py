"""The BERT encoder in plain PyTorch: embeddings, post-LN transformer layers, pooler.

Numerics follow Hugging Face `BertModel` (exact GELU, LayerNorm after each residual), so its
checkpoints load through `bert.hf` and give the same hidden states.
"""

from typing import List, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import BertConfig
from .dropout import Dropout, keep_mask


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_width, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_positions, config.hidden_width)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_width)
        self.norm = nn.LayerNorm(config.hidden_width, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        word = self.word
        words = F.embedding(input_ids, word.weight, word.padding_idx, sparse=self._sparse_word_gradient())
        x = words + self.position(positions)
        if token_type_ids is None:
            x = x + self.token_type.weight[0]
        else:
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))

    def _sparse_word_gradient(self) -> bool:
        """Whether the backward pass adds the looked-up rows only into the word embeddings'
        gradient: when a dense one is kept between steps (zeroed, not dropped, as spaCy's training
        does), on a CPU: there a dense vocabulary-sized gradient per pass would be a fresh block of
        memory each time, whose pages fault in again (30522 x 256: 20-100 ms a pass when busy)."""
        grad = self.word.weight.grad
        return (
            self.training
            and grad is not None
            and grad.layout == torch.strided
            and grad.device.type == "cpu"
            and not torch.compiler.is_compiling()
        )


# Attention weights are computed this many bytes at a time on a CPU: glibc serves blocks over
# 32 MiB (its largest mmap threshold) from fresh pages, which fault in again on every step.
ATTENTION_BLOCK_BYTES = 16 << 20
# Within such a block, the weights of this many bytes of heads stay in a core's cache from the
# scores to the product with the values (measured best of 256 KiB to 4 MiB, benchmarks/README.md).
CACHE_BLOCK_BYTES = 1 << 20


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout_p: float) -> Tensor:
    """Scaled dot-product attention; `mask` is True where a query may attend.

    With dropout on a CPU, torch's `scaled_dot_product_attention` falls back to an unfused path
    with per-element Bernoulli draws: `DropoutAttention` computes the same faster, a few windows
    at a time so that the weights stay within ATTENTION_BLOCK_BYTES. Under torch.compile, which
    fuses that path itself (and cannot trace the blocks' loop), torch's is used."""
    if dropout_p == 0.0 or q.device.type != "cpu" or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    batch, heads, length, _ = q.shape
    rows = max(1, ATTENTION_BLOCK_BYTES // (heads * length * k.shape[2] * q.element_size()))
    if rows >= batch:
        return DropoutAttention.apply(q, k, v, mask, dropout_p)
    blocks = [
        DropoutAttention.apply(
            q[i : i + rows],
            k[i : i + rows],
            v[i : i + rows],
            mask if mask is None or len(mask) == 1 else mask[i : i + rows],
            dropout_p,
        )
        for i in range(0, batch, rows)
    ]
    return torch.cat(blocks)


class DropoutAttention(torch.autograd.Function):
    """Attention with dropout on the weights, a few heads at a time (CACHE_BLOCK_BYTES of
    weights) so that each block's scores, softmax, mask and product with the values stay in
    cache; only the weights and the mask are kept for backward."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout_p: float) -> Tensor:
        batch, heads, length, head_width = q.shape
        q, k, v = (t.reshape(batch * heads, length, head_width) for t in (q, k, v))
        if mask is not None:
            mask = mask.expand(batch, heads, 1, length).reshape(batch * heads, 1, length)
        keep, keep_scale = keep_mask((batch * heads, length, length), dropout_p)
        weights = q.new_empty(batch * heads, length, length)
        out = torch.empty_like(q)
        scale = head_width**-0.5
        for rows in _cache_blocks(weights):
            scores = torch.baddbmm(weights[rows], q[rows], k[rows].transpose(1, 2), beta=0, alpha=scale)
            if mask is not None:
                scores.masked_fill_(~mask[rows], float("-inf"))
            torch.softmax(scores, -1, out=weights[rows])
            torch.bmm(weights[rows] * keep[rows], v[rows], out=out[rows])
        ctx.save_for_backward(q, k, v, weights, keep)
        ctx.scales = scale, keep_scale
        return out.mul_(keep_scale).view(batch, heads, length, head_width)

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, weights, keep = ctx.saved_tensors
        scale, keep_scale = ctx.scales
        shape = d_out.shape
        d_out_scaled = d_out.reshape(q.shape) * keep_scale
        d_q, d_k, d_v = (torch.empty_like(t) for t in (q, k, v))
        for rows in _cache_blocks(weights):
            torch.bmm((weights[rows] * keep[rows]).transpose(1, 2), d_out_scaled[rows], out=d_v[rows])
            d_weights = torch.bmm(d_out_scaled[rows], v[rows].transpose(1, 2)).mul_(keep[rows])
            d_scores = torch._softmax_backward_data(d_weights, weights[rows], -1, weights.dtype)
            torch.bmm(d_scores, k[rows], out=d_q[rows])
            torch.bmm(d_scores.transpose(1, 2), q[rows], out=d_k[rows])
        d_q.mul_(scale)
        d_k.mul_(scale)
        return d_q.view(shape), d_k.view(shape), d_v.view(shape), None, None


def _cache_blocks(weights: Tensor) -> List[slice]:
    """Slices of `weights`' first dimension of about CACHE_BLOCK_BYTES each (at least one row)."""
    rows = max(1, CACHE_BLOCK_BYTES // (weights[0].numel() * weights.element_size()))
    return [slice(i, i + rows) for i in range(0, len(weights), rows)]


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_width, 3 * config.hidden_width)
        self.output = nn.Linear(config.hidden_width, config.hidden_width)
        self.attention_dropout = config.attention_dropout

    def forward(self, x: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        batch, length, width = x.shape
        # (batch, length, 3 * width) -> 3 x (batch, heads, length, head_width)
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, attention_mask, dropout)
        return self.output(y.transpose(1, 2).reshape(batch, length, width))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_width, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_width, config.intermediate_width)
        self.output = nn.Linear(config.intermediate_width, config.hidden_width)
        self.output_norm = nn.LayerNorm(config.hidden_width, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, attention_mask)))
        h = self.output(F.gelu(self.intermediate(x)))
        return self.output_norm(x + self.dropout(h))


class BertEncoder(nn.Module):
    """Piece ids -> last-layer hidden states, shape (batch, length, hidden_width)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_width, config.hidden_width)
        self.apply(init_weights)

    def forward(
        self,
        input_ids: Tensor,
        padding_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> Tensor:
        """`padding_mask` is True at real pieces; pass None when the batch has no padding so that
        attention can take its fastest unmasked kernel."""
        return self.layer_states(input_ids, padding_mask, token_type_ids)[-1]

    def layer_states(
        self,
        input_ids: Tensor,
        padding_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> List[Tensor]:
        """The embeddings' output and each layer's: `num_layers + 1` tensors shaped as `forward`'s."""
        attention_mask = None if padding_mask is None else padding_mask[:, None, None, :]
        states = [self.embeddings(input_ids, token_type_ids)]
        for layer in self.layers:
            states.append(layer(states[-1], attention_mask))
        return states

    def pool(self, hidden: Tensor) -> Tensor:
        """BERT's sentence vector: tanh(dense([CLS]))."""
        return torch.tanh(self.pooler(hidden[:, 0]))


def init_weights(module: nn.Module) -> None:
    """BERT's initialisation of `module` (apply it to each submodule: `model.apply(init_weights)`):
    N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
