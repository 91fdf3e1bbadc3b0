"""Evaluation figures: normalized confusion matrix, per-class IoU bars, worst-k gallery, reliability
diagram, comparisons."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path, colorize  # noqa: E402


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its class's support (row sum); rows of absent classes stay 0."""
    support = matrix.sum(1, keepdims=True).astype(np.float64)
    return np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)


def _rates_heatmap(
    rates: np.ndarray,
    rows: list[str],
    columns: list[str],
    labels: dict[str, str],
    figsize: tuple[float, float],
    path: Path,
    rotation: int = 45,
    aspect: str = "equal",
) -> None:
    """Shares in 0..1 as a blue heatmap, each cell written out unless there are over 20 rows."""
    figure, axis = plt.subplots(figsize=figsize)
    shown = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1, aspect=aspect)
    axis.set_xticks(range(len(columns)), columns, rotation=rotation, ha="right" if rotation else "center")
    axis.set_yticks(range(len(rows)), rows)
    axis.set(**labels)
    if len(rows) <= 20:
        for t in range(len(rows)):
            for p in range(len(columns)):
                value = rates[t, p]
                colour = "white" if value > 0.5 else "black"
                axis.text(p, t, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(shown, ax=axis, fraction=0.046)
    figure.tight_layout()
    _save(figure, path)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """Confusion matrix normalized per true class: row t shows where class t's pixels went."""
    size = max(4.0, 0.6 * len(names) + 2)
    labels = {"xlabel": "prediction", "ylabel": "truth", "title": "Confusion matrix (rows sum to 1)"}
    _rates_heatmap(normalize_rows(matrix), names, names, labels, (size + 1, size), path)


# The cells of a label's 2×2 matrix, truth row by row, once each row is divided by its sum.
LABEL_RATES = [
    "TN rate\nabsent→\nabsent",
    "FP rate\nabsent→\npresent",
    "FN rate\npresent→\nabsent",
    "TP rate\npresent→\npresent",
]


def plot_label_confusion(matrices: np.ndarray, names: list[str], path: Path) -> None:
    """Per-label C×2×2 matrices as one row per label: where its absent and its present pixels went.

    Each 2×2 matrix is normalized per truth row, so a row holds TN, FP rates (summing to 1 where the
    label is absent somewhere) then FN, TP rates (summing to 1 where it is present somewhere)."""
    rates = np.stack([normalize_rows(m) for m in matrices]).reshape(len(names), 4)
    labels = {"xlabel": "truth → prediction", "ylabel": "label", "title": "Per-label confusion rates"}
    size = (6.0, max(3.5, 0.35 * len(names) + 2.0))  # four wide columns: cells need not be square
    _rates_heatmap(rates, names, LABEL_RATES, labels, size, path, rotation=0, aspect="auto")


def plot_iou_bars(ious: dict[str, float | None], path: Path) -> None:
    """Per-class IoU as horizontal bars (absent classes drawn as 'n/a')."""
    names = list(ious)
    values = [0.0 if v is None else v for v in ious.values()]
    figure, axis = plt.subplots(figsize=(7, max(2.5, 0.4 * len(names) + 1)))
    axis.barh(range(len(names)), values, color="tab:blue")
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set(xlim=(0, 1), xlabel="IoU", title="IoU per class")
    for index, value in enumerate(ious.values()):
        axis.text(
            0.01 if value is None else min(value, 0.88) + 0.01,
            index,
            "n/a" if value is None else f"{value:.3f}",
            va="center",
            fontsize=8,
        )
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_reliability(
    bins: list[dict], calibrated: list[dict] | None, temperature: float | None, path: Path
) -> None:
    """Reliability diagram: accuracy against mean confidence per bin (calibration.Reliability.bins), the
    diagonal being perfect calibration; with a temperature, its bins beside the model's own."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for rows, label, colour in (
        (bins, "model", "tab:red"),
        (calibrated, f"temperature {temperature:.2f}" if temperature else "", "tab:blue"),
    ):
        filled = [row for row in rows or [] if row["pixels"]]
        if filled:
            axis.plot(
                [row["confidence"] for row in filled],
                [row["accuracy"] for row in filled],
                marker="o",
                color=colour,
                label=label,
            )
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title="Reliability")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def error_map(truth: np.ndarray, prediction: np.ndarray, ignore_index: int) -> np.ndarray:
    """White where correct, red where wrong, grey where the truth is void.

    Label stacks (C×H×W of 0/1): a pixel is wrong if any of its labels is (void labels aside),
    and void where every label is."""
    void = truth == ignore_index
    wrong = (truth != prediction) & ~void
    if truth.ndim == 3:
        wrong, void = wrong.any(0), void.all(0)
    out = np.full((*wrong.shape, 3), 255, dtype=np.uint8)
    out[wrong] = (220, 30, 30)
    out[void] = (128, 128, 128)
    return out


def plot_worst(samples, palette: list[list[int]], ignore_index: int, path: Path) -> None:
    """One row per sample: image | truth | prediction | error map, titled with the image's mIoU.

    Label-stack samples (masks C×H×W) draw each pixel in the mean colour of its labels."""
    figure, axes = plt.subplots(len(samples), 4, figsize=(12, 3 * len(samples)), squeeze=False)
    for row, sample in zip(axes, samples, strict=True):
        image = sample.image
        rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
        panels = [
            rgb,
            colorize(sample.truth, palette, ignore_index),
            colorize(sample.prediction, palette, ignore_index),
            error_map(sample.truth, sample.prediction, ignore_index),
        ]
        titles = [f"{sample.name} (mIoU {sample.mean_iou:.3f})", "truth", "prediction", "errors (red)"]
        for axis, panel, title in zip(row, panels, titles, strict=True):
            axis.imshow(panel, interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    _save(figure, path)


def plot_comparison(table: dict[str, dict[str, float | None]], path: Path) -> None:
    """Grouped bars: per-class IoU of each run; `table` is {run: {class: IoU}}."""
    runs = list(table)
    names = list(dict.fromkeys(name for ious in table.values() for name in ious))
    width = 0.8 / len(runs)
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(names) * len(runs) ** 0.5 + 2), 4))
    for index, run in enumerate(runs):
        values = [table[run].get(name) for name in names]
        axis.bar(
            np.arange(len(names)) + index * width, [0 if v is None else v for v in values], width, label=run
        )
    axis.set_xticks(np.arange(len(names)) + width * (len(runs) - 1) / 2, names, rotation=30, ha="right")
    axis.set(ylim=(0, 1), ylabel="IoU", title="IoU per class")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
