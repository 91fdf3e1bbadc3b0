"""Decode a dataset once into uint8 arrays, discover its classes, split it.

Masks are mapped to class indices 0..K-1 with `IGNORE_INDEX` (255) for pixels that count for nothing
(void). How stored mask values become classes:

- only 0/255 (or 0/1) values: binary, two classes;
- otherwise 255 is the void label (Pascal VOC convention) and the other values are class indices,
  unless they are few and far apart (e.g. 0/128 gray coding): then each value is a class in sorted order;
- a class-name file beside the split folders names the classes: `classes.txt` or `codes.txt` (one name
  per line, line i = value i) or `class_dict.csv` (header `name,r,g,b`, row i = value i, colours kept
  as the palette); a class named void/unlabelled/unlabeled (any case) is the ignore value, not a class.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SegwiseError
from ..io import default_palette, read_image, read_mask
from .formats import Pair, find_pairs

IGNORE_INDEX = 255
MAX_TRAIN_SIDE = 512


@dataclass
class ClassInfo:
    """What each class is called, which stored mask value encodes it, and how it is drawn."""

    names: list[str]
    values: list[int]
    ignore_value: int | None = None
    palette: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.palette:
            self.palette = default_palette(len(self.names))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def lookup_table(self) -> np.ndarray:
        """Array mapping every stored value (0..65535) to a class index, IGNORE_INDEX if none."""
        table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
        table[np.asarray(self.values, dtype=np.int64)] = np.arange(len(self.values), dtype=np.uint8)
        return table

    def to_indices(self, mask: np.ndarray, path: Path | None = None) -> np.ndarray:
        """Stored mask values → class indices; a value that is neither a class nor void is an error."""
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


VOID_NAMES = ("void", "unlabelled", "unlabeled")
CLASS_FILES = ("class_dict.csv", "classes.txt", "codes.txt")


@dataclass
class ClassNames:
    """Names (and colours, from class_dict.csv) read from a class-name file; row i names stored value i."""

    names: list[str]
    colours: list[list[int]] | None
    path: Path

    @property
    def void_row(self) -> int | None:
        rows = [i for i, name in enumerate(self.names) if name.strip().lower() in VOID_NAMES]
        return rows[0] if rows else None


def read_class_names(root: Path) -> ClassNames | None:
    """The first class-name file found in `root` (see the module docstring), or None."""
    for name in CLASS_FILES:
        path = Path(root) / name
        if path.is_file():
            return _parse_class_file(path)
    return None


def _parse_class_file(path: Path) -> ClassNames | None:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if path.suffix.lower() != ".csv":
        return ClassNames(lines, None, path) if lines else None
    rows = list(csv.reader(lines))
    if rows and rows[0] and rows[0][0].strip().lower() in ("name", "class", "class_name"):
        rows = rows[1:]
    names, colours = [], []
    for number, row in enumerate(rows, start=2):
        try:
            name, r, g, b = (cell.strip() for cell in row[:4])
            colour = [int(r), int(g), int(b)]
        except ValueError:
            raise SegwiseError(
                f"{path}: line {number} is {','.join(row)!r}; each line must be name,r,g,b with r,g,b 0..255"
            ) from None
        if not all(0 <= c <= 255 for c in colour):
            raise SegwiseError(f"{path}: line {number} has colour {colour}; r,g,b must be 0..255")
        names.append(name)
        colours.append(colour)
    return ClassNames(names, colours, path) if names else None


def discover_classes(
    values: set[int], names: ClassNames | list[str] | None = None, source: Path | None = None
) -> ClassInfo:
    """Decide the classes from the set of stored mask values (see the module docstring)."""
    if isinstance(names, list):
        names = ClassNames(names, None, Path(source or ".") / "classes.txt")
    if not values:
        raise SegwiseError(f"{source}: no masks to learn classes from; add image/mask pairs")
    if names is not None:
        return _named_classes(values, names)
    if values <= {0, 255} or values <= {0, 1}:
        return ClassInfo(["background", "foreground"], [0, 255] if 255 in values else [0, 1])
    ignore = 255 if 255 in values else None
    kept = sorted(values - {255})
    if kept[-1] >= 64 and kept[-1] >= 2 * len(kept):  # few, far-apart values: gray-coded classes
        return ClassInfo([f"value_{v}" for v in kept], kept, ignore)
    if kept[-1] >= IGNORE_INDEX:
        raise SegwiseError(
            f"{source}: masks hold {kept[-1] + 1} class values; at most 255 classes are supported"
        )
    return ClassInfo([f"class_{v}" for v in range(kept[-1] + 1)], list(range(kept[-1] + 1)), ignore)


def _named_classes(values: set[int], names: ClassNames) -> ClassInfo:
    """Classes from a name file: row i is stored value i; a void row (or 255) is the ignore value."""
    void = names.void_row
    rows = [i for i in range(len(names.names)) if i != void]
    palette = [names.colours[i] for i in rows] if names.colours else []
    if len(rows) == 2 and (values <= {0, 255} or values <= {0, 1}) and void is None:
        return ClassInfo([names.names[i] for i in rows], [0, 255] if 255 in values else [0, 1], None, palette)
    ignore = void if void is not None else (255 if 255 in values else None)
    stray = sorted(v for v in values if v >= len(names.names) and v != ignore)
    if stray:
        raise SegwiseError(
            f"{names.path}: names {len(names.names)} classes (values 0..{len(names.names) - 1}) but masks hold "
            f"value(s) {stray[:8]}; add a line per value or fix the masks"
        )
    return ClassInfo([names.names[i] for i in rows], rows, ignore, palette)


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair and check that the mask matches the image pixel for pixel."""
    image, mask = read_image(image_path), read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape
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
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def choose_size(shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """Training H×W: the median image size, long side capped at MAX_TRAIN_SIDE, a multiple of 32."""
    height, width = np.median(np.asarray(shapes), axis=0)
    scale = min(1.0, MAX_TRAIN_SIDE / max(height, width))
    if all(s == shapes[0] for s in shapes) and scale == 1.0:
        return shapes[0]  # a uniform dataset trains at its own size; the model pads as needed
    return (max(32, int(round(height * scale / 32)) * 32), max(32, int(round(width * scale / 32)) * 32))


@dataclass
class SegmentationData:
    """A decoded dataset: uint8 images N×H×W×C and class-index masks N×H×W per split."""

    root: Path
    classes: ClassInfo
    size: tuple[int, int]
    in_channels: int
    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    test_pairs: list[Pair]

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, on the 0..1 scale."""
        pixels = self.train_images.reshape(-1, self.in_channels).astype(np.float64) / 255.0
        return pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()


def _split(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    if len(pairs) < 2:
        raise SegwiseError(
            f"{pairs[0][0].parent}: need at least 2 image/mask pairs to hold one out for validation"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    count = min(len(pairs) - 1, max(1, int(round(len(pairs) * val_fraction))))
    return [pairs[i] for i in sorted(order[count:])], [pairs[i] for i in sorted(order[:count])]


def load_data(
    root: str | Path,
    size: tuple[int, int] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: ClassInfo | None = None,
) -> SegmentationData:
    """Find, decode, check and cache a dataset. Pass `classes` to map masks to an existing run's classes."""
    root = Path(root)
    found = find_pairs(root)
    if "val" in found and "train" in found:
        train_pairs, val_pairs = found["train"], found["val"]
    else:
        train_pairs, val_pairs = _split(found.get("train", found.get("all", [])), val_fraction, seed)

    raw = {"train": [read_pair(*p) for p in train_pairs], "val": [read_pair(*p) for p in val_pairs]}
    if classes is None:
        values: set[int] = set()
        for _, mask in raw["train"] + raw["val"]:
            values.update(int(v) for v in np.unique(mask))
        classes = discover_classes(values, read_class_names(root), root)

    channel_counts = [image.shape[-1] for image, _ in raw["train"]]
    in_channels = max(set(channel_counts), key=channel_counts.count)
    in_channels = 3 if in_channels == 4 and any(c != 4 for c in channel_counts) else in_channels
    size = tuple(size) if size else choose_size([image.shape[:2] for image, _ in raw["train"]])

    def stack(split: str, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
        images, masks = [], []
        for (image, mask), (image_path, mask_path) in zip(raw[split], pairs, strict=True):
            images.append(resize_image(match_channels(image, in_channels, image_path), size))
            masks.append(resize_mask(classes.to_indices(mask, mask_path), size))
        return np.stack(images), np.stack(masks)

    train_images, train_masks = stack("train", train_pairs)
    val_images, val_masks = stack("val", val_pairs)
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
    )
