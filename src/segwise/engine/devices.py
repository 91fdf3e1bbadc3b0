"""Choosing the device and the mixed-precision dtype the hardware actually supports, and the one
allocator setting a CPU training run needs."""

from __future__ import annotations

import ctypes
import platform
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
        if precision == "fp16" or (precision == "auto" and not cuda_has_native_bf16(device)):
            return torch.float16  # with a GradScaler (trainer.py)
        return torch.bfloat16
    if precision == "fp16":
        raise SegwiseError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def cuda_has_native_bf16(device: torch.device) -> bool:
    """bf16 in the GPU's hardware (compute capability 8.0, Ampere, and later). `is_bf16_supported()`
    alone also counts emulation, which on a V100 or T4 is far slower than fp16 with a GradScaler.
    (torch asks the current device: the training device, once distributed.setup has set it.)"""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4: no such argument
        return torch.cuda.get_device_capability(device) >= (8, 0)


def set_kernel_policy(device: torch.device, precision: str, deterministic: bool) -> None:
    """How a training process's CUDA kernels are chosen; nothing to choose on a CPU.

    TF32 policy: float32 matmuls and convolutions run in TF32 on GPUs that have it (Ampere and later),
    except under `precision: fp32`, which asks for full float32. The model runs under bf16/fp16
    autocast anyway; what stays in float32 (the loss, the colour tables' positions, clamped for it)
    tolerates TF32's 1e-3 relative error. cuDNN benchmarks its convolution algorithms once per shape
    (the fastest for the fixed training size), unless the run must be deterministic: the algorithm
    it picks may vary from run to run."""
    if device.type != "cuda":
        return
    tf32 = precision != "fp32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # the API torch.compile reads
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = not deterministic


@cache
def keep_freed_memory(device: torch.device | str = "cpu") -> bool:
    """For batches on a CPU `device`: have glibc keep freed large blocks for reuse instead of returning
    them to the system at once.

    By default glibc serves every allocation above 32 MB (a 16×3×360×480 float batch is 33 MB) with a
    fresh mmap and unmaps it when freed, so each new batch tensor on a CPU costs thousands of page
    faults and the kernel zeroing its pages (measured: BENCHMARKS.md, History). This is the effect of the jemalloc/tcmalloc preload that PyTorch's CPU
    tuning guide recommends, set from inside the process; the process keeps its peak memory instead of
    returning it. True when set; a no-op (False) for a GPU device or without glibc (macOS, Windows, musl).
    """
    if (
        torch.device(device).type != "cpu"
        or platform.system() != "Linux"
        or platform.libc_ver()[0] != "glibc"
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim_threshold, mmap_threshold = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD from malloc.h
    return bool(libc.mallopt(mmap_threshold, 1 << 30)) and bool(libc.mallopt(trim_threshold, 1 << 30))
