"""FCN (Long et al., 2015), two ways.

`fcn`: as torchvision builds it on a dilated backbone: the deepest feature (stride 8 by default) → 3×3
conv, BatchNorm, ReLU, dropout; the base model upsamples the logits to the input size.

`fcn32s`, `fcn16s`, `fcn8s`: the paper's skip architectures, on any encoder with features at strides 32,
16 and 8 (undilated). The stride-32 feature goes through `fcn`'s head (standing in for VGG's fc6/fc7) and a
1×1 score layer: FCN-32s. FCN-16s upsamples those scores 2× (a learned transposed convolution initialised
to bilinear interpolation) and adds the scores of the stride-16 feature (a 1×1 score layer initialised to
zero, the paper's recipe, so training starts from FCN-32s's predictions); FCN-8s does it once more with
the stride-8 feature. The final upsampling to the input is fixed bilinear interpolation, in 2× steps rather
than the paper's single ×8/×16/×32 kernel: then the path without skips is the same function in all three
(a learned 2× step starts as exactly one fixed step), and a skip changes the output only through its
score layer — with zero scores, FCN-8s computes exactly FCN-32s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


class Upsample2x(nn.Module):
    """A learned 2× upsampling of class scores that starts as bilinear interpolation (align_corners=False),
    borders included: the input's edge is repeated once, as interpolation clamps there, and a 4×4
    transposed convolution with stride 2 spreads each score with weights ¼, ¾ per axis."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=3, bias=False)
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
        with torch.no_grad():  # each class's scores from its own only, as in the paper's initialisation
            self.conv.weight.zero_()
            self.conv.weight[range(channels), range(channels)] = torch.outer(taps, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


class SkipFusion(nn.Module):
    """The coarser scores upsampled 2× (learned), plus the scores of a finer feature from a 1×1 score layer
    initialised to zero."""

    def __init__(self, feature_channels: int, num_classes: int) -> None:
        super().__init__()
        self.upsample = Upsample2x(num_classes)
        self.score = nn.Conv2d(feature_channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, scores: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.upsample(scores) + self.score(feature)


class FCNSkipDecoder(nn.Module):
    """FCN-32s, -16s or -8s (`stride` 32, 16 or 8: where the last scores are summed); outputs the class
    scores at the input's (padded) size, so the base model adds no head."""

    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        num_classes: int,
        stride: int,
        channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        name = f"fcn{stride}s"
        needed = [s for s in (32, 16, 8) if s >= stride]
        if encoder_reductions[-1] != 32 or not set(needed) <= set(encoder_reductions):
            raise SegwiseError(
                f"{name}: needs encoder features at strides {needed}, the deepest at 32; the encoder gives "
                f"{encoder_reductions}; use a hierarchical encoder such as resnet34"
            )
        self.head = FCNDecoder(encoder_channels, channels, dropout)
        self.score = nn.Conv2d(self.head.out_channels, num_classes, kernel_size=1)
        self.skip_indices = [encoder_reductions.index(s) for s in needed[1:]]
        self.skips = nn.ModuleList(SkipFusion(encoder_channels[i], num_classes) for i in self.skip_indices)
        self.fixed_steps = int(math.log2(stride))  # stride 8 → three fixed 2× interpolations to the input
        self.out_channels = num_classes

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        scores = self.score(self.head(features))
        for index, skip in zip(self.skip_indices, self.skips, strict=True):
            scores = skip(scores, features[index])
        for _ in range(self.fixed_steps):
            scores = F.interpolate(scores, scale_factor=2.0, mode="bilinear", align_corners=False)
        return scores
