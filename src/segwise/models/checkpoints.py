"""Whole segmentation models of other libraries, from local folders: `init_from: PATH`.

A folder written by `save_pretrained` holds `config.json` and `model.safetensors`. Its layout is read
from config.json:

- segmentation_models_pytorch (smp writes `_model_class`): every architecture both libraries have, on
  smp's `tu-` timm encoders, its own ResNets (torchvision's names, which timm's ResNets share) and its
  `mit_b*` encoders (the names of segwise's Mix Transformer);
- transformers' SegFormer (`model_type: segformer`): the Mix Transformer and its all-MLP head, as
  segwise's `segformer` on `mit_b0` … `mit_b5`;
- transformers' UperNet (`model_type: upernet`) on a ConvNeXt backbone, as segwise's `upernet` on timm's
  ConvNeXt of the same depths and widths; its auxiliary FCN head, a training aid, is not loaded;
- a finished segwise run (config.yaml + model.safetensors), or a folder from segwise's own
  `save_pretrained` (config.json + model.safetensors), to train it further on other data.

The folder gives the model's architecture, encoder and options (`read_checkpoint`); the tensors are
renamed onto segwise's modules and must fit every one of them, or the mismatch is named. Where the two
libraries build a layer differently but compute the same, the tensors are converted so that the logits
are the same: a 1×1 head becomes the centre of segwise's 3×3 one, the batch norm of smp's DeepLab
pooling branch is folded into the convolution, per-pixel linear layers become 1×1 convolutions.
The logits are then upsampled to the input as segwise upsamples every architecture's (bilinear,
`align_corners=False` but for segformer), where smp's heads upsample with `align_corners=True`.

With another class count than the checkpoint's, everything but the head is loaded and the head starts
afresh. Only safetensors are read (a pickled `pytorch_model.bin` runs code when unpickled) and JSON with
`json.loads`; a sharded checkpoint's index may name only files inside the folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import RunConfig
from ..constants import CONFIG, WEIGHTS
from ..errors import SegwiseError
from ..pretrained import read_pretrained
from .base import SegmentationModel
from .encoders import key_problems
from .mit import HEADS, MIT_SIZES, MLP_RATIO, SR_RATIOS
from .registry import create_model

SHARD_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "model.pth", "model.pt")
HEAD = ("head.weight", "head.bias")

Rules = tuple[tuple[str, str | Callable[[re.Match], str]], ...]  # (regex, replacement) in turn


@dataclass
class Checkpoint:
    """A foreign checkpoint: `spec` holds `create_model`'s arguments (arch, encoder, num_classes,
    in_channels, options), `rename` maps its tensors onto that model's names, `notes` say in words what
    is deliberately not loaded or not the same, and keys matching `optional` may be left out (smp's own
    encoders keep stages they never run)."""

    layout: str
    spec: dict[str, Any]
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    notes: list[str] = field(default_factory=list)
    optional: str | None = None


# ---- the folder ------------------------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    """`PATH/config.json` as a dict (json.loads: data only)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SegwiseError(
            f"{folder}: init_from needs a folder written by save_pretrained (config.json + {WEIGHTS})"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise SegwiseError(
            f"{config_file}: missing; init_from needs a save_pretrained folder with config.json"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SegwiseError(
            f"{config_file}: not readable JSON ({' '.join(str(error).split())[:200]})"
        ) from None
    if not isinstance(config, dict):
        raise SegwiseError(f"{config_file}: expected a JSON object of the model's settings")
    return config


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The folder's tensors: model.safetensors, or the shards its index names (inside the folder only).
    Pickled weights are refused: unpickling runs whatever code the file holds."""
    folder = Path(path)
    files = [folder / WEIGHTS]
    if not files[0].is_file() and (folder / SHARD_INDEX).is_file():
        files = _shards(folder / SHARD_INDEX)
    if not files[0].is_file():
        pickled = next((folder / name for name in PICKLED if (folder / name).is_file()), None)
        if pickled is not None:
            raise SegwiseError(
                f"{pickled}: pickled weights are not read (unpickling can run code); convert to safetensors "
                f"with `python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('{pickled}', "
                f"weights_only=True), '{folder / WEIGHTS}')\"`"
            )
        raise SegwiseError(f"{files[0]}: missing; init_from reads {WEIGHTS} (safetensors) from the folder")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as error:  # safetensors raises its own types for torn or foreign files
            raise SegwiseError(
                f"{file}: cannot read weights ({' '.join(str(error).split())[:200]})"
            ) from None
    return state


def _shards(index: Path) -> list[Path]:
    """The shard files a safetensors index names, each checked to lie inside its folder."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise SegwiseError(f"{index}: not a safetensors index (a JSON object with a weight_map)") from None
    folder = index.parent.resolve()
    files = [(folder / str(name)).resolve() for name in names]
    outside = [str(n) for n, f in zip(names, files, strict=True) if f.parent != folder]
    if outside or not files:
        raise SegwiseError(f"{index}: shards must be files of its own folder, got {outside or 'none'}")
    return files


# ---- layouts ---------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint folder's layout and the segwise model that matches it, from config.json alone."""
    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / CONFIG).is_file():
        return _segwise_run(folder, RunConfig.load(folder / CONFIG))
    config = read_config(folder)
    config_file = folder / "config.json"
    if config.get("library_name") == "segwise":  # segwise's own save_pretrained folder
        return _segwise_run(folder, read_pretrained(folder))
    if "_model_class" in config:
        return _smp(config, config_file)
    if config.get("model_type") == "segformer":
        return _transformers_segformer(config, config_file)
    if config.get("model_type") == "upernet":
        return _transformers_upernet(config, config_file)
    raise SegwiseError(
        f"{config_file}: not a layout segwise reads; init_from takes the save_pretrained folders of "
        "segmentation_models_pytorch and of transformers' SegFormer and UperNet, or a segwise run folder"
    )


def _segwise_run(folder: Path, recorded: RunConfig) -> Checkpoint:
    """A finished segwise run (config.yaml + model.safetensors), or a save_pretrained folder (config.json
    + model.safetensors): its own names, its recorded model (every value checked on reading)."""
    spec = {k: recorded.model[k] for k in ("arch", "encoder", "num_classes", "in_channels")}
    spec["options"] = dict(recorded.model.get("options", {}))
    return Checkpoint("segwise run", spec, dict)


def _renamed(state: dict[str, torch.Tensor], rules: Rules) -> dict[str, torch.Tensor]:
    """Each key with every rule applied in turn (`re.sub`)."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _number(config: dict, key: str, config_file: Path) -> Any:
    if key not in config:
        raise SegwiseError(f"{config_file}: '{key}' missing; was it written by save_pretrained?")
    return config[key]


def _class_count(config: dict, config_file: Path) -> int:
    """transformers' class count: its id2label's length (num_labels is not saved)."""
    labels = config.get("id2label")
    if not isinstance(labels, dict) or not labels:
        raise SegwiseError(f"{config_file}: 'id2label' missing or empty; it gives the class count")
    return len(labels)


# ---- segmentation_models_pytorch -------------------------------------------------------------------


@dataclass(frozen=True)
class SmpArchitecture:
    """How one smp class maps onto segwise: the architecture, smp's option names → segwise's, smp options
    segwise builds only at one value (or a tuple of equivalent ones), the renames of its decoder's
    tensors, a conversion run first on smp's names (tensors to reshape or fold), and the tensors smp
    builds but never runs (`unused`, a regex over its names)."""

    arch: str
    options: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    rules: Rules = ()
    convert: Callable[[dict[str, torch.Tensor], dict], dict[str, torch.Tensor]] | None = None
    unused: str = r"^classification_head\."  # aux_params' classifier: a training aid segwise has not


BATCHNORM = ("batchnorm", True)  # smp's decoder_use_norm values segwise's decoders build
UNET_OPTIONS = {
    "decoder_channels": "decoder_channels",
    "decoder_interpolation": "decoder_upsampling",
    "decoder_attention_type": "decoder_attention",
}
UNET_RULES: Rules = ((r"\.attention\.cSE\.", ".channel_gate."), (r"\.attention\.sSE\.", ".spatial_gate."))
DEEPLAB_OPTIONS = {
    name: name
    for name in (
        "encoder_output_stride",
        "decoder_channels",
        "decoder_atrous_rates",
        "decoder_aspp_separable",
        "decoder_aspp_dropout",
    )
}
ASPP_RULES: Rules = ((r"^(decoder\.aspp\.(0\.)?)convs\.", r"\1branches."),)


def _fold_pooling_norm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """smp's ASPP pooling branch is conv → batch norm → ReLU on a 1×1 map; segwise's is a conv with a bias
    (batch statistics of one value per image are void). The norm, folded into the conv, gives the same
    output at inference: W·γ/σ and β − γ·μ/σ, σ = √(var + ε)."""
    state = dict(state)
    for prefix in ("decoder.aspp.", "decoder.aspp.0."):
        conv, norm = f"{prefix}convs.4.1.", f"{prefix}convs.4.2."
        if conv + "weight" not in state:
            continue
        scale = state.pop(norm + "weight") / torch.sqrt(state.pop(norm + "running_var") + 1e-5)
        shift = state.pop(norm + "bias") - scale * state.pop(norm + "running_mean")
        state.pop(norm + "num_batches_tracked", None)
        state[f"{prefix}pooling.conv.weight"] = state.pop(conv + "weight") * scale[:, None, None, None]
        state[f"{prefix}pooling.conv.bias"] = shift
    return state


def _segformer_stages(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """smp's per-stage Linear layers, deepest first, as segwise's 1×1 convolutions, shallowest first."""
    found = [re.match(r"decoder\.mlp_stage\.(\d+)\.linear\.(\w+)$", key) for key in state]
    stages = 1 + max((int(m[1]) for m in found if m), default=-1)
    converted = {}
    for key, value in state.items():
        match = re.match(r"decoder\.mlp_stage\.(\d+)\.linear\.(\w+)$", key)
        if match:
            key = f"decoder.linear.{stages - 1 - int(match[1])}.{match[2]}"
        converted[key] = value
    return converted


def _fpn_merged_order(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """smp's FPN concatenates its four levels deepest first, segwise's shallowest first: with the `cat`
    policy the head's input channels come in the other order."""
    if config.get("decoder_merge_policy") != "cat":
        return state
    weight = state["segmentation_head.0.weight"]
    levels = weight.shape[1] // 4
    order = torch.arange(weight.shape[1]).view(4, levels).flip(0).flatten()
    return {**state, "segmentation_head.0.weight": weight[:, order]}


SMP_ARCHITECTURES: dict[str, SmpArchitecture] = {
    "Unet": SmpArchitecture(
        "unet",
        UNET_OPTIONS,
        {"decoder_use_norm": BATCHNORM},
        UNET_RULES,
        # the last block has no skip connection, so its attention (built all the same) never runs
        unused=r"^classification_head\.|^decoder\.blocks\.4\.attention1\.",
    ),
    "UnetPlusPlus": SmpArchitecture(
        "unetplusplus",
        UNET_OPTIONS,
        {"decoder_use_norm": BATCHNORM},
        (*UNET_RULES, (r"^decoder\.blocks\.x_0_4\.", "decoder.final.0.")),
    ),
    "FPN": SmpArchitecture(
        "fpn",
        {name: name for name in ("decoder_pyramid_channels", "decoder_segmentation_channels")}
        | {"decoder_merge_policy": "decoder_merge_policy", "decoder_dropout": "decoder_dropout"},
        {"decoder_interpolation": ("nearest",)},
        (
            (r"^decoder\.p5\.", "decoder.lateral.3."),
            (r"^decoder\.p(\d)\.skip_conv\.", lambda m: f"decoder.lateral.{int(m[1]) - 2}."),
            (
                r"^decoder\.seg_blocks\.(\d)\.block\.(\d)\.block\.",
                lambda m: f"decoder.towers.{3 - int(m[1])}.convs.{m[2]}.",
            ),
        ),
        convert=_fpn_merged_order,
    ),
    "Linknet": SmpArchitecture(
        "linknet",
        fixed={"decoder_use_norm": BATCHNORM},
        rules=(
            (r"^(decoder\.blocks\.\d)\.block\.0\.", r"\1.0."),
            (r"^(decoder\.blocks\.\d)\.block\.1\.0\.", r"\1.1."),
            (r"^(decoder\.blocks\.\d)\.block\.1\.1\.", r"\1.2."),
            (r"^(decoder\.blocks\.\d)\.block\.2\.", r"\1.4."),
        ),
    ),
    "PSPNet": SmpArchitecture(
        "pspnet",
        {
            "encoder_depth": "encoder_depth",
            "psp_out_channels": "decoder_channels",
            "psp_dropout": "decoder_dropout",
        },
        {"decoder_use_norm": BATCHNORM},
        ((r"^decoder\.psp\.blocks\.(\d)\.pool\.1\.", r"decoder.pools.\1.conv."),),
    ),
    "DeepLabV3": SmpArchitecture(
        "deeplabv3",
        DEEPLAB_OPTIONS,
        rules=(
            *ASPP_RULES,
            (r"^decoder\.aspp\.project\.([01])\.", r"decoder.aspp.project.0.\1."),
            (r"^decoder\.conv\.", "decoder.conv.0."),
            (r"^decoder\.bn\.", "decoder.conv.1."),
        ),
        convert=_fold_pooling_norm,
    ),
    "DeepLabV3Plus": SmpArchitecture(
        "deeplabv3plus",
        DEEPLAB_OPTIONS,
        rules=(
            *ASPP_RULES,
            (r"^decoder\.aspp\.0\.project\.([01])\.", r"decoder.aspp.0.project.0.\1."),
            (r"^decoder\.aspp\.1\.", "decoder.aspp.1.0."),
            (r"^decoder\.aspp\.2\.", "decoder.aspp.1.1."),
            (r"^decoder\.block1\.", "decoder.highres."),
            (r"^decoder\.block2\.", "decoder.fuse."),
        ),
        convert=_fold_pooling_norm,
    ),
    "MAnet": SmpArchitecture(
        "manet",
        {"decoder_channels": "decoder_channels", "decoder_pab_channels": "decoder_pab_channels"}
        | {"decoder_interpolation": "decoder_upsampling"},
        {"decoder_use_norm": BATCHNORM},
        (
            (r"^decoder\.center\.top_conv\.", "decoder.center.key."),
            (r"^decoder\.center\.center_conv\.", "decoder.center.query."),
            (r"^decoder\.center\.bottom_conv\.", "decoder.center.value."),
            (r"^decoder\.center\.out_conv\.", "decoder.center.out."),
            (r"\.hl_conv\.", ".high_conv."),
            (r"\.SE_ll\.", ".skip_gate."),
            (r"\.SE_hl\.", ".high_gate."),
        ),
    ),
    "PAN": SmpArchitecture(
        "pan",
        {"encoder_output_stride": "encoder_output_stride", "decoder_channels": "decoder_channels"}
        | {"decoder_interpolation": "decoder_upsampling"},
        rules=(
            (r"^decoder\.fpa\.branch1\.", "decoder.pyramid.pooled."),
            (r"^decoder\.fpa\.mid\.0\.", "decoder.pyramid.project."),
            (r"^decoder\.fpa\.", "decoder.pyramid."),
            (r"^decoder\.gau(\d)\.conv1\.", lambda m: f"decoder.gaus.{3 - int(m[1])}.gate."),
            (r"^decoder\.gau(\d)\.conv2\.", lambda m: f"decoder.gaus.{3 - int(m[1])}.skip_conv."),
        ),
    ),
    "UPerNet": SmpArchitecture(
        "upernet",
        {"encoder_depth": "encoder_depth", "decoder_channels": "decoder_channels"}
        | {"decoder_use_norm": "decoder_use_norm"},
        rules=(
            (r"^decoder\.psp\.blocks\.(\d)\.1\.", r"decoder.ppm.branches.\1."),
            (r"^decoder\.psp\.out_conv\.", "decoder.ppm.fuse."),
            (r"^decoder\.fpn_lateral_blocks\.(\d)\.conv_norm_relu\.", r"decoder.laterals.\1."),
            (r"^decoder\.fpn_conv_blocks\.", "decoder.smooth."),
            (r"^decoder\.fusion_block\.", "decoder.fuse."),
        ),
    ),
    "Segformer": SmpArchitecture(
        "segformer",
        {"decoder_segmentation_channels": "decoder_segmentation_channels"},
        rules=((r"^decoder\.fuse_stage\.", "decoder.fuse."),),
        convert=_segformer_stages,
    ),
}
SMP_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# smp options that do not change the weights: the output activation (segwise's losses take logits), the
# head's fixed upsampling (segwise resizes to the input), where the encoder's weights first came from
SMP_IGNORED = ("activation", "upsampling", "encoder_weights", "aux_params")


def _smp_encoder(name: Any, config_file: Path) -> tuple[str, Rules]:
    """segwise's encoder for smp's `encoder_name`, and the renames of its tensors."""
    if isinstance(name, str) and name.startswith("tu-"):
        return name.removeprefix("tu-"), ()  # smp's timm wrapper holds the timm model as `model`, as segwise
    if name in SMP_RESNETS or name in MIT_SIZES:  # torchvision's names (timm's ResNets share them), MiT's
        return name, ((r"^encoder\.", "encoder.model."),)
    raise SegwiseError(
        f"{config_file}: smp encoder '{name}' has no segwise counterpart; segwise reads smp's 'tu-' timm "
        f"encoders, {', '.join(SMP_RESNETS)} and mit_b0 … mit_b5"
    )


def _smp(config: dict, config_file: Path) -> Checkpoint:
    model_class = config["_model_class"]
    if model_class not in SMP_ARCHITECTURES:
        raise SegwiseError(
            f"{config_file}: smp's {model_class} has no segwise counterpart; segwise reads smp's "
            f"{', '.join(SMP_ARCHITECTURES)}"
        )
    known = SMP_ARCHITECTURES[model_class]
    encoder, encoder_rules = _smp_encoder(config.get("encoder_name", "resnet34"), config_file)
    fixed = {"encoder_depth": (5,), **known.fixed} if "encoder_depth" not in known.options else known.fixed
    for name, values in fixed.items():
        if name in config and config[name] not in values:
            raise SegwiseError(
                f"{config_file}: smp {model_class} with {name}={config[name]!r} has no segwise counterpart "
                f"(segwise builds {values[0]!r}); train that model in smp, or init_from another checkpoint"
            )
    options = {ours: config[theirs] for theirs, ours in known.options.items() if theirs in config}
    depth = options.get("encoder_depth")
    if known.arch == "upernet" and depth == 5:
        del options["encoder_depth"]  # segwise's default uses every level, as smp's depth 5 does
    rules = (*encoder_rules, (r"^segmentation_head\.0\.", "head."), *known.rules)
    notes = ["classification_head (aux_params) not loaded"] if config.get("aux_params") else []
    if encoder_rules and options.get("encoder_output_stride", 32) < 32:
        notes.append(
            f"smp dilates its own {encoder} otherwise than timm (every block of a dilated stage): the "
            "logits differ until fine-tuned; smp's tu- encoders dilate as segwise's"
        )

    def rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in state.items() if not re.match(known.unused, k)}
        return _renamed(known.convert(state, config) if known.convert else state, rules)

    spec = {
        "arch": known.arch,
        "encoder": encoder,
        "num_classes": _number(config, "classes", config_file),
        "in_channels": config.get("in_channels", 3),
        "options": options,
    }
    own_encoder_deeper = encoder_rules and depth is not None and depth < 5
    return Checkpoint(
        f"smp {model_class}", spec, rename, notes, r"^encoder\." if own_encoder_deeper else None
    )


# ---- transformers ----------------------------------------------------------------------------------


def _transformers_segformer(config: dict, config_file: Path) -> Checkpoint:
    """SegformerForSemanticSegmentation: segwise's segformer on the mit_bX of the same widths and depths.
    transformers' layer norms use torch's ε = 1e-5 where the original SegFormer's blocks (whose weights
    transformers' checkpoints are) and segwise's use 1e-6: the logits differ in the fifth digit."""
    widths, depths = tuple(config.get("hidden_sizes") or ()), tuple(config.get("depths") or ())
    encoder = next((n for n, s in MIT_SIZES.items() if (s.widths, s.depths) == (widths, depths)), None)
    fixed = {
        "num_encoder_blocks": 4,
        "num_attention_heads": list(HEADS),
        "sr_ratios": list(SR_RATIOS),
        "mlp_ratios": [MLP_RATIO] * 4,
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "hidden_act": "gelu",
    }
    different = [f"{k}={config.get(k)!r}" for k, v in fixed.items() if k in config and config[k] != v]
    if encoder is None or different:
        what = different or [f"hidden_sizes={list(widths)}, depths={list(depths)}"]
        raise SegwiseError(
            f"{config_file}: SegFormer with {', '.join(what)} has no segwise counterpart; segwise builds "
            "the MiT-b0 … b5 of the paper"
        )
    spec = {
        "arch": "segformer",
        "encoder": encoder,
        "num_classes": _class_count(config, config_file),
        "in_channels": config.get("num_channels", 3),
        "options": {"decoder_segmentation_channels": _number(config, "decoder_hidden_size", config_file)},
    }
    notes = ["transformers' layer norms take ε = 1e-5, segwise's (as the original SegFormer's) 1e-6"]
    return Checkpoint("transformers SegFormer", spec, _segformer_tensors, notes)


SEGFORMER_RULES: Rules = (
    (
        r"^segformer\.encoder\.patch_embeddings\.(\d)\.",
        lambda m: f"encoder.model.patch_embed{int(m[1]) + 1}.",
    ),
    (r"^(encoder\.model\.patch_embed\d\.)layer_norm\.", r"\1norm."),
    (r"^segformer\.encoder\.block\.(\d)\.", lambda m: f"encoder.model.block{int(m[1]) + 1}."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", lambda m: f"encoder.model.norm{int(m[1]) + 1}."),
    (r"\.layer_norm_([12])\.", r".norm\1."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.(key|value|sr)\.", r".attn.\1."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense([12])\.", r".mlp.fc\1."),
    (r"^decode_head\.linear_c\.(\d)\.proj\.", r"decoder.linear.\1."),
    (r"^decode_head\.linear_fuse\.", "decoder.fuse.0."),
    (r"^decode_head\.batch_norm\.", "decoder.fuse.1."),
    (r"^decode_head\.classifier\.", "head."),
)


def _segformer_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names → segwise's: separate key and value projections become the one `kv` layer of
    the original code (keys first)."""
    renamed = _renamed(state, SEGFORMER_RULES)
    for key in [k for k in renamed if ".attn.key." in k]:
        value_key = key.replace(".attn.key.", ".attn.value.")
        if value_key in renamed:
            pair = (renamed.pop(key), renamed.pop(value_key))
            renamed[key.replace(".attn.key.", ".attn.kv.")] = torch.cat(pair)
    return renamed


# transformers' ConvNeXt (depths, widths) → timm's model of the same shape (atto … nano, whose MLPs are
# 1×1 convolutions where transformers' are linear layers, compute the same)
TIMM_CONVNEXTS = {
    ((2, 2, 6, 2), (40, 80, 160, 320)): "convnext_atto",
    ((2, 2, 6, 2), (48, 96, 192, 384)): "convnext_femto",
    ((2, 2, 6, 2), (64, 128, 256, 512)): "convnext_pico",
    ((2, 2, 8, 2), (80, 160, 320, 640)): "convnext_nano",
    ((3, 3, 9, 3), (96, 192, 384, 768)): "convnext_tiny",
    ((3, 3, 27, 3), (96, 192, 384, 768)): "convnext_small",
    ((3, 3, 27, 3), (128, 256, 512, 1024)): "convnext_base",
    ((3, 3, 27, 3), (192, 384, 768, 1536)): "convnext_large",
    ((3, 3, 27, 3), (256, 512, 1024, 2048)): "convnext_xlarge",
}


def _transformers_upernet(config: dict, config_file: Path) -> Checkpoint:
    """UperNetForSemanticSegmentation on a ConvNeXt: segwise's upernet on timm's ConvNeXt, whose per-level
    layer norms are transformers' backbone's output norms; the auxiliary FCN head is not loaded."""
    backbone = config.get("backbone_config") or {}
    if backbone.get("model_type") != "convnext":
        raise SegwiseError(
            f"{config_file}: UperNet on a '{backbone.get('model_type')}' backbone has no segwise counterpart; "
            "segwise reads UperNet on ConvNeXt"
        )
    shape = (tuple(backbone.get("depths") or ()), tuple(backbone.get("hidden_sizes") or ()))
    stages = backbone.get("out_features") or ["stage1", "stage2", "stage3", "stage4"]
    problems = [
        *(
            [f"ConvNeXt depths {list(shape[0])}, widths {list(shape[1])}"]
            if shape not in TIMM_CONVNEXTS
            else []
        ),
        *([f"out_features {stages}"] if stages != ["stage1", "stage2", "stage3", "stage4"] else []),
        *(
            [f"pool_scales {config['pool_scales']}"]
            if config.get("pool_scales", [1, 2, 3, 6]) != [1, 2, 3, 6]
            else []
        ),
    ]
    if problems:
        raise SegwiseError(
            f"{config_file}: UperNet with {', '.join(problems)} has no segwise counterpart; segwise reads "
            f"ConvNeXt {', '.join(n.removeprefix('convnext_') for n in TIMM_CONVNEXTS.values())} at every stage"
        )
    spec = {
        "arch": "upernet",
        "encoder": TIMM_CONVNEXTS[shape],
        "num_classes": _class_count(config, config_file),
        "in_channels": backbone.get("num_channels", 3),
        "options": {"decoder_channels": _number(config, "hidden_size", config_file)},
    }
    notes = ["auxiliary_head (UperNet's FCN head for an auxiliary training loss) not loaded"]
    return Checkpoint("transformers UperNet", spec, _upernet_tensors, notes)


UPERNET_RULES: Rules = (
    (r"^backbone\.embeddings\.patch_embeddings\.", "encoder.model.stem_0."),
    (r"^backbone\.embeddings\.layernorm\.", "encoder.model.stem_1."),
    (r"^backbone\.encoder\.stages\.(\d)\.downsampling_layer\.", r"encoder.model.stages_\1.downsample."),
    (r"^backbone\.encoder\.stages\.(\d)\.layers\.", r"encoder.model.stages_\1.blocks."),
    (r"\.layer_scale_parameter$", ".gamma"),
    (r"\.dwconv\.", ".conv_dw."),
    (r"(blocks\.\d+)\.layernorm\.", r"\1.norm."),
    (r"\.pwconv([12])\.", r".mlp.fc\1."),
    (r"^backbone\.hidden_states_norms\.stage(\d)\.", lambda m: f"decoder.feature_norms.{int(m[1]) - 1}."),
    (r"^decode_head\.psp_modules\.(\d)\.1\.", r"decoder.ppm.branches.\1."),
    (r"^decode_head\.bottleneck\.", "decoder.ppm.fuse."),
    # transformers' lateral and FPN convolutions run shallowest first over the three shallower levels,
    # segwise's deepest first
    (r"^decode_head\.lateral_convs\.(\d)\.", lambda m: f"decoder.laterals.{2 - int(m[1])}."),
    (r"^decode_head\.fpn_convs\.(\d)\.", lambda m: f"decoder.smooth.{2 - int(m[1])}."),
    (r"^decode_head\.fpn_bottleneck\.", "decoder.fuse."),
    (r"^(decoder\..*)\.conv\.", r"\1.0."),
    (r"^(decoder\..*)\.batch_norm\.", r"\1.1."),
    (r"^decode_head\.classifier\.", "head."),
)


def _upernet_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _renamed({k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}, UPERNET_RULES)


# ---- loading ---------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | Path, num_classes: int | None = None, in_channels: int | None = None
) -> tuple[SegmentationModel, dict[str, Any]]:
    """The segwise model of a checkpoint folder, with its weights, and a summary of what was loaded.

    `num_classes` other than the checkpoint's: a new head, initialised afresh; `in_channels` must be the
    checkpoint's. Every other tensor of the model must come from the checkpoint, with its shape.
    """
    folder = Path(path)
    checkpoint = read_checkpoint(folder)
    spec = dict(checkpoint.spec)
    if in_channels is not None:
        check_channels(folder, checkpoint, in_channels)
    new_head = num_classes is not None and num_classes != spec["num_classes"]
    spec["num_classes"] = num_classes or spec["num_classes"]
    model = create_model(**{k: v for k, v in spec.items() if k != "options"}, **spec["options"])
    state = _fit(checkpoint, checkpoint.rename(read_weights(folder)), model, new_head, folder)
    model.load_state_dict(state, strict=False)  # what _fit left out: the new head, batch-norm counters
    summary = {
        "path": str(folder),
        "layout": checkpoint.layout,
        "arch": spec["arch"],
        "encoder": spec["encoder"],
        "tensors": len(state),
        "new_head": new_head,
        "notes": checkpoint.notes,
    }
    return model, summary


def smp_state_dict(model: SegmentationModel, reference: nn.Module) -> dict[str, torch.Tensor]:
    """An smp model's tensors, in memory, as `model`'s state dict (what init_from reads from its folder):
    the one mapping the parity tests use too."""
    name = type(reference).__name__
    checkpoint = _smp({**reference.config, "_model_class": name}, Path(f"<smp {name}>/config.json"))
    return _fit(checkpoint, checkpoint.rename(reference.state_dict()), model, False, Path(f"<smp {name}>"))


def check_channels(folder: Path, checkpoint: Checkpoint, in_channels: int) -> None:
    """The checkpoint's first layer takes its own channel count only."""
    if in_channels != checkpoint.spec["in_channels"]:
        raise SegwiseError(
            f"{folder}: the checkpoint takes {checkpoint.spec['in_channels']}-channel images, the data has "
            f"{in_channels} channel(s); train on images of its channel count, or start without init_from"
        )


def _fit(
    checkpoint: Checkpoint,
    state: dict[str, torch.Tensor],
    model: SegmentationModel,
    new_head: bool,
    folder: Path,
) -> dict[str, torch.Tensor]:
    """The renamed tensors checked against the model: each of its tensors there with its shape (the new
    head and batch-norm step counters aside), nothing else; a mismatch is named."""
    own = model.state_dict()
    if new_head:
        state = {k: v for k, v in state.items() if k not in HEAD}
    elif (
        "head.weight" in state and state["head.weight"].shape[-2:] == (1, 1) != own["head.weight"].shape[-2:]
    ):
        state["head.weight"] = _centred(state["head.weight"], own["head.weight"].shape)
    if checkpoint.optional:
        state = {k: v for k, v in state.items() if k in own or not re.match(checkpoint.optional, k)}
    # a per-pixel linear layer is a 1×1 convolution: the same weights with two more dimensions
    state = {k: _as_own(v, own.get(k)) for k, v in state.items()}
    needed = {k for k in own if not (new_head and k in HEAD) and not k.endswith("num_batches_tracked")}
    missing = sorted(needed - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    problems = key_problems(missing, unexpected, wrong)
    if problems:
        raise SegwiseError(
            f"{folder / WEIGHTS}: weights do not fit segwise's {model.config['arch']} on "
            f"{model.config['encoder']} ({checkpoint.layout}): {'; '.join(problems)}"
        )
    return state


def _as_own(value: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
    if own is not None and value.ndim == 2 and own.shape == (*value.shape, 1, 1):
        return value[..., None, None]
    return value


def _centred(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A 1×1 convolution's weight as a k×k one's centre, zeros around: the same function (k odd, padded)."""
    centred = weight.new_zeros(shape)
    centred[..., shape[-2] // 2, shape[-1] // 2] = weight[..., 0, 0]
    return centred
