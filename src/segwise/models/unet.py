"""U-Net (Ronneberger et al., 2015) on a timm encoder: upsample, concatenate the skip at that scale, two convs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from . import phase_conv
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


class UnetBlock(nn.Module):
    """Upsample ×2, concatenate the skip, (scSE), two 3×3 conv-BN-ReLU, (scSE): smp's block, also for U-Net++.

    `fast` (a class attribute; set it on a block or on the class) lets nearest upsampling and `conv1` run
    as phase convolutions (phase_conv.py), the same function without the upsampled copy; False always
    runs the plain path.
    """

    fast = True

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
        if self.fast and self.upsampling == "nearest" and phase_conv.applies(self.conv1, self.attention1):
            x = phase_conv.conv_bn_relu(self.conv1, x, skip)  # the plain branch's function, no upsampled copy
        else:
            x = self.conv1(self.upsample_and_join(x, skip))
        return self.attention2(self.conv2(x))

    def upsample_and_join(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """x upsampled ×2, concatenated with the skip and weighed by the first attention (if any)."""
        if self.upsampling == "transpose":
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode=self.upsampling)
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return x


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
