"""UPerNet (Xiao et al., 2018, "Unified Perceptual Parsing"), as smp's UPerNet.

The encoder features from stride 4 on are layer-normalised per pixel; a pyramid pooling module (PPM) runs
on the deepest, an FPN top-down pathway adds the shallower ones, and every pyramid level, brought to the
finest level's resolution (stride 4 for most encoders), is concatenated and fused by a 3×3 conv. The head
is a 1×1 conv (`head_kernel_size`) and the base model upsamples the logits to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .pspnet import adaptive_avg_pool2d

NORMS = ("batchnorm", "instancenorm", "identity")
BINS = (1, 2, 3, 6)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an N×C×H×W map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PooledBatchNorm(nn.BatchNorm2d):
    """BatchNorm of a 1×1 pooled map. One training sample gives one value per channel, which batch
    statistics cannot normalise (torch refuses); such a batch uses the running statistics instead, so
    training with batch size 1 works while the layer stays smp's (same weights, same results otherwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Sequential:
    """smp's Conv2dReLU: the conv has a bias only without a norm layer to shift it."""
    layers = {"batchnorm": nn.BatchNorm2d, "instancenorm": nn.InstanceNorm2d, "pooled": PooledBatchNorm}
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "identity"),
        layers[norm](out_channels) if norm in layers else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.Module):
    """The deepest feature and its average pools over 1×1 … 6×6 bins (each 1×1-convolved and resized
    back), concatenated and fused by a 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        # the 1-bin map's norm must cope with a batch of one; instance norm of a single value is void
        pooled_norm = {"batchnorm": "pooled", "instancenorm": "identity"}.get(norm, norm)
        self.branches = nn.ModuleList(
            conv_norm_relu(in_channels, out_channels, 1, pooled_norm if bins == 1 else norm) for bins in BINS
        )
        # batch norm whatever `norm` is, as smp (its weights then load)
        self.fuse = conv_norm_relu(in_channels + len(BINS) * out_channels, out_channels, 3, "batchnorm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [
            _resize(branch(adaptive_avg_pool2d(x, b)), x.shape[-2:])
            for branch, b in zip(self.branches, BINS, strict=True)
        ]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        channels: int = 256,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise SegwiseError(f"upernet: decoder_use_norm '{norm}' unknown; choose one of {NORMS}")
        if channels < 1:
            raise SegwiseError(f"upernet: decoder_channels must be positive, got {channels}")
        # stride 1 and 2 features are too large to fuse at little cost; smp also starts at stride 4
        self.first = next((i for i, r in enumerate(encoder_reductions) if r >= 4), len(encoder_reductions))
        used = encoder_channels[self.first :]
        if len(used) < 2:
            raise SegwiseError(
                f"upernet: needs at least 2 encoder feature levels at stride 4 or more, got strides "
                f"{encoder_reductions}; use a deeper encoder_depth or another encoder"
            )
        self.feature_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in used)
        self.ppm = PyramidPoolingModule(used[-1], channels, norm)
        # deepest first, as the top-down pathway runs
        self.laterals = nn.ModuleList(conv_norm_relu(c, channels, 1, norm) for c in used[-2::-1])
        self.smooth = nn.ModuleList(conv_norm_relu(channels, channels, 3, norm) for _ in used[:-1])
        self.fuse = conv_norm_relu(len(used) * channels, channels, 3, norm)
        self.out_channels = channels
        self.head_kernel_size = 1

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = [norm(f) for norm, f in zip(self.feature_norms, features[self.first :], strict=True)]
        # Top-down: each level = its lateral 1×1 conv + the coarser level resized to it.
        pyramid = [self.ppm(features[-1])]
        for lateral, skip in zip(self.laterals, features[-2::-1], strict=True):
            skip = lateral(skip)
            pyramid.append(skip + _resize(pyramid[-1], skip.shape[-2:]))
        pyramid = [pyramid[0]] + [smooth(p) for smooth, p in zip(self.smooth, pyramid[1:], strict=True)]
        finest = pyramid[-1].shape[-2:]
        return self.fuse(torch.cat([_resize(p, finest) for p in reversed(pyramid)], dim=1))
