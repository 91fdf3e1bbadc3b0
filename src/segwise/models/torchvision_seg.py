"""torchvision's segmentation models as segwise architectures: `fcn_resnet50/101`, `deeplabv3_resnet50/101`,
`deeplabv3_mobilenet_v3_large` and `lraspp_mobilenet_v3_large`, the off-the-shelf models many courses
start from.

torchvision builds each model whole (`weights=None, weights_backbone=None`: never a download); segwise
splits it into an encoder (torchvision's `backbone`, features shallow to deep) and a decoder (its
`classifier`, which ends in the class scores itself, so the base model adds no head). The base model pads
to the backbone's stride (8 for the dilated ResNets, 16 for MobileNetV3) and crops back, as for any
architecture.

A checkpoint comes from a local file (`encoder_weights=PATH`): torchvision's published ones (21 Pascal VOC
classes; with another class count every layer but the final class-scoring ones loads, and a warning says
the head is new) or one saved from such a model, read as safetensors or with `torch.load(weights_only=True)`.
Those models were trained on ImageNet-normalised input: `INPUT_STATISTICS`.

`decoder_aux_head`: torchvision's auxiliary FCN head on the stride-8 features (the published FCN and
DeepLabV3 checkpoints carry one). segwise's trainer computes no auxiliary loss: the head is kept, loaded
and saved for checkpoint compatibility only, and is never run (it does not train).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn
from torchvision.models import segmentation

from ..errors import SegwiseError, SegwiseWarning
from .encoders import key_problems, read_state_dict

# architecture -> its backbone, as torchvision names it
TORCHVISION_MODELS = {
    "fcn_resnet50": "resnet50",
    "fcn_resnet101": "resnet101",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_resnet101": "resnet101",
    "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
    "lraspp_mobilenet_v3_large": "mobilenet_v3_large",
}
# torchvision's published backbones and checkpoints expect ImageNet-normalised input (0..1 pixel scale)
INPUT_STATISTICS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# the layers that score the classes: with a checkpoint of another class count, these are new
CLASS_LAYERS = (
    "classifier.4.",
    "aux_classifier.4.",
    "classifier.low_classifier.",
    "classifier.high_classifier.",
)
# each backbone's features by torchvision's names for them, shallow to deep: (channels, stride)
FEATURES = {
    "resnet50": {"aux": (1024, 8), "out": (2048, 8)},
    "resnet101": {"aux": (1024, 8), "out": (2048, 8)},
    "mobilenet_v3_large": {"aux": (40, 8), "low": (40, 8), "out": (960, 16), "high": (960, 16)},
}


class TorchvisionEncoder(nn.Module):
    """torchvision's `backbone` (an IntermediateLayerGetter), returning its features as a list shallow to
    deep: the stride-8 one ("aux" or "low") when the model uses it, then the deepest ("out" or "high")."""

    def __init__(self, backbone: nn.Module, name: str) -> None:
        super().__init__()
        self.model = backbone
        self.name = name
        features = FEATURES[name]
        self.names = [n for n in features if n in backbone.return_layers.values()]
        self.channels = [features[n][0] for n in self.names]
        self.reductions = [features[n][1] for n in self.names]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        return [features[n] for n in self.names]


class TorchvisionDecoder(nn.Module):
    """torchvision's `classifier` on the deepest feature (LR-ASPP's also on the stride-8 one), ending in
    the class scores; `aux_classifier` kept but never run (see the module docstring)."""

    def __init__(self, classifier: nn.Module, aux_classifier: nn.Module | None, num_classes: int) -> None:
        super().__init__()
        self.classifier = classifier
        if aux_classifier is not None:
            self.aux_classifier = aux_classifier
        self.lraspp = isinstance(classifier, segmentation.lraspp.LRASPPHead)
        self.out_channels = num_classes

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.lraspp:
            return self.classifier({"low": features[0], "high": features[-1]})
        return self.classifier(features[-1])


def build_torchvision(
    arch: str, num_classes: int, in_channels: int, weights: str | Path | None, decoder_aux_head: bool = False
) -> tuple[TorchvisionEncoder, TorchvisionDecoder]:
    """torchvision's `arch` for `num_classes` and `in_channels`, `weights` (a checkpoint file) loaded,
    split into segwise's encoder and decoder."""
    if decoder_aux_head and arch.startswith("lraspp"):
        raise SegwiseError(f"{arch}: has no auxiliary head in torchvision; drop decoder_aux_head")
    if weights == "imagenet":
        raise SegwiseError(
            f"{arch}: no ImageNet weights of its own; pass encoder_weights=PATH to torchvision's published "
            f"{arch} checkpoint or its {TORCHVISION_MODELS[arch]} backbone's (read without running code), or none"
        )
    builder = getattr(segmentation, arch)
    options = {} if arch.startswith("lraspp") else {"aux_loss": decoder_aux_head}
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    parent, conv = _first_conv(model.backbone)
    if in_channels != 3:  # a new first convolution; a checkpoint's RGB filters are adapted on loading
        setattr(parent[0], parent[1], _with_inputs(conv, in_channels))
    if weights is not None:
        _load_checkpoint(model, Path(weights), arch)
    encoder = TorchvisionEncoder(model.backbone, TORCHVISION_MODELS[arch])
    return encoder, TorchvisionDecoder(model.classifier, getattr(model, "aux_classifier", None), num_classes)


def _first_conv(backbone: nn.Module) -> tuple[tuple[nn.Module, str], nn.Conv2d]:
    """The backbone's first convolution and where it hangs (its parent module and attribute name)."""
    name, conv = next((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d))
    parent, _, attribute = name.rpartition(".")
    return (backbone.get_submodule(parent), attribute), conv


def _with_inputs(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )


def _load_checkpoint(model: nn.Module, path: Path, arch: str) -> None:
    """`path`'s state dict into `model`: every key there with its shape, else one line naming the keys.
    Exceptions: the first convolution's RGB filters adapt to the input channels; class-scoring layers of
    another class count are left new (a warning says so); an auxiliary head the model lacks is dropped;
    a backbone's own file (an ImageNet classifier's) loads the encoder alone, the heads start new."""
    own = model.state_dict()
    state, backbone_only = _segmentation_keys(read_state_dict(path))
    if "aux_classifier.0.weight" not in own:  # published FCN/DeepLabV3 checkpoints carry one
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    first = next(k for k, v in own.items() if k.startswith("backbone.") and v.ndim == 4)
    if first in state and state[first].shape[1] != own[first].shape[1]:
        state[first] = adapt_input_conv(own[first].shape[1], state[first])  # 1: sum of RGB; more: repeated
    wrong = sorted(k for k in set(own) & set(state) if state[k].shape != own[k].shape)
    new_head = {k: state.pop(k).shape[0] for k in wrong if k.startswith(CLASS_LAYERS)}
    wrong = [k for k in wrong if k not in new_head]
    needed = {k for k in own if k.startswith("backbone.")} if backbone_only else set(own)
    # BatchNorm's step counter is not a weight (older files lack it)
    missing = sorted(k for k in needed - set(state) - set(new_head) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    problems = key_problems(missing, unexpected, wrong)
    if problems:
        only_aux = missing and all(k.startswith("aux_classifier.") for k in missing) and not unexpected
        fix = (
            "the file has no auxiliary head: drop decoder_aux_head"
            if only_aux
            else (f"pass a torchvision {arch} state dict, or its backbone's ({TORCHVISION_MODELS[arch]})")
        )
        raise SegwiseError(f"{path}: weights do not fit {arch}: {'; '.join(problems)}; {fix}")
    model.load_state_dict(state, strict=False)  # what the file lacks (counters, new layers) stays as built
    if new_head:
        layers = sorted({k.rpartition(".")[0] for k in new_head})
        warnings.warn(
            SegwiseWarning(
                f"{path}: scores {max(new_head.values())} classes, the model "
                f"{own[next(iter(new_head))].shape[0]}: a new head ({', '.join(layers)} start untrained), "
                "every other layer loaded"
            ),
            stacklevel=4,
        )


def _segmentation_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """A segmentation model's state dict as it is; a backbone's own (torchvision's or timm's ImageNet
    ResNet: `conv1.`, `layer1.`, ...; torchvision's MobileNetV3: `features.N.`) renamed to the model's
    `backbone.` keys, its classifier dropped, and True: only the backbone is in it."""
    if any(k.startswith("backbone.") for k in state):
        return state, False
    if any(k.startswith("features.") for k in state):  # MobileNetV3: the backbone is its `features`
        return {
            "backbone." + k.removeprefix("features."): v
            for k, v in state.items()
            if k.startswith("features.")
        }, True
    return {"backbone." + k: v for k, v in state.items() if not k.startswith("fc.")}, True
