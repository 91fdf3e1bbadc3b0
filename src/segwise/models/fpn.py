"""Feature Pyramid Network (Lin et al., 2017) as a segmentation decoder (Kirillov et al., "Panoptic FPN").

Top-down pathway over the four deepest encoder features, one conv tower per level brought to the finest
level's resolution (stride 4 for most encoders), merged by sum or concatenation; the base model upsamples
the logits to the input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError

MERGE_POLICIES = ("add", "cat")


class ConvGNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(32, out_channels),
            nn.ReLU(inplace=True),
        )


class SegmentationTower(nn.Module):
    """`max(1, n_upsamples)` conv blocks, each followed by a factor-2 bilinear upsampling if needed."""

    def __init__(self, in_channels: int, out_channels: int, n_upsamples: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvGNReLU(in_channels if i == 0 else out_channels, out_channels)
            for i in range(max(1, n_upsamples))
        )
        self.n_upsamples = n_upsamples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.n_upsamples:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


class FPNDecoder(nn.Module):
    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        merge_policy: str = "add",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(encoder_channels) < 4:
            raise SegwiseError(
                f"fpn: needs an encoder with at least 4 feature levels, got {len(encoder_channels)}"
            )
        if merge_policy not in MERGE_POLICIES:
            raise SegwiseError(
                f"fpn: decoder_merge_policy '{merge_policy}' unknown; choose one of {MERGE_POLICIES}"
            )
        if segmentation_channels % 32:
            raise SegwiseError(
                f"fpn: decoder_segmentation_channels must be a multiple of 32 (GroupNorm), got {segmentation_channels}"
            )
        if not 0 <= dropout < 1:
            raise SegwiseError(f"fpn: decoder_dropout must be in [0, 1), got {dropout}")
        channels, reductions = encoder_channels[-4:], encoder_reductions[-4:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, pyramid_channels, kernel_size=1) for c in channels)
        finest = reductions[0]
        self.towers = nn.ModuleList(
            SegmentationTower(pyramid_channels, segmentation_channels, int(math.log2(r // finest)))
            for r in reductions
        )
        self.merge_policy = merge_policy
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = segmentation_channels * (1 if merge_policy == "add" else 4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = features[-4:]
        # Top-down: deepest first, each level = upsampled coarser level + 1×1 lateral of the encoder feature.
        pyramid = [self.lateral[3](features[3])]
        for i in (2, 1, 0):
            skip = features[i]
            upsampled = F.interpolate(pyramid[-1], size=skip.shape[-2:], mode="nearest")
            pyramid.append(upsampled + self.lateral[i](skip))
        pyramid.reverse()  # finest first, as the towers
        levels = [tower(p) for tower, p in zip(self.towers, pyramid, strict=True)]
        x = torch.stack(levels).sum(dim=0) if self.merge_policy == "add" else torch.cat(levels, dim=1)
        return self.dropout(x)
