"""Decode a dataset once into uint8 arrays, discover its classes, split it.

Masks are mapped to class indices 0..K-1 with `IGNORE_INDEX` (255) for pixels that count for nothing
(void). How stored mask values become classes:

- only 0/255 (or 0/1) values: binary, two classes;
- otherwise 255 is the void label (Pascal VOC convention) and the other values are class indices,
  unless they are few and far apart (e.g. 0/128 gray coding): then each value is a class in sorted order;
- `classes.txt` beside images/ (one name per line, line i = value i) names the classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SegwiseError
from ..io import default_palette, read_image, read_mask
from . import cache
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


def read_class_names(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names or None


def discover_classes(
    values: set[int], names: list[str] | None = None, source: Path | None = None
) -> ClassInfo:
    """Decide the classes from the set of stored mask values (see the module docstring)."""
    if not values:
        raise SegwiseError(f"{source}: no masks to learn classes from; add image/mask pairs")
    if values <= {0, 255} or values <= {0, 1}:
        stored = [0, 255] if 255 in values else [0, 1]
        if names and len(names) != 2:
            raise SegwiseError(f"{source}/classes.txt: binary masks need 2 class names, found {len(names)}")
        return ClassInfo(names or ["background", "foreground"], stored)
    ignore = 255 if 255 in values else None
    kept = sorted(values - {255})
    if names:
        if kept[-1] >= len(names):
            raise SegwiseError(
                f"{source}/classes.txt: names {len(names)} classes but masks hold value {kept[-1]}; "
                "add a name per value or fix the masks"
            )
        return ClassInfo(names, list(range(len(names))), ignore)
    if kept[-1] >= 64 and kept[-1] >= 2 * len(kept):  # few, far-apart values: gray-coded classes
        return ClassInfo([f"value_{v}" for v in kept], kept, ignore)
    if kept[-1] >= IGNORE_INDEX:
        raise SegwiseError(
            f"{source}: masks hold {kept[-1] + 1} class values; at most 255 classes are supported"
        )
    return ClassInfo([f"class_{v}" for v in range(kept[-1] + 1)], list(range(kept[-1] + 1)), ignore)


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
    use_cache: bool = True,
) -> SegmentationData:
    """Find, decode, check and cache a dataset. Pass `classes` to map masks to an existing run's classes.

    Decoded arrays are kept in a cache folder (see `segwise.data.cache`) so later runs decode nothing;
    `use_cache=False` decodes into memory and writes nothing."""
    root = Path(root)
    found = find_pairs(root)
    if "val" in found and "train" in found:
        train_pairs, val_pairs = found["train"], found["val"]
    else:
        train_pairs, val_pairs = _split(found.get("train", found.get("all", [])), val_fraction, seed)

    pairs = train_pairs + val_pairs
    options = {"size": size, "classes": cache.jsonable(classes), "splits": [len(train_pairs), len(val_pairs)]}
    decoded = cache.cached(
        root,
        [path for pair in pairs for path in pair],
        options,
        lambda: _decode(root, train_pairs, val_pairs, size, classes),
        enabled=use_cache,
    )
    classes = ClassInfo(**decoded.info["classes"])
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
    )


def _decode(
    root: Path,
    train_pairs: list[Pair],
    val_pairs: list[Pair],
    size: tuple[int, int] | None,
    classes: ClassInfo | None,
) -> cache.Decoded:
    """Decode, check and resize every pair; the result is what the cache stores."""
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
    return cache.Decoded(
        {
            "train_images": train_images,
            "train_masks": train_masks,
            "val_images": val_images,
            "val_masks": val_masks,
        },
        {"classes": cache.jsonable(classes), "size": list(size), "in_channels": in_channels},
    )
