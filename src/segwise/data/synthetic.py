"""The built-in synthetic dataset: shapes on textured, noisy, unevenly lit backgrounds.

Each shape class has its own family of saturated hues; backgrounds are dull (grey with a tint) but
textured, blotchy and unevenly lit, and the whole image is blurred and noisy. A model must find shapes
of varied size and rotation, separate overlapping ones (later shapes occlude earlier ones) and follow
their outlines through blur and noise. The set is meant to be learnable from scratch on a CPU
(`segwise demo`), so colour is a strong cue: it is a demonstration, not a benchmark.
Everything is drawn with numpy from one seed, so the same seed writes byte-identical files.

    >>> from segwise.data.synthetic import write_synthetic_dataset
    >>> root = write_synthetic_dataset("demo/data", num_train=8, num_val=4)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..io import atomic_path, default_palette, make_folder

CLASS_NAMES = ["background", "disc", "rectangle", "triangle", "ring"]
BINARY_CLASS_NAMES = ["background", "shape"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random base colour, low-frequency texture and a smooth illumination gradient, float H×W×3."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(50, 200) + rng.normal(0, 12, size=3)  # dull: grey with a slight tint
    texture = np.zeros((size, size), np.float32)
    for _ in range(3):
        fy, fx = rng.uniform(1, 8, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        texture += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase) * rng.uniform(5, 20)
    # Coarse noise upsampled gives blotches that look like stains or clouds.
    coarse = rng.normal(0, 18, size=(size // 16, size // 16)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    cy, cx = rng.uniform(-0.3, 1.3, size=2)
    light = 1.25 - 0.6 * np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    image = (base + (texture + blotches)[..., None]) * light.clip(0.45, 1.3)[..., None]
    return image


def _shape_region(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """Boolean H×W region of one shape of class `kind` (1 disc, 2 rectangle, 3 triangle, 4 ring)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = rng.uniform(0.16, 0.3) * size
    cy, cx = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
    dy, dx = yy - cy, xx - cx
    if kind in (1, 4):
        distance2 = dy**2 + dx**2
        region = distance2 <= radius**2
        if kind == 4:
            region &= distance2 >= (radius * rng.uniform(0.45, 0.65)) ** 2
        return region
    angle = rng.uniform(0, np.pi)
    if kind == 2:
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        half_w, half_h = radius * rng.uniform(0.75, 1.0), radius * rng.uniform(0.45, 0.8)
        return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    # Triangle: three vertices around the centre, jittered; inside = same side of all three edges.
    corners = angle + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, size=3)
    vy, vx = cy + 1.2 * radius * np.sin(corners), cx + 1.2 * radius * np.cos(corners)
    signs = [
        (xx - vx[i]) * (vy[(i + 1) % 3] - vy[i]) - (yy - vy[i]) * (vx[(i + 1) % 3] - vx[i]) for i in range(3)
    ]
    return ((signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)) | (
        (signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0)
    )


def _class_colour(rng: np.random.Generator, kind: int) -> np.ndarray:
    """RGB from the class's hue family: centres a quarter turn apart, ±0.09 wide."""
    hue = (0.25 * (kind - 1) + rng.uniform(-0.09, 0.09)) % 1.0
    saturation, value = rng.uniform(0.6, 1.0), rng.uniform(110, 255)
    channel = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # hue → RGB
    return value * (1 - saturation + saturation * channel)


def synthetic_sample(seed: int, size: int = 128, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 H×W×3) and its mask (uint8 H×W: class indices, or 0/1 when binary)."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(rng.integers(2, 6)):
        kind = int(rng.integers(1, len(CLASS_NAMES)))
        region = _shape_region(rng, kind, size)
        colour = _class_colour(rng, kind)  # saturated, so it stands out from the dull background
        stripes = np.sin((xx * rng.uniform(-0.5, 0.5) + yy * rng.uniform(-0.5, 0.5)) + rng.uniform(0, 6))
        shaded = colour + (stripes * rng.uniform(0, 25))[..., None]
        image[region] = shaded[region]
        mask[region] = kind
    pil = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 0.8))))
    noisy = np.asarray(pil, np.float32) + rng.normal(0, rng.uniform(2, 10), size=(size, size, 3))
    image_u8 = noisy.clip(0, 255).astype(np.uint8)
    return image_u8, (mask > 0).astype(np.uint8) if binary else mask


def write_synthetic_dataset(
    root: str | Path,
    num_train: int = 320,
    num_val: int = 80,
    num_test: int = 8,
    size: int = 128,
    binary: bool = False,
    seed: int = 0,
) -> Path:
    """Write `root/{train,val,test}/{images,masks}` and `root/classes.txt`; returns `root`.

    Multiclass masks are palettised index PNGs (values 0..4); binary masks are 0/255 grayscale PNGs,
    the two encodings users bring most often.
    """
    root = Path(root)
    names = BINARY_CLASS_NAMES if binary else CLASS_NAMES
    palette = [value for colour in default_palette(len(names)) for value in colour]
    counts = {"train": num_train, "val": num_val, "test": num_test}
    offset = 0
    for split, count in counts.items():
        make_folder(root / split / "images")
        make_folder(root / split / "masks")
        for index in range(count):
            image, mask = synthetic_sample(seed * 1_000_003 + offset + index, size, binary)
            stem = f"{split}_{index:04d}"
            Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
            if binary:
                Image.fromarray(mask * 255).save(root / split / "masks" / f"{stem}.png")
            else:
                indexed = Image.fromarray(mask, mode="P")
                indexed.putpalette(palette + [0] * (768 - len(palette)))
                indexed.save(root / split / "masks" / f"{stem}.png")
        offset += count
    with atomic_path(root / "classes.txt") as tmp:
        tmp.write_text("\n".join(names) + "\n")
    return root
