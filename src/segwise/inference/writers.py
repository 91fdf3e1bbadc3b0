"""Turning inputs (files, folders, globs) into prediction files.

Every input gets files named after it in the output folder, one per requested format:

    png      <name>.png          index PNG in the class palette (the default)
    overlay  <name>_overlay.png  the image with every non-background class blended in its palette colour
    rgba     <name>_rgba.png     the image with the mask as alpha (opaque = foreground, any class but 0)
    npy      <name>_proba.npy    class probabilities C×H×W, float16
    tiff     <name>_proba.tif    class probabilities C×H×W, float32, deflate-compressed, class names in
                                 the metadata (float16 TIFFs open in too few viewers)
    json     <name>.json         per-object boxes: class, id, x0 y0 x1 y1 (x1, y1 exclusive), area, score
    uncertainty <name>_uncertainty.png  16-bit grey, 0..65535 for 0..1: the probabilities' normalized
                                 entropy, or with TTA the spread across its views (module `uncertainty`)
    crop     <name>_crop.png     the foreground's box cut out, other pixels white (`crop=True`)
    coco     predictions.coco.json  one COCO instances file for all inputs, objects as RLE or polygons
                                    (module `coco`)

A per-label task (`Task.per_label`: one independent mask per label) writes the same formats, adapted:

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
suffix (`x.png`, `x.jpg` → `x_png.png`, `x_jpg.png`). A TIFF too large for memory gets one tiled TIFF
mask, `<name>.tif`, named by the same rule among the large ones.

Nothing of the user's is lost (`plan_outputs`, `claim_folder`): every output is planned and checked
before the first is written. An output path that is an input always fails; without `overwrite`, so
does an output that exists, or a folder the outputs go into that already holds a dataset's images or
masks (the inputs' own folder, or one named like images/, masks/, labels/, gt/), since predicted masks
among ground-truth ones cannot be told apart afterwards. Files are written atomically, and temporaries
left by killed writers are swept at the start. An input that cannot be read is skipped, not fatal
(`read_inputs`).

`Predictor.predict_to_folder` puts these pieces together.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import match_channels
from ..data.discover import MASK_ONLY_SUFFIXES, names_dataset_folder
from ..errors import SegwiseError
from ..io import (
    IMAGE_SUFFIXES,
    atomic_path,
    colorize,
    is_image_file,
    read_image,
    sweep_temporaries,
    write_image,
    write_index_png,
)
from ..task import Classes
from . import coco, postprocess
from .uncertainty import entropy_map, to_png16

SUFFIXES = {
    "png": ".png",
    "overlay": "_overlay.png",
    "rgba": "_rgba.png",
    "npy": "_proba.npy",
    "tiff": "_proba.tif",
    "json": ".json",
    "uncertainty": "_uncertainty.png",
    "crop": "_crop.png",
}
# crop is asked for with crop=True; coco writes one file for all inputs, not one per input
FORMATS = (*(name for name in SUFFIXES if name != "crop"), "coco")
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


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """'png,overlay,json' or ['png', 'overlay', 'json'] → ['png', 'overlay', 'json'] (order kept,
    duplicates dropped); an unknown name fails, and so does coco without pycocotools."""
    text = formats if isinstance(formats, str) else ",".join(formats)
    parsed = list(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [f for f in parsed if f not in FORMATS]
    if unknown or not parsed:
        raise SegwiseError(
            f"output format(s) {unknown or repr(text)} not known; choose from {', '.join(FORMATS)} "
            "(comma-separated, e.g. png,overlay,json)"
        )
    if "coco" in parsed:
        coco.require_pycocotools()
    return parsed


@dataclass
class Plan:
    """Every file a prediction will write, planned on the whole input list (so the names do not depend on
    how it is later sharded) and checked before anything is written."""

    out_dir: Path
    inputs: list[Path]  # all of them
    regular: list[Path]  # the inputs predicted whole, in memory
    targets: list[dict[str, list[Path]]]  # their files: format → paths
    large: list[Path]  # TIFFs read by region (`Predictor.predict_large_tiff`)
    large_targets: list[Path]  # each one's tiled TIFF mask
    coco_file: Path | None  # one for all inputs, written by rank 0

    def files_of(self, rank: int, world_size: int) -> list[Path]:
        """The files process `rank` of `world_size` writes: its share of the inputs', rank 0 the COCO file."""
        files = [p for files in self.targets[rank::world_size] for group in files.values() for p in group]
        files += self.large_targets[rank::world_size]
        return files + ([self.coco_file] if self.coco_file is not None and rank == 0 else [])


def plan_outputs(
    paths: Sequence[Path],
    large: Sequence[Path],
    out_dir: Path,
    formats: Sequence[str],
    crop: bool,
    classes: Classes,
) -> Plan:
    """The files each input will write (`large` ones: one tiled TIFF mask `<name>.tif` each), checked:
    no output overwrites an input or another input's output, and label folders have usable names."""
    regular = [path for path in paths if path not in large]
    wanted = [kind for kind in formats if kind in SUFFIXES] + (["crop"] if crop else [])
    labels = label_folders(classes.names) if classes.task.per_label and "png" in formats else None
    targets = [{f: _targets(out_dir, name, f, labels) for f in wanted} for name in output_names(regular)]
    large_targets = [out_dir / f"{name}.tif" for name in output_names(large)]
    coco_file = out_dir / coco.COCO_FILE if "coco" in formats else None
    plan = Plan(out_dir, list(paths), regular, targets, list(large), large_targets, coco_file)
    _check_targets(plan)
    return plan


def label_folders(names: Sequence[str]) -> list[str]:
    """The label names of a per-label task, checked to be usable as folder names."""
    for name in names:
        if name in ("", ".", "..") or Path(name).name != name:
            raise SegwiseError(
                f"label '{name}' of {list(names)} cannot name an output folder; rename it in the "
                "run's config.yaml (classes: names) or write other formats than png"
            )
    return list(names)


def _targets(out_dir: Path, name: str, kind: str, labels: Sequence[str] | None) -> list[Path]:
    """The files one format writes for an input: one, or for a label stack's png one per label."""
    if kind == "png" and labels is not None:
        return [out_dir / label / f"{name}.png" for label in labels]
    return [out_dir / f"{name}{SUFFIXES[kind]}"]


def _check_targets(plan: Plan) -> None:
    """No target is an input or another input's target (the COCO file: one for all inputs)."""
    inputs = {path.resolve(): path for path in plan.inputs}
    owned: list[tuple[Path | str, Path]] = [
        (path, target)
        for path, files in zip(plan.regular, plan.targets, strict=True)
        for group in files.values()
        for target in group
    ]
    owned += zip(plan.large, plan.large_targets, strict=True)
    if plan.coco_file is not None:
        owned.append(("the COCO file of all inputs", plan.coco_file))
    owners: dict[Path, Path | str] = {}
    for owner, target in owned:
        resolved = target.resolve()
        if resolved in inputs:
            raise SegwiseError(
                f"{target}: output would overwrite the input {inputs[resolved]}; choose another output folder"
            )
        if resolved in owners:
            raise SegwiseError(
                f"{target}: outputs of {owners[resolved]} and {owner} would collide; "
                "rename one of them or predict them separately"
            )
        owners[resolved] = owner


def claim_folder(
    plan: Plan,
    overwrite: bool,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[list[Path]], list[Path]] = list,
) -> None:
    """Refuse, before anything is written, to mix predictions into a dataset's folder or to replace an
    existing file, unless `overwrite`; then clear what killed writers left in the folder.

    `gather` (`shards.gathered` under a process group) collects every process's files that exist, so
    that all processes refuse together and none starts writing before all have looked. Each looks only
    at its own share: shards run one after another into one folder do not refuse each other's files."""
    if not overwrite:
        _refuse_dataset_folder(plan)
    existing = [] if overwrite else [path for path in plan.files_of(rank, world_size) if path.exists()]
    if rank == 0 and not existing:  # one process, before any writes; live writers' temporaries are kept
        sweep_temporaries(plan.out_dir, recursive=True)
    existing = gather(existing)
    if existing:
        raise SegwiseError(
            f"{plan.out_dir}: would replace {len(existing)} existing file(s): "
            f"{_some(existing, plan.out_dir)}; pass --overwrite (overwrite=True) to replace them, "
            "or choose another output folder (-o)"
        )


def _refuse_dataset_folder(plan: Plan) -> None:
    """Refuse a folder the outputs go into that already holds images or masks of a dataset other than
    the planned outputs: the folder holds the inputs, or it or its parent is named like a dataset's
    images or masks (`discover.names_dataset_folder`: masks/, labels/, gt/, images/, masks/train/)."""
    planned = {path.resolve(): path for path in plan.files_of(0, 1)}
    input_folders = {path.resolve().parent for path in plan.inputs}
    shown = {path.parent: given.parent for path, given in planned.items()}  # as the user wrote them
    for folder in sorted(shown):
        if not folder.is_dir():
            continue
        held = sorted(
            path for path in folder.iterdir() if _is_image_or_mask(path) and path.resolve() not in planned
        )
        if held and folder in input_folders:
            why = "the inputs' own folder"
        elif held and (names_dataset_folder(folder.name) or names_dataset_folder(folder.parent.name)):
            why = "named like a dataset's images or masks"
        else:
            continue
        raise SegwiseError(
            f"{shown[folder]}: holds {len(held)} image(s) or mask(s) ({why}): {_some(held, folder)}; "
            "predictions written there would mix with them: choose another output folder (-o), or pass "
            "--overwrite (overwrite=True) to write there anyway"
        )


def _is_image_or_mask(path: Path) -> bool:
    return is_image_file(path) or (
        path.suffix.lower() in MASK_ONLY_SUFFIXES and not path.name.startswith(".")
    )


def _some(paths: Sequence[Path], folder: Path, shown: int = 3) -> str:
    """The first `shown` paths (relative to `folder`) and how many more."""
    names = [
        path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path) for path in paths
    ]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def read_inputs(
    paths: Sequence[Path], channels: int, skipped: list[tuple[Path, str]]
) -> dict[Path, np.ndarray]:
    """The images of `paths` that read as images the model can take (`channels`), by path; each other
    one goes to `skipped` as (path, why), so that one bad file does not stop the others."""
    images = {}
    for path in paths:
        try:
            image = read_image(path)
            match_channels(image, channels, path)  # here, so that a bad one fails alone, not its batch
        except SegwiseError as error:
            skipped.append((path, str(error)))
            continue
        images[path] = image
    return images


def write_outputs(
    classes: Classes,
    path: Path,
    image: np.ndarray,
    probabilities: np.ndarray,
    mask: np.ndarray,
    files: dict[str, list[Path]],
    spread: np.ndarray | None = None,
) -> list[Path]:
    """Write one input's files (`files` from `plan_outputs`) from its image, probabilities C×H×W and
    decided mask (H×W class indices, or a per-label task's boolean C×H×W stack); returns those written.
    `spread` (H×W in [0, 1], across TTA views) is the uncertainty map when given, else the entropy."""
    task = classes.task
    found = task.foreground(mask)
    rgb = _rgb(image)
    written = []
    for kind, targets in files.items():
        target = targets[0]
        if kind == "png" and task.per_label:  # one gray PNG per label: what training reads as label masks
            for plane, label_target in zip(mask, targets, strict=True):
                write_image(label_target, plane.astype(np.uint8) * 255)
        elif kind == "png":
            write_index_png(target, mask, classes.palette)
        elif kind == "overlay":
            write_image(target, overlay(classes, image, mask))
        elif kind == "rgba":
            alpha = np.where(found, 255, 0).astype(np.uint8)[..., None]
            write_image(target, np.concatenate([rgb, alpha], axis=-1))
        elif kind == "npy":
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                np.save(handle, probabilities.astype(np.float16))
        elif kind == "tiff":
            _write_probability_tiff(target, probabilities, classes.names)
        elif kind == "json":
            _write_objects(target, path, mask, probabilities, classes)
        elif kind == "uncertainty":
            uncertainty = entropy_map(probabilities, task.per_label) if spread is None else spread
            write_image(target, to_png16(uncertainty))
        elif kind == "crop":
            cut = postprocess.crop_object(image[..., :3] if image.shape[-1] == 4 else image, found)
            if cut is None:  # nothing found: no crop file rather than an empty image
                continue
            write_image(target, cut)
        else:
            raise AssertionError(kind)
        written += targets
    return written


def overlay(classes: Classes, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image as RGB with the found classes blended in in their colours (a label stack: the mean
    colour of each pixel's labels); background pixels keep the image's own."""
    rgb = _rgb(image)
    colours = colorize(mask, classes.palette)
    blended = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * colours.astype(np.float32)
    return np.where(classes.task.foreground(mask)[..., None], blended + 0.5, rgb).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    """H×W×3 of an H×W×C image: gray repeated, an alpha or extra channels left out."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def _write_probability_tiff(target: Path, probabilities: np.ndarray, names: Sequence[str]) -> None:
    import tifffile  # imported here: only this format needs it

    with atomic_path(target) as tmp:
        tifffile.imwrite(
            tmp,
            probabilities.astype(np.float32),
            compression="zlib",
            photometric="minisblack",  # one page per class, never read as an RGB image
            metadata={"axes": "CYX", "classes": list(names)},
        )


def _write_objects(
    target: Path, source: Path, mask: np.ndarray, probabilities: np.ndarray, classes: Classes
) -> None:
    """The JSON list of objects: the components of every class, or of every label's plane."""
    objects = postprocess.task_components(classes.task, mask, probabilities, classes.names)
    height, width = mask.shape[-2:]
    record = {
        "image": str(source),
        "width": width,
        "height": height,
        "objects": [c.to_dict() for c in objects],
    }
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
