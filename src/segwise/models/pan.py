"""PAN, the Pyramid Attention Network (Li et al., 2018), as smp's `PAN`.

A feature pyramid attention block (FPA) on the deepest feature of an encoder dilated to output stride 16
(or undilated, 32): a 7-5-3 pyramid of single-channel maps weighs a 1×1 projection per pixel, plus a
global-pooling branch. Three global attention upsample blocks (GAU) then climb the three shallower
feature levels (stride 4 for most encoders): each projects its skip, weighs it per channel by the
globally pooled deeper output, and adds the deeper output upsampled. The base model upsamples the
logits to the input size.

Unlike smp, the pyramid's max pools round up and its upsamplings aim at the finer maps' own sizes: the
same function as smp's wherever the deepest map's sides are multiples of 8 (wherever smp's runs), and
any other size works too, down to a 1×1 map.

Traced for ONNX (torch.export), a pyramid whose coarsest map is 1×1 in the example input specializes the
graph to that size: torch's shape logic branches on a size of 1 (broadcasting, memory layout), so the
export would hold for no other size. `min_deepest_side` asks the exporter for an example at least that
large (see `SegmentationModel.min_trace_side`); the outputs are the same at every size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError

UPSAMPLING = ("bilinear", "nearest")
PYRAMID_HALVINGS = 3  # the pyramid's max pools, each halving its map (rounding up)


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm that also trains on a single value per channel (a globally pooled map, or the pyramid's
    coarsest map, with a batch of one): with no spread to normalise by, it uses the running statistics
    then, as in evaluation, instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class ConvBn(nn.Module):
    """Convolution (with bias, as the authors' and smp's), BatchNorm, then ReLU unless `relu=False`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bn = BatchNorm(out_channels)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=mode, align_corners=True if mode == "bilinear" else None)


class FeaturePyramidAttention(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBn(in_channels, out_channels, 1))
        self.project = ConvBn(in_channels, out_channels, 1)
        pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)  # no parameters: shared
        self.down1 = nn.Sequential(pool, ConvBn(in_channels, 1, 7))
        self.down2 = nn.Sequential(pool, ConvBn(1, 1, 5))
        self.down3 = nn.Sequential(pool, ConvBn(1, 1, 3), ConvBn(1, 1, 3))
        self.conv2 = ConvBn(1, 1, 5)
        self.conv1 = ConvBn(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.down1(x)  # 1/2 of x's size, then 1/4, 1/8
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        pyramid = _resize(x3, x2.shape[-2:], "bilinear") + self.conv2(x2)
        pyramid = _resize(pyramid, x1.shape[-2:], "bilinear") + self.conv1(x1)
        pyramid = _resize(pyramid, x.shape[-2:], "bilinear")
        # the global branch is 1×1: its bilinear upsampling is a broadcast
        return pyramid * self.project(x) + self.pooled(x)


class GlobalAttentionUpsample(nn.Module):
    def __init__(self, skip_channels: int, channels: int, upsampling: str) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBn(channels, channels, 1, relu=False), nn.Sigmoid()
        )
        self.skip_conv = ConvBn(skip_channels, channels, 3)
        self.upsampling = upsampling

    def forward(self, skip: torch.Tensor, deeper: torch.Tensor) -> torch.Tensor:
        upsampled = _resize(deeper, skip.shape[-2:], self.upsampling)
        return upsampled + self.skip_conv(skip) * self.gate(deeper)


class PANDecoder(nn.Module):
    def __init__(self, encoder_channels: list[int], channels: int = 32, upsampling: str = "bilinear") -> None:
        super().__init__()
        if len(encoder_channels) < 4:
            raise SegwiseError(
                f"pan: needs an encoder with at least 4 feature levels, got {len(encoder_channels)}"
            )
        if upsampling not in UPSAMPLING:
            raise SegwiseError(f"pan: decoder_upsampling '{upsampling}' unknown; choose one of {UPSAMPLING}")
        if not isinstance(channels, int) or channels < 1:
            raise SegwiseError(f"pan: decoder_channels must be a positive integer, got {channels}")
        skips = encoder_channels[-4:-1]
        self.pyramid = FeaturePyramidAttention(encoder_channels[-1], channels)
        # deepest skip first, as the forward pass climbs
        self.gaus = nn.ModuleList(GlobalAttentionUpsample(c, channels, upsampling) for c in reversed(skips))
        self.out_channels = channels
        # the deepest map's side whose coarsest pyramid map is 2 (9 → 5 → 3 → 2), not 1: what tracing needs
        self.min_deepest_side = 2**PYRAMID_HALVINGS + 1

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.pyramid(features[-1])
        for gau, skip in zip(self.gaus, reversed(features[-4:-1]), strict=True):
            x = gau(skip, x)
        return x
