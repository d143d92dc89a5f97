"""benchmarks/flops.py: hand counts, and torch's FLOP counter on our model."""

import sys
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from spacy_bert_plugin.bert import BertConfig, BertForPretraining

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from flops import (  # noqa: E402
    backward_flops,
    encoder_flops,
    head_flops,
    mlm_head_flops,
    pair_head_flops,
    pooler_flops,
    pretraining_flops,
)

SMALL = BertConfig(vocab_size=50, hidden_width=8, num_layers=2, num_heads=2, intermediate_width=16)


def test_encoder_flops_by_hand():
    # Per layer over 3 + 5 = 8 pieces: QKV 2*8*8*24 = 3072, output 2*8*8*8 = 1024, feed-forward
    # 2 * 2*8*8*16 = 4096; attention 4*8*(3^2 + 5^2) = 1088. Two layers: 2 * 9280.
    assert encoder_flops(SMALL, [3, 5]) == 18560


def test_head_flops_by_hand():
    assert mlm_head_flops(SMALL, 2) == 2 * 2 * 8 * 8 + 2 * 2 * 8 * 50
    assert pooler_flops(SMALL, 2) == 2 * 2 * 8 * 8
    assert pair_head_flops(SMALL, 2) == 2 * 2 * 8 * 2
    assert head_flops(8, [8, 4, 3]) == 2 * 8 * 8 * 4 + 2 * 8 * 4 * 3
    assert pretraining_flops(SMALL, [3, 5], 2, 2) == 3 * (18560 + 1856 + 256 + 64)
    assert pretraining_flops(SMALL, [3, 5], 2) == 3 * (18560 + 1856)


def test_padding_is_not_counted():
    assert encoder_flops(SMALL, [3, 5]) < encoder_flops(SMALL, [5, 5])


def test_pretraining_flops_match_torch_flop_counter():
    """torch's FlopCounterMode counts the matrix products our encoder and heads run (forward and
    backward) on an unpadded batch. Attention dropout makes the CPU attention take its explicit
    matrix products, which the counter sees (it does not count the fused kernel)."""
    config = BertConfig(
        vocab_size=100,
        hidden_width=32,
        num_layers=2,
        num_heads=4,
        intermediate_width=64,
        attention_dropout=0.1,
    )
    torch.manual_seed(0)
    model = BertForPretraining(config).train()
    input_ids = torch.randint(0, config.vocab_size, (3, 10))
    masked = torch.tensor([1, 4, 12, 25, 29])
    with FlopCounterMode(display=False) as counter:
        hidden = model.encoder(input_ids)
        selected = hidden.reshape(-1, config.hidden_width)[masked]
        logits = model.mlm_head(selected, model.encoder.embeddings.word.weight)
        pair_logits = model.pair_head(model.encoder.pool(hidden))
        loss = F.cross_entropy(logits, input_ids.ravel()[masked]) + pair_logits.sum()
        loss.backward()
    assert counter.get_total_flops() == pretraining_flops(config, [10, 10, 10], len(masked), 3)


def test_encoder_forward_matches_torch_flop_counter():
    config = BertConfig(
        vocab_size=100,
        hidden_width=32,
        num_layers=3,
        num_heads=2,
        intermediate_width=48,
        attention_dropout=0.1,
    )
    model = BertForPretraining(config).encoder.train()
    with FlopCounterMode(display=False) as counter:
        hidden = model(torch.randint(0, config.vocab_size, (2, 7)))
    assert counter.get_total_flops() == encoder_flops(config, [7, 7])
    with FlopCounterMode(display=False) as counter:
        hidden.sum().backward()
    assert counter.get_total_flops() == backward_flops(encoder_flops(config, [7, 7]))
