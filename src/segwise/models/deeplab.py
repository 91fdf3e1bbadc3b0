"""DeepLabV3 (Chen et al., 2017) and DeepLabV3+ (Chen et al., 2018) decoders.

Both run Atrous Spatial Pyramid Pooling on the deepest feature of a dilated encoder (output stride 8 or
16, set through the builder's `encoder_output_stride`); V3+ adds a light decoder that fuses the ASPP output
with the stride-4 encoder feature. The base model upsamples the logits to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import SeparableConv2d


def _check_rates(arch: str, atrous_rates) -> tuple[int, int, int]:
    rates = tuple(atrous_rates)
    if len(rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in rates):
        raise SegwiseError(f"{arch}: decoder_atrous_rates must be three positive integers, got {list(rates)}")
    return rates


def _conv_bn_relu(conv: nn.Module, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class ASPPPooling(nn.Module):
    """Image-level features. No BatchNorm after the pooled 1×1 map, so training with batch size 1 works."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        atrous_rates: tuple[int, int, int],
        separable: bool,
        dropout: float,
    ) -> None:
        super().__init__()

        def atrous(rate: int) -> nn.Module:
            if separable:
                return SeparableConv2d(in_channels, out_channels, 3, dilation=rate)
            return nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False)

        self.branches = nn.ModuleList(
            [
                _conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels),
                *(_conv_bn_relu(atrous(rate), out_channels) for rate in atrous_rates),
            ]
        )
        self.pooling = ASPPPooling(in_channels, out_channels)
        self.project = nn.Sequential(
            _conv_bn_relu(nn.Conv2d(5 * out_channels, out_channels, 1, bias=False), out_channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches] + [self.pooling(x)], dim=1))


class DeepLabV3Decoder(nn.Module):
    def __init__(
        self,
        encoder_channels: list[int],
        channels: int = 256,
        atrous_rates=(12, 24, 36),
        aspp_separable: bool = False,
        aspp_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        rates = _check_rates("deeplabv3", atrous_rates)
        self.aspp = ASPP(encoder_channels[-1], channels, rates, aspp_separable, aspp_dropout)
        self.conv = _conv_bn_relu(nn.Conv2d(channels, channels, 3, padding=1, bias=False), channels)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.aspp(features[-1]))


class DeepLabV3PlusDecoder(nn.Module):
    HIGHRES_CHANNELS = 48  # as proposed by the authors

    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        channels: int = 256,
        atrous_rates=(12, 24, 36),
        aspp_separable: bool = True,
        aspp_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        rates = _check_rates("deeplabv3plus", atrous_rates)
        if 4 not in encoder_reductions[:-1]:
            raise SegwiseError(
                f"deeplabv3plus: needs an encoder feature at stride 4, this one has strides {encoder_reductions}"
            )
        # The deepest feature at stride 4 joins the upsampled ASPP output.
        self.highres_index = max(i for i, r in enumerate(encoder_reductions) if r == 4)
        self.aspp = nn.Sequential(
            ASPP(encoder_channels[-1], channels, rates, aspp_separable, aspp_dropout),
            _conv_bn_relu(SeparableConv2d(channels, channels, 3), channels),
        )
        highres = encoder_channels[self.highres_index]
        self.highres = _conv_bn_relu(
            nn.Conv2d(highres, self.HIGHRES_CHANNELS, 1, bias=False), self.HIGHRES_CHANNELS
        )
        self.fuse = _conv_bn_relu(SeparableConv2d(channels + self.HIGHRES_CHANNELS, channels, 3), channels)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        highres = features[self.highres_index]
        x = F.interpolate(
            self.aspp(features[-1]), size=highres.shape[-2:], mode="bilinear", align_corners=True
        )
        return self.fuse(torch.cat([x, self.highres(highres)], dim=1))
