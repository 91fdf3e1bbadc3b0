"""`segwise predict --format coco`: one COCO instances file for all inputs, `OUT/predictions.coco.json`.

    images       one per input: `id` 1, 2, … in the sorted input order (whatever the number of
                 processes), `file_name`, `width`, `height`
    categories   the run's classes without the background class 0, or for a per-label task every
                 label; `id` 1, 2, … in class order
    annotations  one per connected object of the decided, cleaned mask (`postprocess.task_components`):
                 `segmentation` as compressed RLE (pycocotools), `area` (pixels), `bbox` [x, y, w, h],
                 `score` (the mean probability of its class over its pixels), `iscrowd` 0, `category_id`,
                 `image_id`; objects of different labels may overlap

`file_name` is the input's file name, or, where inputs share one, its output name
(`writers.output_names`) with its suffix: the inputs copied into DATA/images/ beside
DATA/annotations/predictions.coco.json pair back by name, so the file reads as a `coco` dataset
(`data.formats.find_data`) whose masks are the predicted ones. Segmentations are RLE only, never
polygons. TIFFs predicted by region (too large for memory, `large`) are not in the file.

Each process describes its own share of the inputs (`image_record`); the records of all processes
come together and one process writes the file (`write_coco`) once every input is predicted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


def file_names(paths: Sequence[Path], output_names: Sequence[str]) -> list[str]:
    """Each input's `file_name`: its own name, or where inputs share one, its output name + its suffix."""
    counts = Counter(path.name for path in paths)
    return [
        path.name if counts[path.name] == 1 else name + path.suffix
        for path, name in zip(paths, output_names, strict=True)
    ]


def image_record(file_name: str, mask: np.ndarray, probabilities: np.ndarray, classes: Classes) -> dict:
    """One input's image entry with its annotations, which get their ids in `write_coco`."""
    from pycocotools import mask as rle  # imported here: only this format needs it

    task = classes.task
    height, width = (int(size) for size in mask.shape[-2:])
    canvas = np.zeros((height, width), np.uint8, order="F")  # what pycocotools encodes; one object at a time
    annotations = []
    for found in postprocess.task_components(task, mask, probabilities, classes.names):
        box = (slice(found.y0, found.y1), slice(found.x0, found.x1))
        canvas[box] = found.pixels
        encoded = rle.encode(canvas)
        canvas[box] = 0
        annotations.append(
            {
                "category_id": found.class_index - _first_category(task) + 1,
                "segmentation": {"size": [height, width], "counts": encoded["counts"].decode("ascii")},
                "area": found.area,
                "bbox": [found.x0, found.y0, found.x1 - found.x0, found.y1 - found.y0],
                "score": found.score,
                "iscrowd": 0,
            }
        )
    return {"file_name": file_name, "width": width, "height": height, "annotations": annotations}


def write_coco(target: Path, records: Sequence[tuple[int, dict]], classes: Classes) -> Path:
    """Write the file from (input index, `image_record`) pairs, in any order, atomically."""
    images, annotations = [], []
    for index, record in sorted(records, key=lambda pair: pair[0]):
        image_id = index + 1
        images.append({"id": image_id, **{key: record[key] for key in ("file_name", "width", "height")}})
        for annotation in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    names = classes.names[_first_category(classes.task) :]
    categories = [{"id": number, "name": name} for number, name in enumerate(names, start=1)]
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return target


def _first_category(task: Task) -> int:
    """The first class that is a category: 1 past the background, 0 for per-label tasks (no background)."""
    return 0 if task.per_label else 1
