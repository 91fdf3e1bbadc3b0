"""Figures written into run folders: training curves and image | truth | prediction panels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path, colorize, write_image  # noqa: E402


def plot_curves(history: list[dict], path: Path) -> None:
    """Train and validation loss (left) and validation mIoU (right) per epoch."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, miou_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    miou_axis.plot(epochs, [row["val_miou"] for row in history], color="tab:green")
    miou_axis.set(xlabel="epoch", ylabel="mIoU", title="Validation mIoU", ylim=(0, 1))
    for axis in (loss_axis, miou_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)


def sample_panel(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, palette: list[list[int]], ignore_index: int
) -> np.ndarray:
    """image | truth | prediction side by side, uint8 H×3W×3 (void pixels grey); multilabel masks
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
