"""Typed configuration: one dataclass per section, YAML in and out, validation with clear messages.

This module is the one source of truth for every option: its name, type, choices (`Literal` types),
default, help text and valid range live on the field. The command line's flags (cli.py), validation
messages and the README's option tables are generated from these fields or checked against them.

`Config` is what a user writes (`segwise train DATA -c plan.yaml`) or overrides from the command line.
`RunConfig` is what a run folder stores in `config.yaml`: everything needed to rebuild the model and
its preprocessing, so a run can be loaded anywhere without the training data.

Overrides are structured per section, `{"train": {"epochs": 5}, "model": {"encoder": "resnet18"}}`;
`Config.sections_of` sorts keyword arguments (`epochs=5, encoder="resnet18"`) into that form once, at
the Python API's edge (segwise.train, make_plan, find_lr, load_config).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
import unicodedata
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import SegwiseError
from .io import atomic_path
from .task import MODES, Classes, Mode

AugmentPreset = Literal["none", "flips", "light", "default", "heavy"]  # defined in data/augment.py PRESETS
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "sgd", "adam"]
Schedule = Literal["one_cycle", "cosine", "poly"]
Monitor = Literal["val_miou", "val_loss", "val_pixel_accuracy", "train_loss"]
MonitorMode = Literal["auto", "max", "min"]
Layout = Literal["auto", "coco", "voc", "segnet", "fastai", "folders", "tree"]
Weighting = Literal["none", "inverse", "one_minus", "median_frequency"]
# Prediction and export choices (segwise predict / export; inference/ checks them against these)
Merge = Literal["mean", "gmean", "max", "vote"]
Backend = Literal["torch", "onnxruntime"]
ExportFormat = Literal["onnx", "torchscript", "pretrained"]  # pretrained: a save_pretrained folder
PostprocessMetric = Literal["iou", "dice"]  # what `segwise tune-postprocess` raises (inference/choose.py)

AUGMENT_PRESETS: tuple[str, ...] = typing.get_args(AugmentPreset)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
MONITORS: tuple[str, ...] = typing.get_args(Monitor)
LAYOUTS: tuple[str, ...] = typing.get_args(Layout)
WEIGHTINGS: tuple[str, ...] = typing.get_args(Weighting)
MERGES: tuple[str, ...] = typing.get_args(Merge)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
EXPORT_FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)
POSTPROCESS_METRICS: tuple[str, ...] = typing.get_args(PostprocessMetric)
POSTPROCESS_MARGIN = 0.005  # tune-postprocess: the least gain (absolute) for which an option is kept
POLYGON_TOLERANCE = 1.0  # predict --coco-polygons: the most a polygon strays from the mask, pixels

Check = tuple[Callable[[Any], bool], str]  # (is the value valid?, what is expected)


def option(default: Any, help: str, check: Check | None = None, flag: bool = True) -> Any:
    """A config field: its default, the help the CLI and README show, an optional range check and
    whether the train command has a flag for it (`--snake-name` as `--kebab-name`)."""
    metadata = {"help": help, "check": check, "flag": flag}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _at_least(bound: float, what: str = "an integer") -> Check:
    return (lambda v: v >= bound, f"{what} ≥ {bound}")


def _optional(check: Check, what: str) -> Check:
    test, _ = check
    return (lambda v: v is None or test(v), what)


POSITIVE: Check = (lambda v: v > 0, "a positive number")

# The largest image size a model is fed. Every image is resized to a run's input size before the model,
# so a size from a foreign config.yaml is an allocation: 60000×60000 would be 43 GB of float input
# before the first layer. 4096×4096 is where `segwise predict` starts tiling (its --max-pixels
# default), so no sensible run trains above it; one side may be long (a strip) up to 16384.
MAX_SIDE = 16384
MAX_PIXELS = 4096 * 4096


def _size(minimum: int) -> Check:
    """[height, width]: integers from `minimum` to MAX_SIDE, at most MAX_PIXELS in all."""
    return (
        lambda v: (
            v is None
            or (len(v) == 2 and minimum <= min(v) and max(v) <= MAX_SIDE and v[0] * v[1] <= MAX_PIXELS)
        ),
        f"[height, width], each ≥ {minimum} and ≤ {MAX_SIDE}, at most {MAX_PIXELS} pixels (4096×4096) in all",
    )


@dataclass
class ModelConfig:
    arch: str = option("unet", "architecture; `segwise list-models` lists them")
    encoder: str | None = option(None, "timm encoder (default: the architecture's own, resnet34 for most)")
    encoder_weights: str | None = option(
        "auto",
        "auto: ImageNet weights when the encoder has them and they can be had (local cache first, then "
        "the hub), else none; imagenet: those or stop; none; or a state dict file (timm, torchvision, smp)",
    )
    options: dict[str, Any] = option({}, "the architecture's own, e.g. decoder_channels", flag=False)
    init_from: str | None = option(
        None,
        "start from a whole segmentation model: a save_pretrained folder (config.json + model.safetensors) "
        "of segmentation_models_pytorch or of transformers' SegFormer/UperNet; it gives arch, encoder "
        "and options, and a new head if the class count differs",
    )

    def __post_init__(self) -> None:
        if isinstance(self.encoder_weights, str) and self.encoder_weights.strip().lower() in ("none", ""):
            self.encoder_weights = None  # `--encoder-weights none` and `encoder_weights: none` alike
        _validate(self, "model")

    @property
    def pretrained(self) -> bool:
        """Whether training starts from trained weights: the encoder's, or a whole model's (init_from)."""
        return self.encoder_weights is not None or self.init_from is not None


@dataclass
class TrainConfig:
    epochs: int = option(
        30,
        "passes over the training data (default: as many as fit in the time budget, see --budget; "
        "30 with a config file)",
        _at_least(1),
    )
    batch_size: int = option(
        8,
        "images per step, per process under torchrun (default: the largest that fits, probed; 8 with a "
        "config file)",
        _at_least(1),
    )
    lr: float | Literal["auto"] = option(
        3e-3, "peak learning rate (one-cycle), or auto: the LR range test picks it"
    )
    weight_decay: float = option(1e-4, "AdamW/SGD weight decay", _at_least(0, "a number"))
    loss: str | dict[str, float] = option(
        "ce+dice",
        "loss terms joined by '+', or in YAML a mapping of term to weight, e.g. {ce: 1.0, dice: 0.5}",
    )
    size: list[int] | None = option(
        None,
        "training size H or HxW (default: the data's typical size)",
        _size(8),
    )
    val_fraction: float = option(
        0.2, "share held out when DATA has no val/ split", (lambda v: 0 < v < 1, "a number between 0 and 1")
    )
    augment: AugmentPreset = option("flips", "augmentation preset (see the README)")
    sample_p: float = option(
        0.0,
        "class-aware sampling: share of training crops centred on a pixel of one of --sample-classes "
        "(0: off; the plan turns it on for classes under a fifth of an even share of the pixels)",
        (lambda v: 0 <= v <= 1, "a number between 0 and 1 (0: off)"),
    )
    sample_classes: list[str] | None = option(
        None, "classes the sampled crops are centred on, equally often among those present (default: all)"
    )
    precision: Precision = option("auto", "auto picks bf16 on GPUs that have it, else fp32")
    channels_last: bool = option(True, "channels-last memory format for the model", flag=False)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    seed: int = option(0, "seed of every random draw: split, weights, batches, augmentation")
    val_samples: int = option(4, "image | truth | prediction panels written to val_samples/", flag=False)
    optimizer: Optimizer = option("adamw", "optimizer; sgd is Nesterov")
    momentum: float = option(0.9, "sgd only", flag=False)
    schedule: Schedule = option("one_cycle", "one_cycle (25 % warm-up), cosine or poly (linear warm-up)")
    warmup_epochs: float = option(1.0, "cosine/poly linear warm-up length", _at_least(0, "a number"))
    encoder_lr_scale: float | None = option(
        None,
        "encoder LR = lr × this (default 0.1 when pretrained, else 1.0)",
        _optional(POSITIVE, "a positive number (or null for the default)"),
    )
    freeze_encoder_epochs: int = option(0, "train only decoder and head for the first N epochs")
    norm_statistics_below: int = option(
        4,
        "a pretrained encoder keeps its batch-norm statistics while the batch per process is below this (0: never)",
        _at_least(0),
    )
    clip_grad_norm: float | None = option(
        None, "clip the global gradient norm to this", _optional(POSITIVE, "a positive number or null")
    )
    accumulate: int = option(1, "micro-batches per optimizer step", _at_least(1))
    ema_decay: float | None = option(
        None,
        "keep an exponential moving average of the weights, e.g. 0.999; it is evaluated and saved",
        (lambda v: v is None or 0 < v < 1, "a number between 0 and 1 (e.g. 0.999) or null"),
    )
    progressive_resize: list[float] | None = option(
        None,
        "size fraction per equal epoch phase, e.g. 0.5,1.0",
        (
            lambda v: v is None or (len(v) >= 1 and all(0 < f <= 1 for f in v)),
            "a list of size fractions in (0, 1], one per epoch phase, e.g. [0.5, 1.0]",
        ),
    )
    budget: str | None = option(
        None,
        "wall-clock budget of the whole run, e.g. 20m, 1h30m: the plan fits size, batch and epochs to it "
        "and training stops on time (default without --epochs: 20m)",
        (
            lambda v: v is None or re.fullmatch(r"(\s*\d+(\.\d+)?\s*[hms])+\s*", v.lower()) is not None,
            "a duration such as 20m, 1h30m or 90s",
        ),
    )
    compile: bool = option(False, "torch.compile the model for training")
    monitor: Monitor = option("val_miou", "metrics.csv column that picks the best weights and stops early")
    monitor_mode: MonitorMode = option("auto", "max, min, or auto: min for losses, max otherwise")
    patience: int | None = option(
        None, "early stopping: epochs without improvement", _optional(_at_least(1), "an integer ≥ 1 or null")
    )
    min_delta: float = option(
        0.0, "an improvement must beat the best by more than this", _at_least(0, "a number")
    )
    sync_batchnorm: bool = option(False, "torchrun on GPUs: batch-norm statistics over all processes")
    tensorboard: bool = option(False, "also log to RUN/tensorboard/")
    deterministic: bool = option(False, "reproducible kernels (torch.use_deterministic_algorithms), slower")

    def __post_init__(self) -> None:
        if isinstance(self.lr, str) and self.lr != "auto":
            try:  # YAML reads 1e-3 (no dot) as a string
                self.lr = float(self.lr)
            except ValueError:
                pass
        _check(
            self.lr == "auto" or (not isinstance(self.lr, str) and self.lr > 0),
            "train.lr",
            self.lr,
            "a positive number or auto",
        )
        _validate(self, "train")
        _check(
            0 <= self.freeze_encoder_epochs <= self.epochs,
            "train.freeze_encoder_epochs",
            self.freeze_encoder_epochs,
            f"an integer between 0 and train.epochs ({self.epochs})",
        )


@dataclass
class DataConfig:
    """How to read the data and what `segwise plan` learnt from it (engine/plan.py explains each choice)."""

    layout: Layout = option("auto", "dataset layout (default: auto-detected)")
    categories: list[str] | None = option(None, "COCO: comma-separated category names to keep (default: all)")
    mask_threshold: int | None = option(
        None,
        "binary masks: stored value ≥ this is foreground (e.g. 128)",
        (lambda v: v is None or 0 < v <= 65535, "1..65535"),
    )
    images: str | None = option(
        None,
        "image folder under DATA, `{split}` for each split's, or train=DIR,val=DIR (default: discovered)",
    )
    masks: str | None = option(None, "mask folder under DATA, like --images (default: discovered)")
    mask_pattern: str | None = option(
        None,
        "a mask's file name from its image's: `{stem}_mask.png`, `{id}_manual1.gif`, or a regex "
        "with a group (?P<stem>...) or (?P<id>...)",
    )
    mask_set: str | None = option(
        None, "which discovered mask set holds the labels (a folder name or suffix)"
    )
    roi: str | None = option(
        None,
        "a discovered mask set that is a region of interest; outside it is void (a folder name or suffix)",
    )
    weighting: Weighting = option("none", "class weights for the loss from pixel frequencies")
    class_weights: list[float] | None = option(
        None,
        "one per class, given to the loss; overrides weighting",
        (
            lambda v: v is None or (all(w >= 0 for w in v) and any(w > 0 for w in v)),
            "non-negative numbers, one per class, not all zero",
        ),
        flag=False,
    )
    mean: list[float] | None = option(
        None,
        "per input channel, 0..1 scale; null: chosen by the plan",
        (lambda v: v is None or len(v) >= 1, "one number per input channel"),
        flag=False,
    )
    std: list[float] | None = option(
        None,
        "per input channel, 0..1 scale; null: chosen by the plan",
        (lambda v: v is None or len(v) >= 1, "one number per input channel"),
        flag=False,
    )
    classes: list[str] | None = option(
        None, "recorded by the plan; training checks the data still has them", flag=False
    )
    mode: Mode | None = option(None, "recorded by the plan: " + " | ".join(MODES), flag=False)
    held_out: list[str] | None = option(
        None,
        "the training images held out for validation, paths relative to DATA (a cross-validation "
        "fold: `train --folds` sets it); replaces val_fraction and the data's own val split",
        (lambda v: v is None or len(v) >= 1, "a non-empty list of image paths relative to DATA"),
        flag=False,
    )

    def __post_init__(self) -> None:
        _validate(self, "data")
        _check(
            (self.mean is None) == (self.std is None) and (self.std is None or min(self.std) > 0),
            "data.std",
            self.std,
            "positive numbers, given together with data.mean",
        )


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def updated(self, sections: dict[str, dict[str, Any]]) -> Config:
        """A copy with fields set per section (`{"train": {"epochs": 5}}`); None values are "not given"."""
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise SegwiseError(f"unknown config section(s) {unknown}; valid sections are {list(SECTIONS)}")
        merged = {}
        for name, cls in SECTIONS.items():
            values = asdict(getattr(self, name))
            values |= {k: v for k, v in sections.get(name, {}).items() if v is not None}
            merged[name] = _build(cls, values, name)
        return Config(**merged)

    @staticmethod
    def sections_of(**values: Any) -> dict[str, dict[str, Any]]:
        """Keyword arguments named after fields (`epochs=5`, `encoder="resnet18"`) sorted into their
        sections; None values are dropped (not given); unknown names fail with the valid ones."""
        sections: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section = field_section(key)
            if section is None:
                valid = sorted(name for cls in SECTIONS.values() for name in field_names(cls))
                raise SegwiseError(f"unknown option '{key}'; valid options are {valid}")
            if value is not None:
                sections.setdefault(section, {})[key] = value
        return sections


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def field_section(name: str) -> str | None:
    """The section a field name belongs to (field names are unique across sections)."""
    return next((section for section, cls in SECTIONS.items() if name in field_names(cls)), None)


def choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal` type (also inside `X | None`), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [c for arg in typing.get_args(hint) if (c := choices(arg))]
        return found[0] if len(found) == 1 and type(None) in typing.get_args(hint) else None
    return None


@dataclass
class PreprocessConfig:
    input_size: list[int] = field(metadata={"check": _size(1)})  # [H, W] images are resized to for the model
    mean: list[float] = field(metadata={"check": (lambda v: len(v) >= 1, "one number per input channel")})
    std: list[float] = field(metadata={"check": (lambda v: len(v) >= 1, "one number per input channel")})

    def __post_init__(self) -> None:
        _validate(self, "preprocess")
        for key in ("mean", "std"):
            values = getattr(self, key)
            _check(all(math.isfinite(v) for v in values), f"preprocess.{key}", values, "finite numbers")
        _check(
            len(self.std) == len(self.mean) and min(self.std) > 0,
            "preprocess.std",
            self.std,
            f"{len(self.mean)} positive numbers, one per input channel like preprocess.mean",
        )


@dataclass
class RunConfig:
    """A run folder's config.yaml. It may come from anyone, so `load` checks every value before any is
    used (types, ranges, sizes, the classes against the model); an error names the file and the key."""

    model: dict[str, Any]  # create_model arguments: arch, encoder, num_classes, in_channels, options
    classes: Classes
    preprocess: PreprocessConfig
    train: TrainConfig
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        values = asdict(self)
        values["classes"] = self.classes.to_dict()
        write_yaml(path, values)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_values(read_yaml(path), path)

    @classmethod
    def from_values(cls, values: Any, path: Path) -> RunConfig:
        """A RunConfig from the values read from `path` (config.yaml, or save_pretrained's config.json),
        every value checked; an error names the file."""
        with _naming(path):
            config = _build(cls, values, "")
            config.check()
        return config

    def check(self) -> None:
        """What the sections' own checks cannot see: the model against the classes and the input, the
        classes' names and values, what the run recorded about its data. Run on every load (a config
        built in code, with a stand-in model, is trusted)."""
        _check_model(self.model, self.classes, self.preprocess)
        _check_classes(self.classes)
        _check_run_data(self.data)


def _check_model(model: dict[str, Any], classes: Classes, preprocess: PreprocessConfig) -> None:
    """The recorded `create_model` arguments: names and counts that match the classes and the input."""
    for key, hint, expected in (
        ("arch", str, "an architecture name"),
        ("encoder", str | None, "an encoder name or null"),
        ("num_classes", int, "an integer"),
        ("in_channels", int, "an integer"),
    ):
        _check(key in model and _type_ok(model[key], hint), f"model.{key}", model.get(key), expected)
    _check(
        model["num_classes"] == classes.num_classes,
        "model.num_classes",
        model["num_classes"],
        f"{classes.num_classes}, one output per class of classes.names",
    )
    _check(
        model["in_channels"] == len(preprocess.mean),
        "model.in_channels",
        model["in_channels"],
        f"{len(preprocess.mean)}, one per value of preprocess.mean",
    )
    _check(isinstance(model.get("options", {}), dict), "model.options", model.get("options"), "a mapping")


def class_names_problem(names: list[str]) -> str | None:
    """What is wrong with a list of class names, or None. A name is printed, written into CSV headers,
    reports and file metadata: it must be non-empty text without control characters (NUL, escape
    codes, tabs, line breaks), and no two alike. Class-name files and run configs are held to it alike."""
    for name in names:
        if not name.strip() or _control_character(name):
            return f"class name {name!r} is empty or holds a control character"
    twice = sorted({name for name in names if names.count(name) > 1})
    return f"class name {twice[0]!r} is given twice" if twice else None


def _control_character(text: str, allowed: str = "") -> str | None:
    """The first control character (Unicode category Cc: NUL, ESC, DEL, …) of `text` not in `allowed`."""
    return next((c for c in text if unicodedata.category(c) == "Cc" and c not in allowed), None)


def _check_classes(classes: Classes) -> None:
    """Names a person reads (see class_names_problem), one stored value and colour per class."""
    names, count = classes.names, classes.num_classes
    problem = class_names_problem(names) if count else "no classes"
    if problem is not None:
        raise SegwiseError(f"classes.names: {problem}; expected distinct names of plain text, one per class")
    _check(
        len(classes.values) == count
        and len(set(classes.values)) == count
        and all(map(_stored, classes.values)),
        "classes.values",
        classes.values,
        f"{count} distinct stored mask values, 0..65535, one per name",
    )
    _check(
        len(classes.palette) == count and all(map(_colour, classes.palette)),
        "classes.palette",
        classes.palette,
        f"{count} colours [r, g, b] of 0..255, one per name",
    )
    _check(
        classes.colours is None or (len(classes.colours) >= count and all(map(_colour, classes.colours))),
        "classes.colours",
        classes.colours,
        f"null, or at least {count} colours [r, g, b] of 0..255",
    )
    for key in ("ignore_value", "threshold"):
        value = getattr(classes, key)
        _check(
            value is None or _stored(value), f"classes.{key}", value, "null or a stored mask value 0..65535"
        )


def _stored(value: int) -> bool:
    return 0 <= value <= 65535


def _colour(value: list[int]) -> bool:
    return len(value) == 3 and all(0 <= c <= 255 for c in value)


def _check_run_data(data: dict[str, Any]) -> None:
    """What the run recorded about its data, as far as loading, evaluating and resuming read it."""
    _check(isinstance(data.get("root", ""), str), "data.root", data.get("root"), "the data folder's path")
    max_side = data.get("max_side")
    _check(
        max_side is None or (_type_ok(max_side, int) and 8 <= max_side <= MAX_SIDE),
        "data.max_side",
        max_side,
        f"null or an integer 8..{MAX_SIDE}",
    )
    if "plan" in data:
        _build(DataConfig, data["plan"], "data.plan")


@contextmanager
def _naming(path: Path):
    """Errors raised inside name the file `path` first, once."""
    try:
        yield
    except SegwiseError as error:
        message = str(error)
        raise SegwiseError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise SegwiseError(f"{key}: {_shown(value)} is not valid; expected {expected}")


def _validate(section: Any, where: str) -> None:
    """Every field's choices (its `Literal` type) and range check, in field order."""
    hints = typing.get_type_hints(type(section))
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        allowed = choices(hints[item.name])
        if allowed is not None and not (value is None and type(None) in typing.get_args(hints[item.name])):
            _check(value in allowed, f"{where}.{item.name}", value, " | ".join(map(str, allowed)))
        check = item.metadata.get("check")
        if check is not None:
            test, expected = check
            _check(test(value), f"{where}.{item.name}", value, expected)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:  # the type of its values; membership is checked by _validate with the choices
        return any(type(value) is type(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(
            _type_ok(k, key_hint) and _type_ok(v, value_hint) for k, v in value.items()
        )
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return isinstance(value, hint)


def _build(cls: type, values: Any, where: str) -> Any:
    """Make dataclass `cls` from a dict, checking keys and types; errors name the key and the fix."""
    if isinstance(values, cls):
        return values
    at = f"{where}: " if where else ""
    if not isinstance(values, dict):
        raise SegwiseError(f"{at}expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise SegwiseError(f"{at}unknown key(s) {unknown}; valid keys are {names}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value, _key(where, key))
        elif not _type_ok(value, hint):
            allowed = choices(hint)
            expected = " | ".join(map(str, allowed)) if allowed else hint
            raise SegwiseError(f"{_key(where, key)}: {_shown(value)} has the wrong type; expected {expected}")
        if hint is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required key is missing
        raise SegwiseError(f"{at}{error}; valid keys are {names}") from None


def _key(where: str, key: Any) -> str:
    """`section.key` (a top-level key alone)."""
    return f"{where}.{key}" if where else str(key)


def read_yaml(path: str | Path) -> Any:
    """A config file's values; strings with control characters other than tabs and line breaks (NUL,
    escape codes, which no config needs and which reach paths, terminals and file headers) refused."""
    path = Path(path)
    if not path.is_file():
        raise SegwiseError(f"{path}: config file not found; check the path")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise SegwiseError(f"{path}: not valid YAML ({' '.join(str(error).split())[:300]})") from None
    with _naming(path):
        _refuse_control_characters(values)
    return values


def read_json(path: str | Path) -> Any:
    """A JSON file's values, held to read_yaml's rules (no control characters in its strings)."""
    path = Path(path)
    if not path.is_file():
        raise SegwiseError(f"{path}: not found; check the path")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise SegwiseError(f"{path}: not valid JSON ({' '.join(str(error).split())[:300]})") from None
    with _naming(path):
        _refuse_control_characters(values)
    return values


def _refuse_control_characters(values: Any) -> None:
    """Every string of a loaded YAML document, keys too, without control characters other than tabs and
    line breaks. A YAML alias makes a node appear many times (or inside itself): each is looked at once."""
    pending, seen = [(values, "")], set()
    while pending:
        value, key = pending.pop()
        if isinstance(value, str):
            found = _control_character(value, allowed="\t\n\r")
            if found is not None:
                raise SegwiseError(
                    f"{key or 'a key'}: {_shown(value, 60)} holds the control character {found!r}; "
                    "no config needs one: remove it, or write the file again"
                )
        elif isinstance(value, (dict, list)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for name, item in items:
                if isinstance(value, dict):
                    pending.append((name, key))
                    pending.append((item, _key(key, name)))
                else:
                    pending.append((item, f"{key}[{name}]"))


def _shown(value: Any, limit: int = 200) -> str:
    """`repr(value)` cut at `limit` characters: control characters escaped, one line however long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def write_yaml(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read a plan YAML (sections `model`, `train` and `data`), then apply keyword overrides."""
    config = Config()
    if path is not None:
        with _naming(Path(path)):
            config = _build(Config, read_yaml(path), "")
    return config.updated(Config.sections_of(**overrides))
