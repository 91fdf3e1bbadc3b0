"""Decode a dataset once into uint8 arrays, discover its classes, split it.

Masks are mapped to class indices 0..K-1 with `IGNORE_INDEX` (255) for pixels that count for nothing
(void). How stored mask values become classes:

- only 0/255 (or 0/1) values: binary, two classes;
- lossy (JPEG) masks, or values that sit only near 0 and near 255 (a mask resaved with compression),
  are binary masks with noise: thresholded at 128 (`mask_threshold` sets another threshold);
- otherwise 255 is the void label (Pascal VOC convention) and the other values are class indices,
  unless they are few and far apart (e.g. 0/128 gray coding): then each value is a class in sorted order;
- a class-name file beside the split folders names the classes: `classes.txt` or `codes.txt` (one name
  per line, line i = value i) or `class_dict.csv` (header `name,r,g,b`, row i = value i, colours kept
  as the palette); a class named void/unlabelled/unlabeled (any case) is the ignore value, not a class;
- colour-coded RGB masks are mapped through class_dict.csv's colours (colour of row i = value i);
- multilabel (per-label): masks/<class>/ folders (one binary mask per class) or multi-channel TIFF
  masks (channel i = class i) give masks N×C×H×W of 0/1, one channel per class; such masks have no
  ignore value. Decoding is where the modes truly differ: the rest of segwise asks `classes.task`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import class_names_problem
from ..constants import IGNORE_INDEX
from ..errors import SegwiseError
from ..io import TIFF_SUFFIXES, image_size, read_image, read_mask
from ..task import Classes, no_colour_table
from . import cache
from .formats import ClassNames, DataSource, Pair, Problem, find_data, read_class_names
from .overrides import Overrides

__all__ = ["Classes", "ClassNames", "SegmentationData", "discover_classes", "load_data", "read_class_names"]

MAX_TRAIN_SIDE = 512
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def discover_classes(
    values: set[int], names: ClassNames | list[str] | None = None, source: Path | None = None
) -> Classes:
    """Decide the classes from the set of stored mask values (see the module docstring)."""
    if isinstance(names, list):
        names = ClassNames(names, None, Path(source or ".") / "classes.txt")
    if not values:
        raise SegwiseError(f"{source}: no masks to learn classes from; add image/mask pairs")
    if names is not None:
        return _named_classes(values, _checked(names))
    if values <= {0, 255} or values <= {0, 1}:
        return Classes(["background", "foreground"], [0, 255] if 255 in values else [0, 1])
    ignore = 255 if 255 in values else None
    kept = sorted(values - {255})
    if kept[-1] >= 64 and kept[-1] >= 2 * len(kept):  # few, far-apart values: gray-coded classes
        return Classes([f"value_{v}" for v in kept], kept, ignore_value=ignore)
    if kept[-1] >= IGNORE_INDEX:
        raise SegwiseError(
            f"{source}: masks hold {kept[-1] + 1} class values; at most 255 classes are supported"
        )
    return Classes(
        [f"class_{v}" for v in range(kept[-1] + 1)], list(range(kept[-1] + 1)), ignore_value=ignore
    )


def _checked(names: ClassNames) -> ClassNames:
    """The names of a class-name file, held to the rule a run's config.yaml is (config.class_names_problem):
    a name that could not be loaded back from the run folder is refused before training, not after."""
    problem = class_names_problem(names.names)
    if problem is not None:
        raise SegwiseError(f"{names.path}: {problem}; give each class its own name of plain text")
    return names


def _named_classes(values: set[int], names: ClassNames) -> Classes:
    """Classes from a name file: row i is stored value i; a void row (or 255) is the ignore value."""
    void = names.void_row
    rows = [i for i in range(len(names.names)) if i != void]
    palette = [names.colours[i] for i in rows] if names.colours else []
    if len(rows) == 2 and (values <= {0, 255} or values <= {0, 1}) and void is None:
        return Classes([names.names[i] for i in rows], [0, 255] if 255 in values else [0, 1], palette)
    ignore = void if void is not None else (255 if 255 in values else None)
    stray = sorted(v for v in values if v >= len(names.names) and v != ignore)
    if stray:
        raise SegwiseError(f"{names.path}: {stray_values_message(names, stray)}")
    return Classes([names.names[i] for i in rows], rows, palette, ignore_value=ignore)


def stray_values_message(names: ClassNames, stray: list[int], masks: str = "masks") -> str:
    """Masks hold values beyond the class-name file's lines: training refuses them, `segwise check`
    reports them, in these words (`masks` says which masks, when known)."""
    count = len(names.names)
    return (
        f"names {count} classes (values 0..{count - 1}) but {masks} hold value(s) {stray[:8]}; "
        "add a line per value or fix the masks"
    )


def undeclared_classes_warning(classes: Classes, declared: bool, root: Path) -> str | None:
    """Without a class-name file (`declared`: a file or per-class folders named them), the values of
    multiclass masks (the channels of multilabel ones) became classes by count, and nothing can tell
    a stray value from a class: say so, and how to declare them. Binary 0/1 and 0/255 masks need no file."""
    if declared or classes.mode == "binary":
        return None
    what = "channel" if classes.task.per_label else "value"
    values, count = classes.values, classes.num_classes
    recode = "" if values == list(range(count)) else f" (recode the masks to values 0..{count - 1} first)"
    return (
        f"{root}: no class-name file, so the mask {what}s {_value_list(values)} became {count} classes "
        f"named {classes.names[0]} … {classes.names[-1]}; if that is not what the masks mean, declare the "
        f"classes in {root / 'classes.txt'}, one name per line, line i naming mask {what} i{recode}"
    )


def no_foreground_warning(classes: Classes, pixels: list[int], root: Path) -> str | None:
    """The training masks (`pixels`: their pixels per class, per label their positives) mark nothing to
    learn: one class everywhere, e.g. all background, or no label at all. A model then answers that
    everywhere and is scored perfect on it (classes absent from the truth do not count): say so."""
    if classes.task.per_label:
        if any(pixels):
            return None
        what = "no training mask marks any label"
    else:
        present = [name for name, count in zip(classes.names, pixels, strict=True) if count]
        if len(present) > 1:
            return None
        what = f"every training pixel is '{present[0]}'" if present else "the training masks are all void"
    return (
        f"{root}: {what}, no foreground anywhere: a model learns to answer that everywhere, and metrics "
        "such as val mIoU 1.0 mean nothing; check that the masks were saved with their labels, or add "
        "masks that mark the foreground"
    )


def _value_list(values: list[int]) -> str:
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return str(values[:8])[:-1] + (", …]" if len(values) > 8 else "]")


def infer_classes(
    masks: list[np.ndarray],
    paths: list[Path],
    names: ClassNames | None = None,
    multilabel: bool = False,
    threshold: int | None = None,
    source: Path | None = None,
    counts: Counter | None = None,
) -> Classes:
    """Decide the classes and the mask encoding from the masks as read (see the module docstring).

    `counts` (stored value → pixels) is computed from the masks unless given; it lets a mostly-0/255
    dataset with a few other values (soft, anti-aliased edges) be refused instead of turned into classes.
    """
    if not masks:
        raise SegwiseError(f"{source}: no masks to learn classes from; add image/mask pairs")
    names = _checked(names) if names is not None else None
    tiff_channels = {m.shape[-1] for m, p in zip(masks, paths, strict=True) if m.ndim == 3 and _is_tiff(p)}
    colours = names.colours if names else None
    if multilabel or (tiff_channels and not colours):
        return _multilabel_classes(masks, paths, names, threshold)
    colour_coded = any(m.ndim == 3 and not np.all(m == m[..., :1]) for m in masks)
    if colour_coded and not colours:
        path = next(
            p for m, p in zip(masks, paths, strict=True) if m.ndim == 3 and not np.all(m == m[..., :1])
        )
        raise no_colour_table(path)
    decoder = Classes([], [], colours=colours if colour_coded else None)
    given = counts is not None
    counts = Counter() if counts is None else counts
    values: set[int] = set()
    for mask, path in zip(masks, paths, strict=True):
        unique, pixels = np.unique(decoder.stored_values(mask, path), return_counts=True)
        values.update(unique.tolist())
        if not given:
            counts.update(dict(zip(unique.tolist(), pixels.tolist(), strict=True)))
    lossy = any(p.suffix.lower() in LOSSY_SUFFIXES for p in paths)
    if threshold is None and (lossy or _noisy_binary(values)) and not (names and len(names.names) > 2):
        threshold = 128
    if threshold is None and names is None and soft_binary_values(counts):
        other = sorted(set(counts) - {0, 255})
        raise SegwiseError(
            f"{source}: masks are almost all 0/255 but also hold {len(other)} other value(s) {other[:6]}: "
            "binary masks with soft edges? set the mask threshold (--mask-threshold 128) or fix the masks"
        )
    if threshold is not None:
        values = {int(v >= threshold) for v in values}
    classes = discover_classes(values, names, source)
    classes.colours, classes.threshold = decoder.colours, threshold
    return classes


def soft_binary_values(counts: Counter) -> bool:
    """0 and 255 hold at least 99% of the pixels, and values other than 1 the rest (0/1/255 is binary
    with void, however rare its foreground)."""
    total = sum(counts.values())
    other = set(counts) - {0, 1, 255}
    return bool(other) and 0 in counts and 255 in counts and counts[0] + counts[255] >= 0.99 * total


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _noisy_binary(values: set[int]) -> bool:
    """Values only near 0 and near 255, some strictly between: a 0/255 mask saved with lossy compression."""
    near = {v for v in values if v <= 20 or v >= 235}
    return near == values and any(0 < v <= 20 for v in values) and any(235 <= v < 255 for v in values)


def _multilabel_classes(
    masks: list[np.ndarray], paths: list[Path], names: ClassNames | None, threshold: int | None
) -> Classes:
    counts = {m.shape[-1] if m.ndim == 3 else 1 for m in masks}
    if len(counts) != 1:
        path = next(
            p for m, p in zip(masks, paths, strict=True) if (m.shape[-1] if m.ndim == 3 else 1) != max(counts)
        )
        raise SegwiseError(
            f"{path}: multilabel masks have different channel counts {sorted(counts)}; give every image "
            "one channel per class"
        )
    (count,) = counts
    labels = names.names if names else [f"class_{i}" for i in range(count)]
    if len(labels) != count:
        raise SegwiseError(
            f"{names.path}: names {len(labels)} classes but the multilabel masks have {count} channels; "
            "name each channel"
        )
    palette = names.colours if names and names.colours else []
    return Classes(labels, list(range(count)), palette, threshold=threshold, multilabel=True)


def read_pair(
    image_path: Path, mask_path: Path, source: DataSource | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair (the mask through `source` for COCO or per-class folders) and check their sizes."""
    image = read_image(image_path)
    mask = source.read_mask((image_path, mask_path)) if source else read_mask(mask_path)
    if image.shape[:2] != mask.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
        raise SegwiseError(
            f"{mask_path}: mask is {mw}×{mh} but its image {image_path.name} is {iw}×{ih}; "
            "masks must match their images pixel for pixel"
        )
    return image, mask


def match_channels(image: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """Bring an image to `channels`: gray → RGB by repetition, RGBA → RGB by dropping alpha."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if have == 4 and channels == 3:
        return image[..., :3]
    if have in (3, 4) and channels == 1:
        return np.asarray(Image.fromarray(image[..., :3]).convert("L"))[..., None]
    raise SegwiseError(f"{path}: image has {have} channels where {channels} are expected; convert it")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == tuple(size):
        return image
    resized = np.array(
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).resize(
            (size[1], size[0]), Image.BILINEAR
        )
    )
    return resized[..., None] if resized.ndim == 2 else resized


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of H×W indices, or of a C×H×W label stack plane by plane."""
    if mask.shape[-2:] == tuple(size):
        return mask
    if mask.ndim == 3:
        return np.stack([resize_mask(channel, size) for channel in mask])
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def choose_size(shapes: list[tuple[int, int]], max_side: int = MAX_TRAIN_SIDE) -> tuple[int, int]:
    """Training H×W: the median aspect ratio at the median area, long side ≤ max_side, multiples of 32.

    Ratio and area rather than median height and width, so that a set mixing portrait and landscape
    images gets a shape that exists in it; a 2:1 set trains at e.g. 256×512, not squashed to a square.
    """
    array = np.asarray(shapes, dtype=np.float64)
    if all(tuple(s) == tuple(shapes[0]) for s in shapes) and max(shapes[0]) <= max_side:
        return tuple(int(v) for v in shapes[0])  # a uniform dataset trains at its own size; the model pads
    ratio = float(np.median(array[:, 1] / array[:, 0]))  # W / H
    area = float(np.median(array[:, 0] * array[:, 1]))
    height, width = math.sqrt(area / ratio), math.sqrt(area * ratio)
    scale = min(1.0, max_side / max(height, width))
    return (max(32, int(height * scale / 32 + 0.5) * 32), max(32, int(width * scale / 32 + 0.5) * 32))


@dataclass
class SegmentationData:
    """A decoded dataset: uint8 images N×H×W×C and class-index masks N×H×W (per-label: N×C×H×W of 0/1)
    per split."""

    root: Path
    classes: Classes
    size: tuple[int, int]
    in_channels: int
    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    test_pairs: list[Pair]
    source: DataSource | None = None
    chosen_val: bool = False  # the validation images were named (data.held_out), not the data's split

    @property
    def mode(self) -> str:
        return self.classes.mode

    @property
    def held_out(self) -> bool:
        """The validation images were held out of the data's pairs (`val_fraction`, or named by
        `data.held_out`), not the data's own val split."""
        return self.chosen_val or (self.source is not None and "val" not in self.source.pairs)

    def original_sizes(self, limit: int = 256) -> list[tuple[int, int]]:
        """H×W of (up to `limit` of) the training images as stored, read from their headers; the
        decoded size stands in for a file whose header cannot be read."""
        sizes = []
        for image_path, _ in self.train_pairs[:limit]:
            try:
                sizes.append(image_size(image_path))
            except SegwiseError:
                sizes.append(tuple(self.size))
        return sizes or [tuple(self.size)]

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, on the 0..1 scale."""
        pixels = self.train_images.reshape(-1, self.in_channels).astype(np.float64) / 255.0
        return pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()


def split_problem(found: dict[str, list[Pair]]) -> Problem | None:
    """Why the pairs found cannot give a training and a validation set, or None. The one rule both
    `load_data` (training refuses the data) and `segwise check` (reports it) apply: data without a val
    split holds validation images out of its training pairs, so it needs at least two."""
    if "train" in found and "val" in found:
        return None
    pairs = found.get("train", found.get("all", []))
    if len(pairs) >= 2 or not pairs:  # no pairs at all is find_data's error
        return None
    return Problem(
        pairs[0][0].parent,
        "too few pairs",
        "need at least 2 image/mask pairs to hold one out for validation; add pairs or a val/ split",
    )


def training_pool(found: dict[str, list[Pair]]) -> list[Pair]:
    """The pairs a run may train on: the data's train split, or all its pairs when it has no splits."""
    return found.get("train", found.get("all", []))


def held_out_name(image: Path, root: Path) -> str:
    """How a run names an image it held out (RUN/val.txt, data.held_out): its path relative to the
    data folder, with forward slashes, so the name holds wherever the folder has moved."""
    return image.resolve().relative_to(root.resolve()).as_posix()


def _split(
    found: dict[str, list[Pair]],
    val_fraction: float,
    seed: int,
    held_out: list[str] | None = None,
    root: Path | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """The training and validation pairs: the training pool less the `held_out` images (named as
    `held_out_name` names them under `root`: a cross-validation fold), the data's own splits, or a
    `val_fraction` of the training pairs held out (drawn with `seed`)."""
    if held_out is not None:
        return _held_out_split(training_pool(found), held_out, root)
    problem = split_problem(found)
    if problem is not None:
        raise SegwiseError(str(problem))
    if "train" in found and "val" in found:
        return found["train"], found["val"]
    pairs = training_pool(found)
    order = np.random.default_rng(seed).permutation(len(pairs))
    count = min(len(pairs) - 1, max(1, int(round(len(pairs) * val_fraction))))
    return [pairs[i] for i in sorted(order[count:])], [pairs[i] for i in sorted(order[:count])]


def _held_out_split(pool: list[Pair], held_out: list[str], root: Path) -> tuple[list[Pair], list[Pair]]:
    """The pool's pairs whose images `held_out` does not name, and those it names (in the pool's order)."""
    wanted = set(held_out)
    names = [held_out_name(image, root) for image, _ in pool]
    missing = sorted(wanted - set(names))
    if missing:
        raise SegwiseError(
            f"data.held_out: {len(missing)} of the {len(wanted)} images to hold out are not among the "
            f"training images of {root} (first: {missing[0]}); restore the data or draw the folds again"
        )
    train = [pair for pair, name in zip(pool, names, strict=True) if name not in wanted]
    if not train:
        raise SegwiseError(f"data.held_out: holds out every training image of {root}; keep some to train on")
    return train, [pair for pair, name in zip(pool, names, strict=True) if name in wanted]


def load_data(
    root: str | Path,
    size: tuple[int, int] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Classes | None = None,
    layout: str = "auto",
    categories: list[str] | None = None,
    mask_threshold: int | None = None,
    use_cache: bool = True,
    max_side: int = MAX_TRAIN_SIDE,
    overrides: Overrides | None = None,
    held_out: list[str] | None = None,
) -> SegmentationData:
    """Find, decode, check and cache a dataset. Pass `classes` to map masks to an existing run's classes.

    Without a `size`, the training images' typical size is chosen as they are decoded (`choose_size`,
    long side ≤ `max_side`). `layout` names the layout instead of detecting it (formats.LAYOUTS);
    `categories` picks COCO categories; `mask_threshold` makes every mask binary (stored value ≥
    threshold is foreground); `overrides` are the explicit folders, mask pattern, mask set and region
    of interest (`data.overrides`); `held_out` names the training images to validate on instead of the
    usual split (`data.held_out`, a cross-validation fold).
    Decoded arrays are kept in a cache folder (see `segwise.data.cache`) so later runs decode nothing;
    `use_cache=False` decodes into memory and writes nothing.

    >>> data = load_data("data/camvid", size=(352, 480))  # doctest: +SKIP
    >>> data.classes.names, data.train_images.shape        # doctest: +SKIP
    """
    root = Path(root)
    source = find_data(root, layout, categories, overrides)
    source.check()
    found = source.pairs
    train_pairs, val_pairs = _split(found, val_fraction, seed, held_out, root)

    options = {
        "size": size,
        "max_side": None if size else max_side,
        "classes": cache.jsonable(classes),
        "splits": [len(train_pairs), len(val_pairs)],
        "held_out": sorted(held_out) if held_out is not None else None,  # folds of one size differ
        "layout": source.layout,
        "overrides": cache.jsonable(overrides) if overrides else None,
        "categories": categories,
        "mask_threshold": mask_threshold,
    }
    decoded = cache.cached(
        root,
        source.files(),  # every file the arrays depend on: class folders, COCO files, class names
        options,
        lambda: _decode(root, source, train_pairs, val_pairs, size, max_side, classes, mask_threshold),
        enabled=use_cache,
    )
    classes = Classes(**decoded.info["classes"])
    size, in_channels = tuple(decoded.info["size"]), decoded.info["in_channels"]
    train_images, train_masks = decoded.arrays["train_images"], decoded.arrays["train_masks"]
    val_images, val_masks = decoded.arrays["val_images"], decoded.arrays["val_masks"]
    return SegmentationData(
        root=root,
        classes=classes,
        size=size,
        in_channels=in_channels,
        train_images=train_images,
        train_masks=train_masks,
        val_images=val_images,
        val_masks=val_masks,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        test_pairs=found.get("test", []),
        source=source,
        chosen_val=held_out is not None,
    )


def _decode(
    root: Path,
    source: DataSource,
    train_pairs: list[Pair],
    val_pairs: list[Pair],
    size: tuple[int, int] | None,
    max_side: int,
    classes: Classes | None,
    mask_threshold: int | None,
) -> cache.Decoded:
    """Decode, check and resize every pair to `size` (None: the training images' typical size, long
    side ≤ `max_side`); the result is what the cache stores."""
    raw = {
        "train": [read_pair(*p, source) for p in train_pairs],
        "val": [read_pair(*p, source) for p in val_pairs],
    }
    if classes is None:
        everything = raw["train"] + raw["val"]
        classes = infer_classes(
            [mask for _, mask in everything],
            [p[1] for p in train_pairs + val_pairs],
            source.class_names,
            source.per_class_masks,
            mask_threshold,
            root,
        )

    channel_counts = [image.shape[-1] for image, _ in raw["train"]]
    in_channels = max(set(channel_counts), key=channel_counts.count)
    in_channels = 3 if in_channels == 4 and any(c != 4 for c in channel_counts) else in_channels
    size = tuple(size) if size else choose_size([image.shape[:2] for image, _ in raw["train"]], max_side)

    def stack(split: str, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
        images, masks = [], []
        for (image, mask), (image_path, mask_path) in zip(raw[split], pairs, strict=True):
            images.append(resize_image(match_channels(image, in_channels, image_path), size))
            labels = source.void_outside_roi(classes.to_indices(mask, mask_path), image_path)
            masks.append(resize_mask(labels, size))
        return np.stack(images), np.stack(masks)

    train_images, train_masks = stack("train", train_pairs)
    val_images, val_masks = stack("val", val_pairs)
    return cache.Decoded(
        {
            "train_images": train_images,
            "train_masks": train_masks,
            "val_images": val_images,
            "val_masks": val_masks,
        },
        {"classes": cache.jsonable(classes), "size": list(size), "in_channels": in_channels},
    )
