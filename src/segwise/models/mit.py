"""Mix Transformer encoders `mit_b0` … `mit_b5` (Xie et al. 2021, "SegFormer"), which timm does not provide.

Four stages, each an overlapping patch embedding (a strided convolution: 7×7/4, then 3×3/2) followed by
transformer blocks of efficient self-attention (keys and values from a map shrunk by a strided
convolution, `sr_ratio`) and a Mix-FFN (a depth-wise 3×3 convolution between its two linear layers, which
gives the position information, so any input size works without positional embeddings). Features come at
strides 4, 8, 16 and 32, as `channels` and `reductions` say, like any encoder: every decoder can use them.

Module names are those of the original SegFormer code and of segmentation_models_pytorch's `mit_b*`
encoders (`patch_embed1.proj`, `block1.0.attn.q`, `block1.0.mlp.dwconv.dwconv`, `norm1`, ...), so their
ImageNet checkpoints load as they are via `encoder_weights=PATH`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import adapt_input_conv
from torch import nn

from ..errors import SegwiseError
from .encoders import OUTPUT_STRIDES, _unwrapped, key_problems, read_state_dict

HEADS = (1, 2, 5, 8)  # per stage, for every size (64 channels per head at full width)
SR_RATIOS = (8, 4, 2, 1)  # keys/values of stage i come from a map `SR_RATIOS[i]` times coarser
MLP_RATIO = 4
DROP_PATH_RATE = 0.1  # stochastic depth, rising linearly to this over all blocks (the paper's setting)
PARTS = ("patch_embed", "block", "norm")  # the module names of a stage, numbered 1..4
NORM_EPS = 1e-6  # of the blocks' and stages' layer norms; the patch embeddings' keep torch's 1e-5


@dataclass(frozen=True)
class MitSize:
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


MIT_SIZES = {
    "mit_b0": MitSize((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MitSize((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MitSize((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MitSize((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MitSize((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MitSize((64, 128, 320, 512), (3, 6, 40, 3)),
}


def _to_map(tokens: torch.Tensor, height, width) -> torch.Tensor:
    """N×(H·W)×C tokens → N×C×H×W map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class OverlapPatchEmbed(nn.Module):
    """A strided convolution whose kernel overlaps its neighbours', then a layer norm over channels."""

    def __init__(self, in_channels: int, width: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """N×(H·W)×C tokens, and the H and W of their map."""
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map shrunk `sr_ratio` times per side
    by a strided convolution (`sr`): the cost of attention at stride 4 divided by sr_ratio²."""

    def __init__(self, width: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(width, width, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, height, width) -> torch.Tensor:
        batch, tokens, channels = x.shape
        head_width = channels // self.heads
        q = self.q(x).reshape(batch, tokens, self.heads, head_width).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(self.sr(_to_map(x, height, width)).flatten(2).transpose(1, 2))
        k, v = self.kv(source).reshape(batch, -1, 2, self.heads, head_width).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, channels))


class DWConv(nn.Module):
    """The Mix-FFN's depth-wise 3×3 convolution on tokens (a module of its own only for the checkpoint
    name `mlp.dwconv.dwconv`)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(width, width, 3, padding=1, groups=width)

    def forward(self, x: torch.Tensor, height, width) -> torch.Tensor:
        return self.dwconv(_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, MLP_RATIO * width)
        self.dwconv = DWConv(MLP_RATIO * width)
        self.fc2 = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: torch.Tensor, height, width) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class Block(nn.Module):
    """Pre-norm transformer block on N×(H·W)×C tokens: attention then Mix-FFN, each residual."""

    def __init__(self, width: int, heads: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=NORM_EPS)
        self.attn = EfficientSelfAttention(width, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(width, eps=NORM_EPS)
        self.mlp = MixFFN(width)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height, width) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixTransformer(nn.Module):
    """The four stages; `forward` returns their N×C×H×W outputs, strides 4, 8, 16, 32 (the first `depth`)."""

    def __init__(self, size: MitSize, in_channels: int = 3, depth: int = 4) -> None:
        super().__init__()
        blocks_in_all = sum(size.depths)
        rates = [DROP_PATH_RATE * j / (blocks_in_all - 1) for j in range(blocks_in_all)]
        previous, first = in_channels, 0
        self.depth = depth
        # Stage i's modules are named as in the checkpoints: `patch_embed{i}`, `block{i}`, `norm{i}` (PARTS).
        for i in range(depth):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            width, blocks = size.widths[i], size.depths[i]
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(previous, width, kernel, stride))
            stage = [Block(width, HEADS[i], SR_RATIOS[i], rates[first + j]) for j in range(blocks)]
            setattr(self, f"block{i + 1}", nn.ModuleList(stage))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(width, eps=NORM_EPS))
            previous, first = width, first + blocks
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(1, self.depth + 1):
            tokens, height, width = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, height, width)
            x = _to_map(getattr(self, f"norm{i}")(tokens), height, width)
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    """SegFormer's initialisation: truncated-normal linear layers, He-normal convolutions (by fan-out)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)


class MixTransformerEncoder(nn.Module):
    """`mit_b0` … `mit_b5` as a segwise encoder (like `Encoder`): the network as `model`, its features'
    `channels` and `reductions`.

    `weights`: None (random) or a state dict file of the original SegFormer's or smp's `mit_b*` (a whole
    smp/mmseg segmentation model's too: its `encoder.`/`backbone.` prefix is peeled, the rest ignored).
    There are no built-in ImageNet weights: timm does not publish them.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        weights: str | Path | None = None,
        output_stride: int | None = None,
        depth: int | None = None,
        mapping: str = "by_name",
    ) -> None:
        super().__init__()
        if output_stride not in (None, 32):
            if output_stride not in OUTPUT_STRIDES:
                raise SegwiseError(
                    f"encoder '{name}': output_stride {output_stride} unsupported; choose one of {OUTPUT_STRIDES}"
                )
            raise SegwiseError(
                f"encoder '{name}' cannot be dilated to output_stride={output_stride} (a transformer "
                "with strided patch embeddings); set encoder_output_stride=32 or use e.g. resnet50"
            )
        if depth is not None and not 1 <= depth <= 4:
            raise SegwiseError(f"encoder '{name}': depth must be in 1..4, got {depth}")
        size = MIT_SIZES[name]
        self.model = MixTransformer(size, in_channels, depth or 4)
        self.name = name
        self.channels: list[int] = list(size.widths[: self.model.depth])
        self.reductions: list[int] = [4, 8, 16, 32][: self.model.depth]
        if weights is not None:
            self._load(weights, in_channels, mapping)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x)

    def _load(self, weights: str | Path, in_channels: int, mapping: str) -> None:
        if weights == "imagenet":
            raise SegwiseError(
                f"encoder '{self.name}': no built-in ImageNet weights (timm does not publish MiT); pass "
                f"encoder_weights=PATH to SegFormer's or smp's {self.name} ImageNet state dict "
                f"(e.g. model.safetensors of huggingface.co/smp-hub/{self.name}.imagenet), or none"
            )
        if mapping != "by_name":
            raise SegwiseError(
                f"encoder '{self.name}': loads weights by name only (SegFormer's and smp's names), got "
                f"encoder_weights_mapping '{mapping}'; drop it"
            )
        path = Path(weights)
        own = self.model.state_dict()
        state = _unwrapped(read_state_dict(path), set(own))
        first = "patch_embed1.proj.weight"
        if first in state and in_channels != 3:  # 1 channel: sum over RGB; more: repeat and rescale
            state[first] = adapt_input_conv(in_channels, state[first])
        # stages deeper than `depth`, and an ImageNet classifier, are not part of this encoder
        deeper = tuple(f"{part}{i}." for i in range(self.model.depth + 1, 5) for part in PARTS)
        extra = [k for k in state if k.startswith(("head.", *deeper))]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own) - set(extra))
        wrong = sorted(k for k in set(own) & set(state) if state[k].shape != own[k].shape)
        problems = key_problems(missing, unexpected, wrong)
        if problems:
            raise SegwiseError(
                f"{path}: weights do not fit encoder '{self.name}': {'; '.join(problems)}; pass SegFormer's "
                f"or smp's {self.name} state dict"
            )
        self.model.load_state_dict({k: state[k] for k in own})
