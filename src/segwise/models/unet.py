"""U-Net (Ronneberger et al., 2015) on a timm encoder: upsample, concatenate the skip at that scale, two convs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import SCSE, ConvBnReLU

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
UPSAMPLING = ("nearest", "bilinear", "transpose")
ATTENTION = (None, "scse")


def check_options(arch: str, upsampling: str, attention: str | None) -> None:
    if upsampling not in UPSAMPLING:
        raise SegwiseError(f"{arch}: decoder_upsampling '{upsampling}' unknown; choose one of {UPSAMPLING}")
    if attention not in ATTENTION:
        raise SegwiseError(f"{arch}: decoder_attention '{attention}' unknown; choose one of {ATTENTION}")


def decoder_widths(arch: str, encoder_reductions: list[int], decoder_channels) -> tuple[int, ...]:
    """One width per factor-2 upsampling from the encoder's stride to full resolution."""
    steps = int(math.log2(encoder_reductions[-1]))
    decoder_channels = tuple(decoder_channels or DEFAULT_DECODER_CHANNELS[:steps])
    if len(decoder_channels) != steps:
        raise SegwiseError(
            f"{arch}: decoder_channels needs {steps} entries for an encoder of stride "
            f"{encoder_reductions[-1]}, got {list(decoder_channels)}"
        )
    return decoder_channels


def conv_after_upsampling(x: torch.Tensor, skip: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """`conv3x3(cat(nearest_upsample_2x(x), skip))` (padding 1, no bias), without upsampling x.

    A 3×3 window on a nearest-upsampled map covers only 2×2 distinct pixels of x, so each of the four
    output phases (row and column parity) is a 2×2 convolution of x with summed 3×3 weights: 4/9 of
    the multiply-adds for x's channels and no 4×-sized upsampled copy, which roughly halves the cost
    of the high-resolution decoder blocks on a CPU. Exact up to float rounding (tested against the
    plain computation); the parameters stay the 3×3 ones, so weights load and export as before.
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


class UnetBlock(nn.Module):
    """Upsample ×2, concatenate the skip, (scSE), two 3×3 conv-BN-ReLU, (scSE): smp's block, also for U-Net++."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        upsampling: str,
        attention: str | None = None,
    ) -> None:
        super().__init__()
        self.upsampling = upsampling
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        # smp also builds the first attention when there is no skip (and never uses it); we do not.
        self.attention1 = SCSE(in_channels + skip_channels) if attention and skip_channels else nn.Identity()
        self.conv1 = ConvBnReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnReLU(out_channels, out_channels)
        self.attention2 = SCSE(out_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.upsampling == "nearest" and isinstance(self.attention1, nn.Identity):
            conv, norm, relu = self.conv1  # the same layers and weights, fewer multiply-adds
            x = relu(norm(conv_after_upsampling(x, skip, conv.weight)))
            return self.attention2(self.conv2(x))
        if self.upsampling == "transpose":
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode=self.upsampling)
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    """One block per factor-2 upsampling from the deepest feature to full resolution."""

    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        decoder_channels: tuple[int, ...] | None = None,
        upsampling: str = "nearest",
        attention: str | None = None,
    ) -> None:
        super().__init__()
        check_options("unet", upsampling, attention)
        decoder_channels = decoder_widths("unet", encoder_reductions, decoder_channels)
        steps = len(decoder_channels)
        # The deepest feature of each reduction serves as the skip at that scale.
        skip_channels = dict(zip(encoder_reductions[:-1], encoder_channels[:-1], strict=True))
        self.skip_reductions = [encoder_reductions[-1] >> (i + 1) for i in range(steps)]
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UnetBlock(cin, skip_channels.get(r, 0), cout, upsampling, attention)
            for cin, r, cout in zip(in_channels, self.skip_reductions, decoder_channels, strict=True)
        )
        self.out_channels = decoder_channels[-1]
        self.encoder_reductions = list(encoder_reductions)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        by_reduction = dict(zip(self.encoder_reductions, features, strict=True))
        x = features[-1]
        for block, reduction in zip(self.blocks, self.skip_reductions, strict=True):
            x = block(x, by_reduction.get(reduction))
        return x
