"""The run folder, `runs/<name>/`: creating it, its weights (safetensors: loading runs no code), its
metrics table, and the model it rebuilds. What lives in it is listed in constants.py; last.pt is
engine/checkpoint.py's.

Every file is written under a temporary name and renamed, so a crash never leaves a torn file.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import RunConfig
from .constants import CONFIG, PRETRAINED_CONFIG, WEIGHTS
from .data.dataset import held_out_name
from .errors import SegwiseError
from .io import atomic_path, make_folder, sweep_temporaries
from .models import SegmentationModel, create_model
from .pretrained import is_pretrained_folder, read_pretrained
from .pretrained import save_weights as save_weights  # the trainer's and tests' name for it


def create_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create a new, empty run folder; an existing name is never reused (`name-2`, `name-3`, … instead)."""
    runs_dir = Path(runs_dir)
    make_folder(runs_dir)
    base = folder_name(name)
    for attempt in range(1, 10_000):
        candidate = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()  # atomic: two trainings racing for one name cannot both get it
            return candidate
        except FileExistsError:
            continue
    raise SegwiseError(f"{runs_dir}: too many runs named '{base}'; pass another --name")


def folder_name(name: str) -> str:
    """A run name as a folder name: letters, digits, `.`, `_` and `-` only, never empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def write_metrics(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_held_out(pairs: list[tuple[Path, Path]], root: Path, path: Path) -> None:
    """The images a run held out for validation, as paths relative to the data folder, one a line (so
    `segwise eval RUN DATA` scores the same images wherever the folder has moved)."""
    lines = [held_out_name(image, root) for image, _ in pairs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def load_model(run_dir: str | Path) -> tuple[SegmentationModel, RunConfig]:
    """Rebuild a run's model from config.yaml and model.safetensors (no pickle, no code executed), or a
    save_pretrained folder's from config.json and model.safetensors (pretrained.py)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SegwiseError(
            f"{run_dir}: run folder not found; pass a folder written by `segwise train` or save_pretrained"
        )
    sweep_temporaries(run_dir, recursive=True)  # what a killed `segwise train` or `eval` was writing
    if not (run_dir / CONFIG).is_file() and is_pretrained_folder(run_dir):
        path, config = run_dir / PRETRAINED_CONFIG, read_pretrained(run_dir)
    else:
        for required in (CONFIG, WEIGHTS):
            if not (run_dir / required).is_file():
                raise SegwiseError(f"{run_dir / required}: missing; is {run_dir} a finished segwise run?")
        path, config = run_dir / CONFIG, RunConfig.load(run_dir / CONFIG)
    try:
        model = build_model(config.model)
    except SegwiseError as error:  # an unknown architecture, encoder or option: name the file it is in
        raise SegwiseError(f"{path}: {error}") from None
    load_weights(model, run_dir / WEIGHTS)
    return model.eval(), config


def build_model(spec: dict) -> SegmentationModel:
    """A fresh model from a run's recorded `create_model` arguments (config.yaml's `model`), with random
    encoder weights whatever the run started from: its own weights (model.safetensors, last.pt) replace
    them, so loading, predicting, evaluating, exporting and resuming read no weights file and no network."""
    recorded = {
        k: v for k, v in spec.items() if k not in ("options", "encoder_weights", "encoder_weights_mapping")
    }
    options = {k: v for k, v in spec.get("options", {}).items() if k != "encoder_weights_mapping"}
    try:
        return create_model(**recorded, encoder_weights=None, **options)
    except (TypeError, ValueError, RuntimeError) as error:  # option values config.yaml's checks cannot know
        raise SegwiseError(
            f"model: {spec.get('arch')} does not build from the recorded options "
            f"({' '.join(str(error).split())[:200]}); was this config.yaml written by segwise?"
        ) from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as error:  # safetensors raises its own error types for torn or foreign files
        raise SegwiseError(f"{path}: weights do not load ({' '.join(str(error).split())[:300]})") from None
