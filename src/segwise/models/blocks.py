"""Small building blocks shared by decoders."""

from __future__ import annotations

from torch import nn


class ConvBnReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConv2d(nn.Sequential):
    """Depthwise k×k (optionally dilated) then pointwise 1×1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        )


def channel_gate(channels: int, reduction: int = 16) -> nn.Sequential:
    """Squeeze & excitation (Hu et al., 2018): one weight in (0, 1) per channel, from its global average."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, max(1, channels // reduction), 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(max(1, channels // reduction), channels, 1),
        nn.Sigmoid(),
    )


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (Roy et al., 2018), as smp's `scse` attention:
    the feature map reweighted per channel (from its global average) plus per pixel (from a 1×1 conv)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel_gate = channel_gate(channels, reduction)
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.channel_gate(x) + x * self.spatial_gate(x)
