"""Images too large for memory: read by region, predicted in tile rows, written as a tiled TIFF.

A 20000×20000 RGB slide is 1.2 GB of pixels and, as float probabilities of five classes, 8 GB more.
Here the probabilities never exist whole, and a TIFF's pixels neither: the TIFF is opened lazily (read
by file offset when uncompressed and contiguous, else through tifffile's zarr view, which decodes only
the TIFF tiles or strips a region touches); other formats cannot be read by region, so their pixels
are decoded whole (uint8, 3 bytes a pixel for RGB) and cut into regions in memory.
`sliding.sliding_rows` keeps one tile-row band of accumulators and hands out finished rows, and the
mask goes to disk as 256×256 TIFF tiles from a generator as soon as a full row of them is done. Peak
memory is set by the width of the image and the tile height, not by the image's area. Every image,
read by region or not, is first checked against the pixel limit (`io.max_pixels`).

The mask is the task's default decision (`Task.decide`): an index TIFF in the class palette, or for a
per-label task an H×W×C TIFF, one 0/255 channel per label: the multi-channel TIFF masks that training
reads as label masks. `Predictor.predict_large_tiff` puts these pieces together:

>>> predictor.predict_large_tiff("slide.tif", "slide_mask.tif")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

from ..data.dataset import match_channels
from ..errors import SegwiseError
from ..io import TIFF_SUFFIXES, atomic_path, check_pixels, read_image
from ..task import Classes, Task

OUTPUT_TILE = 256  # TIFF tiles must be multiples of 16; 256 is what viewers such as QuPath expect


def open_regions(
    path: str | Path, channels: int
) -> tuple[tuple[int, int], Callable[[int, int, int, int], torch.Tensor]]:
    """(height, width) of an image and a reader of its regions as uint8 tensors `channels`×h×w: a TIFF
    read by region (`_tiff_regions`), any other image decoded whole first."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _tiff_regions(path, channels)
    pixels = torch.from_numpy(match_channels(read_image(path), channels, path)).permute(2, 0, 1)

    def read(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        return pixels[:, top:bottom, left:right]

    return (pixels.shape[1], pixels.shape[2]), read


def _tiff_regions(
    path: Path, channels: int
) -> tuple[tuple[int, int], Callable[[int, int, int, int], torch.Tensor]]:
    """A TIFF's size and region reader. Only the bytes of the region's rows are read: by file offset for
    uncompressed contiguous data (not a memory map: mapped pages count in the process's RSS once
    touched), else through zarr chunks, one per TIFF tile or strip.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0].levels[0]
            axes, dtype, shape, offset = series.axes, series.dtype, series.shape, series.dataoffset
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
        raise SegwiseError(f"{path}: cannot read TIFF ({error}); replace or remove the file") from None
    if axes not in ("YX", "YXS") or dtype != np.uint8:
        raise SegwiseError(
            f"{path}: large-image prediction reads 8-bit gray or RGB(A) TIFFs with interleaved samples, "
            f"this one has axes {axes} and {dtype}; convert it (e.g. with vips or tifffile) first"
        )
    height, width = shape[:2]
    check_pixels(path, height, width)
    samples = shape[2] if len(shape) == 3 else 1
    if offset is not None and path.stat().st_size < offset + height * width * samples:
        raise SegwiseError(
            f"{path}: cannot read TIFF (the file is shorter than its header says); replace or remove the file"
        )
    if offset is None:
        pixels = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")

    def rows(top: int, bottom: int) -> np.ndarray:
        if offset is None:
            return np.asarray(pixels[top:bottom])
        with open(path, "rb") as handle:
            handle.seek(offset + top * width * samples)
            return np.fromfile(handle, np.uint8, (bottom - top) * width * samples)

    def read(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        region = rows(top, bottom).reshape(bottom - top, width, samples)[:, left:right]
        region = np.require(match_channels(region, channels, path), requirements=["C", "W"])  # copy if needed
        return torch.from_numpy(region).permute(2, 0, 1)

    return (height, width), read


def _mask_rows(probs: torch.Tensor, task: Task) -> np.ndarray:
    """K×h×w probabilities → mask rows as the TIFF stores them: h×w class indices, or for a label stack
    h×w×C, 255 where a label is present."""
    mask = task.decide(probs.cpu().numpy())
    if task.per_label:
        return mask.transpose(1, 2, 0).astype(np.uint8) * 255
    return mask.astype(np.uint8)


def _mask_tiles(
    rows: Iterator[tuple[int, torch.Tensor]], width: int, task: Task, channels: tuple[int, ...]
) -> Iterator[np.ndarray]:
    """TIFF tiles of the mask the task decides from finished probability rows (h×w, or h×w×`channels`),
    row-major, as the rows come."""
    # Finished mask rows not yet written: under a tile row + a band.
    pending = np.empty((0, width, *channels), np.uint8)
    for _, probs in rows:
        pending = np.concatenate([pending, _mask_rows(probs, task)])
        while pending.shape[0] >= OUTPUT_TILE:
            yield from _cut(pending[:OUTPUT_TILE], width)
            pending = pending[OUTPUT_TILE:]
    if pending.shape[0]:
        yield from _cut(pending, width)


def _cut(strip: np.ndarray, width: int) -> Iterator[np.ndarray]:
    padded = np.zeros((OUTPUT_TILE, OUTPUT_TILE, *strip.shape[2:]), np.uint8)
    for left in range(0, width, OUTPUT_TILE):
        piece = strip[:, left : left + OUTPUT_TILE]
        if piece.shape == padded.shape:
            yield piece
        else:  # edge tiles are stored full size; the part outside the image is ignored by readers
            padded[:] = 0
            padded[: piece.shape[0], : piece.shape[1]] = piece
            yield padded.copy()


def check_mask_classes(source: Path, classes: Classes) -> None:
    """An index TIFF holds 8-bit class indices; fail before predicting when the run has more classes."""
    if classes.num_classes > 256 and not classes.task.per_label:
        raise SegwiseError(f"{source}: TIFF masks hold at most 256 classes; predict to probabilities instead")


def write_mask_tiff(
    rows: Iterator[tuple[int, torch.Tensor]], size: tuple[int, int], classes: Classes, target: Path
) -> Path:
    """Write the mask of probability rows (`sliding.sliding_rows`) as a tiled TIFF, a tile row at a
    time: palettised class indices, or a per-label task's H×W×C channels (255 where a label is present)."""
    height, width = size
    if classes.task.per_label:
        channels = (classes.num_classes,)
        layout = {"photometric": "minisblack", "planarconfig": "contig"}
    else:
        channels = ()
        colormap = np.zeros((3, 256), np.uint16)
        for index, colour in enumerate(classes.palette[:256]):  # 8-bit colour → 16-bit TIFF colormap
            colormap[:, index] = np.asarray(colour, np.uint16) * 257
        layout = {"photometric": "palette", "colormap": colormap}
    with atomic_path(target) as tmp:
        tifffile.imwrite(
            tmp,
            _mask_tiles(rows, width, classes.task, channels),
            shape=(height, width, *channels),
            dtype=np.uint8,
            tile=(OUTPUT_TILE, OUTPUT_TILE),
            compression="zlib",
            bigtiff=math.prod((height, width, *channels)) > 2**31,
            **layout,
        )
    return target
