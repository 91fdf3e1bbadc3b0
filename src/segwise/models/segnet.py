"""SegNet (Badrinarayanan et al., 2017): a VGG16-bn encoder whose max-pooling indices drive
max-unpooling in a mirrored decoder, so upsampled values return to the positions of the encoder's maxima.

`encoder_depth` 5 is the paper's network (13 + 13 convolutions, 29.5 M parameters); 4 and 3 drop the
deepest stages (for small images and datasets). Pretrained weights come from timm's / torchvision's
`vgg16_bn` (the same `features.N` keys), mapped onto the encoder's stages.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from ..errors import SegwiseError
from .blocks import ConvBnReLU
from .encoders import imagenet_options, read_state_dict

VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (width, convolutions) per stage
DEPTHS = (3, 4, 5)


class SegNetEncoder(nn.Module):
    """VGG16-bn's `features`, layer for layer as `model` (timm's `features.N` is our `model.N`), pooling
    with indices.

    Unlike timm encoders, `forward` returns the pooled output of every stage followed by the argmax
    indices of every pooling (2·depth tensors); only the SegNet decoder consumes it.
    """

    def __init__(self, in_channels: int = 3, weights: str | Path | None = None, depth: int = 5) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise SegwiseError(f"segnet: encoder_depth must be one of {DEPTHS}, got {depth}")
        layers, previous = [], in_channels
        for width, convolutions in VGG16_STAGES[:depth]:
            for _ in range(convolutions):
                conv = nn.Conv2d(previous, width, kernel_size=3, padding=1)
                layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                previous = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True))
        self.model = nn.Sequential(*layers)
        # timm's statistics (ImageNet mean/std), which the trainer uses when the weights are pretrained
        self.model.pretrained_cfg = timm.get_pretrained_cfg("vgg16_bn").to_dict()
        self.channels = [width for width, _ in VGG16_STAGES[:depth]]
        self.reductions = [2 << i for i in range(depth)]
        self.name = "vgg16_bn"
        if weights is not None:
            self._load(weights, in_channels)

    def _load(self, weights: str | Path, in_channels: int) -> None:
        if weights == "imagenet":
            # the cached file when there is one (no network), else timm downloads; refused with the fix otherwise
            model = timm.create_model("vgg16_bn", pretrained=True, **imagenet_options("vgg16_bn"))
            state, source = model.state_dict(), "imagenet"
        else:
            state, source = read_state_dict(Path(weights)), str(weights)
        own = self.model.state_dict()
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        # torchvision's published vgg16_bn predates BatchNorm's `num_batches_tracked`: not needed
        missing = sorted(
            f"features.{k}" for k in set(own) - set(state) if not k.endswith("num_batches_tracked")
        )
        first = "0.weight"
        if first in state and in_channels != 3:  # 1 channel: sum over RGB; more: repeat and rescale
            state[first] = adapt_input_conv(in_channels, state[first])
        wrong = sorted(f"features.{k}" for k in set(own) & set(state) if state[k].shape != own[k].shape)
        if missing or wrong:
            problems = [f"missing {len(missing)} key(s), e.g. {missing[:3]}"] if missing else []
            problems += [f"wrong shape for {len(wrong)} key(s), e.g. {wrong[:3]}"] if wrong else []
            raise SegwiseError(
                f"{source}: weights do not fit segnet's VGG16-bn encoder: {'; '.join(problems)}; "
                "pass a timm or torchvision vgg16_bn state dict"
            )
        # Deeper stages than `depth` and the classifier are not part of this encoder.
        self.model.load_state_dict({k: state.get(k, own[k]) for k in own})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pooled, indices = [], []
        for layer in self.model:
            if isinstance(layer, nn.MaxPool2d):
                x, index = layer(x)
                pooled.append(x)
                indices.append(index)
            else:
                x = layer(x)
        return pooled + indices


class MaxUnpool2d(nn.MaxUnpool2d):
    """`nn.MaxUnpool2d(2)` to the size of the tensor that was pooled. `F.max_unpool2d` validates the size
    with a Python `bool` that fails under `torch.jit.trace`, so this calls the operator it wraps."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        # The base model pads the input to the encoder's stride: every pooled map halved exactly.
        return torch._C._nn.max_unpool2d(x, indices, (2 * x.shape[-2], 2 * x.shape[-1]))


class SegNetDecoder(nn.Module):
    """Per stage, deepest first: unpool with that stage's indices, then the stage's convolutions mirrored
    (the last one narrows to the next stage's width; the first stage keeps one, the head is the last)."""

    def __init__(self, encoder_channels: list[int]) -> None:
        super().__init__()
        self.unpool = MaxUnpool2d()
        stages = []
        for i in reversed(range(len(encoder_channels))):
            width, convolutions = VGG16_STAGES[i]
            out = encoder_channels[i - 1] if i else width
            layers = [ConvBnReLU(width, width) for _ in range(convolutions - 1)]
            if i:
                layers.append(ConvBnReLU(width, out))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = encoder_channels[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) // 2
        x, indices = features[depth - 1], features[depth:]
        for stage, index in zip(self.stages, reversed(indices), strict=True):
            x = stage(self.unpool(x, index))
        return x
