"""MA-Net, the Multi-scale Attention Net (Fan et al., 2020), as smp's `MAnet`.

A U-Net whose bottleneck is a position-wise attention block (every pixel of the deepest feature attends
to every other) and whose skip connections are multi-scale fusion attention blocks (the upsampled
decoder feature is reweighted per channel by squeeze & excitation of itself and of the skip). As U-Net,
one block per factor-2 upsampling down to full resolution; scales without a skip use U-Net's block.

The attention map is (H·W)² for the deepest feature's H×W: predict tiles images far larger than the
training crops, so it stays small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU, channel_gate
from .unet import UnetBlock, decoder_widths

UPSAMPLING = ("nearest", "bilinear")
SE_REDUCTION = 16  # the channel reduction of the squeeze & excitation gates, as the authors and smp


class PositionAttention(nn.Module):
    """The position-wise attention block (PAB): a residual of values mixed by query·key affinities."""

    def __init__(self, channels: int, pab_channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.key = nn.Conv2d(channels, pab_channels, kernel_size=1)
        self.query = nn.Conv2d(channels, pab_channels, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.out = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        keys = self.key(x).flatten(2)  # N × P × HW
        queries = self.query(x).flatten(2).transpose(1, 2)  # N × HW × P
        values = self.value(x).flatten(2).transpose(1, 2)  # N × HW × C
        affinity = torch.bmm(queries, keys)  # N × HW × HW
        # smp's MAnet normalises over the whole map at once and reads the pixels × channels result as
        # channels × pixels (a reshape, no transpose); kept, so that MAnet weights trained with smp run
        # the same function here.
        affinity = affinity.flatten(1).softmax(dim=1).view_as(affinity)
        attended = torch.bmm(affinity, values).reshape(batch, self.channels, height, width)
        return self.out(x + attended)


class FusionAttentionBlock(nn.Module):
    """The multi-scale fusion attention block (MFAB): the deeper feature, brought to the skip's width
    and upsampled ×2, weighed per channel by the sum of its own and the skip's squeeze & excitation,
    concatenated with the skip, then two 3×3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsampling: str) -> None:
        super().__init__()
        self.high_conv = nn.Sequential(
            ConvBnReLU(in_channels, in_channels, 3), ConvBnReLU(in_channels, skip_channels, 1)
        )
        self.skip_gate = channel_gate(skip_channels, SE_REDUCTION)
        self.high_gate = channel_gate(skip_channels, SE_REDUCTION)
        self.conv1 = ConvBnReLU(2 * skip_channels, out_channels)
        self.conv2 = ConvBnReLU(out_channels, out_channels)
        self.upsampling = upsampling

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.high_conv(x), scale_factor=2.0, mode=self.upsampling)
        x = x * (self.high_gate(x) + self.skip_gate(skip))
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class MAnetDecoder(nn.Module):
    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        decoder_channels: tuple[int, ...] | None = None,
        pab_channels: int = 64,
        upsampling: str = "nearest",
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise SegwiseError(
                f"manet: decoder_upsampling '{upsampling}' unknown; choose one of {UPSAMPLING}"
            )
        if not isinstance(pab_channels, int) or pab_channels < 1:
            raise SegwiseError(f"manet: decoder_pab_channels must be a positive integer, got {pab_channels}")
        decoder_channels = decoder_widths("manet", encoder_reductions, decoder_channels)
        # As U-Net: the deepest feature of each reduction serves as the skip at that scale.
        skip_channels = dict(zip(encoder_reductions[:-1], encoder_channels[:-1], strict=True))
        self.skip_reductions = [encoder_reductions[-1] >> (i + 1) for i in range(len(decoder_channels))]
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        self.center = PositionAttention(encoder_channels[-1], pab_channels)
        self.blocks = nn.ModuleList(
            FusionAttentionBlock(cin, skip_channels[r], cout, upsampling)
            if r in skip_channels
            else UnetBlock(cin, 0, cout, upsampling)
            for cin, r, cout in zip(in_channels, self.skip_reductions, decoder_channels, strict=True)
        )
        self.out_channels = decoder_channels[-1]
        self.encoder_reductions = list(encoder_reductions)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        by_reduction = dict(zip(self.encoder_reductions, features, strict=True))
        x = self.center(features[-1])
        for block, reduction in zip(self.blocks, self.skip_reductions, strict=True):
            x = block(x, by_reduction.get(reduction))
        return x
