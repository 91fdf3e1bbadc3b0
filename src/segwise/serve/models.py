"""The names the server gives its models, and what `GET /models` says of each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..constants import EVAL_DIR, METRICS_JSON
from ..inference.predictor import Predictor


def model_names(runs: Sequence[str | Path]) -> list[str]:
    """Each run's folder name, made unique with -2, -3, … (two folds of one run are both `fold_0`)."""
    names: list[str] = []
    for run in runs:
        base = Path(run).resolve().name or "model"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def model_card(name: str, predictor: Predictor) -> dict:
    config = predictor.config
    return {
        "name": name,
        "arch": config.model.get("arch"),
        "encoder": config.model.get("encoder"),
        "task": config.classes.task.mode,
        "per_label": config.classes.task.per_label,
        "classes": list(config.classes.names),
        "palette": config.classes.palette,
        "channels": predictor.model.in_channels,
        "input_size": list(config.preprocess.input_size),
        "metrics": _metrics(predictor.run_dir),
    }


def _metrics(run_dir: Path | None) -> dict | None:
    """The overall metrics of the run's last `segwise eval` on val (or any split), if it has one."""
    if run_dir is None:
        return None
    for path in sorted((run_dir / EVAL_DIR).glob(f"*/{METRICS_JSON}"), key=lambda p: p.parent.name != "val"):
        try:
            return {"split": path.parent.name, **json.loads(path.read_text()).get("overall", {})}
        except (OSError, ValueError, AttributeError):
            continue  # a damaged evaluation is left out, not a reason to refuse the model
    return None
