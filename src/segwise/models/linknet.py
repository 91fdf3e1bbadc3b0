"""LinkNet (Chaurasia & Culurciello, 2017): light decoder blocks (1×1 conv → 4×4 transposed conv with
stride 2 → 1×1 conv) whose output is *added* to the encoder feature at that scale, up to full resolution."""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ConvBnReLU


class LinknetBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        middle = max(1, in_channels // 4)
        super().__init__(
            ConvBnReLU(in_channels, middle, kernel_size=1),
            nn.ConvTranspose2d(middle, middle, kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            ConvBnReLU(middle, out_channels, kernel_size=1),
        )


class LinknetDecoder(nn.Module):
    def __init__(
        self, encoder_channels: list[int], encoder_reductions: list[int], prefinal_channels: int = 32
    ) -> None:
        super().__init__()
        steps = int(math.log2(encoder_reductions[-1]))
        skip_channels = dict(zip(encoder_reductions[:-1], encoder_channels[:-1], strict=True))
        self.skip_reductions = [encoder_reductions[-1] >> (i + 1) for i in range(steps)]
        blocks, channels = [], encoder_channels[-1]
        for reduction in self.skip_reductions:
            # The block's output is added to the skip, so it takes the skip's width (none: keep the width).
            out = prefinal_channels if reduction == 1 else skip_channels.get(reduction, channels)
            blocks.append(LinknetBlock(channels, out))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels
        self.encoder_reductions = list(encoder_reductions)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        by_reduction = dict(zip(self.encoder_reductions, features, strict=True))
        x = features[-1]
        for block, reduction in zip(self.blocks, self.skip_reductions, strict=True):
            x = block(x)
            skip = by_reduction.get(reduction)
            if skip is not None:
                x = x + skip
        return x
