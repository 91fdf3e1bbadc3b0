"""What `POST /predict` answers, by its `format` parameter, from one image's prediction.

    mask           palettised PNG of class indices (viewers show the run's colours; pixel values are the
                   indices), as `segwise predict` writes it
    labels         8-bit gray PNG of class indices, for programs and browsers that read pixel values
    overlay        RGB PNG: the image with the found classes blended in
    probabilities  .npy, float16 C×H×W (np.load(..., allow_pickle=False) reads it)
    objects        JSON: the connected components of every class with box, area and mean probability
    coco           JSON: the image's objects as a COCO document (RLE masks; needs the coco extra)

A per-label run's masks (`Task.per_label`: labels that may overlap) are one PNG whose pixel value has
bit i set where label i is present, so at most 8 labels; more need `probabilities`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import SegwiseError
from ..inference import coco, postprocess
from ..inference.writers import overlay
from ..task import Classes

FORMATS = ("mask", "labels", "overlay", "probabilities", "objects", "coco")
PNG, NPY, JSON = "image/png", "application/x-npy", "application/json"


@dataclass(frozen=True)
class Answer:
    body: bytes
    media_type: str


def answer(
    form: str, classes: Classes, image: np.ndarray, probabilities: np.ndarray, mask: np.ndarray
) -> Answer:
    """The response body of `form` (one of FORMATS) for an image, its probabilities and decided mask."""
    if form == "mask":
        return Answer(_png(_indices(classes, mask), palette=classes.palette), PNG)
    if form == "labels":
        return Answer(_png(_indices(classes, mask)), PNG)
    if form == "overlay":
        return Answer(_png(overlay(classes, image, mask)), PNG)
    if form == "probabilities":
        buffer = io.BytesIO()
        np.save(buffer, probabilities.astype(np.float16), allow_pickle=False)
        return Answer(buffer.getvalue(), NPY)
    if form == "objects":
        found = postprocess.task_components(classes.task, mask, probabilities, classes.names)
        height, width = mask.shape[-2:]
        record = {"width": width, "height": height, "objects": [c.to_dict() for c in found]}
        return Answer(json.dumps(record).encode(), JSON)
    if form == "coco":
        coco.require_pycocotools()
        record = coco.image_record("upload", mask, probabilities, classes)
        return Answer(json.dumps(coco.coco_document([(0, record)], classes)).encode(), JSON)
    raise AssertionError(form)


def _indices(classes: Classes, mask: np.ndarray) -> np.ndarray:
    """H×W uint8 pixel values: class indices, or a per-label stack's bits."""
    if not classes.task.per_label:
        return mask.astype(np.uint8)
    if len(mask) > 8:
        raise SegwiseError(
            f"this run has {len(mask)} labels; a mask PNG holds 8; ask for format=probabilities"
        )
    return sum(
        (plane.astype(np.uint8) << bit for bit, plane in enumerate(mask)), np.zeros(mask.shape[1:], np.uint8)
    )


def _png(pixels: np.ndarray, palette: list[list[int]] | None = None) -> bytes:
    image = Image.fromarray(pixels, mode="P" if palette else None)
    if palette:
        flat = [channel for colour in palette for channel in colour]
        image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: the answer is sent once, not archived
    return buffer.getvalue()
