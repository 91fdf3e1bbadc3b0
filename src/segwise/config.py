"""Typed configuration: one dataclass per section, YAML in and out, validation with clear messages.

`Config` is what a user writes (`segwise train DATA -c plan.yaml`) or overrides from the command line.
`RunConfig` is what a run folder stores in `config.yaml`: everything needed to rebuild the model and
its preprocessing, so a run can be loaded anywhere without the training data.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SegwiseError
from .io import atomic_path

AUGMENT_PRESETS = ("none", "flips", "light", "default", "heavy")  # the keys of data.augment.PRESETS


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str | None = None  # None: the architecture's default (resnet34; segnet/unet_classic: their own)
    encoder_weights: str | None = None  # None, "imagenet" or a path to a state dict
    options: dict[str, Any] = field(default_factory=dict)  # the architecture's own, e.g. decoder_channels


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8
    lr: float | str = 1e-3  # peak learning rate, or "auto": the LR range test picks it (engine/lr_find.py)
    weight_decay: float = 1e-4
    loss: str = "ce+dice"
    size: list[int] | None = None  # training [H, W]; None picks the dataset's typical size
    val_fraction: float = 0.2  # share held out when the data has no val/ split
    augment: str = "flips"  # none | flips | light | default | heavy (see segwise.data.augment.PRESETS)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    val_samples: int = 4  # image | truth | prediction panels written to val_samples/
    optimizer: str = "adamw"  # adamw | sgd (Nesterov) | adam
    momentum: float = 0.9  # sgd only
    schedule: str = "one_cycle"  # one_cycle | cosine (linear warm-up, cosine decay) | poly
    warmup_epochs: float = 1.0  # cosine and poly: linear warm-up length (one-cycle warms up over 25 %)
    encoder_lr_scale: float | None = None  # encoder LR = lr × this; None: 0.1 if pretrained, else 1.0
    freeze_encoder_epochs: int = 0  # train only decoder and head for the first N epochs
    clip_grad_norm: float | None = None  # clip the global gradient norm to this
    accumulate: int = 1  # micro-batches per optimizer step (effective batch = batch_size × accumulate)
    ema_decay: float | None = None  # e.g. 0.999: evaluate and save an exponential moving average of weights
    progressive_resize: list[float] | None = None  # e.g. [0.5, 1.0]: size fraction per equal epoch phase
    compile: bool = False  # torch.compile the model for training
    monitor: str = "val_miou"  # metrics.csv column that picks the best weights and drives early stopping
    monitor_mode: str = "auto"  # max | min | auto (min for losses, max otherwise)
    patience: int | None = None  # early stopping: epochs without improvement before stopping
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    sync_batchnorm: bool = False  # DDP: batch-norm statistics over all processes
    tensorboard: bool = False  # also log to RUN/tensorboard/
    deterministic: bool = False  # torch.use_deterministic_algorithms: reproducible, a little slower

    def __post_init__(self) -> None:
        _check(self.augment in AUGMENT_PRESETS, "train.augment", self.augment, " | ".join(AUGMENT_PRESETS))
        _check(
            self.precision in ("auto", "bf16", "fp16", "fp32"),
            "train.precision",
            self.precision,
            "auto | bf16 | fp16 | fp32",
        )
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer ≥ 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer ≥ 1")
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
        _check(0 < self.val_fraction < 1, "train.val_fraction", self.val_fraction, "a number between 0 and 1")
        if self.size is not None:
            _check(
                len(self.size) == 2 and min(self.size) >= 8,
                "train.size",
                self.size,
                "[height, width], each ≥ 8",
            )
        _check(
            self.optimizer in ("adamw", "sgd", "adam"),
            "train.optimizer",
            self.optimizer,
            "adamw | sgd | adam",
        )
        _check(
            self.schedule in ("one_cycle", "cosine", "poly"),
            "train.schedule",
            self.schedule,
            "one_cycle | cosine | poly",
        )
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs, "a number ≥ 0")
        _check(
            self.encoder_lr_scale is None or self.encoder_lr_scale > 0,
            "train.encoder_lr_scale",
            self.encoder_lr_scale,
            "a positive number (or null for the default)",
        )
        _check(
            0 <= self.freeze_encoder_epochs <= self.epochs,
            "train.freeze_encoder_epochs",
            self.freeze_encoder_epochs,
            f"an integer between 0 and train.epochs ({self.epochs})",
        )
        _check(
            self.clip_grad_norm is None or self.clip_grad_norm > 0,
            "train.clip_grad_norm",
            self.clip_grad_norm,
            "a positive number or null",
        )
        _check(self.accumulate >= 1, "train.accumulate", self.accumulate, "an integer ≥ 1")
        _check(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            "train.ema_decay",
            self.ema_decay,
            "a number between 0 and 1 (e.g. 0.999) or null",
        )
        if self.progressive_resize is not None:
            _check(
                len(self.progressive_resize) >= 1 and all(0 < f <= 1 for f in self.progressive_resize),
                "train.progressive_resize",
                self.progressive_resize,
                "a list of size fractions in (0, 1], one per epoch phase, e.g. [0.5, 1.0]",
            )
        _check(
            self.monitor in ("val_miou", "val_loss", "val_pixel_accuracy", "train_loss"),
            "train.monitor",
            self.monitor,
            "val_miou | val_loss | val_pixel_accuracy | train_loss",
        )
        _check(
            self.monitor_mode in ("auto", "max", "min"),
            "train.monitor_mode",
            self.monitor_mode,
            "auto | max | min",
        )
        _check(
            self.patience is None or self.patience >= 1,
            "train.patience",
            self.patience,
            "an integer ≥ 1 or null",
        )
        _check(self.min_delta >= 0, "train.min_delta", self.min_delta, "a number ≥ 0")


WEIGHTINGS = ("none", "inverse", "one_minus", "median_frequency")
MODES = ("binary", "multiclass", "multilabel")


@dataclass
class DataConfig:
    """How to read the data and what `segwise plan` learnt from it (data/plan.py explains each choice)."""

    layout: str = "auto"  # auto | folders | fastai | segnet | voc | coco
    categories: list[str] | None = None  # COCO: category names to keep (default: all)
    mask_threshold: int | None = None  # binary masks: stored value ≥ threshold is foreground
    weighting: str = (
        "none"  # class weights from pixel frequencies: none | inverse | one_minus | median_frequency
    )
    class_weights: list[float] | None = None  # one per class, given to the loss; overrides `weighting`
    mean: list[float] | None = None  # per input channel, 0..1 scale; None: chosen when training starts
    std: list[float] | None = None
    classes: list[str] | None = None  # recorded by the plan; training checks the data still has them
    mode: str | None = None  # recorded by the plan: binary | multiclass | multilabel

    def __post_init__(self) -> None:
        from .data.formats import LAYOUTS

        _check(self.layout in LAYOUTS, "data.layout", self.layout, " | ".join(LAYOUTS))
        _check(self.weighting in WEIGHTINGS, "data.weighting", self.weighting, " | ".join(WEIGHTINGS))
        _check(self.mode is None or self.mode in MODES, "data.mode", self.mode, " | ".join(MODES))
        if self.mask_threshold is not None:
            _check(0 < self.mask_threshold <= 65535, "data.mask_threshold", self.mask_threshold, "1..65535")
        if self.class_weights is not None:
            _check(
                all(w >= 0 for w in self.class_weights) and any(w > 0 for w in self.class_weights),
                "data.class_weights",
                self.class_weights,
                "non-negative numbers, one per class, not all zero",
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            _check(value is None or len(value) >= 1, f"data.{key}", value, "one number per input channel")
        _check(
            (self.mean is None) == (self.std is None) and (self.std is None or min(self.std) > 0),
            "data.std",
            self.std,
            "positive numbers, given together with data.mean",
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def override(self, **values: Any) -> Config:
        """Set fields by name (`epochs=5`, `encoder="resnet18"`) wherever they live; unknown names fail."""
        model, train, data = asdict(self.model), asdict(self.train), asdict(self.data)
        for key, value in values.items():
            if value is None:
                continue
            if key in model:
                model[key] = value
            elif key in train:
                train[key] = value
            elif key in data:
                data[key] = value
            else:
                valid = sorted(set(model) | set(train) | set(data))
                raise SegwiseError(f"unknown option '{key}'; valid options are {valid}")
        return Config(
            _build(ModelConfig, model, "model"),
            _build(TrainConfig, train, "train"),
            _build(DataConfig, data, "data"),
        )


@dataclass
class ClassesConfig:
    names: list[str]
    values: list[int]  # stored mask value of each class
    palette: list[list[int]]
    ignore_value: int | None = None  # stored mask value meaning "void"
    colours: list[list[int]] | None = None  # colour-coded masks: colour of each stored value
    threshold: int | None = None  # binary masks: stored value ≥ threshold is foreground
    multilabel: bool = False  # masks hold one binary channel per class


@dataclass
class PreprocessConfig:
    input_size: list[int]  # [H, W] images are resized to before the model
    mean: list[float]
    std: list[float]


@dataclass
class RunConfig:
    model: dict[str, Any]  # create_model arguments: arch, encoder, num_classes, in_channels, options
    classes: ClassesConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_yaml(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return _build(cls, read_yaml(path), str(path))


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise SegwiseError(f"{key}: {value!r} is not valid; expected {expected}")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
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
        return isinstance(value, dict)
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
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SegwiseError(f"{where}: unknown key(s) {unknown}; valid keys are {names}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value, f"{where}.{key}")
        elif not _type_ok(value, hint):
            raise SegwiseError(f"{where}.{key}: {value!r} has the wrong type; expected {hint}")
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
    return config.override(**overrides)
