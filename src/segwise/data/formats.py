"""Finding image/mask pairs on disk.

Supported layouts (pairs matched by file stem, e.g. `images/a.jpg` ↔ `masks/a.png`):

    DATA/images/*, DATA/masks/*                       one pool, split by seed later
    DATA/images/{train,val}/*, DATA/masks/{train,val}/*
    DATA/{train,val,test}/images/*, DATA/{train,val,test}/masks/*
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SegwiseError
from ..io import is_image_file

SPLITS = ("train", "val", "test")
Pair = tuple[Path, Path]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            continue
        if path.stem in files:
            raise SegwiseError(
                f"{path}: two files share the stem '{path.stem}' ({files[path.stem].name}); rename or remove one"
            )
        files[path.stem] = path
    return files


def _match(images_dir: Path, masks_dir: Path) -> list[Pair]:
    if not masks_dir.is_dir():
        raise SegwiseError(
            f"{masks_dir}: masks folder not found; put one mask per image there, same file stem"
        )
    images, masks = _files_by_stem(images_dir), _files_by_stem(masks_dir)
    for stem, image in images.items():
        if stem not in masks:
            raise SegwiseError(
                f"{image}: no mask with the same name in {masks_dir}; add {masks_dir / (stem + '.png')} or remove the image"
            )
    for stem, mask in masks.items():
        if stem not in images:
            raise SegwiseError(
                f"{mask}: mask without an image in {images_dir}; add the image or remove the mask"
            )
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def find_pairs(root: str | Path) -> dict[str, list[Pair]]:
    """Return {split: [(image, mask), ...]}; split is 'train', 'val', 'test' or 'all' (no split on disk)."""
    root = Path(root)
    if not root.exists():
        raise SegwiseError(f"{root}: dataset folder not found; check the path")
    if not root.is_dir():
        raise SegwiseError(f"{root}: not a folder; pass a folder holding images/ and masks/")
    if (root / "train" / "images").is_dir():
        found = {
            s: _match(root / s / "images", root / s / "masks")
            for s in SPLITS
            if (root / s / "images").is_dir()
        }
    elif (root / "images").is_dir():
        split_dirs = [s for s in SPLITS if (root / "images" / s).is_dir()]
        if split_dirs:
            found = {s: _match(root / "images" / s, root / "masks" / s) for s in split_dirs}
        else:
            found = {"all": _match(root / "images", root / "masks")}
    else:
        raise SegwiseError(
            f"{root}: no images/ folder; expected {root}/images + {root}/masks "
            f"(optionally with train/ and val/ subfolders) or {root}/train/images + {root}/train/masks"
        )
    trainable = found.get("train", found.get("all", []))
    if not trainable:
        raise SegwiseError(f"{root}: no training images found (.png, .jpg, .tif, .bmp); add image/mask pairs")
    return found
