"""Figures a training run writes: loss and mIoU curves, the LR per epoch, image | truth | prediction
panels, and lr-find's loss against the LR.

matplotlib is imported on the first figure drawn, not with this module: importing it is slow and most
commands that import the engine draw nothing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from ..io import atomic_path, colorize, write_image


@cache
def pyplot():
    """matplotlib.pyplot, set up for files only (the Agg backend never needs a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    pyplot().close(figure)


def plot_curves(history: list[dict], path: Path) -> None:
    """Train and validation loss (left) and validation mIoU (right) per epoch."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, miou_axis) = pyplot().subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    miou_axis.plot(epochs, [row["val_miou"] for row in history], color="tab:green")
    miou_axis.set(xlabel="epoch", ylabel="mIoU", title="Validation mIoU", ylim=(0, 1))
    for axis in (loss_axis, miou_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_lr(history: list[dict], path: Path) -> None:
    """Learning rate per epoch (from metrics.csv)."""
    figure, axis = pyplot().subplots(figsize=(6, 3.5))
    axis.plot([row["epoch"] for row in history], [row["lr"] for row in history], marker="o")
    axis.set(xlabel="epoch", ylabel="learning rate", title="Learning-rate schedule (end of epoch)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_lr_find(finding, path: Path) -> None:
    """An LR range test's raw and smoothed loss against the LR (log scale), the suggestion marked."""
    figure, axis = pyplot().subplots(figsize=(6, 4))
    axis.plot(finding.lrs, finding.losses, color="tab:blue", alpha=0.3, label="loss")
    axis.plot(finding.lrs, finding.smoothed, color="tab:blue", label="smoothed loss")
    axis.axvline(
        finding.suggestion, color="tab:red", linestyle="--", label=f"suggested {finding.suggestion:.2e}"
    )
    axis.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    top = max(finding.smoothed[0], np.percentile(finding.smoothed, 90)) * 1.1
    axis.set_ylim(min(finding.losses) * 0.9, top)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    _save(figure, path)


def sample_panel(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, palette: list[list[int]], ignore_index: int
) -> np.ndarray:
    """image | truth | prediction side by side, uint8 H×3W×3 (void pixels grey); per-label masks
    (C×H×W) show each pixel in the mean colour of its labels."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate(
        [rgb, gap, colorize(truth, palette, ignore_index), gap, colorize(prediction, palette, ignore_index)],
        axis=1,
    )


def write_sample_panels(panels: list[np.ndarray], folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for panel, name in zip(panels, names, strict=True):
        write_image(folder / f"{name}.png", panel)
