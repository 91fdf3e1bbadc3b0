"""What is segmented: the classes, and the task's mode that follows from them.

`Classes` is what a dataset's masks mean: each class's name, the stored mask value that encodes it,
its colour, the void value; the run folder stores it in config.yaml. `Task` is built from it once and
owns everything that differs between the three modes; every other module asks it instead of testing
the mode itself.

    mode         masks               trains as                    a pixel's decision
    binary       H×W of 0/1          softmax over two classes     foreground where P(class 1) > threshold
    multiclass   H×W class indices   softmax over K classes       the top class (optionally unsure → 0)
    multilabel   C×H×W of 0/1        one sigmoid per label        each label on its own: P(label) > threshold

A multilabel task has no background class: label 0 is a label like the others, and a pixel may carry
any subset of the labels, so its masks are stacks of planes rather than one index image.

>>> classes = Classes(["background", "cell"], [0, 255])
>>> classes.task.mode, classes.task.activation
('binary', 'softmax')
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .constants import IGNORE_INDEX
from .errors import SegwiseError
from .io import default_palette

Mode = Literal["binary", "multiclass", "multilabel"]
MODES: tuple[str, ...] = typing.get_args(Mode)
LABEL_THRESHOLD = 0.5  # a label is present where its own (sigmoid) probability exceeds this


@dataclass(frozen=True)
class Task:
    """The decisions that differ between binary, multiclass and multilabel segmentation."""

    mode: Mode
    num_classes: int

    @property
    def per_label(self) -> bool:
        """Masks are C×H×W stacks of 0/1, one independent plane per label (no background class)."""
        return self.mode == "multilabel"

    @property
    def loss_mode(self) -> str:
        """The `losses` mode: binary data trains as two classes (background and foreground) under one softmax."""
        return "multilabel" if self.per_label else "multiclass"

    @property
    def activation(self) -> str:
        """How logits become probabilities, in every TTA view and tile: "sigmoid" or "softmax"."""
        return "sigmoid" if self.per_label else "softmax"

    @property
    def has_foreground_threshold(self) -> bool:
        """One foreground probability to threshold (binary): what `eval` tunes and threshold.json stores.

        A two-label multilabel run is not binary: its planes are independent, not a class and its complement."""
        return self.mode == "binary"

    def decide_logits(self, logits):
        """Logits N×K×H×W (torch) → the predicted masks at the default decision: the top class of each
        pixel (N×H×W), or every label whose logit is positive, i.e. P > LABEL_THRESHOLD (N×C×H×W of 0/1)."""
        return (logits > 0).long() if self.per_label else logits.argmax(1)

    def decide(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Probabilities C×H×W (numpy) → H×W class indices, or a boolean C×H×W stack per label.

        `threshold`: binary, foreground where P(class 1) > value (0.5 is the argmax); multiclass, pixels
        whose winning probability is ≤ value go to the background (where the model is unsure, claim
        nothing); multilabel, each label present where its P > value (one value, or one per label;
        None: LABEL_THRESHOLD). None elsewhere: the argmax."""
        if self.per_label:
            value = LABEL_THRESHOLD if threshold is None else threshold
            values = np.broadcast_to(np.asarray(value, dtype=np.float64), (probabilities.shape[0],))
            for v in values:
                check_probability(float(v))
            return probabilities > values[:, None, None]
        if threshold is None:
            return probabilities.argmax(0)
        check_probability(threshold)
        if probabilities.shape[0] == 2:
            return (probabilities[1] > threshold).astype(np.int64)
        mask = probabilities.argmax(0)
        mask[probabilities.max(0) <= threshold] = 0
        return mask

    def foreground(self, mask: np.ndarray) -> np.ndarray:
        """H×W booleans: the pixels a decided mask gives anything but background (any label, per label)."""
        return mask.any(0) if self.per_label else mask > 0

    def pixel_counts(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per mask and class (N×C each): the class's pixels, and the pixels they are a share of — the
        mask's non-void pixels, or per label its non-ignored elements (a pixel counts for every label)."""
        if self.per_label:
            return (masks == 1).sum(axis=(2, 3)), (masks != IGNORE_INDEX).sum(axis=(2, 3))
        count = self.num_classes
        per_image = np.stack(
            [np.bincount(m[m != IGNORE_INDEX].ravel(), minlength=count)[:count] for m in masks]
        )
        return per_image, np.broadcast_to(per_image.sum(1, keepdims=True), per_image.shape)


def check_probability(value: float) -> None:
    if not 0 <= value <= 1:
        raise SegwiseError(f"threshold {value} is not valid; expected a probability between 0 and 1")


@dataclass
class Classes:
    """What each class is called, which stored mask value encodes it, and how it is drawn.

    `colours` (colour-coded masks) holds the RGB colour of every stored value 0..len-1, void included;
    `threshold` makes a mask binary (stored ≥ threshold → value 1); `multilabel` masks are H×W×C as
    stored, one channel per class. The run folder's config.yaml stores these fields as they are.
    """

    names: list[str]
    values: list[int]  # stored mask value of each class
    palette: list[list[int]] = field(default_factory=list)
    ignore_value: int | None = None  # stored mask value meaning "void"
    colours: list[list[int]] | None = None
    threshold: int | None = None  # binary masks: stored value ≥ threshold is foreground
    multilabel: bool = False  # masks hold one binary channel per class

    def __post_init__(self) -> None:
        if not self.palette:  # multilabel: every label is a thing, none drawn black like "nothing"
            count = len(self.names)
            self.palette = default_palette(count + 1)[1:] if self.multilabel else default_palette(count)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def mode(self) -> Mode:
        return "multilabel" if self.multilabel else "binary" if self.num_classes == 2 else "multiclass"

    @property
    def task(self) -> Task:
        return Task(self.mode, self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON- and YAML-safe fields (what config.yaml and the data cache store)."""
        return {
            "names": list(self.names),
            "values": [int(v) for v in self.values],
            "palette": [list(map(int, c)) for c in self.palette],
            "ignore_value": self.ignore_value,
            "colours": self.colours,
            "threshold": self.threshold,
            "multilabel": self.multilabel,
        }

    def lookup_table(self) -> np.ndarray:
        """Array mapping every stored value (0..65535) to a class index, IGNORE_INDEX if none."""
        table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
        table[np.asarray(self.values, dtype=np.int64)] = np.arange(len(self.values), dtype=np.uint8)
        return table

    def stored_values(self, mask: np.ndarray, path: Path | None = None) -> np.ndarray:
        """A mask as read (H×W values or H×W×3 colours) → H×W stored values (thresholded if binary)."""
        if mask.ndim == 3:
            if self.colours:
                mask = colours_to_values(mask, self.colours, path)
            elif np.all(mask == mask[..., :1]):  # a gray mask saved as RGB
                mask = mask[..., 0]
            else:
                raise no_colour_table(path)
        if self.threshold is not None:
            mask = (mask >= self.threshold).astype(np.uint8)
        return mask

    def to_indices(self, mask: np.ndarray, path: Path | None = None) -> np.ndarray:
        """A mask as read → class indices H×W, or for a per-label task C×H×W of 0/1; unknown values fail."""
        if self.task.per_label:  # stored H×W×C channels, one per label: threshold each, channels first
            if mask.ndim != 3 or mask.shape[-1] != self.num_classes:
                channels = mask.shape[-1] if mask.ndim == 3 else 1
                raise SegwiseError(
                    f"{path}: mask has {channels} channel(s) but the data has {self.num_classes} classes; "
                    "give every image one mask per class"
                )
            return np.ascontiguousarray((mask >= (self.threshold or 1)).transpose(2, 0, 1)).astype(np.uint8)
        mask = self.stored_values(mask, path)
        indices = self.lookup_table()[mask]
        unknown = (indices == IGNORE_INDEX) & (
            mask != (self.ignore_value if self.ignore_value is not None else -1)
        )
        if unknown.any():
            bad = sorted(int(v) for v in np.unique(mask[unknown]))[:8]
            raise SegwiseError(
                f"{path}: mask values {bad} are not among the classes' values {self.values}; "
                f"fix the mask or train on data that has these classes"
            )
        return indices


def no_colour_table(path: Path | None) -> SegwiseError:
    return SegwiseError(
        f"{path}: colour-coded mask (different R, G, B values) and no colour table; add class_dict.csv "
        "(name,r,g,b per class) beside the data or save index masks"
    )


def colours_to_values(mask: np.ndarray, colours: list[list[int]], path: Path | None = None) -> np.ndarray:
    """H×W×3 colour-coded mask → H×W index of each pixel's colour in `colours`; unknown colours fail."""
    keys = np.asarray(colours, np.int64) @ np.array([65536, 256, 1])
    order = np.argsort(keys)
    pixels = mask[..., :3].astype(np.int64) @ np.array([65536, 256, 1])
    position = np.searchsorted(keys[order], pixels).clip(0, len(keys) - 1)
    found = keys[order][position] == pixels
    if not found.all():
        bad = [[int(k >> 16), int(k >> 8 & 255), int(k & 255)] for k in np.unique(pixels[~found])[:4]]
        raise SegwiseError(
            f"{path}: colours {bad} are not in the colour table (class_dict.csv); add a row for them "
            "or fix the mask"
        )
    return order[position].astype(np.uint16 if len(colours) > 256 else np.uint8)
