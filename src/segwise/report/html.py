"""`report.html`: one self-contained page per run (every image embedded as a data URI, no scripts,
no external fonts or styles), readable on a laptop and on a phone.

Sections: summary, training curves and learning-rate schedule (from metrics.csv), evaluation results
of every split evaluated under RUN/eval/ (tables, confusion matrix, IoU bars, worst-k gallery),
dataset summary, validation samples and the run's config.yaml.
"""

from __future__ import annotations

import base64
import csv
import tempfile
import warnings
from html import escape
from pathlib import Path

from ..config import RunConfig
from ..constants import (
    CONFIG,
    CONFUSION_PNG,
    CURVES,
    EVAL_DIR,
    IOU_PNG,
    LR_PLOT,
    METRICS,
    METRICS_JSON,
    RELIABILITY_PNG,
    REPORT,
    SAMPLES,
    WORST_PNG,
)
from ..engine.figures import plot_curves, plot_lr
from ..errors import SegwiseError, SegwiseWarning
from ..io import atomic_path
from .compare import read_evaluation

MAX_SAMPLES = 8
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr")  # drawn here

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; word-break: break-word; } h2 { border-bottom: 1px solid #ddd; margin-top: 2rem; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; border: 1px solid #eee; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; font-size: 0.8rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 0.5rem; }
.muted { color: #666; }
"""


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _number(value) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def read_history(run_dir: Path) -> list[dict]:
    """RUN/metrics.csv as training writes it (run.write_metrics), one dict of numbers per epoch; none
    without the file. A file that is not such a table (text, other columns, values that are no numbers)
    is left out with a SegwiseWarning: nothing else in the report depends on it."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    try:
        return _parse_history(path)
    except (OSError, ValueError, csv.Error) as error:  # a UnicodeDecodeError is a ValueError
        message = f"{path}: not a metrics table written by segwise ({error}); training curves left out"
        warnings.warn(SegwiseWarning(message), stacklevel=2)
        return []


def _parse_history(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in HISTORY_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"no column(s) {', '.join(missing)}")
        history = []
        for row in reader:
            try:
                history.append({k: int(v) if k == "epoch" else float(v) for k, v in row.items()})
            except (TypeError, ValueError):  # a value that is no number, a short or long row (None)
                raise ValueError(f"line {reader.line_num} is not one number per column") from None
    return history


def _training(run_dir: Path, history: list[dict], scratch: Path) -> str:
    if not history:
        return "<p class='muted'>No readable metrics.csv in this run.</p>"
    curves, lr = scratch / CURVES, scratch / LR_PLOT
    plot_curves(history, curves)
    plot_lr(history, lr)
    best = max(history, key=lambda row: row["val_miou"])
    rows = [
        [r["epoch"], r["train_loss"], r["val_loss"], r["val_miou"], r["val_pixel_accuracy"], f"{r['lr']:.3g}"]
        for r in history
    ]
    return (
        f"<p>{len(history)} epochs; best validation mIoU {best['val_miou']:.4f} at epoch {best['epoch']} "
        "(the saved weights).</p>"
        f'<div class="grid">{_image(curves, "training curves")}{_image(lr, "learning-rate schedule")}</div>'
        + _table(["epoch", "train loss", "val loss", "val mIoU", "val pixel acc.", "lr"], rows)
    )


def _dataset_summary(config, metrics: dict, split: str) -> str:
    names = config.classes.names
    total = max(1, metrics["pixels"])
    rows = [
        [name, config.classes.values[i], c["support"], c["support"] / total]
        for i, (name, c) in enumerate(metrics["per_class"].items())
        if i < len(names)
    ]
    void = (
        f"; mask value {config.classes.ignore_value} is void (ignored)"
        if config.classes.ignore_value is not None
        else ""
    )
    data = config.data
    trained = (
        f"<p>Trained on {data.get('train_images', '?')} training and {data.get('val_images', '?')} validation "
        f"images from <code>{escape(str(data.get('root', '?')))}</code>.</p>"
    )
    return (
        trained
        + f"<p>Split <b>{escape(split)}</b>: {metrics['images']} image/mask pairs, {metrics['pixels']} counted pixels; "
        f"{len(names)} classes{escape(void)}; model input {config.preprocess.input_size[0]}×"
        f"{config.preprocess.input_size[1]}.</p>"
        + _table(["class", "mask value", "pixels", "frequency"], rows)
    )


def _evaluation(folder: Path, metrics: dict) -> str:
    overall = [[key.replace("_", " "), value] for key, value in metrics["overall"].items()]
    keys = ["support", "iou", "dice", "precision", "recall", "boundary_iou", "boundary_f1"]
    per_class = [[name] + [c.get(k) for k in keys] for name, c in metrics["per_class"].items()]
    parts = [_table(["metric", "value"], overall)]
    if "best_threshold" in metrics:
        best = metrics["best_threshold"]
        parts.append(
            f"<p>Best foreground threshold by Dice: <b>{best['threshold']}</b> (Dice {_number(best['dice'])}).</p>"
        )
    parts.append(
        "<h3>Per class</h3>"
        + _table(
            ["class", "pixels", "IoU", "Dice", "precision", "recall", "boundary IoU", "boundary F1"],
            per_class,
        )
    )
    calibration = metrics.get("calibration") or {}
    if "temperature" in calibration:
        parts.append(
            f"<p>Calibration: temperature <b>{_number(calibration['temperature'])}</b> (fitted on "
            f"{escape(str(calibration.get('fitted_on')))}); ECE {_number(metrics['overall'].get('ece'))} "
            f"→ {_number(metrics['overall'].get('ece_calibrated'))}. Masks do not depend on it.</p>"
        )
    figures = [
        (CONFUSION_PNG, "normalized confusion matrix"),
        (IOU_PNG, "IoU per class"),
        (RELIABILITY_PNG, "reliability diagram"),
    ]
    parts.append(
        '<div class="grid">'
        + "".join(_image(folder / f, alt) for f, alt in figures if (folder / f).is_file())
        + "</div>"
    )
    if (folder / WORST_PNG).is_file():
        parts.append(
            "<h3>Worst images (image | truth | prediction | errors)</h3>"
            + _image(folder / WORST_PNG, "worst images")
        )
    return "\n".join(parts)


def build_report(run_dir: str | Path) -> str:
    """The HTML text of a run's report."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise SegwiseError(f"{run_dir}: no {CONFIG}; pass a run folder written by `segwise train`")
    config = RunConfig.load(run_dir / CONFIG)
    history = read_history(run_dir)
    model = config.model
    sections = [
        f"<h1>segwise run: {escape(run_dir.resolve().name)}</h1>",
        f"<p class='muted'>{escape(str(model.get('arch')))} with {escape(str(model.get('encoder')))} encoder, "
        f"{len(config.classes.names)} classes: {escape(', '.join(config.classes.names))}</p>",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        sections.append("<h2>Training</h2>" + _training(run_dir, history, Path(scratch)))
    evaluated = sorted(p.parent for p in (run_dir / EVAL_DIR).glob(f"*/{METRICS_JSON}"))
    if not evaluated:
        sections.append(
            f"<h2>Evaluation</h2><p class='muted'>Not evaluated yet: run `segwise eval {escape(str(run_dir))} DATA`.</p>"
        )
    for folder in evaluated:
        try:
            metrics = read_evaluation(folder / METRICS_JSON)
        except SegwiseError as error:  # one broken evaluation leaves the rest of the report standing
            warnings.warn(SegwiseWarning(f"{error}; left out of the report"), stacklevel=2)
            continue
        sections.append(f"<h2>Evaluation: {escape(folder.name)}</h2>" + _evaluation(folder, metrics))
        sections.append(
            f"<h2>Dataset: {escape(folder.name)}</h2>" + _dataset_summary(config, metrics, folder.name)
        )
    samples = sorted((run_dir / SAMPLES).glob("*.png"))[:MAX_SAMPLES]
    if samples:
        sections.append(
            "<h2>Validation samples (image | truth | prediction)</h2>"
            + '<div class="grid">'
            + "".join(_image(p, p.stem) for p in samples)
            + "</div>"
        )
    config_text = (run_dir / CONFIG).read_text()
    sections.append(f"<h2>Config</h2><pre>{escape(config_text)}</pre>")
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>segwise report: {escape(run_dir.resolve().name)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """(Re)write RUN/report.html from what the run folder holds now."""
    html = build_report(run_dir)
    path = Path(run_dir) / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
