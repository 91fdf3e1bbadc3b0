"""Choosing the device and the mixed-precision dtype the hardware actually supports."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from ..errors import SegwiseError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SegwiseError(f"device '{name}' is not valid; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegwiseError(f"device '{name}' requested but no CUDA GPU is available; use --device cpu")
    return device


@cache
def cpu_has_fast_bf16() -> bool:
    """bf16 pays off on CPUs with AVX512-BF16 or AMX; elsewhere it is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if precision == "fp16":
        raise SegwiseError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return None
