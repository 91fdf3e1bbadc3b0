"""PSPNet (Zhao et al., 2017): pyramid pooling (1×1, 2×2, 3×3, 6×6 bins) on the deepest feature of a
shallow encoder (`encoder_depth` 3: stride 8 by default, as smp); the base model upsamples the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU


def _bin_weights(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """bins×size averaging weights of adaptive average pooling: bin i covers [⌊i·size/bins⌋, ⌈(i+1)·size/bins⌉)."""
    index = torch.arange(bins, device=like.device).unsqueeze(1)
    start, end = (index * size) // bins, ((index + 1) * size + bins - 1) // bins
    position = torch.arange(size, device=like.device)
    inside = ((position >= start) & (position < end)).to(like.dtype)
    return inside / inside.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, bins: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, bins)` as two matrix products. ONNX has no adaptive pooling, and the
    exporters' translations fix the input size (or fail) when it is not a multiple of `bins`; this form
    keeps H and W dynamic in exported graphs and costs little next to the convolutions."""
    rows = _bin_weights(x.shape[-2], bins, x)
    columns = _bin_weights(x.shape[-1], bins, x)
    return rows @ x @ columns.transpose(0, 1)


class PyramidPooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        if bins == 1:  # BatchNorm cannot normalise a single value per channel at batch size 1
            self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        else:
            self.conv = ConvBnReLU(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(adaptive_avg_pool2d(x, self.bins))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)


class PSPDecoder(nn.Module):
    def __init__(
        self, encoder_channels: list[int], bins=(1, 2, 3, 6), channels: int = 512, dropout: float = 0.2
    ) -> None:
        super().__init__()
        bins = tuple(bins)
        if not bins or not all(isinstance(b, int) and b >= 1 for b in bins):
            raise SegwiseError(f"pspnet: decoder_bins must be positive integers, got {list(bins)}")
        deepest = encoder_channels[-1]
        self.pools = nn.ModuleList(PyramidPooling(deepest, max(1, deepest // len(bins)), b) for b in bins)
        pooled = deepest + len(bins) * max(1, deepest // len(bins))
        self.conv = ConvBnReLU(pooled, channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        x = torch.cat([pool(x) for pool in self.pools] + [x], dim=1)
        return self.dropout(self.conv(x))
