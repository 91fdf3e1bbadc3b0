"""Fast path of the U-Net decoder block: its first convolution after nearest upsampling, computed on the
low-resolution map as four 2×2 "phase" convolutions instead of on a 2×-upsampled copy.

The plain version is `UnetBlock.forward`'s other branch (upsample, concatenate the skip, `conv1`); the
switch is `UnetBlock.fast`. Both compute the same function with the same parameters (tested to float
rounding, in float64, on the function and on whole models). The fast path reads `conv1`'s layers
directly instead of calling `conv1`, so it is taken only while that bypasses nothing a user changed:
`conv1` and its convolution must be the plain layers the block built, with no hooks (a forward hook,
pruning's pre-hook, weight norm) on them; a quantised, fused or otherwise replaced layer runs as called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module


def applies(conv1: nn.Module, attention1: nn.Module) -> bool:
    """Whether `conv1` (conv-BN-ReLU after upsampling) may run as phase convolutions: it and what the
    fast path skips calling (`conv1` itself, its convolution, the identity `attention1`) are the plain,
    unhooked modules the block built, so calling them would do exactly what the fast path computes."""
    if not isinstance(attention1, nn.Identity) or _global_hooks():
        return False
    if not (isinstance(conv1, nn.Sequential) and len(conv1) == 3):
        return False
    conv = conv1[0]
    plain_conv = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is None
        and conv.padding_mode == "zeros"
    )
    return plain_conv and not any(_hooked(module) for module in (conv1, conv, attention1))


def conv_bn_relu(conv1: nn.Sequential, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """`conv1(cat(nearest_upsample_2x(x), skip))` without upsampling x; `applies(conv1, ...)` must hold.
    The norm and activation are called as modules (their hooks run)."""
    conv, norm, relu = conv1
    return relu(norm(conv_after_upsampling(x, skip, conv.weight)))


def conv_after_upsampling(x: torch.Tensor, skip: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """`conv3x3(cat(nearest_upsample_2x(x), skip))` (padding 1, no bias), without upsampling x.

    A 3×3 window on a nearest-upsampled map covers only 2×2 distinct pixels of x, so each of the four
    output phases (row and column parity) is a 2×2 convolution of x with summed 3×3 weights: 4/9 of
    the multiply-adds for x's channels and no 4×-sized upsampled copy. Exact up to float rounding (the
    sums run in another order); the parameters stay the 3×3 ones, so weights load and export as before.
    """
    channels, out_channels = x.shape[1], weight.shape[0]
    height, width = x.shape[-2:]

    def phases(kernel: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        # even outputs read neighbours (−1, 0) with taps (w0, w1 + w2); odd ones (0, +1) with (w0 + w1, w2)
        w0, w1, w2 = kernel.unbind(dim)
        return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)

    kernels = [both for rows in phases(weight[:, :channels], 2) for both in phases(rows, 3)]
    # Padding 1 on both sides: output (m, n) of phase (r, s) sits at (m + r, n + s). The phases are
    # interleaved in N×H×W×C order, which is the memory order of a channels-last model (a free view).
    z = F.conv2d(x, torch.cat(kernels), padding=1).permute(0, 2, 3, 1)
    z00, z01, z10, z11 = (
        z[:, r : r + height, s : s + width, k * out_channels : (k + 1) * out_channels]
        for k, (r, s) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))
    )
    even_rows = torch.stack([z00, z01], 3).flatten(2, 3)  # columns interleaved: N×H×2W×C
    odd_rows = torch.stack([z10, z11], 3).flatten(2, 3)
    out = torch.stack([even_rows, odd_rows], 2).flatten(1, 2).permute(0, 3, 1, 2)  # rows interleaved
    if skip is not None:
        out = out + F.conv2d(skip, weight[:, channels:], padding=1)
    return out


def _hooked(module: nn.Module) -> bool:
    """Hooks that only run when the module is called (backward hooks are installed by that call too)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    """Hooks registered for every module (`nn.modules.module.register_module_forward_hook`)."""
    return bool(
        torch_module._global_forward_hooks
        or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks
        or torch_module._global_backward_pre_hooks
    )
