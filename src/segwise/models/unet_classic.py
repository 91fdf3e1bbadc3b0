"""The original U-Net (Ronneberger et al., 2015) with its own from-scratch encoder, for small (often
grayscale) datasets: five levels of two 3×3 convolutions, 64 → 1024 channels, 2×2 max pooling down and
2×2 up-convolutions that halve the channels on the way up.

As most reimplementations do, the convolutions are padded (the paper's unpadded ones shrink the output)
and followed by BatchNorm; with `encoder_width=64` and the transposed up-convolutions the model has the
paper's ~31 M parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU

UPSAMPLING = ("transpose", "bilinear")
LEVELS = 5


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBnReLU(in_channels, out_channels), ConvBnReLU(out_channels, out_channels))


class ClassicEncoder(nn.Module):
    """The contracting path; features at strides 1, 2, 4, 8, 16 with widths `width`·(1, 2, 4, 8, 16)."""

    def __init__(self, in_channels: int = 1, weights: str | Path | None = None, width: int = 64) -> None:
        super().__init__()
        if weights is not None:
            raise SegwiseError(
                f"unet_classic: trains from scratch and has no pretrained weights (got encoder_weights="
                f"{weights}); leave encoder_weights unset, or use unet with a timm encoder"
            )
        if not isinstance(width, int) or width < 1:
            raise SegwiseError(f"unet_classic: encoder_width must be a positive integer, got {width}")
        self.channels = [width << level for level in range(LEVELS)]
        self.reductions = [1 << level for level in range(LEVELS)]
        self.model = nn.ModuleList(
            DoubleConv(cin, cout)
            for cin, cout in zip([in_channels, *self.channels[:-1]], self.channels, strict=True)
        )
        self.model.pretrained_cfg = {}  # as timm encoders: no pretrained statistics, trained from scratch
        self.name = "unet_classic"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.model[0](x)]
        for stage in self.model[1:]:
            features.append(stage(F.max_pool2d(features[-1], 2)))
        return features


class ClassicUp(nn.Module):
    """Up-convolution halving the channels, concatenation with the skip, two convolutions."""

    def __init__(self, in_channels: int, upsampling: str) -> None:
        super().__init__()
        half = in_channels // 2
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        else:  # a cheaper, checkerboard-free alternative: bilinear ×2, then a 1×1 conv to halve
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, half, kernel_size=1),
            )
        self.conv = DoubleConv(2 * half, half)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class ClassicDecoder(nn.Module):
    def __init__(self, encoder_channels: list[int], upsampling: str = "transpose") -> None:
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise SegwiseError(
                f"unet_classic: decoder_upsampling '{upsampling}' unknown; choose one of {UPSAMPLING}"
            )
        self.blocks = nn.ModuleList(ClassicUp(c, upsampling) for c in reversed(encoder_channels[1:]))
        self.out_channels = encoder_channels[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(x, skip)
        return x
