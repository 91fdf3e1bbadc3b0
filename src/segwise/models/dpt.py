"""DPT, the Dense Prediction Transformer (Ranftl et al. 2021), as smp's DPT, on a plain ViT (vit.py).

Reassemble: the tokens of each chosen block (all at the patch stride p) first take in the prefix tokens'
global information (the readout: `cat` the class token to every token and project back, `add` the prefix
tokens' mean, or `ignore` them), then are projected and resampled to strides p/4, p/2, p and 2p (a
transposed conv up, a strided conv down: 4, 8, 16, 32 for 16-pixel patches). Fusion: from the deepest,
each map passes two residual conv units, adds to the finer map and is upsampled to it (the finest ×2).
A 3×3 conv, batch norm and dropout end the decoder at stride p/8; the 1×1 head predicts, and the logits
are upsampled with align_corners=True, as smp's head does.

smp upsamples each fused map by exactly 2, so its input must be divisible by 2p; here each map is resized
to the next one's size instead (the same thing at those sizes), so any input divisible by p works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegwiseError

READOUTS = ("cat", "add", "ignore")
RESAMPLING = (4, 2, 1, 1 / 2)  # of the patch grid, shallow to deep: the paper's strides p/4 … 2p


class Readout(nn.Module):
    """The prefix tokens' global information into every patch token (DPT's "Read")."""

    def __init__(self, channels: int, mode: str, has_prefix_tokens: bool) -> None:
        super().__init__()
        self.mode = mode
        if mode == "cat":  # [token, class token] back to `channels` (just the token without prefix tokens)
            width = 2 * channels if has_prefix_tokens else channels
            self.project = nn.Sequential(nn.Linear(width, channels), nn.GELU())

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "add" and prefix is not None:
            return x + prefix.mean(dim=1)[:, :, None, None]
        if self.mode != "cat":
            return x
        tokens = x.permute(0, 2, 3, 1)  # N×H×W×C: the linear layer acts on each token
        if prefix is not None:
            cls = prefix[:, 0, None, None, :].expand_as(tokens)
            tokens = torch.cat([tokens, cls], dim=-1)
        return self.project(tokens).permute(0, 3, 1, 2)


def reassemble(in_channels: int, mid_channels: int, out_channels: int, factor: float) -> nn.Sequential:
    """1×1 projection, resampling of the patch grid by `factor`, 3×3 conv to the fusion width."""
    if factor > 1:
        resample = nn.ConvTranspose2d(mid_channels, mid_channels, int(factor), stride=int(factor))
    elif factor == 1:
        resample = nn.Identity()
    else:
        resample = nn.Conv2d(mid_channels, mid_channels, 3, stride=round(1 / factor), padding=1)
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 1),
        resample,
        nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
    )


def residual_conv_unit(channels: int) -> nn.Sequential:
    """(ReLU, 3×3 conv, batch norm) twice; the fusion block adds the input back."""
    layers = []
    for _ in range(2):
        layers += [
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        ]
    return nn.Sequential(*layers)


class FusionBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = residual_conv_unit(channels)
        self.second = residual_conv_unit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None, size) -> torch.Tensor:
        x = x + self.first(x)
        if coarser is not None:
            x = x + coarser
        x = x + self.second(x)
        return self.project(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class DPTDecoder(nn.Module):
    head_kernel_size = 1  # smp's head: 3×3 conv, norm, dropout (here, in the decoder), then a 1×1 classifier
    align_corners = True  # smp's head upsampling, so that the logits equal smp's

    def __init__(
        self,
        encoder_channels: list[int],
        has_prefix_tokens: bool,
        readout: str = "cat",
        intermediate_channels: tuple[int, ...] = (256, 512, 1024, 1024),
        fusion_channels: int = 256,
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise SegwiseError(f"dpt: decoder_readout '{readout}' unknown; choose one of {READOUTS}")
        levels = len(encoder_channels)
        if len(intermediate_channels) != levels or min(intermediate_channels) < 1:
            raise SegwiseError(
                f"dpt: decoder_intermediate_channels must be {levels} positive widths, one per encoder block "
                f"(encoder_depth={levels}), got {list(intermediate_channels)}; e.g. {[256, 512, 1024, 1024][:levels]}"
            )
        if fusion_channels < 1:
            raise SegwiseError(f"dpt: decoder_fusion_channels must be positive, got {fusion_channels}")
        self.readouts = nn.ModuleList(Readout(c, readout, has_prefix_tokens) for c in encoder_channels)
        self.reassembles = nn.ModuleList(
            reassemble(c, mid, fusion_channels, factor)
            for c, mid, factor in zip(
                encoder_channels, intermediate_channels, RESAMPLING[:levels], strict=True
            )
        )
        self.fusions = nn.ModuleList(FusionBlock(fusion_channels) for _ in encoder_channels)
        self.head = nn.Sequential(
            nn.Conv2d(fusion_channels, fusion_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(fusion_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )
        self.out_channels = fusion_channels

    def forward(self, encoded: tuple[list[torch.Tensor], list[torch.Tensor] | None]) -> torch.Tensor:
        maps, prefix_tokens = encoded
        prefix_tokens = prefix_tokens or [None] * len(maps)
        steps = zip(self.readouts, self.reassembles, maps, prefix_tokens, strict=True)
        pyramid = [resample(readout(x, prefix)) for readout, resample, x, prefix in steps]
        # fused from the deepest: each map resized to the next finer one's size, the finest doubled
        targets = [[2 * s for s in pyramid[0].shape[-2:]]] + [p.shape[-2:] for p in pyramid[:-1]]
        fused = None
        for fusion, x, size in zip(self.fusions, pyramid[::-1], targets[::-1], strict=True):
            fused = fusion(x, fused, size)
        return self.head(fused)
