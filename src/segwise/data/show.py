"""`segwise show`: a PNG grid of augmented training samples, so a user sees what the model will see.

>>> write_augmented_grid("data/cells", "show.png", augment="heavy", count=16)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from ..io import colorize, write_image
from .augment import Augment, augment_batch
from .dataset import load_data
from .overrides import Overrides

GAP = 4  # white pixels between image and mask, and between cells


def augmented_grid(
    data: str | Path,
    augment: str | Augment = "default",
    count: int = 16,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    overrides: Overrides | None = None,
) -> np.ndarray:
    """uint8 RGB grid of `count` cells, each an augmented training image beside its mask in the class
    palette (per-label masks: each pixel in the mean colour of its labels; void grey). Samples are drawn in
    a seeded order and repeat when the data has fewer."""
    data_set = load_data(data, size, seed=seed, overrides=overrides)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data_set.train_images), generator=generator)
    picked = order.repeat(math.ceil(count / len(order)))[:count].sort().values.numpy()
    images = torch.from_numpy(data_set.train_images[picked]).permute(0, 3, 1, 2).float()
    masks = torch.from_numpy(data_set.train_masks[picked]).long()
    mean = torch.from_numpy(data_set.train_images.reshape(-1, data_set.in_channels).mean(0)).float()
    images, masks = augment_batch(images, masks, augment, generator, fill=mean)
    images = images.round().byte().permute(0, 2, 3, 1).numpy()
    height, width = data_set.size
    gap = np.full((height, GAP, 3), 255, np.uint8)
    cells = [
        np.concatenate(
            [
                np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3],
                gap,
                colorize(mask, data_set.classes.palette, IGNORE_INDEX),
            ],
            1,
        )
        for image, mask in zip(images, masks.numpy(), strict=True)
    ]
    columns = max(1, min(count, round(math.sqrt(count / 2))))  # cells are twice as wide as tall
    blank = np.full_like(cells[0], 255)
    cells += [blank] * (-len(cells) % columns)
    rows = [_join(cells[start : start + columns], axis=1) for start in range(0, len(cells), columns)]
    return _join(rows, axis=0)


def _join(parts: list[np.ndarray], axis: int) -> np.ndarray:
    """Concatenate with a white GAP between the parts."""
    shape = list(parts[0].shape)
    shape[axis] = GAP
    spacer = np.full(shape, 255, np.uint8)
    joined = [piece for part in parts for piece in (part, spacer)][:-1]
    return np.concatenate(joined, axis)


def write_augmented_grid(
    data: str | Path,
    output: str | Path,
    augment: str | Augment = "default",
    count: int = 16,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    overrides: Overrides | None = None,
) -> Path:
    """Write `augmented_grid(...)` to `output` (PNG, written atomically) and return its path."""
    write_image(output, augmented_grid(data, augment, count, seed, size, overrides))
    return Path(output)
