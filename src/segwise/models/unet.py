"""U-Net (Ronneberger et al., 2015) on a timm encoder: upsample, concatenate the skip at that scale, two convs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
UPSAMPLING = ("nearest", "bilinear", "transpose")


class UnetBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsampling: str) -> None:
        super().__init__()
        self.upsampling = upsampling
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.conv1 = ConvBnReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.upsampling == "transpose":
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode=self.upsampling)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """One block per factor-2 upsampling from the deepest feature to full resolution."""

    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        decoder_channels: tuple[int, ...] | None = None,
        upsampling: str = "nearest",
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise SegwiseError(f"unet: decoder_upsampling '{upsampling}' unknown; choose one of {UPSAMPLING}")
        steps = int(math.log2(encoder_reductions[-1]))
        decoder_channels = tuple(decoder_channels or DEFAULT_DECODER_CHANNELS[:steps])
        if len(decoder_channels) != steps:
            raise SegwiseError(
                f"unet: decoder_channels needs {steps} entries for an encoder of stride "
                f"{encoder_reductions[-1]}, got {list(decoder_channels)}"
            )
        # The deepest feature of each reduction serves as the skip at that scale.
        skip_channels = dict(zip(encoder_reductions[:-1], encoder_channels[:-1], strict=True))
        self.skip_reductions = [encoder_reductions[-1] >> (i + 1) for i in range(steps)]
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UnetBlock(cin, skip_channels.get(r, 0), cout, upsampling)
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
