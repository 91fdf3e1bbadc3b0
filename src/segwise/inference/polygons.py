"""One object's mask as COCO polygons, holes kept, simplified to a tolerance (`predict --coco-polygons`).

    outline     OpenCV traces the object's outer border and its holes (`cv2.findContours`, two-level
                hierarchy). The polygon runs through the midpoints of the pixel edges between the object
                and the background, in COCO's pixel-corner coordinates (pixel (i, j) covers x in [j, j+1],
                y in [i, i+1]): every object pixel's centre lies inside it and every other centre
                outside, so pycocotools draws it back to the exact mask; a staircase of pixels becomes a
                straight line, which simplifies far better than the pixel corners do.
    simplified  Douglas–Peucker (`cv2.approxPolyDP`) moves the outline by at most the tolerance. A ring
                that would keep fewer than 3 points keeps all of its points instead.
    holes       COCO readers unite the polygons of one annotation (pycocotools merges them), so a hole
                cannot be a polygon of its own: each hole joins its outer ring by a zero-width
                "keyhole" bridge from the ring's point nearest to it (along the ring, out along the
                bridge, once round the hole, back along the bridge, on along the ring). Holes run the
                other way round than the ring, so that even-odd fill (pycocotools) and non-zero fill
                (SVG, canvas) both leave them empty; a bridge, run both ways, adds nothing under either.

An object is one 8-connected component, hence one outer ring and one polygon; the result is a list
all the same, one polygon per outer ring. Every object drawn back from its polygons by pycocotools
keeps an IoU of at least `MIN_IOU` with its mask: where the tolerance would lose more, the object is
simplified at half of it, a quarter, an eighth, and at last not at all (the exact outline, 0). The
tolerance is thus an upper bound. At the default, 1 pixel, about half of the smooth objects of 20 to
100 pixels keep it and most others end at half of it; objects of a few pixels keep their exact
outline (a lone pixel: 4 points, a diamond around its centre).
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as rle
from scipy.spatial import cKDTree

MIN_IOU = 0.98  # every object drawn back from its polygons keeps at least this IoU with its mask
HALVINGS = 4  # tolerance, 1/2, 1/4, 1/8 of it, then the exact outline


def object_polygons(pixels: np.ndarray, tolerance: float, origin: tuple[int, int]) -> list[list[float]]:
    """COCO polygons, flat [x1, y1, x2, y2, ...], of one object: `pixels` its boolean box, whose top-left
    pixel is at `origin` (x, y) in the image."""
    outlines = _outlines(pixels)
    for step in _tolerances(tolerance):
        rings = [
            _keyholed(_simplified(outer, step), [_simplified(hole, step) for hole in holes])
            for outer, holes in outlines
        ]
        if step == 0 or _drawn_iou(rings, pixels) >= MIN_IOU:
            break
    return [(ring + origin).ravel().tolist() for ring in rings]


def _tolerances(tolerance: float) -> list[float]:
    """The tolerances to try in turn: the given one halved `HALVINGS` - 1 times, then 0 (exact)."""
    return [tolerance / 2**k for k in range(HALVINGS) if tolerance > 0] + [0.0]


def _outlines(pixels: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(outer ring, hole rings) of every outer border, as `_edge_midpoints` rings in box coordinates."""
    # OpenCV traces the centres of the outermost pixels, half a pixel inside the outline. At twice the
    # resolution a pixel's two halves lie on either side of its middle, which tells the pixel edge the
    # border runs along (`_edge_midpoints`). The padding keeps borders off the image edge.
    doubled = np.pad(pixels, 1).astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    links = hierarchy[0] if contours else []  # per contour: next, previous, first child, parent
    outlines = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1:
            continue  # a hole: its outer border collects it below
        holes, child = [], links[index][2]
        while child != -1:
            holes.append(_edge_midpoints(contours[child]))
            child = links[child][0]
        outlines.append((_edge_midpoints(contour), holes))
    return outlines


def _edge_midpoints(contour: np.ndarray) -> np.ndarray:
    """The ring through the midpoints of the pixel edges a traced border (at twice the resolution) runs
    along, N×2 (x, y) in the unpadded box's corner coordinates."""
    # A traced half-pixel s lies at the pixel corner ceil(s / 2) of its edge, outer borders and holes
    # alike; both halves of an edge give the same corner, once kept. Consecutive corners are 1 apart.
    corners = (contour[:, 0, :] + 1) // 2 - 1
    corners = corners[np.any(corners != np.roll(corners, 1, axis=0), axis=1)]
    return (corners + np.roll(corners, -1, axis=0)) / 2


def _simplified(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas–Peucker at `tolerance` pixels (0: only collinear points go); all points where fewer
    than 3 would be left."""
    # float32 holds the half-pixel coordinates exactly up to 2**22 pixels
    kept = cv2.approxPolyDP(ring.astype(np.float32)[:, None, :], tolerance, True)[:, 0, :]
    return kept.astype(np.float64) if len(kept) >= 3 else ring


def _keyholed(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring: `outer`, with every hole inserted at its nearest point by a zero-width bridge."""
    ring = outer if _signed_area(outer) > 0 else outer[::-1]
    nearest = cKDTree(ring)
    bridges = []
    for hole in holes:
        distances, at_ring = nearest.query(hole)
        start = int(np.argmin(distances))
        hole = np.roll(hole, -start, axis=0)  # from its point nearest the ring
        if _signed_area(hole) > 0:  # against the ring, still from that point
            hole = np.roll(hole[::-1], 1, axis=0)
        bridges.append((int(at_ring[start]), hole))
    pieces, done = [], 0
    for at, hole in sorted(bridges, key=lambda bridge: bridge[0]):
        pieces += [ring[done : at + 1], hole, hole[:1]]  # out to the hole, round it, back to ring[at]
        done = at
    return np.concatenate([*pieces, ring[done:]])


def _signed_area(ring: np.ndarray) -> float:
    """The shoelace area: positive one way round, negative the other."""
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def _drawn_iou(rings: list[np.ndarray], pixels: np.ndarray) -> float:
    """IoU of the rings as pycocotools draws them (the `coco` layout's reader) with the mask."""
    height, width = pixels.shape
    drawn = rle.decode(rle.merge(rle.frPyObjects([ring.ravel().tolist() for ring in rings], height, width)))
    drawn = drawn.astype(bool)
    return float((drawn & pixels).sum() / (drawn | pixels).sum())
