"""Turning inputs (files, folders, globs) into prediction files.

Every input gets files named after it in the output folder, one per requested format:

    png      <name>.png          index PNG in the class palette (the default)
    overlay  <name>_overlay.png  the image with every non-background class blended in its palette colour
    rgba     <name>_rgba.png     the image with the mask as alpha (opaque = foreground, any class but 0)
    npy      <name>_proba.npy    class probabilities C×H×W, float16
    tiff     <name>_proba.tif    class probabilities C×H×W, float32, deflate-compressed, class names in
                                 the metadata (float16 TIFFs open in too few viewers)
    json     <name>.json         per-object boxes: class, id, x0 y0 x1 y1 (x1, y1 exclusive), area, score
    crop     <name>_crop.png     the foreground's box cut out, other pixels white (`crop=True`)

Multilabel runs (one independent mask per label) write the same formats, adapted:

    png      <label>/<name>.png  one 0/255 gray PNG per label, in a folder named after it: the
                                 `masks/<class>/` training layout, so `-o DATA/masks` gives trainable data
    overlay  <name>_overlay.png  each labelled pixel blended with the mean colour of its labels
    rgba     <name>_rgba.png     opaque where any label is present
    npy/tiff                     one probability plane per label (they need not sum to 1)
    json     <name>.json         the objects of every label (objects of different labels may overlap)
    crop     <name>_crop.png     the box of the pixels with any label

Everything is at the input's own size after its EXIF orientation is applied (as `io.read_image` and
every viewer show it). `<name>` is the input's stem; inputs sharing a stem keep their folders apart
(`a/x.png`, `b/x.png` → `a/x.png`, `b/x.png` under the output folder) and same-folder twins their
suffix (`x.png`, `x.jpg` → `x_png.png`, `x_jpg.png`). Files are written atomically, and an output path
that is an input fails before anything is written.

Under torchrun (WORLD_SIZE > 1) each process predicts a disjoint share of the sorted inputs.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import SegwiseError
from ..io import (
    IMAGE_SUFFIXES,
    atomic_path,
    colorize,
    is_image_file,
    read_image,
    write_image,
    write_index_png,
)
from . import postprocess
from .predictor import Predictor

SUFFIXES = {
    "png": ".png",
    "overlay": "_overlay.png",
    "rgba": "_rgba.png",
    "npy": "_proba.npy",
    "tiff": "_proba.tif",
    "json": ".json",
    "crop": "_crop.png",
}
FORMATS = tuple(name for name in SUFFIXES if name != "crop")  # crop is asked for with crop=True
OVERLAY_ALPHA = 0.5


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (their images, sorted) and glob patterns; anything that matches nothing fails."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if is_image_file(p))
            if not images:
                raise SegwiseError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if is_image_file(Path(p)))
            if not matches:
                raise SegwiseError(f"{item}: pattern matches no images")
            found += matches
        else:
            raise SegwiseError(f"{path}: input not found; pass image files, folders or glob patterns")
    unique: dict[Path, Path] = {}
    for path in found:  # the same file reached twice (a folder and a glob) is predicted once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_names(paths: Sequence[Path]) -> list[str]:
    """The name (without format suffix, '/' for subfolders) each input's outputs get; see the module doc."""
    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path.resolve())
    names = []
    for path in paths:
        group = by_stem[path.stem]
        if len(group) == 1:
            names.append(path.stem)
            continue
        folder = path.resolve().parent
        relative = folder.relative_to(os.path.commonpath([p.parent for p in group]))
        twins = sum(p.parent == folder for p in group) > 1
        stem = f"{path.stem}_{path.suffix.lstrip('.')}" if twins else path.stem
        names.append((relative / stem).as_posix())
    return names


def parse_formats(text: str) -> list[str]:
    """'png,overlay,json' → ['png', 'overlay', 'json'] (order kept, duplicates dropped)."""
    formats = list(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise SegwiseError(
            f"output format(s) {unknown or repr(text)} not known; choose from {', '.join(FORMATS)} "
            "(comma-separated, e.g. png,overlay,json)"
        )
    return formats


def predict_to_folder(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    progress: bool = False,
    formats: Sequence[str] = ("png",),
    steps: postprocess.Steps | None = None,
    crop: bool = False,
    batch_size: int = 1,
    shard: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Predict every input and write the requested formats; returns the files written.

    `shard=(rank, world_size)` predicts only the inputs `rank::world_size` of the sorted list (the
    names are planned on the whole list, so they do not depend on the number of processes).

    >>> predict_to_folder(segwise.load("runs/cells"), ["new/"], "out", formats=["png", "json"])  # doctest: +SKIP
    """
    formats = parse_formats(",".join(formats))
    if batch_size < 1:
        raise SegwiseError(f"batch size {batch_size} is not valid; expected an integer ≥ 1")
    # The run decides how its probabilities are read (softmax classes or sigmoid labels), not the caller.
    steps = replace(steps or postprocess.Steps(), multilabel=predictor.multilabel)
    out_dir = Path(out_dir)
    paths = sorted(collect_inputs(inputs))
    names = output_names(paths)
    wanted = [*formats, "crop"] if crop else formats
    labels = _label_folders(predictor) if predictor.multilabel and "png" in formats else None
    targets = [{f: _targets(out_dir, name, f, labels) for f in wanted} for name in names]
    _check_targets(paths, targets)
    rank, world_size = shard
    jobs = list(zip(paths, targets, strict=True))[rank::world_size]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tqdm(total=len(jobs), desc="predicting", unit="image", disable=not progress, leave=False) as bar:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            images = [read_image(path) for path, _ in batch]
            for (path, files), image, probabilities in zip(
                batch, images, predictor.predict_proba_batch(images), strict=True
            ):
                written += _write_outputs(predictor, path, image, probabilities, steps, files)
                bar.update()
    return written


def _label_folders(predictor: Predictor) -> list[str]:
    """The label names of a multilabel run, checked to be usable as folder names."""
    for name in predictor.class_names:
        if name in ("", ".", "..") or Path(name).name != name:
            raise SegwiseError(
                f"label '{name}' of {predictor.class_names} cannot name an output folder; rename it in the "
                "run's config.yaml (classes: names) or write other formats than png"
            )
    return list(predictor.class_names)


def _targets(out_dir: Path, name: str, kind: str, labels: Sequence[str] | None) -> list[Path]:
    """The files one format writes for an input: one, or for a multilabel png one per label."""
    if kind == "png" and labels is not None:
        return [out_dir / label / f"{name}.png" for label in labels]
    return [out_dir / f"{name}{SUFFIXES[kind]}"]


def _check_targets(paths: Sequence[Path], targets: Sequence[dict[str, list[Path]]]) -> None:
    inputs = {path.resolve(): path for path in paths}
    owners: dict[Path, Path] = {}
    for path, files in zip(paths, targets, strict=True):
        for target in (target for group in files.values() for target in group):
            resolved = target.resolve()
            if resolved in inputs:
                raise SegwiseError(
                    f"{target}: output would overwrite the input {inputs[resolved]}; choose another output folder"
                )
            if resolved in owners:
                raise SegwiseError(
                    f"{target}: outputs of {owners[resolved]} and {path} would collide; "
                    "rename one of them or predict them separately"
                )
            owners[resolved] = path


def _write_outputs(
    predictor: Predictor,
    path: Path,
    image: np.ndarray,
    probabilities: np.ndarray,
    steps: postprocess.Steps,
    files: dict[str, list[Path]],
) -> list[Path]:
    mask = steps(probabilities)  # H×W class indices, multilabel C×H×W booleans
    multilabel = predictor.multilabel
    found = mask.any(0) if multilabel else mask > 0  # pixels with anything but background
    palette = predictor.palette
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    written = []
    for kind, targets in files.items():
        target = targets[0]
        if kind == "png" and multilabel:
            for plane, label_target in zip(mask, targets, strict=True):
                write_image(label_target, plane.astype(np.uint8) * 255)
        elif kind == "png":
            write_index_png(target, mask, palette)
        elif kind == "overlay":
            colours = colorize(mask, palette)  # multilabel: the mean colour of each pixel's labels
            blended = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * colours.astype(np.float32)
            write_image(target, np.where(found[..., None], blended + 0.5, rgb).astype(np.uint8))
        elif kind == "rgba":
            alpha = np.where(found, 255, 0).astype(np.uint8)[..., None]
            write_image(target, np.concatenate([rgb, alpha], axis=-1))
        elif kind == "npy":
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                np.save(handle, probabilities.astype(np.float16))
        elif kind == "tiff":
            import tifffile  # imported here: only this format needs it

            with atomic_path(target) as tmp:
                tifffile.imwrite(
                    tmp,
                    probabilities.astype(np.float32),
                    compression="zlib",
                    photometric="minisblack",  # one page per class, never read as an RGB image
                    metadata={"axes": "CYX", "classes": list(predictor.class_names)},
                )
        elif kind == "json":
            find = postprocess.label_components if multilabel else postprocess.components
            objects = find(mask, probabilities, predictor.class_names)
            height, width = found.shape
            record = {
                "image": str(path),
                "width": width,
                "height": height,
                "objects": [c.to_dict() for c in objects],
            }
            with atomic_path(target) as tmp:
                tmp.write_text(json.dumps(record, indent=1))
        elif kind == "crop":
            cut = postprocess.crop_object(image[..., :3] if image.shape[-1] == 4 else image, found)
            if cut is None:  # nothing found: no crop file rather than an empty image
                continue
            write_image(target, cut)
        else:
            raise AssertionError(kind)
        written += targets
    return written


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size): under torchrun with WORLD_SIZE > 1 a gloo process group, else (0, 1).

    Gloo works for every device: the processes exchange only a barrier and a count, never tensors
    of images, so NCCL would buy nothing.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def total_over_processes(count: int) -> int:
    """The sum of `count` over the torchrun processes (`count` itself when not distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return count
    value = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(value)
    return int(value.item())


def process_device(device: str) -> str:
    """The device for this process: under torchrun each process takes its own GPU (LOCAL_RANK)."""
    import torch

    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and device in ("auto", "cuda")
        and torch.cuda.is_available()
    ):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device


def saved_threshold(run_dir: str | Path, predictor: Predictor) -> float | None:
    """A binary run's foreground threshold saved by `segwise eval --save-threshold`, else None.

    A multilabel run with two labels is not binary: its two planes are independent, not a class and
    its background.
    """
    from ..evaluate import THRESHOLD_JSON

    path = Path(run_dir) / THRESHOLD_JSON
    binary = len(predictor.class_names) == 2 and not predictor.multilabel
    if not binary or not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError):
        raise SegwiseError(
            f"{path}: not a threshold file; delete it or rerun `segwise eval --save-threshold`"
        ) from None
