"""Cleaning predicted masks and reading objects out of them.

Conventions shared by every function here:

- A mask is H×W class indices; class 0 is the background. A boolean H×W array is a binary mask
  (True = foreground). A per-label task (`Task.per_label`) predicts a label stack instead: C×H×W
  booleans, one plane per label (no background label); apply the functions to each plane
  (`[fill_holes(plane) for plane in stack]`), as `Steps` and `label_components` do.
- Components are 8-connected (pixels touching at a corner belong together, as in OpenCV's
  `connectedComponents`); holes are therefore 4-connected background regions not reaching the border.
- Removing a component (too small, or not the largest of its class) gives its pixels the majority
  class among the pixels touching it from outside that are not removed themselves (ties: the lowest
  class index; nothing left around it: background). In a binary mask that is always the background;
  in a multiclass mask a speck of class 2 inside a class-1 region becomes class 1.
- Filling holes gives background pixels enclosed by one class that class. Other classes enclosed by it
  are objects, not holes, and stay.

    >>> from segwise.inference import postprocess
    >>> clean = postprocess.fill_holes(postprocess.remove_small(mask, 50))  # doctest: +SKIP
    >>> mask = postprocess.Steps(predictor.task, threshold=0.3, min_size=50)(probabilities)  # doctest: +SKIP
    >>> per_class = postprocess.Steps(task, per_class={2: Cleaning(min_size=64)})(probabilities)  # doctest: +SKIP
    >>> boxes = postprocess.components(clean, probabilities, class_names)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from scipy import ndimage

from ..errors import SegwiseError
from ..task import Task, check_probability

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Component:
    """One connected object: its class, box (x1, y1 exclusive: x1 − x0 is the width), area, score, and
    its pixels inside the box (what a COCO mask encodes; not part of `to_dict`)."""

    id: int  # 1, 2, … over the whole image, by class then in scan order
    class_index: int
    class_name: str
    x0: int
    y0: int
    x1: int
    y1: int
    area: int  # pixels
    score: float | None  # mean probability of its class over its pixels; None without probabilities
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)  # box-sized booleans

    def to_dict(self) -> dict:
        """The JSON fields: everything but the pixels."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pixels"}


@dataclass(frozen=True)
class Cleaning:
    """How one class's objects are cleaned once the mask is decided (see `Steps`)."""

    min_size: int | None = None  # remove its objects under this many pixels
    fill_holes: bool = False
    largest: bool = False

    def __post_init__(self) -> None:
        if self.min_size is not None and self.min_size < 1:
            raise SegwiseError(f"min_size {self.min_size} is not valid; expected an integer ≥ 1 (pixels)")


@dataclass
class Steps:
    """The post-processing a prediction goes through, in this order: decide, remove small, fill, largest.

    The task decides (`Task.decide`: what `threshold` means there, one value or for a per-label task
    one per label; None is the default decision); a per-label task's planes are then cleaned each on
    its own. `min_size`, `fill_holes` and `largest` clean every class alike; `per_class` gives the
    classes it names (class index, or a per-label task's label index) a `Cleaning` of their own
    instead. In a class mask every class's objects are removed in one pass, decided on the mask before
    it, so one class's setting does not depend on the order the classes are visited in.
    """

    task: Task
    threshold: float | Sequence[float] | None = None
    min_size: int | None = None
    fill_holes: bool = False
    largest: bool = False
    per_class: Mapping[int, Cleaning] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold is not None:
            for value in np.atleast_1d(self.threshold):
                check_probability(float(value))
        self.cleaning(-1)  # checks min_size

    def cleaning(self, index: int) -> Cleaning:
        """How class (or label) `index` is cleaned."""
        return self.per_class.get(index, Cleaning(self.min_size, self.fill_holes, self.largest))

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities C×H×W → class indices H×W, or a per-label task's boolean C×H×W stack."""
        return self.clean(self.task.decide(probabilities, self.threshold))

    def clean(self, mask: np.ndarray) -> np.ndarray:
        """A decided mask (class indices H×W, or a per-label task's C×H×W stack) cleaned by class."""
        if self.task.per_label:
            return np.stack([clean_plane(plane, self.cleaning(index)) for index, plane in enumerate(mask)])
        settings = {index: self.cleaning(index) for index in range(1, self.task.num_classes)}
        sizes = {index: c.min_size for index, c in settings.items() if c.min_size}
        if sizes:
            mask = remove_small(mask, sizes)
        filled = [index for index, c in settings.items() if c.fill_holes]
        if filled:
            mask = fill_holes(mask, filled)
        largest = [index for index, c in settings.items() if c.largest]
        if largest:
            mask = keep_largest(mask, largest)
        return mask


def clean_plane(plane: np.ndarray, cleaning: Cleaning) -> np.ndarray:
    """One boolean plane (a binary mask, or one label of a stack) through `cleaning`."""
    if cleaning.min_size:
        plane = remove_small(plane, cleaning.min_size)
    if cleaning.fill_holes:
        plane = fill_holes(plane)
    if cleaning.largest:
        plane = keep_largest(plane)
    return plane


def remove_small(mask: np.ndarray, min_size: int | Mapping[int, int]) -> np.ndarray:
    """Remove the components of every non-background class with fewer than `min_size` pixels, or with
    a mapping {class: pixels}, of the classes it names with fewer than their own size (a binary mask's
    foreground is class 1)."""
    limits = dict(min_size) if isinstance(min_size, Mapping) else None
    for size in limits.values() if limits is not None else [min_size]:
        if size < 1:
            raise SegwiseError(f"min_size {size} is not valid; expected an integer ≥ 1 (pixels)")
    if limits is None:
        return _replace(mask, lambda value, sizes: sizes < min_size)
    return _replace(mask, lambda value, sizes: sizes < limits[value], limits)


def keep_largest(mask: np.ndarray, classes: Collection[int] | None = None) -> np.ndarray:
    """Keep only the largest component of every non-background class, or of `classes` (ties: the first
    in scan order)."""
    return _replace(mask, lambda value, sizes: np.arange(len(sizes)) != sizes.argmax(), classes)


def fill_holes(mask: np.ndarray, classes: Collection[int] | None = None) -> np.ndarray:
    """Give background pixels enclosed by one class (holes) that class; only `classes`' holes if given."""
    if mask.dtype == bool:
        return mask | _holes(mask) if _selected(mask, classes) else mask.copy()
    out = mask.copy()
    for value in _selected(mask, classes):
        out[_holes(mask == value) & (mask == 0)] = value
    return out


def label(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of a boolean plane, numbered 1…count in scan order (0: outside)."""
    return ndimage.label(foreground, structure=_EIGHT)


def components(
    mask: np.ndarray, probabilities: np.ndarray | None = None, class_names: Sequence[str] | None = None
) -> list[Component]:
    """Every 8-connected object of every non-background class, with its box, area and mean probability."""
    mask = mask.astype(np.int64)
    found: list[Component] = []
    for value in _classes(mask):
        found += _objects(mask == value, value, probabilities, class_names, first_id=len(found) + 1)
    return found


def label_components(
    planes: np.ndarray, probabilities: np.ndarray | None = None, label_names: Sequence[str] | None = None
) -> list[Component]:
    """`components` of a label stack C×H×W: the objects of every label's plane (label 0 included,
    there is no background label), `class_index` the label's channel. Objects of different labels may
    overlap."""
    found: list[Component] = []
    for index, plane in enumerate(planes):
        found += _objects(plane.astype(bool), index, probabilities, label_names, first_id=len(found) + 1)
    return found


def task_components(
    task: Task, mask: np.ndarray, probabilities: np.ndarray | None = None, names: Sequence[str] | None = None
) -> list[Component]:
    """The objects of a decided mask: `components`, or for a per-label task `label_components`."""
    find = label_components if task.per_label else components
    return find(mask, probabilities, names)


def _objects(
    foreground: np.ndarray,
    value: int,
    probabilities: np.ndarray | None,
    class_names: Sequence[str] | None,
    first_id: int,
) -> list[Component]:
    """The 8-connected components of one class's boolean plane, numbered from `first_id`."""
    labels, count = label(foreground)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    scores = (
        ndimage.mean(probabilities[value], labels, np.arange(1, count + 1))
        if probabilities is not None
        else [None] * count
    )
    return [
        Component(
            id=first_id + index,
            class_index=int(value),
            class_name=class_names[value] if class_names is not None else str(value),
            x0=box[1].start,
            y0=box[0].start,
            x1=box[1].stop,
            y1=box[0].stop,
            area=int(areas[index + 1]),
            score=None if scores[index] is None else round(float(scores[index]), 6),
            pixels=labels[box] == index + 1,
        )
        for index, box in enumerate(ndimage.find_objects(labels))
    ]


def crop_object(
    image: np.ndarray, mask: np.ndarray, background: Sequence[int] = (255, 255, 255)
) -> np.ndarray | None:
    """The image inside the box of all foreground pixels, other pixels painted `background`.

    None when the mask has no foreground. Combine with `keep_largest` to cut out a single object.
    """
    foreground = mask.astype(bool)
    if not foreground.any():
        return None
    rows, cols = ndimage.find_objects(foreground.astype(np.int8))[0]
    crop = image[rows, cols].copy()
    fill = np.resize(np.asarray(background, dtype=image.dtype), image.shape[-1])  # gray takes the first
    crop[~foreground[rows, cols]] = fill
    return crop


def _classes(mask: np.ndarray) -> list[int]:
    """The non-background classes present (bincount: one pass, where np.unique sorts every pixel)."""
    return [int(v) for v in np.flatnonzero(np.bincount(mask.ravel().astype(np.intp, copy=False))) if v != 0]


def _selected(mask: np.ndarray, classes: Collection[int] | None) -> list[int]:
    """The non-background classes present in `mask`, only those in `classes` when given."""
    return [value for value in _classes(mask) if classes is None or value in classes]


def _holes(foreground: np.ndarray) -> np.ndarray:
    """Background regions (4-connected) of a boolean mask that do not reach the border.

    One labelling pass; scipy's binary_fill_holes floods by repeated dilation, which costs a pass per
    pixel of the longest path through the background.
    """
    labels, count = ndimage.label(~foreground)
    enclosed = np.ones(count + 1, dtype=bool)
    enclosed[0] = False
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        enclosed[edge] = False
    return enclosed[labels]


def _replace(mask: np.ndarray, remove_where, classes: Collection[int] | None = None) -> np.ndarray:
    """Relabel the components that `remove_where(class, sizes)` selects by the surrounding majority.

    `remove_where` gets a class and the sizes of its components (index 0 = component 1) and returns a
    boolean array of those to remove; only `classes` are visited when given. All removals are decided
    on the input mask first, so the result does not depend on the order the classes are visited in.
    """
    binary = mask.dtype == bool
    source = mask.astype(np.int64)
    removed_parts: list[tuple[np.ndarray, tuple[slice, slice], int]] = []
    removed = np.zeros(source.shape, dtype=bool)
    for value in _selected(source, classes):
        labels, count = label(source == value)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        drop = np.flatnonzero(remove_where(value, sizes)) + 1
        boxes = ndimage.find_objects(labels)
        for number in drop:
            removed_parts.append((labels, boxes[number - 1], int(number)))
        drop_table = np.zeros(count + 1, dtype=bool)
        drop_table[drop] = True
        removed |= drop_table[labels]  # a lookup per pixel; np.isin would sort
    out = source.copy()
    height, width = source.shape
    for labels, (rows, cols), number in removed_parts:
        # Look one pixel beyond the component's box: its outside neighbours live there.
        rows = slice(max(rows.start - 1, 0), min(rows.stop + 1, height))
        cols = slice(max(cols.start - 1, 0), min(cols.stop + 1, width))
        part = labels[rows, cols] == number
        ring = ndimage.binary_dilation(part, structure=_EIGHT) & ~part & ~removed[rows, cols]
        neighbours = source[rows, cols][ring]
        out[rows, cols][part] = np.bincount(neighbours).argmax() if neighbours.size else 0
    return out.astype(bool) if binary else out.astype(mask.dtype)
