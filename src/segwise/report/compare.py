"""`segwise compare RUN1 RUN2 ...`: per-class IoU of evaluated runs side by side, as text and a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import class_names_problem
from ..constants import EVAL_DIR, METRICS_JSON
from ..errors import SegwiseError
from .figures import plot_comparison


def load_metrics(run_dir: str | Path, split: str) -> dict:
    path = Path(run_dir) / EVAL_DIR / split / METRICS_JSON
    if not path.is_file():
        raise SegwiseError(f"{path}: not found; run `segwise eval {run_dir} DATA --split {split}` first")
    return read_evaluation(path)


def read_evaluation(path: Path) -> dict:
    """An evaluation's metrics.json (evaluate.metrics_dict), checked for every value the comparison and
    the report read: a file that is not one is a one-line error naming it, never a traceback."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = f"not JSON ({' '.join(str(error).split())[:100]})"
    else:
        problem = _evaluation_problem(metrics)
    if problem is not None:
        raise SegwiseError(
            f"{path}: not an evaluation written by segwise: {problem}; delete it or run `segwise eval` again"
        )
    return metrics


def _evaluation_problem(metrics) -> str | None:
    if not isinstance(metrics, dict):
        return "not a JSON object"
    overall, per_class = metrics.get("overall"), metrics.get("per_class")
    if not isinstance(overall, dict) or "mean_iou" not in overall or not all(map(_score, overall.values())):
        return "no overall scores"
    if not isinstance(per_class, dict) or not all(
        isinstance(c, dict) and "iou" in c and _integer(c.get("support")) and all(map(_score, c.values()))
        for c in per_class.values()
    ):
        return "no per-class scores"
    names = class_names_problem(list(per_class))
    if names is not None:
        return names
    if not _integer(metrics.get("pixels")) or not (
        metrics.get("images") is None or _integer(metrics["images"])
    ):
        return "no pixel and image counts"
    best = metrics.get("best_threshold", {"threshold": 0.5})
    if (
        not isinstance(best, dict)
        or not _number(best.get("threshold"))
        or not all(map(_score, best.values()))
    ):
        return "an unreadable best_threshold"
    return None


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _score(value) -> bool:
    """A number, or null (JSON has no NaN: an undefined score)."""
    return value is None or _number(value)


def comparison_table(run_dirs: list[str | Path], split: str = "val") -> dict[str, dict[str, float | None]]:
    """{run name: {class: IoU, ..., "mIoU": mean IoU}} from each run's RUN/eval/<split>/metrics.json."""
    if len(run_dirs) < 1:
        raise SegwiseError("compare needs at least one run folder")
    table: dict[str, dict[str, float | None]] = {}
    for run_dir in run_dirs:
        metrics = load_metrics(run_dir, split)
        name = Path(run_dir).resolve().name
        while name in table:  # two runs with the same folder name (in different places)
            name += "'"
        table[name] = {cls: c["iou"] for cls, c in metrics["per_class"].items()}
        table[name]["mIoU"] = metrics["overall"]["mean_iou"]
    return table


def format_table(table: dict[str, dict[str, float | None]]) -> str:
    """Plain-text table: one row per class (mIoU last), one column per run."""
    runs = list(table)
    classes = list(dict.fromkeys(c for ious in table.values() for c in ious if c != "mIoU")) + ["mIoU"]
    width = max(len(c) for c in classes)
    columns = [max(8, len(r)) for r in runs]
    lines = ["class".ljust(width) + "".join("  " + r.rjust(w) for r, w in zip(runs, columns, strict=True))]
    for cls in classes:
        cells = []
        for run, w in zip(runs, columns, strict=True):
            value = table[run].get(cls)
            cells.append("  " + ("n/a" if value is None else f"{value:.4f}").rjust(w))
        lines.append(cls.ljust(width) + "".join(cells))
    return "\n".join(lines)


def compare_runs(run_dirs: list[str | Path], output: str | Path, split: str = "val") -> str:
    """Write the comparison PNG to `output` and return the text table."""
    table = comparison_table(run_dirs, split)
    plot_comparison(
        {run: {c: v for c, v in ious.items() if c != "mIoU"} for run, ious in table.items()}, Path(output)
    )
    return format_table(table)
