"""Choosing post-processing on data: per class, the options that raise its score by at least a margin.

`choose_postprocessing` is nnU-Net's scheme: the options are evaluated greedily in a fixed order, each on
top of what was kept before it, and kept only if it improves the class's metric (IoU or Dice) by at least
`margin` (absolute):

    1. threshold       binary and per-label tasks: foreground where P > t, t from `THRESHOLDS`
    2. minimum size    remove objects under m pixels, m from `MIN_SIZES` scaled to the images' size
    3. hole filling    `postprocess.fill_holes`
    4. largest object  `postprocess.keep_largest`

The operations are `postprocess`'s own, so what is chosen here is what `predict` and `eval` apply
(`tuned`). Scores come from the metric's sufficient statistics, each class's true positives, false
positives and false negatives summed over the images: the dataset-level IoU and Dice `segwise eval`
reports, exact; a whole grid of thresholds is scored from one histogram per image and class, and a grid
of sizes from one labelling of its objects.

Each class is judged on its own plane (the class against everything else) with only its own options
applied. That is exact for a binary task and for a per-label task, whose planes are independent. In a
multiclass mask, the pixels of an object removed from class c go to the class around it: class c's
score is still exact, but the neighbour's gain is not counted (nnU-Net makes the same simplification).

Memory: the predictions are streamed, image by image, once. What later options need is kept compact, a
byte of truth and a byte of decision per pixel (and label), not the float32 probabilities. For a binary or per-label task that byte holds how many
thresholds of the grid the pixel's probability passes (so any threshold of the grid decides exactly as
`Task.decide` would) and the default decision in its top bit; for a multiclass task it is the top class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..config import POSTPROCESS_MARGIN, POSTPROCESS_METRICS
from ..constants import IGNORE_INDEX
from ..errors import SegwiseError
from ..task import Task
from .postprocess import Cleaning, Steps, clean_plane, label
from .threshold import THRESHOLDS
from .tuned import Kept, tuned_classes

METRICS = POSTPROCESS_METRICS
DEFAULT_METRIC = "iou"  # the kind a run monitors (val_miou) and `segwise eval` reports first
DEFAULT_MARGIN = POSTPROCESS_MARGIN
MIN_SIZES = (16, 64, 256, 1024)  # pixels, for an image of REFERENCE_PIXELS; scaled to the images' size
REFERENCE_PIXELS = 256 * 256
DEFAULT_BIT = 128  # in a decision byte: the task's default decision (the levels below count thresholds)


@dataclass
class Trial:
    """One option tried for a class: its best value, the score before and with it, whether it was kept."""

    option: str  # threshold | min_size | fill_holes | largest
    value: float | int | bool
    before: float
    after: float
    kept: bool

    def to_dict(self) -> dict:
        return {
            "option": self.option,
            "value": self.value,
            "before": self.before,
            "after": self.after,
            "kept": self.kept,
        }


@dataclass
class ClassChoice:
    """What was chosen for one class (or label), and how."""

    index: int
    name: str
    pixels: int  # of the class in the truth; 0: nothing could be chosen
    before: float | None  # score with the task's default decision and no cleaning; None without pixels
    kept: Kept = field(default_factory=Kept)
    trials: list[Trial] = field(default_factory=list)

    @property
    def after(self) -> float | None:
        """The score with every kept option."""
        kept = [trial.after for trial in self.trials if trial.kept]
        return kept[-1] if kept else self.before

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "pixels": self.pixels,
            "before": self.before,
            "after": self.after,
            "kept": self.kept.to_dict(),
            "tried": [trial.to_dict() for trial in self.trials],
        }


@dataclass
class Choices:
    """The chosen post-processing of every class; `record` is what postprocess.json holds."""

    metric: str
    margin: float
    images: int
    classes: list[ClassChoice]

    def record(self, split: str) -> dict:
        """postprocess.json's fields (`tuned.write_postprocess` adds the format); `split` says which
        predictions it was chosen on."""
        return {
            "metric": self.metric,
            "margin": self.margin,
            "split": split,
            "images": self.images,
            "classes": {choice.name: choice.to_dict() for choice in self.classes},
        }


@dataclass
class _Image:
    """One image as the later options need it: one decision byte per pixel (and label), and the truth."""

    decision: np.ndarray  # uint8; see the module doc
    truth: np.ndarray  # uint8 class indices H×W, or a per-label task's C×H×W of 0/1; IGNORE_INDEX: void


def choose_postprocessing(
    task: Task,
    names: Sequence[str],
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
) -> Choices:
    """Choose each class's post-processing (see the module doc) on `samples`: pairs of probabilities
    C×H×W (as `Predictor.predict_proba` gives) and truth (class indices H×W, or a per-label task's
    C×H×W of 0/1, IGNORE_INDEX where void), read once. A class absent from the truth gets nothing."""
    check_options(metric, margin)
    images, counts = _read(task, samples)
    if not images:
        raise SegwiseError("no predictions to choose post-processing on; pick a split that holds images")
    choices = {}
    for index in tuned_classes(task):
        tp, fp, fn = counts[index][-1]  # the default decision's counts
        before = _score(metric, counts[index][-1]) if tp + fn else None
        choices[index] = ClassChoice(index, names[index], int(tp + fn), before)
    live = {index: choice for index, choice in choices.items() if choice.pixels}
    if _thresholded(task):
        _choose_threshold(metric, margin, live, counts)
    sizes = min_sizes(int(np.median([image.truth.shape[-2] * image.truth.shape[-1] for image in images])))
    _choose_min_size(task, metric, margin, images, live, sizes)
    for option in ("fill_holes", "largest"):
        _choose_flag(task, metric, margin, images, live, option)
    return Choices(metric, margin, len(images), list(choices.values()))


def check_options(metric: str, margin: float) -> None:
    """A metric the chooser knows and a margin in [0, 1), else SegwiseError."""
    if metric not in METRICS:
        raise SegwiseError(f"metric '{metric}' is not valid; choose from {', '.join(METRICS)}")
    if not 0 <= margin < 1:
        raise SegwiseError(f"margin {margin} is not valid; expected a number in [0, 1), e.g. 0.005")


def min_sizes(pixels: int) -> list[int]:
    """The minimum object sizes tried for images of `pixels` pixels: `MIN_SIZES` scaled by area (at
    least 2: every object has one pixel)."""
    return sorted({max(2, round(size * pixels / REFERENCE_PIXELS)) for size in MIN_SIZES})


def _thresholded(task: Task) -> bool:
    """Whether the task's decision has a threshold to choose (binary and per-label tasks)."""
    return task.per_label or task.has_foreground_threshold


def _try(choice: ClassChoice, option: str, value, after: float, margin: float, kept: Kept) -> None:
    """Record a trial of `option` at `value` scoring `after`; keep `kept` if it beats the score so far by
    `margin`."""
    before = choice.after
    better = after >= before + margin
    choice.trials.append(Trial(option, value, before, after, better))
    if better:
        choice.kept = kept


def _choose_threshold(
    metric: str, margin: float, live: dict[int, ClassChoice], counts: dict[int, np.ndarray]
) -> None:
    """The best threshold of the grid for every live class (ties: the nearest 0.5), kept if it beats
    the default decision by the margin."""
    for index, choice in live.items():
        scores = [_score(metric, row) for row in counts[index][:-1]]
        best = max(range(len(THRESHOLDS)), key=lambda i: (scores[i], -abs(THRESHOLDS[i] - 0.5)))
        threshold = THRESHOLDS[best]
        _try(choice, "threshold", threshold, scores[best], margin, replace(choice.kept, threshold=threshold))


def _read(
    task: Task, samples: Iterable[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[_Image], dict[int, np.ndarray]]:
    """Stream the samples once: each image's decision bytes and truth, and per class the counts
    (TP, FP, FN) of every threshold of the grid then of the default decision (multiclass: only that)."""
    images: list[_Image] = []
    rows = len(THRESHOLDS) + 1 if _thresholded(task) else 1
    counts = {index: np.zeros((rows, 3), dtype=np.int64) for index in tuned_classes(task)}
    for probabilities, truth in samples:
        image = _Image(_decision(task, probabilities), np.asarray(truth).astype(np.uint8))
        if image.truth.shape[-2:] != probabilities.shape[-2:]:
            raise SegwiseError(
                f"truth of shape {image.truth.shape} does not match probabilities {probabilities.shape}"
            )
        for index in counts:
            counts[index] += _threshold_counts(task, image, index)
        images.append(image)
    return images, counts


def _decision(task: Task, probabilities: np.ndarray) -> np.ndarray:
    """An image's decision bytes (see the module doc): for a thresholded task P×H×W, one plane per
    tuned class, each byte the number of `THRESHOLDS` its pixel passes plus `DEFAULT_BIT` where the
    default decision takes it; for a multiclass task the top class H×W."""
    if not _thresholded(task):
        return task.decide(probabilities).astype(np.uint8)

    def planes(decided: np.ndarray) -> np.ndarray:  # binary: the 0/1 mask as one plane
        return decided.astype(bool) if task.per_label else decided[None] == 1

    passed = np.zeros((len(tuned_classes(task)), *probabilities.shape[-2:]), dtype=np.uint8)
    for threshold in THRESHOLDS:
        passed += planes(task.decide(probabilities, threshold))
    return passed | planes(task.decide(probabilities)).astype(np.uint8) * np.uint8(DEFAULT_BIT)


def _threshold_counts(task: Task, image: _Image, index: int) -> np.ndarray:
    """Class `index`'s counts on one image: per threshold of the grid, then the default decision."""
    truth, valid = _truth_plane(task, image.truth, index)
    if not _thresholded(task):
        return _counts(image.decision == index, truth, valid)[None]
    levels = image.decision[_position(task, index)]
    passed = levels & np.uint8(DEFAULT_BIT - 1)
    count = len(THRESHOLDS) + 1
    # A pixel is foreground at threshold i when it passes more than i thresholds: count from the top.
    true_above = np.cumsum(np.bincount(passed[truth], minlength=count)[::-1])[::-1][1:]
    false_above = np.cumsum(np.bincount(passed[valid & ~truth], minlength=count)[::-1])[::-1][1:]
    grid = np.stack([true_above, false_above, truth.sum() - true_above], axis=1)
    return np.vstack([grid, _counts(levels >= DEFAULT_BIT, truth, valid)[None]])


def _position(task: Task, index: int) -> int:
    """The plane of a thresholded task's decision bytes that holds class `index`."""
    return index if task.per_label else index - 1


def _truth_plane(task: Task, truth: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Booleans H×W: where class `index` is true, and where the truth counts at all (not void)."""
    plane = truth[index] if task.per_label else truth
    return plane == (1 if task.per_label else index), plane != IGNORE_INDEX


def _counts(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(TP, FP, FN) of one class's predicted plane against its truth; void pixels count for nothing."""
    tp = np.count_nonzero(predicted & truth)
    return np.array(
        [tp, np.count_nonzero(predicted & valid) - tp, np.count_nonzero(truth) - tp], dtype=np.int64
    )


def _score(metric: str, counts: np.ndarray) -> float:
    """IoU or Dice from (TP, FP, FN); NaN when the class is in neither truth nor prediction."""
    tp, fp, fn = (int(value) for value in counts)
    hits = tp if metric == "iou" else 2 * tp
    total = hits + fp + fn
    return hits / total if total else math.nan


def _decided(task: Task, image: _Image, live: dict[int, ClassChoice]) -> np.ndarray:
    """The image's mask with each class's kept threshold (the default decision elsewhere)."""
    if not _thresholded(task):
        return image.decision
    planes = []
    for index in tuned_classes(task):
        levels = image.decision[_position(task, index)]
        threshold = live[index].kept.threshold if index in live else None
        passes = (
            levels >= DEFAULT_BIT
            if threshold is None
            else (levels & np.uint8(DEFAULT_BIT - 1)) > THRESHOLDS.index(threshold)
        )
        planes.append(passes)
    return np.stack(planes) if task.per_label else planes[0].astype(np.uint8)


def _plane(task: Task, mask: np.ndarray, index: int, cleaning: Cleaning) -> np.ndarray:
    """Class `index`'s plane of a decided mask once its own `cleaning` is applied (the others left as they are)."""
    if task.per_label:
        return clean_plane(mask[index], cleaning)
    return Steps(task, per_class={index: cleaning}).clean(mask) == index


def _choose_min_size(
    task: Task,
    metric: str,
    margin: float,
    images: list[_Image],
    live: dict[int, ClassChoice],
    sizes: list[int],
) -> None:
    """Try each minimum size on every live class; keep the best one that beats the margin."""
    counts = {index: np.zeros((len(sizes), 3), dtype=np.int64) for index in live}
    for image in images:
        mask = _decided(task, image, live)
        for index, choice in live.items():
            truth, valid = _truth_plane(task, image.truth, index)
            counts[index] += _size_counts(
                _plane(task, mask, index, choice.kept.cleaning), truth, valid, sizes
            )
    for index, choice in live.items():
        scores = [_score(metric, row) for row in counts[index]]
        best = max(range(len(sizes)), key=lambda i: (scores[i], -sizes[i]))
        cleaning = replace(choice.kept.cleaning, min_size=sizes[best])
        _try(choice, "min_size", sizes[best], scores[best], margin, replace(choice.kept, cleaning=cleaning))


def _size_counts(plane: np.ndarray, truth: np.ndarray, valid: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The counts (TP, FP, FN) after `remove_small` at each size, from one labelling of the plane: a
    removed object takes its true pixels out of TP into FN and its other counted pixels out of FP."""
    labels, count = label(plane)
    area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    true_in = np.bincount(labels[truth], minlength=count + 1)[1:]
    false_in = np.bincount(labels[valid & ~truth], minlength=count + 1)[1:]
    base = _counts(plane, truth, valid)
    rows = []
    for size in sizes:
        removed = area < size
        lost_true, lost_false = true_in[removed].sum(), false_in[removed].sum()
        rows.append(base + np.array([-lost_true, -lost_false, lost_true]))
    return np.array(rows, dtype=np.int64)


def _choose_flag(
    task: Task, metric: str, margin: float, images: list[_Image], live: dict[int, ClassChoice], option: str
) -> None:
    """Try `option` (fill_holes or largest) on top of each live class's kept options; keep it if it
    beats the margin."""
    trying = {index: replace(choice.kept.cleaning, **{option: True}) for index, choice in live.items()}
    counts = {index: np.zeros(3, dtype=np.int64) for index in live}
    for image in images:
        mask = _decided(task, image, live)
        for index, cleaning in trying.items():
            truth, valid = _truth_plane(task, image.truth, index)
            counts[index] += _counts(_plane(task, mask, index, cleaning), truth, valid)
    for index, choice in live.items():
        _try(
            choice,
            option,
            True,
            _score(metric, counts[index]),
            margin,
            replace(choice.kept, cleaning=trying[index]),
        )
