"""U-Net++ (Zhou et al., 2018): nested, densely connected skip pathways between encoder and decoder.

Node (d, l) upsamples the chain that started at the encoder level d and fuses, at the scale of encoder
level l + 1, every node already computed there plus that encoder feature. Chain 0 is the main path; its
widths are `decoder_channels`, the other chains keep the width of the encoder feature at their scale.
After the finest encoder level, plain U-Net blocks (no skip) upsample to full resolution. The same
nodes and widths as segmentation-models-pytorch's UnetPlusPlus.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SegwiseError
from .unet import UnetBlock, check_options, decoder_widths


class UnetPlusPlusDecoder(nn.Module):
    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        decoder_channels: tuple[int, ...] | None = None,
        upsampling: str = "nearest",
        attention: str | None = None,
    ) -> None:
        super().__init__()
        check_options("unetplusplus", upsampling, attention)
        widths = decoder_widths("unetplusplus", encoder_reductions, decoder_channels)
        # The deepest feature of each reduction is that scale's encoder level, deepest level first.
        by_reduction = dict(zip(encoder_reductions, range(len(encoder_reductions)), strict=True))
        self.levels = sorted(by_reduction.values(), reverse=True)
        reductions = [encoder_reductions[i] for i in self.levels]
        if any(a != 2 * b for a, b in zip(reductions, reductions[1:], strict=False)):
            raise SegwiseError(
                f"unetplusplus: needs encoder features a factor 2 apart, this encoder has strides "
                f"{sorted(set(encoder_reductions))}; use unet"
            )
        channels = [encoder_channels[i] for i in self.levels]
        n = len(channels) - 1  # upsampling steps inside the nested grid
        blocks = {}
        for level in range(n):
            for chain in range(level + 1):
                if chain == 0:
                    in_channels = channels[0] if level == 0 else widths[level - 1]
                    out_channels = widths[level]
                else:
                    in_channels, out_channels = channels[level], channels[level + 1]
                skip = channels[level + 1] * (level + 1 - chain)  # chains chain+1..level and the encoder
                blocks[f"x_{chain}_{level}"] = UnetBlock(
                    in_channels, skip, out_channels, upsampling, attention
                )
        self.blocks = nn.ModuleDict(blocks)
        # From the finest encoder level (stride 2 for most encoders, 4 for some) to full resolution.
        in_channels = [widths[n - 1] if n else channels[0], *widths[n:-1]]
        self.final = nn.ModuleList(
            UnetBlock(cin, 0, cout, upsampling, attention)
            for cin, cout in zip(in_channels, widths[n:], strict=True)
        )
        self.out_channels = widths[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        encoder = [features[i] for i in self.levels]
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for level in range(len(encoder) - 1):
            for chain in range(level, -1, -1):  # shallower chains first: deeper ones concatenate them
                x = encoder[chain] if chain == level else nodes[chain, level - 1]
                skip = torch.cat(
                    [*(nodes[c, level] for c in range(chain + 1, level + 1)), encoder[level + 1]], 1
                )
                nodes[chain, level] = self.blocks[f"x_{chain}_{level}"](x, skip)
        x = nodes[0, len(encoder) - 2] if len(encoder) > 1 else encoder[0]
        for block in self.final:
            x = block(x, None)
        return x
