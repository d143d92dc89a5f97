"""The CPU dropout mask: rate, independence of the elements sharing a draw, gradient, seeding."""

import pytest
import torch

from spacy_bert_plugin.bert.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_rate_and_expectation(p):
    torch.manual_seed(0)
    y = dropout(torch.ones(400_000), p)
    assert abs((y == 0).float().mean().item() - p) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    values = y.unique().tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / (1 - p), rel=1e-4)]


def test_each_of_the_four_elements_sharing_a_draw_is_dropped_independently():
    torch.manual_seed(0)
    kept = dropout(torch.ones(400_000), 0.5).view(-1, 4) > 0
    for lane in range(4):
        assert abs(kept[:, lane].float().mean().item() - 0.5) < 0.01
    both = (kept[:, 0] & kept[:, 1]).float().mean().item()
    assert abs(both - 0.25) < 0.01


def test_identity_when_not_training_or_p_zero():
    x = torch.randn(3, 5)
    assert dropout(x, 0.4, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5)


def test_gradient_flows_only_through_kept_elements():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.25)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75))
    assert torch.all(x.grad[~kept] == 0)


def test_seeded_masks_repeat_and_module_follows_train_mode():
    layer = Dropout(0.3)
    x = torch.ones(1000)
    torch.manual_seed(7)
    first = layer(x)
    torch.manual_seed(7)
    assert torch.equal(first, layer(x))
    assert not torch.equal(first, layer(x))
    layer.eval()
    assert layer(x) is x
