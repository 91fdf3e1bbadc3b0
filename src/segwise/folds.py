"""Cross-validation folds: how they are drawn, and the folds parent's folds.json that records them.

Folds are drawn from a dataset's training images only (its own val and test splits stay untouched for
an honest final evaluation), stratified by which classes each image contains: every image is keyed by
its rarest present class (the class present in the fewest images), the images are taken rarest key
first (ties in an order drawn with the seed), and each goes to the fold, among the smallest ones, that
holds the fewest images of its rarest class, then of its other classes. The folds' sizes so differ by
one image at most, and so do their shares of the images of the data's rarest class (those come first);
the other classes come out balanced about as closely.

folds.json (in the folds parent, `runs/<name>/`, written before any fold trains):

    {"k": 3, "seed": 0, "data": "/abs/path/to/DATA", "folds": [["train/a.png", ...], ...]}

image names are paths relative to the data folder, as RUN/val.txt names them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .constants import FOLDS
from .errors import SegwiseError
from .io import atomic_path


def fold_dir(parent: str | Path, index: int) -> Path:
    """Fold `index`'s run folder in a folds parent."""
    return Path(parent) / f"fold_{index}"


def stratified_folds(names: list[str], presence: np.ndarray, k: int, seed: int) -> list[list[str]]:
    """`names` dealt into `k` folds stratified by `presence` (N×C: image n holds class c); see the
    module docstring. Each fold's names are sorted."""
    if not 2 <= k <= len(names):
        raise SegwiseError(
            f"--folds {k}: needs 2 to {len(names)} folds (the training images); pick a K in that range"
        )
    images_with = presence.sum(0)

    def rarest(index: int) -> tuple[float, int]:
        present = np.flatnonzero(presence[index])
        if present.size == 0:
            return (math.inf, -1)  # an image of void only: dealt last
        c = present[np.argmin(images_with[present])]
        return (float(images_with[c]), int(c))

    order = sorted(np.random.default_rng(seed).permutation(len(names)).tolist(), key=rarest)
    held = np.zeros((k, presence.shape[1]), np.int64)  # images of each class per fold so far
    folds: list[list[str]] = [[] for _ in range(k)]
    for index in order:
        # Only the smallest folds may take it (sizes stay within one); among them the one with the
        # fewest images of its rarest class, then of its other classes.
        smallest = min(len(fold) for fold in folds)
        _, c = rarest(index)
        fold = min(
            (f for f in range(k) if len(folds[f]) == smallest),
            key=lambda f: (held[f, c] if c >= 0 else 0, int(held[f] @ presence[index])),
        )
        folds[fold].append(names[index])
        held[fold] += presence[index]
    return [sorted(fold) for fold in folds]


@dataclass
class Folds:
    """What folds.json records."""

    k: int
    seed: int
    data: str  # the data folder, absolute
    folds: list[list[str]]  # fold i's images, relative to `data`

    def write(self, parent: str | Path) -> Path:
        path = Path(parent) / FOLDS
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, parent: str | Path) -> Folds:
        """A folds parent's folds.json, checked: it may come from anyone, and names images to hold out."""
        path = Path(parent) / FOLDS
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SegwiseError(
                f"{path}: missing; is {parent} a folder written by `segwise train --folds K`?"
            ) from None
        except (OSError, ValueError) as error:
            raise SegwiseError(f"{path}: not readable JSON ({error}); train the folds again") from None
        if not _well_formed(values):
            raise SegwiseError(
                f"{path}: expected {{k, seed, data, folds}} with k ≥ 2 lists of image names, one per fold; "
                "was it written by segwise? train the folds again"
            )
        return cls(values["k"], values["seed"], values["data"], values["folds"])


def _well_formed(values: object) -> bool:
    if not isinstance(values, dict) or set(values) != {"k", "seed", "data", "folds"}:
        return False
    k, folds = values["k"], values["folds"]
    return (
        isinstance(k, int)
        and k >= 2
        and isinstance(values["seed"], int)
        and isinstance(values["data"], str)
        and isinstance(folds, list)
        and len(folds) == k
        and all(isinstance(fold, list) and fold and all(isinstance(n, str) for n in fold) for fold in folds)
    )
