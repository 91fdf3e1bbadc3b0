"""`segwise predict --format coco`: one COCO instances file for all inputs, `OUT/predictions.coco.json`.

    images       one per input: `id` 1, 2, … in the sorted input order (whatever the number of
                 processes), `file_name`, `width`, `height`
    categories   the run's classes without the background class 0, or for a per-label task every
                 label; `id` 1, 2, … in class order
    annotations  one per connected object of the decided, cleaned mask (`postprocess.task_components`):
                 `segmentation` as compressed RLE (pycocotools), or with `--coco-polygons` as polygons,
                 `area` (pixels) and `bbox` [x, y, w, h] of the mask, `score` (the mean probability of
                 its class over its pixels), `iscrowd` 0, `category_id`, `image_id`; objects of
                 different labels may overlap

RLE is exact. Polygons (`polygons.object_polygons`, which needs OpenCV) are lists of flat
[x1, y1, x2, y2, ...] in pixel-corner coordinates, each hole joined to its outer ring by a zero-width
bridge (COCO readers unite an annotation's polygons, so a hole cannot stand alone), simplified by up to
`--polygon-tolerance` pixels (`config.POLYGON_TOLERANCE`, 1, by default) but never below an IoU of 0.98
with the object's mask when drawn back: less simplified where it would, small objects exactly.

`file_name` is the input's file name, or, where inputs share one, its output name
(`writers.output_names`) with its suffix: the inputs copied into DATA/images/ beside
DATA/annotations/predictions.coco.json pair back by name, so the file reads as a `coco` dataset
(`data.formats.find_data`) whose masks are the predicted ones. TIFFs predicted by region (too large
for memory, `large`) are not in the file.

Each process describes its own share of the inputs (`image_record`); the records of all processes
come together and one process writes the file (`write_coco`) once every input is predicted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..config import POLYGON_TOLERANCE
from ..errors import SegwiseError
from ..io import atomic_path
from ..task import Classes, Task
from . import postprocess

COCO_FILE = "predictions.coco.json"


def require_pycocotools() -> None:
    """Fail in one line when pycocotools (the optional extra segwise[coco]) is missing."""
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        raise SegwiseError(
            "output format coco needs pycocotools, which is not installed; pip install 'segwise[coco]'"
        ) from None


def checked_polygon_tolerance(
    formats: Sequence[str], polygons: bool, tolerance: float = POLYGON_TOLERANCE
) -> float | None:
    """The tolerance `image_record` draws polygons at, None for RLE; checked before any model loads."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise SegwiseError(
            f"polygon tolerance {tolerance} is not valid; expected pixels ≥ 0 (default {POLYGON_TOLERANCE:g})"
        )
    if not polygons:
        return None
    if "coco" not in formats:
        raise SegwiseError("polygons are written by the coco format only; add coco to the formats")
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise SegwiseError(
            "coco polygons need OpenCV (opencv-python-headless), which is not installed; "
            "pip install 'segwise[coco]'"
        ) from None
    return float(tolerance)


def file_names(paths: Sequence[Path], output_names: Sequence[str]) -> list[str]:
    """Each input's `file_name`: its own name, or where inputs share one, its output name + its suffix."""
    counts = Counter(path.name for path in paths)
    return [
        path.name if counts[path.name] == 1 else name + path.suffix
        for path, name in zip(paths, output_names, strict=True)
    ]


def image_record(
    file_name: str,
    mask: np.ndarray,
    probabilities: np.ndarray,
    classes: Classes,
    polygon_tolerance: float | None = None,
) -> dict:
    """One input's image entry with its annotations, which get their ids in `write_coco`; segmentations
    as RLE, or as polygons simplified by up to `polygon_tolerance` pixels when it is given."""
    task = classes.task
    height, width = (int(size) for size in mask.shape[-2:])
    segmentation = (
        _rle_encoder(height, width) if polygon_tolerance is None else _polygon_tracer(polygon_tolerance)
    )
    annotations = []
    for found in postprocess.task_components(task, mask, probabilities, classes.names):
        annotations.append(
            {
                "category_id": found.class_index - _first_category(task) + 1,
                "segmentation": segmentation(found),
                "area": found.area,
                "bbox": [found.x0, found.y0, found.x1 - found.x0, found.y1 - found.y0],
                "score": found.score,
                "iscrowd": 0,
            }
        )
    return {"file_name": file_name, "width": width, "height": height, "annotations": annotations}


def _rle_encoder(height: int, width: int) -> Callable[[postprocess.Component], dict]:
    """Component → its compressed RLE over the whole image, as COCO's JSON holds it."""
    from pycocotools import mask as rle  # imported here: only this format needs it

    canvas = np.zeros((height, width), np.uint8, order="F")  # what pycocotools encodes; one object at a time

    def encode(found: postprocess.Component) -> dict:
        box = (slice(found.y0, found.y1), slice(found.x0, found.x1))
        canvas[box] = found.pixels
        encoded = rle.encode(canvas)
        canvas[box] = 0
        return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}

    return encode


def _polygon_tracer(tolerance: float) -> Callable[[postprocess.Component], list[list[float]]]:
    """Component → its COCO polygons (`polygons.object_polygons`)."""
    from . import polygons  # imported here: OpenCV is needed for polygons only

    return lambda found: polygons.object_polygons(found.pixels, tolerance, (found.x0, found.y0))


def write_coco(target: Path, records: Sequence[tuple[int, dict]], classes: Classes) -> Path:
    """Write the file from (input index, `image_record`) pairs, in any order, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(coco_document(records, classes)))
    return target


def coco_document(records: Sequence[tuple[int, dict]], classes: Classes) -> dict:
    """The COCO dictionary (images, annotations, categories) of (input index, `image_record`) pairs."""
    images, annotations = [], []
    for index, record in sorted(records, key=lambda pair: pair[0]):
        image_id = index + 1
        images.append({"id": image_id, **{key: record[key] for key in ("file_name", "width", "height")}})
        for annotation in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    names = classes.names[_first_category(classes.task) :]
    categories = [{"id": number, "name": name} for number, name in enumerate(names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _first_category(task: Task) -> int:
    """The first class that is a category: 1 past the background, 0 for per-label tasks (no background)."""
    return 0 if task.per_label else 1
