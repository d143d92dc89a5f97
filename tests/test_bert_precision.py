"""Mixed precision: bf16/fp16 autocast where the hardware computes it, float32 where a CPU would emulate it."""

import platform
import warnings
from pathlib import Path

import pytest
import torch

from spacy_bert_plugin.bert import precision
from spacy_bert_plugin.bert.precision import autocast_dtype, cpu_computes_natively, mixed_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_lacks(monkeypatch):
    """Pretend this CPU has no bf16/fp16 instructions (the hardware probe is the only thing replaced)."""
    monkeypatch.setattr(precision, "cpu_computes_natively", lambda autocast: False)
    precision._warn_emulated.cache_clear()
    yield
    precision._warn_emulated.cache_clear()


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
    reason="reads x86 flags from /proc/cpuinfo",
)
def test_probe_agrees_with_the_kernels_cpu_flags():
    flags = set(
        next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    )
    assert cpu_computes_natively("bf16") == bool(flags & {"avx512_bf16", "amx_tile"})


def test_float32_with_one_warning_on_a_cpu_without_bf16(cpu_lacks):
    layer = torch.nn.Linear(8, 8)
    with pytest.warns(UserWarning, match="lacks AVX512-BF16 or AMX.*autocast = null"):
        assert autocast_dtype("bf16", CPU) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time stays quiet
        with mixed_precision("bf16", CPU):
            assert layer(torch.randn(2, 8)).dtype == torch.float32


def test_bf16_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_computes_natively", lambda autocast: True)
    with mixed_precision("bf16", CPU):
        assert torch.nn.Linear(8, 8)(torch.randn(2, 8)).dtype == torch.bfloat16


def test_gpu_autocast_is_never_second_guessed(cpu_lacks):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
        assert autocast_dtype(None, CPU) is None


def test_unknown_autocast_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown autocast 'fp8'.*bf16.*fp16"):
        autocast_dtype("fp8", CPU)
