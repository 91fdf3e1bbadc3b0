"""SegFormer's all-MLP decoder (Xie et al. 2021), as segmentation_models_pytorch's `Segformer`.

Each encoder feature is projected to one width by a per-pixel linear layer (a 1×1 convolution), brought
to the stride-4 feature's size (bilinear), and the concatenation fused by a 1×1 convolution with batch
norm; a 1×1 head predicts, and its logits are upsampled with `align_corners=True`, as smp's head does.
Designed for the Mix Transformer encoders (`mit_b0` … `mit_b5`), it takes any encoder's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU


class SegformerDecoder(nn.Module):
    head_kernel_size = 1  # the paper's (and smp's) per-pixel classifier
    align_corners = True  # smp's head upsampling, so that the logits equal smp's

    def __init__(
        self, encoder_channels: list[int], encoder_reductions: list[int], segmentation_channels: int = 256
    ) -> None:
        super().__init__()
        if segmentation_channels < 1:
            raise SegwiseError(
                f"segformer: decoder_segmentation_channels must be positive, got {segmentation_channels}"
            )
        self.linear = nn.ModuleList(nn.Conv2d(c, segmentation_channels, 1) for c in encoder_channels)
        # the features are resized to the first at stride 4 or more (stride 2 ones are shrunk, as smp does)
        self.target = next(
            (i for i, r in enumerate(encoder_reductions) if r >= 4), len(encoder_reductions) - 1
        )
        self.fuse = ConvBnReLU(len(encoder_channels) * segmentation_channels, segmentation_channels, 1)
        self.out_channels = segmentation_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[self.target].shape[-2:]
        # deepest first, the order of smp's concatenation (and so of the fusing weights)
        projected = [
            F.interpolate(linear(feature), size=size, mode="bilinear", align_corners=False)
            for linear, feature in zip(self.linear[::-1], features[::-1], strict=True)
        ]
        return self.fuse(torch.cat(projected, dim=1))
