"""A plain (single-scale) Vision Transformer as an encoder: the tokens of a few of its blocks, as maps.

A plain ViT (ViT, DeiT, EVA, ... in timm) cuts the image into patches and keeps one token per patch through
every block, so all its features share one stride, the patch size; `dpt` reassembles them into a pyramid.
The prefix tokens (class, distillation, registers) carry no position: they come with each map, for DPT's
readout. Decoders that need a feature pyramid (U-Net, FPN, ...) cannot use such an encoder (`Encoder`
refuses it with the alternatives).

timm builds the ViT with `dynamic_img_size=True`: its position embedding is resampled to each input's patch
grid, so any H×W works once it is divisible by the patch size, which the base model pads it to (the
`reductions` are the patch size). Weights load as for every timm encoder (see encoders.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import SegwiseError
from .encoders import check_encoder_name, create_timm_encoder, weight_options

TOKENS = "a plain ViT such as vit_small_patch16_224 or deit_small_patch16_224"


def uniform_blocks(depth: int, blocks: int) -> list[int]:
    """`depth` of `blocks` blocks spread evenly, ending with the last (4 of 12: [2, 5, 8, 11], DPT's
    choice for ViT-B, as smp's)."""
    return [blocks * (i + 1) // depth - 1 for i in range(depth)]


class ViTEncoder(nn.Module):
    """A timm ViT returning `(maps, prefix_tokens)`: the N×C×H×W tokens of `depth` blocks (shallow to
    deep) and each block's N×P×C prefix tokens (None when the ViT has none); `channels` and `reductions`
    describe the maps.

    `depth` blocks spread evenly over the ViT, or `output_indices` (increasing, negative counts from the
    end); `weights` as for `Encoder`.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        weights: str | Path | None = None,
        depth: int = 4,
        output_indices: list[int] | None = None,
        mapping: str = "by_name",
    ) -> None:
        super().__init__()
        check_encoder_name(name)
        options: dict = {"features_only": True, "in_chans": in_channels, "pretrained": weights is not None}
        options.update(weight_options(name, weights, mapping), dynamic_img_size=True)
        try:
            features = create_timm_encoder(name, options)
        except TypeError:  # the model has no dynamic image size: not a ViT of timm's VisionTransformer kind
            features = None
        # timm's features_only ViT is a feature getter that holds the ViT itself; a pyramid has stages
        vit = getattr(features, "model", None)
        reductions = sorted(set(features.feature_info.reduction())) if features is not None else []
        if len(reductions) != 1 or not hasattr(vit, "forward_intermediates") or not hasattr(vit, "blocks"):
            strides = f" (features at strides {reductions})" if len(reductions) > 1 else ""
            raise SegwiseError(
                f"encoder '{name}' is not a plain ViT{strides}; dpt reassembles the tokens of {TOKENS}; "
                f"for '{name}' use another arch, e.g. upernet"
            )
        self.indices = _block_indices(name, depth, output_indices, len(vit.blocks))
        vit.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)  # unused blocks go
        self.model = vit
        self.name = name
        self.prefix_tokens: int = vit.num_prefix_tokens
        self.channels: list[int] = [vit.embed_dim] * len(self.indices)
        self.reductions: list[int] = reductions * len(self.indices)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        if not self.prefix_tokens:
            return self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True), None
        pairs = self.model.forward_intermediates(
            x, indices=self.indices, intermediates_only=True, return_prefix_tokens=True
        )
        return [maps for maps, _ in pairs], [tokens for _, tokens in pairs]


def _block_indices(name: str, depth: int, output_indices: list[int] | None, blocks: int) -> list[int]:
    """The blocks whose tokens the encoder returns, as non-negative increasing indices."""
    if (
        not 1 <= depth <= min(4, blocks)
    ):  # DPT reassembles at most 4 maps (strides 4 to 32 for 16-pixel patches)
        raise SegwiseError(f"encoder '{name}': depth must be in 1..{min(4, blocks)}, got {depth}")
    if output_indices is None:
        return uniform_blocks(depth, blocks)
    if len(output_indices) != depth:
        raise SegwiseError(
            f"encoder '{name}': output_indices {list(output_indices)} must name depth={depth} blocks; "
            f"give {depth} indices or set encoder_depth={len(output_indices)}"
        )
    if not all(-blocks <= i < blocks for i in output_indices):
        raise SegwiseError(
            f"encoder '{name}': output_indices {list(output_indices)} out of range; it has {blocks} blocks "
            f"(0..{blocks - 1}, or negative from the end)"
        )
    indices = [i % blocks for i in output_indices]
    if indices != sorted(set(indices)):  # the ViT yields its blocks in order, whatever order is asked
        raise SegwiseError(
            f"encoder '{name}': output_indices {list(output_indices)} must be increasing, shallow to deep"
        )
    return indices
