"""`segwise check DATA`: what a dataset holds and everything wrong with it, in one pass.

Every file is read once; problems are collected, never raised, so one run lists them all:
unmatched images or masks, duplicate stems, files named in split lists that do not exist, unreadable
files, masks of another size than their image, mask values that are no class (beyond a class-name
file's lines: one problem of the file, in training's words), classes with no pixels in a split, and
too few pairs to hold validation images out (training's own rule, `split_problem`). Warnings leave
the exit code alone: training masks with no foreground anywhere, and mask values that became classes
with no class-name file to declare them. Masks are summarised as value → pixel-count histograms, so
a large dataset is not held in memory. A dataset that cannot be read at all (no such folder, no pairs, an unusable class
file) raises SegwiseError instead: exit code 2 rather than 1.

    >>> report = check_data("data/camvid")  # doctest: +SKIP
    >>> print(report.text()); report.exit_code  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SegwiseError
from ..io import TIFF_SUFFIXES, read_image
from ..task import Classes, colours_to_values, no_colour_table
from .dataset import (
    infer_classes,
    no_foreground_warning,
    soft_binary_values,
    split_problem,
    stray_values_message,
    undeclared_classes_warning,
)
from .formats import DataSource, Pair, Problem, find_data
from .overrides import Overrides


@dataclass
class _Read:
    """What one readable pair contributes: its split, sizes, and stored-value (or channel) pixel counts."""

    split: str
    pair: Pair
    size: tuple[int, int]
    channels: int
    counts: Counter
    multichannel: int = 0  # channel count of a mask stored as one channel per class, else 0
    colour_coded: bool = False
    outside_roi: int = 0  # pixels outside the image's region of interest (--roi): void


@dataclass
class CheckReport:
    """The summary and the problems of one dataset; `exit_code` is 0 when clean and 1 otherwise."""

    root: Path
    layout: str
    pairs_per_split: dict[str, int]
    sizes: Counter  # (H, W) → images
    channels: Counter  # channel count → images
    classes: Classes | None
    pixels: dict[str, list[int]]  # split → pixels per class
    void_pixels: dict[str, int]  # split → ignored pixels
    problems: list[Problem] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)  # how discovery paired the files (layout "tree")
    warnings: list[str] = field(default_factory=list)  # usable, but maybe not what was meant

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def text(self) -> str:
        lines = [f"{self.root}  (layout: {self.layout})"]
        lines += [("found:    " if i == 0 else " " * 10) + line for i, line in enumerate(self.decisions)]
        lines.append("pairs:    " + ", ".join(f"{s} {n}" for s, n in self.pairs_per_split.items()))
        common = ", ".join(f"{w}×{h} ({n})" for (h, w), n in self.sizes.most_common(3))
        more = f" and {len(self.sizes) - 3} other sizes" if len(self.sizes) > 3 else ""
        lines.append(f"sizes:    {common}{more}  (W×H, images)")
        lines.append("channels: " + ", ".join(f"{c} ({n})" for c, n in sorted(self.channels.items())))
        if self.classes is not None:
            classes = self.classes
            extra = f", threshold {classes.threshold}" if classes.threshold is not None else ""
            extra += f", void value {classes.ignore_value}" if classes.ignore_value is not None else ""
            lines.append(f"classes:  {classes.num_classes} ({classes.mode}{extra})")
            splits = list(self.pixels)
            lines.append(f"  {'class':<20}{'value':>7}" + "".join(f"{s + ' %':>10}" for s in splits))
            for index, name in enumerate(classes.names):
                shares = "".join(f"{_share(self.pixels[s][index], self._total(s)):>10}" for s in splits)
                lines.append(f"  {name:<20}{classes.values[index]:>7}{shares}")
            if not classes.task.per_label:  # label stacks have no void value
                shares = "".join(f"{_share(self.void_pixels[s], self._total(s)):>10}" for s in splits)
                lines.append(f"  {'(void/ignored)':<20}{'':>7}{shares}")
        lines += [f"warning: {warning}" for warning in self.warnings]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  [{p.kind}] {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    def _total(self, split: str) -> int:
        if self.classes is not None and self.classes.task.per_label:
            return max(1, self.void_pixels[split])  # per label: shares of all pixels (stored as "void")
        return max(1, sum(self.pixels[split]) + self.void_pixels[split])


def _share(count: int, total: int) -> str:
    return f"{100.0 * count / total:.2f}"


def check_data(
    root: str | Path,
    layout: str = "auto",
    categories: list[str] | None = None,
    mask_threshold: int | None = None,
    overrides: Overrides | None = None,
) -> CheckReport:
    """Read every pair of the dataset in `root` and report its summary and all its problems."""
    source = find_data(root, layout, categories, overrides)
    problems = list(source.problems)
    reads = [
        r
        for split, pairs in source.pairs.items()
        for pair in pairs
        if (r := _read(source, split, pair, problems))
    ]
    classes = _classes(source, reads, mask_threshold, problems)
    pixels, void = _tally(source, reads, classes, problems)
    for split, counts in pixels.items():
        for name, count in zip(classes.names, counts, strict=True):
            if count == 0 and source.pairs[split]:
                problems.append(
                    Problem(
                        source.root,
                        "class absent",
                        f"class '{name}' has no pixels in the {split} split; add examples or drop the class",
                    )
                )
    if (too_few := split_problem(source.pairs)) is not None:
        problems.append(too_few)
    return CheckReport(
        source.root,
        source.layout,
        {split: len(pairs) for split, pairs in source.pairs.items()},
        Counter(r.size for r in reads),
        Counter(r.channels for r in reads),
        classes,
        pixels,
        void,
        problems,
        source.decisions,
        _warnings(source, classes, pixels),
    )


def _warnings(source: DataSource, classes: Classes, pixels: dict[str, list[int]]) -> list[str]:
    """What training would warn about: no foreground in its masks, classes no file declared."""
    training = pixels.get("train", pixels.get("all", []))  # the split training learns from
    declared = source.class_names is not None or source.per_class_masks
    found = (
        no_foreground_warning(classes, training, source.root),
        undeclared_classes_warning(classes, declared, source.root),
    )
    return [warning for warning in found if warning is not None]


def _read(source: DataSource, split: str, pair: Pair, problems: list[Problem]) -> _Read | None:
    """Read one pair; an unreadable file or a size mismatch becomes a problem and the pair is skipped."""
    image_path, mask_path = pair
    try:
        image = read_image(image_path)
    except SegwiseError as error:
        problems.append(Problem(image_path, "unreadable", _without_path(error, image_path)))
        image = None
    try:
        mask = source.read_mask(pair)
    except SegwiseError as error:
        problems.append(Problem(mask_path, "unreadable", _without_path(error, mask_path)))
        return None
    if image is None:
        return None
    if image.shape[:2] != mask.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
        problems.append(
            Problem(
                mask_path,
                "size mismatch",
                f"mask is {mw}×{mh} but its image {image_path.name} is {iw}×{ih}; masks must match their images",
            )
        )
        return None
    stacked = _channel_stack(source, mask_path)
    colour = not stacked and mask.ndim == 3 and mask.shape[-1] == 3 and not np.all(mask == mask[..., :1])
    names = source.class_names
    if colour and names and names.colours:
        try:
            mask, colour = colours_to_values(mask, names.colours, mask_path), False
        except SegwiseError as error:
            problems.append(Problem(mask_path, "unexpected values", _without_path(error, mask_path)))
            return None
    elif mask.ndim == 3 and not colour and mask.shape[-1] == 3 and not stacked:
        mask = mask[..., 0]  # a gray mask saved as RGB
    if mask.ndim == 3 and not colour:  # one channel per class: positives per channel, threshold decided later
        counts = Counter({c: int(np.count_nonzero(mask[..., c])) for c in range(mask.shape[-1])})
        return _Read(split, pair, image.shape[:2], image.shape[-1], counts, mask.shape[-1])
    if colour:
        return _Read(split, pair, image.shape[:2], image.shape[-1], Counter(), colour_coded=True)
    outside = _outside_roi(source, image_path, mask.shape[:2], problems)
    inside = mask if outside is None else mask[~outside]
    values, counts = np.unique(inside, return_counts=True)
    counts = Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    void = 0 if outside is None else int(outside.sum())
    return _Read(split, pair, image.shape[:2], image.shape[-1], counts, outside_roi=void)


def _outside_roi(
    source: DataSource, image_path: Path, size: tuple[int, int], problems: list[Problem]
) -> np.ndarray | None:
    """Where the image's region of interest says void; an unreadable or misfit region is a problem."""
    try:
        return source.outside_roi(image_path, size)
    except SegwiseError as error:
        path = source.roi[image_path]
        problems.append(Problem(path, "unreadable region of interest", _without_path(error, path)))
        return None


def _channel_stack(source: DataSource, mask_path: Path) -> bool:
    """Masks stored as one channel per class: per-class mask folders, or a (multi-channel) TIFF."""
    return source.per_class_masks or mask_path.suffix.lower() in TIFF_SUFFIXES


def _without_path(error: SegwiseError, path: Path) -> str:
    return str(error).removeprefix(f"{path}: ")


def _classes(
    source: DataSource, reads: list[_Read], threshold: int | None, problems: list[Problem]
) -> Classes:
    """Decide the classes as load_data would, from per-file value summaries instead of whole masks."""
    if any(r.colour_coded for r in reads):
        raise no_colour_table(next(r.pair[1] for r in reads if r.colour_coded))
    if any(r.multichannel for r in reads) or source.per_class_masks:
        summaries = [np.zeros((1, 1, r.multichannel or 1), np.uint8) for r in reads]
        return infer_classes(
            summaries, [r.pair[1] for r in reads], source.class_names, True, threshold, source.root
        )
    total: Counter = Counter()
    for read in reads:
        total.update(read.counts)
    names = source.class_names
    allowed = set(total)
    if names is not None and threshold is None:
        # Values beyond the names are reported per file below, not allowed to change the classes.
        allowed = {v for v in total if v < len(names.names) or v == 255}
    elif threshold is None and soft_binary_values(total):
        allowed = {0, 255}
    summaries = [np.array([[v for v in r.counts if v in allowed] or [0]], np.uint16) for r in reads]
    paths = [r.pair[1] for r in reads]
    return infer_classes(summaries, paths, names, False, threshold, source.root, counts=Counter())


def _tally(
    source: DataSource, reads: list[_Read], classes: Classes, problems: list[Problem]
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Pixels per class and void pixels per split. Mask values that are no class are a problem of the
    mask, or with a class-name file one problem of the file, worded as training words it."""
    pixels = {split: [0] * classes.num_classes for split in source.pairs}
    void = {split: 0 for split in source.pairs}
    unexpected = {r.pair[1]: found for r in reads if (found := _count(r, classes, pixels, void))}
    names = source.class_names
    if unexpected and names is not None and classes.threshold is None:
        stray = sorted(set().union(*unexpected.values()))
        masks = sorted(path.name for path in unexpected)
        shown = ", ".join(masks[:3]) + (", …" if len(masks) > 3 else "")
        which = f"{len(masks)} mask(s) ({shown})"
        problems.append(Problem(names.path, "unexpected values", stray_values_message(names, stray, which)))
        return pixels, void
    for path, values in unexpected.items():
        problems.append(
            Problem(
                path,
                "unexpected values",
                f"mask values {sorted(values)[:8]} are not among the classes' values {classes.values}; "
                "fix the mask (or the class-name file)",
            )
        )
    return pixels, void


def _count(read: _Read, classes: Classes, pixels: dict[str, list[int]], void: dict[str, int]) -> list[int]:
    """Add one file's pixels to its split's class counts; returns its values that are no class."""
    if classes.task.per_label:  # counts are positives per channel; a pixel counts for each of its labels
        for channel, positives in read.counts.items():
            if channel < classes.num_classes:
                pixels[read.split][channel] += positives
        void[read.split] += read.size[0] * read.size[1]  # the pixel total, for shares
        return []
    index_of = {value: i for i, value in enumerate(classes.values)}
    void[read.split] += read.outside_roi
    unexpected = []
    for value, count in read.counts.items():
        stored = int(value >= classes.threshold) if classes.threshold is not None else value
        if stored in index_of:
            pixels[read.split][index_of[stored]] += count
        elif stored == classes.ignore_value:
            void[read.split] += count
        else:
            unexpected.append(value)
    return unexpected
