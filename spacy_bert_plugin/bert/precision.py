"""Mixed precision (`autocast = "bf16"` or `"fp16"`) for the encoder and for pretraining.

On an x86 CPU, PyTorch runs bf16 and fp16 matrix products fast only with the instructions made for
them (AVX512-BF16 or AMX; AMX-FP16); elsewhere it emulates them, and a BERT step that takes 1 s in
float32 takes about 16 s (BERT-Tiny pretraining on a 2-core AMD EPYC without AVX512: 790 vs 13,000
pieces/s). There the requested autocast gives way to float32, with a warning.
"""

import contextlib
import platform
import warnings
from functools import cache
from typing import ContextManager, Optional

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@cache
def cpu_computes_natively(autocast: str) -> bool:
    """Whether this CPU has instructions for `autocast` ("bf16" or "fp16") matrix products.
    Only x86 is checked; other CPUs are taken at their word."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    probes = {
        "bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
        "fp16": ("_is_amx_fp16_supported",),
    }
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes[autocast])


def autocast_dtype(autocast: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The dtype to autocast to on `device`, or None for float32 (`autocast` None, or a CPU
    that would emulate it: then with a warning that says how to silence it)."""
    if autocast is None:
        return None
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown autocast {autocast!r}; choose one of {list(AUTOCAST_DTYPES)} or null")
    if device.type == "cpu" and not cpu_computes_natively(autocast):
        _warn_emulated(autocast)
        return None
    return AUTOCAST_DTYPES[autocast]


@cache  # once per process
def _warn_emulated(autocast: str) -> None:
    needs = "AVX512-BF16 or AMX" if autocast == "bf16" else "AMX-FP16"
    warnings.warn(
        f'autocast = "{autocast}" runs in float32 here: this CPU lacks {needs}, and PyTorch would '
        f"emulate {autocast} many times slower than float32. Set autocast = null to silence this.",
        stacklevel=3,
    )


def mixed_precision(autocast: Optional[str], device: torch.device) -> ContextManager:
    """The autocast context for `autocast` on `device`; no autocast when `autocast_dtype` is None."""
    dtype = autocast_dtype(autocast, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
