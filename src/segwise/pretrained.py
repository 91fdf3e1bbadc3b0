"""A model folder in the layout the model hubs expect, for a model trained anywhere (segwise's trainer or
the user's own loop): `model.save_pretrained(folder)` writes it, `segwise.load(folder)` predicts with it
like with a run folder.

    config.json        `"library_name": "segwise"`; what rebuilds the model (`model`: create_model's
                       arguments), the classes and their task, the preprocessing (input size, mean, std),
                       the model's stride and metrics when known (for readers: loading needs neither),
                       and the SHA-256 of the weights it goes with
    model.safetensors  the weights (safetensors: loading them runs no code)
    README.md          a model card: YAML front matter the hubs read, the classes, metrics when known
    threshold.json     a binary run's tuned foreground threshold, when the run has one

Every file is written under a temporary name and renamed, config.json last: it names the weights' hash,
so a folder whose save was interrupted over an earlier one (new weights, old config) is refused on load
rather than predicting with a config that is not its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file
from torch import nn

from .config import PreprocessConfig, RunConfig, read_json
from .constants import (
    CALIBRATION_JSON,
    EVAL_DIR,
    METRICS_JSON,
    MODEL_CARD,
    POSTPROCESS_JSON,
    PRETRAINED_CONFIG,
    THRESHOLD_JSON,
    WEIGHTS,
)
from .errors import SegwiseError
from .io import atomic_path, make_folder, sweep_temporaries
from .task import Classes

LIBRARY = "segwise"
# A model from the user's own loop: the size and statistics most loops use unless told otherwise
# (ImageNet's mean and std, which timm's pretrained encoders expect); the card says which were used.
DEFAULT_INPUT_SIZE = [512, 512]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CARD_TAGS = ["image-segmentation", "segwise"]


def save_weights(model: nn.Module, path: Path) -> None:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


# What a run has recorded about its outputs, which travels with its model: the post-processing, and the
# temperature its probabilities are shown with.
RECORDED = (THRESHOLD_JSON, POSTPROCESS_JSON, CALIBRATION_JSON)


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    classes: Classes | Sequence[str] | None = None,
    preprocessing: PreprocessConfig | Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    recorded: Sequence[Path] = (),
) -> Path:
    """Write `model` (a SegmentationModel: its `config` rebuilds it) into `folder`; returns the folder.

    `classes`: names, one per output (default `class_0`, … or background/foreground for two), or a
    `task.Classes` (for a per-label task, or stored mask values). `preprocessing`: `input_size` (the size
    images are resized to, default 512×512), `mean` and `std` per input channel on the 0..1 scale
    (default ImageNet's for RGB). `metrics`: name → number, for the card. `recorded`: a run's
    recorded files (threshold.json, postprocess.json, calibration.json), copied. A folder that holds
    anything but an earlier save is refused, untouched.
    """
    folder = Path(folder)
    spec = getattr(model, "config", None)
    if not isinstance(spec, dict) or "arch" not in spec:
        raise SegwiseError(
            f"{folder}: save_pretrained needs a model made by segwise.create_model (it records how to "
            "rebuild it); build yours with create_model"
        )
    classes = _classes(classes, spec["num_classes"])
    preprocess = _preprocess(preprocessing, spec["in_channels"])
    metrics = _metrics(metrics)
    values = {
        "library_name": LIBRARY,
        "model": spec,
        "classes": classes.to_dict(),
        "task": classes.mode,
        "preprocess": {"input_size": preprocess.input_size, "mean": preprocess.mean, "std": preprocess.std},
        "stride": getattr(model, "stride", None),
        "metrics": metrics,
    }
    try:
        json.dumps(values, allow_nan=False)  # a value JSON cannot hold fails before anything is written
    except (TypeError, ValueError) as error:
        raise SegwiseError(
            f"{folder / PRETRAINED_CONFIG}: cannot write the model's config ({error})"
        ) from None
    _claim(folder)  # everything checked first: a mistake leaves no folder behind
    save_weights(model, folder / WEIGHTS)
    _write_text(folder / MODEL_CARD, model_card(spec, classes, preprocess, metrics))
    for name in RECORDED:  # an earlier save's post-processing is not this model's
        source = next((path for path in recorded if path.name == name), None)
        if source is not None:
            _write_text(folder / name, source.read_text())
        else:
            (folder / name).unlink(missing_ok=True)
    values["weights_sha256"] = _sha256(folder / WEIGHTS)
    _write_text(folder / PRETRAINED_CONFIG, json.dumps(values, indent=2) + "\n")
    return folder


def is_pretrained_folder(folder: Path) -> bool:
    """Whether `folder` holds a save_pretrained config.json (rather than a run's config.yaml)."""
    return (folder / PRETRAINED_CONFIG).is_file()


def read_pretrained(folder: Path) -> RunConfig:
    """The config of a save_pretrained folder as a RunConfig (default training settings), every value
    checked as a run's config.yaml is; the weights must be the ones config.json was written with."""
    path = folder / PRETRAINED_CONFIG
    values = read_json(path)
    if not isinstance(values, dict) or values.get("library_name") != LIBRARY:
        found = values.get("library_name") if isinstance(values, dict) else None
        raise SegwiseError(
            f"{path}: not a segwise model (library_name {found!r}, expected '{LIBRARY}'); pass a folder "
            "written by save_pretrained or `segwise train`"
        )
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise SegwiseError(f"{weights}: missing; copy the whole folder save_pretrained wrote")
    if values.get("weights_sha256") != _sha256(weights):
        raise SegwiseError(
            f"{weights}: not the weights {path} was written with (another model's, or a save that was "
            "interrupted); save the model again"
        )
    sections = {key: values[key] for key in ("model", "classes", "preprocess") if key in values}
    return RunConfig.from_values({**sections, "train": {}}, path)


def known_metrics(folder: Path) -> dict[str, float]:
    """What a folder knows of its model's quality: a save_pretrained folder's recorded metrics, or a run's
    evaluations (`segwise eval`: RUN/eval/SPLIT/metrics.json), as `split/metric` → overall value."""
    if is_pretrained_folder(folder):
        recorded = read_json(folder / PRETRAINED_CONFIG).get("metrics") or {}
        return _metrics(recorded if isinstance(recorded, dict) else {})
    found = {}
    for path in sorted((folder / EVAL_DIR).glob(f"*/{METRICS_JSON}")):
        overall = read_json(path).get("overall") or {}
        found |= {f"{path.parent.name}/{key}": value for key, value in overall.items() if _number(value)}
    return found


def model_card(spec: dict, classes: Classes, preprocess: PreprocessConfig, metrics: dict[str, float]) -> str:
    """README.md: front matter for the hubs, then what the model segments, how well, and how to use it."""
    front = yaml.safe_dump({"library_name": LIBRARY, "tags": CARD_TAGS}, sort_keys=False)
    height, width = preprocess.input_size
    mask = "a boolean plane per label" if classes.task.per_label else "class indices"
    lines = [
        f"---\n{front}---",
        f"# {spec['arch']} ({spec['encoder']})",
        f"A segwise model for {classes.mode} segmentation of {classes.num_classes} "
        f"{'labels' if classes.task.per_label else 'classes'} from {spec['in_channels']}-channel images.",
        _table(("index", "class"), enumerate(classes.names)),
        "## Metrics",
        _table(("metric", "value"), ((name, f"{value:.4g}") for name, value in metrics.items()))
        if metrics
        else "None recorded.",
        "## Use",
        '```python\nimport segwise\n\npredictor = segwise.load("path/to/this/folder")\n'
        f'mask = predictor.predict("image.png")  # {mask} at the image\'s own size\n```',
        f"Images are resized to {height}×{width} and normalized with mean {preprocess.mean} and std "
        f"{preprocess.std} (0..1 pixel scale); the mask comes back at the image's own size.",
    ]
    return "\n\n".join(lines) + "\n"


def _claim(folder: Path) -> None:
    """Refuse a folder that holds anything but an earlier save_pretrained output; make it if missing."""
    if folder.exists() and not folder.is_dir():
        raise SegwiseError(f"{folder}: is a file; choose a folder for the model")
    sweep_temporaries(folder)  # what an interrupted save left
    if folder.is_dir() and any(folder.iterdir()) and not _is_segwise_config(folder / PRETRAINED_CONFIG):
        raise SegwiseError(
            f"{folder}: not empty and not a folder save_pretrained wrote; choose a new or empty folder "
            "(nothing was written)"
        )
    make_folder(folder)


def _is_segwise_config(path: Path) -> bool:
    try:
        values = read_json(path)
    except SegwiseError:
        return False
    return isinstance(values, dict) and values.get("library_name") == LIBRARY


def _classes(classes: Classes | Sequence[str] | None, count: int) -> Classes:
    if isinstance(classes, Classes):
        names = classes.names
    elif classes is None:
        names = ["background", "foreground"] if count == 2 else [f"class_{i}" for i in range(count)]
        classes = Classes(names, list(range(count)))
    else:
        names = [str(name) for name in classes]
        classes = Classes(names, list(range(len(names))))
    if len(names) != count:
        raise SegwiseError(
            f"classes: {len(names)} names for a model with {count} outputs; give one name per output"
        )
    return classes


def _preprocess(given: PreprocessConfig | Mapping[str, Any] | None, channels: int) -> PreprocessConfig:
    if isinstance(given, PreprocessConfig):
        return given
    values = {"input_size": DEFAULT_INPUT_SIZE, **(dict(given) if given else {})}
    if isinstance(values["input_size"], int):
        values["input_size"] = [values["input_size"]] * 2
    if "mean" not in values and channels == 3:
        values |= {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    unknown = sorted(set(values) - {"input_size", "mean", "std"})
    if unknown or "mean" not in values or "std" not in values:
        raise SegwiseError(
            f"preprocessing: {f'unknown key(s) {unknown}' if unknown else 'mean and std missing'}; give "
            f"input_size [H, W] and, per input channel ({channels}), mean and std on the 0..1 scale"
        )
    try:
        return PreprocessConfig(
            input_size=[int(side) for side in values["input_size"]],
            mean=[float(v) for v in values["mean"]],
            std=[float(v) for v in values["std"]],
        )
    except (TypeError, ValueError) as error:
        raise SegwiseError(f"preprocessing: not numbers ({error}); give lists of numbers") from None
    except SegwiseError as error:
        raise SegwiseError(f"preprocessing: {error}") from None


def _metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    metrics = dict(metrics or {})
    bad = [key for key, value in metrics.items() if not isinstance(key, str) or not _number(value)]
    if bad:
        raise SegwiseError(f"metrics: {bad[0]!r} is not a name with a finite number; give name → number")
    return {key: float(value) for key, value in metrics.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _table(header: tuple[str, str], rows) -> str:
    """A Markdown table; a `|` in a cell is escaped, as it would end the cell."""
    lines = [header, ("---", "---"), *rows]
    return "\n".join(
        "| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |" for line in lines
    )


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
