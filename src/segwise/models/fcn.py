"""FCN (Long et al., 2015) as torchvision builds it on a dilated backbone: the deepest feature (stride 8 by
default) → 3×3 conv, BatchNorm, ReLU, dropout; the base model upsamples the logits to the input size."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU


class FCNDecoder(nn.Module):
    def __init__(
        self, encoder_channels: list[int], channels: int | None = None, dropout: float = 0.1
    ) -> None:
        super().__init__()
        channels = channels or max(1, encoder_channels[-1] // 4)
        if channels < 1 or not 0 <= dropout < 1:
            raise SegwiseError(
                f"fcn: need decoder_channels >= 1 and 0 <= decoder_dropout < 1, got {channels}, {dropout}"
            )
        self.block = nn.Sequential(ConvBnReLU(encoder_channels[-1], channels), nn.Dropout(dropout))
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.block(features[-1])
