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
import re
import types
import typing
from collections.abc import Callable
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
ExportFormat = Literal["onnx", "torchscript"]

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

    def __post_init__(self) -> None:
        if isinstance(self.encoder_weights, str) and self.encoder_weights.strip().lower() in ("none", ""):
            self.encoder_weights = None  # `--encoder-weights none` and `encoder_weights: none` alike
        _validate(self, "model")


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
        (lambda v: v is None or (len(v) == 2 and min(v) >= 8), "[height, width], each ≥ 8"),
    )
    val_fraction: float = option(
        0.2, "share held out when DATA has no val/ split", (lambda v: 0 < v < 1, "a number between 0 and 1")
    )
    augment: AugmentPreset = option("flips", "augmentation preset (see the README)")
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
    input_size: list[int]  # [H, W] images are resized to before the model
    mean: list[float]
    std: list[float]


@dataclass
class RunConfig:
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
        return _build(cls, read_yaml(path), str(path))


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise SegwiseError(f"{key}: {value!r} is not valid; expected {expected}")


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
    if not isinstance(values, dict):
        raise SegwiseError(
            f"{where}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}"
        )
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SegwiseError(f"{where}: unknown key(s) {unknown}; valid keys are {names}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value, f"{where}.{key}")
        elif not _type_ok(value, hint):
            allowed = choices(hint)
            expected = " | ".join(map(str, allowed)) if allowed else hint
            raise SegwiseError(f"{where}.{key}: {value!r} has the wrong type; expected {expected}")
        if hint is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required key is missing
        raise SegwiseError(f"{where}: {error}; valid keys are {names}") from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SegwiseError(f"{path}: config file not found; check the path")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SegwiseError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def write_yaml(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read a plan YAML (sections `model`, `train` and `data`), then apply keyword overrides."""
    config = Config() if path is None else _build(Config, read_yaml(path), str(path))
    return config.updated(Config.sections_of(**overrides))
