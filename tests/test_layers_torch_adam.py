"""The encoder's fused torch Adam against thinc's own Adam on the same weights and gradients."""

import copy
from functools import partial

import numpy
import pytest
import torch
from thinc.api import SGD, Adam, PyTorchGradScaler, RAdam
from thinc.shims import PyTorchShim

from spacy_bert_plugin.bert.config import BertConfig
from spacy_bert_plugin.bert.encoder import BertEncoder
from spacy_bert_plugin.layers.torch_adam import fused_adam_applies, fused_adam_update

STEPS = 4
LEARN_RATES = [0.01, 0.03, 0.002, 0.02]  # a schedule: one rate per step


def twin_shims(grad_scaler=None):
    """The same random tiny encoder twice, each in a PyTorchShim of its own."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_width=16,
        num_layers=2,
        num_heads=2,
        intermediate_width=32,
        max_positions=16,
        dropout=0.0,
        attention_dropout=0.0,
    )
    encoder = BertEncoder(config).train()
    shims = [PyTorchShim(encoder, grad_scaler=grad_scaler), PyTorchShim(copy.deepcopy(encoder))]
    return shims


def backward(shim, step):
    """Gradients of a fixed random loss, the same for both twins in a given step."""
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 50, (3, 10), generator=generator)
    target = torch.randn(3, 10, 16, generator=generator)
    # Some gradients are large, some small, so that clipping acts on some weights only.
    (shim._model(ids) * target).sum().mul(3.0).backward()


def weights(shim):
    return {name: param.detach().clone().numpy() for name, param in shim._model.named_parameters()}


@pytest.mark.parametrize("L2_is_weight_decay", [True, False])
def test_fused_adam_steps_as_thinc_adam(L2_is_weight_decay):
    """Scheduled learning rate, L2 either way, per-weight clipping and lr_scale: the same weights
    after each step, and the moments it leaves let thinc take over (the last step is thinc's)."""
    thinc_shim, torch_shim = twin_shims()
    settings = dict(L2=0.1, L2_is_weight_decay=L2_is_weight_decay, grad_clip=2.0, use_averages=False)
    thinc_adam, torch_adam = (Adam(LEARN_RATES, beta2=0.99, eps=1e-4, **settings) for _ in range(2))
    assert fused_adam_applies(torch_adam, torch.device("cpu"))
    clipped = set()
    for step in range(STEPS):
        for shim in (thinc_shim, torch_shim):
            backward(shim, step)
        clipped |= {
            name
            for name, param in torch_shim._model.named_parameters()
            if param.grad is not None and param.grad.norm() >= 2.0
        }
        before = weights(torch_shim)
        thinc_shim.finish_update(partial(thinc_adam, lr_scale=0.5))
        if step < STEPS - 1:
            fused_adam_update(torch_shim, torch_adam, lr_scale=0.5)
        else:
            torch_shim.finish_update(partial(torch_adam, lr_scale=0.5))
        for optimizer in (thinc_adam, torch_adam):
            optimizer.step_schedules()
        expected, got = weights(thinc_shim), weights(torch_shim)
        assert any(not numpy.array_equal(before[name], got[name]) for name in got), step
        for name, value in expected.items():
            numpy.testing.assert_allclose(
                got[name], value, rtol=1e-5, atol=1e-6, err_msg=f"{name}, step {step}"
            )
        assert not any(param.grad.any() for param in torch_shim._model.parameters() if param.grad is not None)
    assert 0 < len(clipped) < len(expected), "clipping should act on some weights, not all"
    counts = [{name: n for (_, name), n in adam.nr_update.items()} for adam in (thinc_adam, torch_adam)]
    assert counts[0] == counts[1] and set(counts[0].values()) == {STEPS}


def test_an_overflow_skips_the_step_and_backs_off_the_scale():
    """fp16 training: when the gradient scaler finds an inf, the weights stay, the gradients are
    zeroed and the scale halves, as in thinc's PyTorchShim.finish_update."""
    scaler = PyTorchGradScaler(enabled=True, init_scale=8.0)
    shim, _ = twin_shims(grad_scaler=scaler)
    backward(shim, 0)
    params = [param for param in shim._model.parameters() if param.grad is not None]
    params[0].grad.view(-1)[0] = float("inf")
    assert scaler.unscale([param.grad for param in params])
    before = weights(shim)
    fused_adam_update(shim, Adam(0.01))
    assert all(numpy.array_equal(value, weights(shim)[name]) for name, value in before.items())
    assert not any(param.grad.any() for param in params)
    assert not scaler.found_inf
    assert scaler._scale.item() == 4.0


def test_only_adam_steps_on_the_cpu_take_the_fused_path():
    cpu = torch.device("cpu")
    assert fused_adam_applies(Adam(0.001), cpu)
    assert not fused_adam_applies(Adam(0.001), torch.device("cuda"))
    assert not fused_adam_applies(RAdam(0.001), cpu)
    assert not fused_adam_applies(SGD(0.001), cpu)
    assert not fused_adam_applies(partial(Adam(0.001), lr_scale=0.5), cpu)


def test_thinc_never_reads_the_averages_it_keeps_of_torch_weights():
    """Why the fused update keeps no parameter averages: PyTorchShim.use_params, through which
    spacy train evaluates with the averages, ignores those thinc's Adam keeps for torch weights."""
    shim, _ = twin_shims()
    adam = Adam(0.01)
    backward(shim, 0)
    shim.finish_update(adam)
    assert adam.averages
    trained = weights(shim)
    with shim.use_params(adam.averages):
        assert all(numpy.array_equal(value, weights(shim)[name]) for name, value in trained.items())
