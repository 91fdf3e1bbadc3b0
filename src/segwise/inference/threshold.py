"""RUN/threshold.json: a binary run's foreground threshold, tuned by `segwise eval --save-threshold`
and used by `segwise predict` for that run unless a threshold is given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..constants import THRESHOLD_JSON
from ..errors import SegwiseError
from ..io import atomic_path
from ..task import Task

# The thresholds tried for a foreground probability: `eval`'s best threshold and `tune-postprocess`.
THRESHOLDS = [
    round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05)
]  # Python floats, as JSON reads them back


def saved_threshold(run_dir: str | Path, task: Task) -> float | None:
    """The foreground threshold saved in the run folder, or None: none saved, or a task without one
    foreground threshold (a two-label per-label run's planes are independent, not a class and its
    background)."""
    path = Path(run_dir) / THRESHOLD_JSON
    if not task.has_foreground_threshold or not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError):
        raise SegwiseError(
            f"{path}: not a threshold file; delete it or rerun `segwise eval --save-threshold`"
        ) from None


def write_threshold(run_dir: str | Path, threshold: float, dice: float, split: str) -> Path:
    """Record the best foreground threshold, its Dice and the split it was tuned on; returns the file."""
    path = Path(run_dir) / THRESHOLD_JSON
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"threshold": threshold, "dice": dice, "split": split}, indent=2) + "\n")
    return path
