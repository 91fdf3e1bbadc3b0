"""Sliding-window prediction: overlapping tiles, weighted, stitched into one probability map.

Tiles are placed as in MONAI's `sliding_window_inference`: a stride of int(tile × (1 - overlap)), the
last tile flush with the image's far edge, so every pixel is covered and no tile leaves the image.
Each tile's probabilities are weighted (Gaussian with sigma = tile / 8, as nnU-Net and MONAI do, so a
tile's border, where the model sees least context, counts least; or constant) and accumulated with the
weights; the sum divided by the weight sum is the stitched map.

Rows are finished top to bottom: once the next tile row starts below a row, no later tile touches it.
`sliding_rows` therefore keeps only one tile-row band of accumulators, (classes + 1) × tile height × width
floats, and hands finished rows to the caller, so memory does not grow with the image's height; with a
region reader (see `large.py`) the image itself never has to be in memory either.

>>> probs = predict_sliding(predict_tiles, image, tile=(512, 512), overlap=0.25)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ..errors import SegwiseError
from .chunks import HalvingOnOutOfMemory

Tensor = torch.Tensor
WEIGHTINGS = ("gaussian", "constant")


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets along one axis; the tile is `min(tile, length)` long and the last one ends at `length`."""
    tile = min(tile, length)
    if tile == length:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = next(i for i in range(math.ceil(length / stride) + 1) if i * stride + tile >= length) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def tile_weight(height: int, width: int, weighting: str = "gaussian", sigma_scale: float = 0.125) -> Tensor:
    """Weights H×W of one tile: a separable Gaussian (sigma = sigma_scale × side) or ones.

    The Gaussian is floored at max(its minimum, 1e-3), as in MONAI, so corners never get zero weight and
    a pixel covered by tile corners only is still defined.
    """
    if weighting == "constant":
        return torch.ones(height, width)
    if weighting != "gaussian":
        raise SegwiseError(f"weighting '{weighting}' is not valid; use one of {', '.join(WEIGHTINGS)}")
    axes = []
    for side in (height, width):
        offsets = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
        axes.append(torch.exp(-(offsets**2) / (2 * (sigma_scale * side) ** 2)))
    weight = axes[0][:, None] * axes[1][None, :]
    return weight.clamp_(min=max(weight.min().item(), 1e-3))


def parse_tile(text: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """'512' → (512, 512); '256x384' → (256, 384) (height × width); ints and pairs pass through."""
    if isinstance(text, int):
        parts = [text]
    elif isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        try:
            parts = [int(p) for p in str(text).lower().split("x")]
        except ValueError:
            parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise SegwiseError(f"--tile {text}: not a tile size; use H or HxW of at least 8, e.g. 512 or 256x384")
    return parts[0], parts[1]


def check_overlap(overlap: float) -> float:
    if not 0 <= overlap < 1:
        raise SegwiseError(f"--overlap {overlap}: must be at least 0 and below 1, e.g. 0.25")
    return overlap


def sliding_rows(
    predict_tiles: Callable[[Tensor], Tensor],
    read_region: Callable[[int, int, int, int], Tensor],
    size: tuple[int, int],
    tile: tuple[int, int],
    overlap: float = 0.25,
    weighting: str = "gaussian",
    batch_size: int = 4,
) -> Iterator[tuple[int, Tensor]]:
    """Yield (first row, probabilities K×rows×W) for finished rows, top to bottom, covering the image once.

    The yielded tensor is a view of the band and is overwritten when the generator resumes: use or
    copy it before asking for the next rows.

    `read_region(top, bottom, left, right)` returns that part of the image as C×h×w (0..255 float);
    `predict_tiles` maps tiles B×C×h×w to probabilities B×K×h×w. Tiles go through it `batch_size` at a
    time, several tile rows together when a row holds fewer tiles than a batch.
    """
    height, width = size
    check_overlap(overlap)
    predict_tiles = HalvingOnOutOfMemory(predict_tiles)  # a batch of tiles too big for the GPU: halves
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    rows, cols = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    # The band's top is the row of the previous batch's last tile; the batch being added takes the next
    # `batch_size` tiles in row-major order. Those batch_size + 1 tiles span at most `extra` tile rows
    # below the first, and the band holds exactly that many rows.
    extra = (len(cols) + batch_size - 1) // len(cols)
    capacity = tile_h + max(rows[min(j + extra, len(rows) - 1)] - rows[j] for j in range(len(rows)))
    weight: Tensor | None = None  # made on the model's output device
    band: Tensor | None = None  # weighted probabilities of rows [top, top + capacity); weight sum last
    top = 0
    filled = 0  # band rows [0, filled) hold sums; the rest are zeros
    pending: list[tuple[int, int, Tensor]] = []  # (row, column, tile) waiting for a full batch

    def flush() -> None:
        nonlocal weight, band, filled
        probs = predict_tiles(torch.stack([tile for _, _, tile in pending]))
        if band is None:
            weight = tile_weight(tile_h, tile_w, weighting).to(probs.device)
            band = probs.new_zeros(probs.shape[1] + 1, capacity, width)
        for (y, x, _), tile_probs in zip(pending, probs, strict=True):
            target = band[:, y - top : y - top + tile_h, x : x + tile_w]
            target[:-1] += tile_probs * weight
            target[-1] += weight
        filled = max(filled, pending[-1][0] - top + tile_h)
        pending.clear()

    def finish(stop: int) -> Iterator[tuple[int, Tensor]]:
        """Hand out rows [top, stop) (every tile touching them has been added) and move the band down."""
        nonlocal top, filled
        if band is not None and stop > top:
            done = stop - top
            band[:-1, :done] /= band[-1:, :done]
            yield top, band[:-1, :done]
            if filled > done:  # only rows holding sums move up; the clone: source and target overlap
                band[:, : filled - done] = band[:, done:filled].clone()
            band[:, max(filled - done, 0) : filled] = 0
            top, filled = stop, max(filled - done, 0)

    for y in rows:
        strip = read_region(y, y + tile_h, 0, width)
        for x in cols:
            pending.append((y, x, strip[:, :, x : x + tile_w]))
            if len(pending) == batch_size:
                flush()
                yield from finish(y)  # later tiles all start at row y or below
    if pending:
        flush()
    yield from finish(height)


def predict_sliding(
    predict_tiles: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: tuple[int, int],
    overlap: float = 0.25,
    weighting: str = "gaussian",
    batch_size: int = 4,
) -> Tensor:
    """Stitched probabilities K×H×W for one image C×H×W (0..255, any dtype) held in memory."""
    height, width = image.shape[-2:]
    rows = sliding_rows(
        predict_tiles,
        lambda top, bottom, left, right: image[:, top:bottom, left:right],
        (height, width),
        tile,
        overlap,
        weighting,
        batch_size,
    )
    stitched = None  # filled band by band: the result is the only image-sized float tensor
    for top, probs in rows:
        if stitched is None:
            stitched = probs.new_empty(probs.shape[0], height, width)
        stitched[:, top : top + probs.shape[1]] = probs
    return stitched
