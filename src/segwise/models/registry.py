"""`create_model(arch, encoder=..., ...)`: the one factory over every architecture."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import nn

from ..errors import SegwiseError
from .base import SegmentationModel
from .deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder
from .dpt import DPTDecoder
from .encoders import Encoder, encoder_preprocessing
from .fcn import FCNDecoder, FCNSkipDecoder
from .fpn import FPNDecoder
from .linknet import LinknetDecoder
from .manet import MAnetDecoder
from .mit import MIT_SIZES, MixTransformerEncoder
from .pan import PANDecoder
from .pspnet import PSPDecoder
from .segformer import SegformerDecoder
from .segnet import SegNetDecoder, SegNetEncoder
from .torchvision_seg import INPUT_STATISTICS, TORCHVISION_MODELS, TorchvisionEncoder, build_torchvision
from .unet import UnetDecoder
from .unet_classic import ClassicDecoder, ClassicEncoder
from .unetplusplus import UnetPlusPlusDecoder
from .upernet import UPerNetDecoder
from .vit import ViTEncoder

DEFAULT_ENCODER = "resnet34"


def _unet(
    encoder: Encoder,
    decoder_channels: list[int] | None = None,
    decoder_upsampling: str = "nearest",
    decoder_attention: str | None = None,
):
    return UnetDecoder(
        encoder.channels, encoder.reductions, decoder_channels, decoder_upsampling, decoder_attention
    )


def _unetplusplus(
    encoder: Encoder,
    decoder_channels: list[int] | None = None,
    decoder_upsampling: str = "nearest",
    decoder_attention: str | None = None,
):
    return UnetPlusPlusDecoder(
        encoder.channels, encoder.reductions, decoder_channels, decoder_upsampling, decoder_attention
    )


def _unet_classic(encoder: ClassicEncoder, encoder_width: int = 64, decoder_upsampling: str = "transpose"):
    return ClassicDecoder(encoder.channels, decoder_upsampling)


def _segnet(encoder: SegNetEncoder, encoder_depth: int = 5):
    return SegNetDecoder(encoder.channels)


def _fpn(
    encoder: Encoder,
    decoder_pyramid_channels: int = 256,
    decoder_segmentation_channels: int = 128,
    decoder_merge_policy: str = "add",
    decoder_dropout: float = 0.2,
):
    return FPNDecoder(
        encoder.channels,
        encoder.reductions,
        decoder_pyramid_channels,
        decoder_segmentation_channels,
        decoder_merge_policy,
        decoder_dropout,
    )


def _deeplabv3(
    encoder: Encoder,
    encoder_output_stride: int = 8,
    decoder_channels: int = 256,
    decoder_atrous_rates: tuple[int, ...] = (12, 24, 36),
    decoder_aspp_separable: bool = False,
    decoder_aspp_dropout: float = 0.5,
):
    return DeepLabV3Decoder(
        encoder.channels, decoder_channels, decoder_atrous_rates, decoder_aspp_separable, decoder_aspp_dropout
    )


def _deeplabv3plus(
    encoder: Encoder,
    encoder_output_stride: int = 16,
    decoder_channels: int = 256,
    decoder_atrous_rates: tuple[int, ...] = (12, 24, 36),
    decoder_aspp_separable: bool = True,
    decoder_aspp_dropout: float = 0.5,
):
    return DeepLabV3PlusDecoder(
        encoder.channels,
        encoder.reductions,
        decoder_channels,
        decoder_atrous_rates,
        decoder_aspp_separable,
        decoder_aspp_dropout,
    )


def _linknet(encoder: Encoder, decoder_prefinal_channels: int = 32):
    return LinknetDecoder(encoder.channels, encoder.reductions, decoder_prefinal_channels)


def _pspnet(
    encoder: Encoder,
    encoder_depth: int = 3,
    decoder_bins: tuple[int, ...] = (1, 2, 3, 6),
    decoder_channels: int = 512,
    decoder_dropout: float = 0.2,
):
    return PSPDecoder(encoder.channels, decoder_bins, decoder_channels, decoder_dropout)


def _fcn(
    encoder: Encoder,
    encoder_output_stride: int = 8,
    decoder_channels: int | None = None,
    decoder_dropout: float = 0.1,
):
    return FCNDecoder(encoder.channels, decoder_channels, decoder_dropout)


def _fcn32s(
    encoder: Encoder, num_classes: int, decoder_channels: int | None = None, decoder_dropout: float = 0.1
):
    return FCNSkipDecoder(
        encoder.channels, encoder.reductions, num_classes, 32, decoder_channels, decoder_dropout
    )


def _fcn16s(
    encoder: Encoder, num_classes: int, decoder_channels: int | None = None, decoder_dropout: float = 0.1
):
    return FCNSkipDecoder(
        encoder.channels, encoder.reductions, num_classes, 16, decoder_channels, decoder_dropout
    )


def _fcn8s(
    encoder: Encoder, num_classes: int, decoder_channels: int | None = None, decoder_dropout: float = 0.1
):
    return FCNSkipDecoder(
        encoder.channels, encoder.reductions, num_classes, 8, decoder_channels, decoder_dropout
    )


def _segformer(encoder: Encoder, decoder_segmentation_channels: int = 256):
    return SegformerDecoder(encoder.channels, encoder.reductions, decoder_segmentation_channels)


def _manet(
    encoder: Encoder,
    decoder_channels: list[int] | None = None,
    decoder_pab_channels: int = 64,
    decoder_upsampling: str = "nearest",
):
    return MAnetDecoder(
        encoder.channels, encoder.reductions, decoder_channels, decoder_pab_channels, decoder_upsampling
    )


def _pan(
    encoder: Encoder,
    encoder_output_stride: int = 16,
    decoder_channels: int = 32,
    decoder_upsampling: str = "bilinear",
):
    if encoder_output_stride not in (16, 32):
        raise SegwiseError(f"pan: encoder_output_stride must be 16 or 32, got {encoder_output_stride}")
    return PANDecoder(encoder.channels, decoder_channels, decoder_upsampling)


def _upernet(
    encoder: Encoder,
    encoder_depth: int | None = None,
    decoder_channels: int = 256,
    decoder_use_norm: str = "batchnorm",
):
    return UPerNetDecoder(encoder.channels, encoder.reductions, decoder_channels, decoder_use_norm)


def _dpt(
    encoder: ViTEncoder,
    encoder_depth: int = 4,
    encoder_output_indices: list[int] | None = None,
    decoder_readout: str = "cat",
    decoder_intermediate_channels: tuple[int, ...] = (256, 512, 1024, 1024),
    decoder_fusion_channels: int = 256,
):
    return DPTDecoder(
        encoder.channels,
        encoder.prefix_tokens > 0,
        decoder_readout,
        decoder_intermediate_channels,
        decoder_fusion_channels,
    )


# Each entry builds a decoder from an encoder and its own options (prefixed `decoder_`), nothing else.
# A builder that takes `num_classes` gets it: its decoder ends in the class scores, and the model has no head.
# Options prefixed `encoder_` (e.g. `encoder_output_stride`) configure the encoder: `create_model` passes
# them, with the builder's defaults, to `Encoder` (without the prefix) before the builder runs.
# A decoder may set `head_kernel_size` (default 3) and `align_corners` (default False: how the base model
# upsamples the logits) to its paper's or smp's head.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "fpn": _fpn,
    "deeplabv3": _deeplabv3,
    "deeplabv3plus": _deeplabv3plus,
    "fcn": _fcn,
    "linknet": _linknet,
    "pspnet": _pspnet,
    "unetplusplus": _unetplusplus,
    "unet_classic": _unet_classic,
    "segnet": _segnet,
    "segformer": _segformer,
    "manet": _manet,
    "pan": _pan,
    "upernet": _upernet,
    "fcn32s": _fcn32s,
    "fcn16s": _fcn16s,
    "fcn8s": _fcn8s,
    # torchvision's models, built whole by torchvision (its backbone the encoder, its classifier the decoder)
    # from num_classes, in_channels and weights (a checkpoint file); their one option is `decoder_aux_head`
    **{name: partial(build_torchvision, name) for name in TORCHVISION_MODELS},
    "dpt": _dpt,
}

# Architectures built on the tokens of a plain ViT (all at one stride) instead of a feature pyramid: the
# encoder class that gives them, and the encoder used when none is named.
VIT_ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "dpt": (ViTEncoder, "vit_small_patch16_224"),
}
# What create_model itself gives a builder; every other parameter of a builder is an option of the user's.
GIVEN = ("encoder", "num_classes", "in_channels", "weights")

# Architectures that bring their own encoder instead of a timm one: the encoder name each accepts, and
# the class built (like `Encoder`) from in_channels, weights and the `encoder_` options (torchvision's
# models: built with the whole model, by `build_torchvision`).
OWN_ENCODERS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "unet_classic": ("unet_classic", ClassicEncoder),
    "segnet": ("vgg16_bn", SegNetEncoder),
    **{name: (backbone, TorchvisionEncoder) for name, backbone in TORCHVISION_MODELS.items()},
}

# Encoders implemented in segwise because timm lacks them; built like `Encoder` (same arguments), so every
# architecture that takes a timm encoder takes them too, by name.
PACKAGE_ENCODERS: dict[str, Callable[..., nn.Module]] = dict.fromkeys(MIT_SIZES, MixTransformerEncoder)


def encoder_name(arch: str, encoder: str | None = None) -> str:
    """The encoder `create_model(arch, encoder=...)` builds: the architecture's own, else the given
    timm encoder, else the architecture's default (DEFAULT_ENCODER, or a ViT for those that need one)."""
    if arch in OWN_ENCODERS:
        return OWN_ENCODERS[arch][0]
    return encoder or VIT_ARCHITECTURES.get(arch, (None, DEFAULT_ENCODER))[1]


def _encoder_class(arch: str, name: str) -> Callable[..., nn.Module]:
    """What builds encoder `name` for `arch`: a ViT's tokens for the architectures that read them, else
    segwise's own encoder of that name or a timm feature pyramid."""
    if arch not in VIT_ARCHITECTURES:
        return PACKAGE_ENCODERS.get(name, Encoder)
    if name in PACKAGE_ENCODERS:  # not timm's: ViTEncoder would call it unknown
        raise SegwiseError(
            f"{arch}: encoder '{name}' is a hierarchical transformer, not a plain ViT; use a plain ViT such as "
            f"{VIT_ARCHITECTURES[arch][1]}, or arch segformer or upernet for '{name}'"
        )
    return VIT_ARCHITECTURES[arch][0]


def list_models(pattern: str = "*") -> list[str]:
    """Architecture names matching a shell-style pattern, e.g. `list_models("unet*")`."""
    return sorted(name for name in ARCHITECTURES if fnmatch.fnmatch(name, pattern))


def create_model(
    arch: str = "unet",
    encoder: str | None = None,
    num_classes: int = 2,
    in_channels: int = 3,
    encoder_weights: str | Path | None = None,
    encoder_weights_mapping: str = "by_name",
    **options,
) -> SegmentationModel:
    """Build a segmentation model.

    >>> model = create_model("unet", encoder="resnet18", num_classes=5, in_channels=1)
    >>> model(torch.zeros(1, 1, 250, 333)).shape  # doctest: +SKIP
    torch.Size([1, 5, 250, 333])

    `encoder`: a timm model name (default resnet34; dpt: a plain ViT) or `mit_b0` … `mit_b5`; `segnet`,
    `unet_classic` and torchvision's models build their own encoder (VGG16-bn with pooling indices, the
    2015 contracting path, torchvision's backbone) and accept only its name or None.
    `encoder_weights`: None (random), "imagenet" (the local cache, else timm's hub) or a path to a state
    dict of timm, torchvision or segmentation_models_pytorch, matched by name (torchvision's models: a
    whole model's checkpoint, or its backbone's);
    `encoder_weights_mapping="in_order"` pairs its tensors in order instead (same architecture, other names).
    `options` are the architecture's own (e.g. `decoder_channels`); unknown ones are an error.
    """
    if arch not in ARCHITECTURES:
        raise SegwiseError(f"unknown architecture '{arch}'; choose one of {list_models()}")
    builder = ARCHITECTURES[arch]
    parameters = inspect.signature(builder).parameters
    allowed = [p for p in parameters if p not in GIVEN]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SegwiseError(f"{arch}: unknown option(s) {unknown}; valid options are {allowed}")
    if num_classes < 1 or in_channels < 1:
        raise SegwiseError(
            f"num_classes and in_channels must be positive, got {num_classes} and {in_channels}"
        )
    name = encoder_name(arch, encoder)
    build_encoder = _encoder_builder(arch, encoder, name, encoder_weights, encoder_weights_mapping)
    if arch in TORCHVISION_MODELS:  # torchvision builds encoder and decoder together, weights included
        built = builder(num_classes=num_classes, in_channels=in_channels, weights=encoder_weights, **options)
        backbone, decoder = built
    else:
        encoder_options = {
            p.removeprefix("encoder_"): options.get(p, parameters[p].default)
            for p in allowed
            if p.startswith("encoder_")
        }
        backbone = build_encoder(in_channels=in_channels, weights=encoder_weights, **encoder_options)
        scores = {"num_classes": num_classes} if "num_classes" in parameters else {}
        decoder = builder(backbone, **scores, **options)
    if "num_classes" in parameters:  # the decoder ends in the class scores itself
        head = nn.Identity()
    else:
        kernel = getattr(decoder, "head_kernel_size", 3)  # a decoder may ask for its paper's head (e.g. 1×1)
        head = nn.Conv2d(decoder.out_channels, num_classes, kernel_size=kernel, padding=kernel // 2)
    config = {
        "arch": arch,
        "encoder": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "options": dict(options),
    }
    return SegmentationModel(backbone, decoder, head, config)


def _encoder_builder(
    arch: str, encoder: str | None, name: str, weights: str | Path | None, mapping: str
) -> Callable[..., nn.Module]:
    """The class that builds `arch`'s encoder from in_channels, weights and the `encoder_` options: the
    architecture's own (refusing another encoder by name), a package encoder, or a timm `Encoder` (then
    bound to its name and weights mapping)."""
    if arch not in OWN_ENCODERS:
        return partial(_encoder_class(arch, name), name=name, mapping=mapping)
    own, build_encoder = OWN_ENCODERS[arch]
    if encoder not in (None, own):
        timm_peer = "fcn or deeplabv3" if arch in TORCHVISION_MODELS else "unet"
        raise SegwiseError(
            f"{arch}: builds its own encoder '{own}', got encoder '{encoder}'; leave encoder unset "
            f"(or use arch {timm_peer} for timm encoders)"
        )
    if mapping != "by_name" and weights is not None:
        raise SegwiseError(
            f"{arch}: encoder_weights_mapping applies to timm encoders; its own encoder '{own}' loads "
            f"weights by name, got '{mapping}'"
        )
    return build_encoder


def input_statistics(arch: str, encoder: str | None, weights: str | Path | None):
    """Mean and std (0..1 pixel scale) of the input `weights` were trained on, or None: ImageNet's for
    torchvision's models (all of their checkpoints), the encoder's `encoder_preprocessing` otherwise."""
    if weights is not None and arch in TORCHVISION_MODELS:
        return INPUT_STATISTICS
    return encoder_preprocessing(encoder_name(arch, encoder), weights)
