"""Model FLOPs of BERT, counted from a `BertConfig` (plain arithmetic, no torch), for the
benchmarks' achieved GFLOP/s.

The count is the matrix products a model needs, whatever an implementation adds: a multiply-add
is 2 FLOPs; embedding lookups and elementwise work (LayerNorm, GELU, softmax, dropout) are left
out; `lengths` are the real pieces of each sequence ([CLS] and [SEP] included, padding not).
A backward pass costs twice its forward pass: each product has a gradient for its input and one
for its weight (or other operand).
"""

from typing import Iterable, Sequence

from spacy_bert_plugin.bert.config import BertConfig


def linear_flops(rows: int, n_in: int, n_out: int) -> int:
    """`rows` vectors of width `n_in` times an `n_in` x `n_out` matrix."""
    return 2 * rows * n_in * n_out


def projection_flops(config: BertConfig, n_pieces: int) -> int:
    """One layer's dense products over `n_pieces` pieces: QKV, attention output, feed-forward in and out."""
    h, i = config.hidden_width, config.intermediate_width
    return linear_flops(n_pieces, h, 3 * h) + linear_flops(n_pieces, h, h) + 2 * linear_flops(n_pieces, h, i)


def attention_score_flops(config: BertConfig, lengths: Iterable[int]) -> int:
    """One layer's attention products: Q K^T and the weighted sum of V, 2 x L^2 x hidden each for a
    sequence of L pieces (all heads together)."""
    return sum(4 * length * length * config.hidden_width for length in lengths)


def encoder_flops(config: BertConfig, lengths: Sequence[int]) -> int:
    """A forward pass of the encoder's layers over sequences of `lengths` pieces."""
    per_layer = projection_flops(config, sum(lengths)) + attention_score_flops(config, lengths)
    return config.num_layers * per_layer


def mlm_head_flops(config: BertConfig, n_masked: int) -> int:
    """The masked-LM head at the `n_masked` masked positions: dense transform, vocabulary logits."""
    h = config.hidden_width
    return linear_flops(n_masked, h, h) + linear_flops(n_masked, h, config.vocab_size)


def pooler_flops(config: BertConfig, n_sequences: int) -> int:
    """The pooler's dense layer over each sequence's [CLS] vector."""
    return linear_flops(n_sequences, config.hidden_width, config.hidden_width)


def pair_head_flops(config: BertConfig, n_sequences: int) -> int:
    """The two-way NSP/SOP classifier over the pooled vectors (the pooler not included)."""
    return linear_flops(n_sequences, config.hidden_width, 2)


def head_flops(rows: int, widths: Sequence[int]) -> int:
    """A fine-tuning head of dense layers `widths[0] -> widths[1] -> ...` over `rows` vectors
    (tokens for a tagger or parser, docs for a classifier)."""
    return sum(linear_flops(rows, n_in, n_out) for n_in, n_out in zip(widths, widths[1:]))


def backward_flops(forward: int) -> int:
    return 2 * forward


def training_flops(forward: int) -> int:
    """Forward and backward pass of products that all get gradients."""
    return forward + backward_flops(forward)


def pretraining_flops(
    config: BertConfig, lengths: Sequence[int], n_masked: int, pair_sequences: int = 0
) -> int:
    """One pretraining batch, forward and backward: encoder, masked-LM head, and with a pair
    objective (NSP or SOP) the pooler and pair head over `pair_sequences` sequences."""
    forward = encoder_flops(config, lengths) + mlm_head_flops(config, n_masked)
    forward += pooler_flops(config, pair_sequences) + pair_head_flops(config, pair_sequences)
    return training_flops(forward)
