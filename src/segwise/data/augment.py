"""Augmentation on the training device, a batch per call, each sample with its own random draw.

What it computes (the plain pipeline, `augment_batch(..., fast=False)`): every random number of the
batch is drawn first. Geometry (flips, transposes, rotation, scale, shear, translation, random resized
crop) is composed per sample into one affine map from output pixels to source pixels, and the samples
are resampled on those maps' grids by `F.grid_sample`: bilinear for images, nearest for masks, on the
same grid (`align_corners=False` in both), so image and mask stay aligned to the pixel. An output pixel
whose nearest source pixel lies outside the image becomes `IGNORE_INDEX` in the mask and `fill` in the
image. Then, per sample: colour (saturation, hue, contrast, brightness) and gamma, computed at a quarter
of a grey level, as OpenCV's tables do on uint8 images; blur; noise; and, when asked, the normalization.

The fast paths (`fast=True`, the default, what training runs) give the same batch with less work, each
in the section below the plain pipeline's and tested equal to it (to float rounding: in float32 a value
within rounding error of a quarter-level boundary may take the neighbouring level):
- samples whose map only flips or transposes are copied, not resampled;
- the sampling grid is built by broadcasting instead of by `F.affine_grid`;
- colour, gamma and the normalization are one table lookup per sample and channel (the table positions
  computed before the warp, looked up after it); blur and noise then run in normalized units;
- the noise is a window of a bank of Gaussian values drawn once per device, where the plain pipeline
  draws fresh values: the same distribution, not the same values (the one difference between the two).

Class-aware sampling (`ClassSampling`, nnU-Net's forced foreground, MONAI's RandCropByLabelClasses):
with probability p a sample's crop window is centred on a random pixel of a class drawn by its ratio
among the chosen classes present in that sample's mask (a sample with none of them keeps the ordinary
draw), moved back just enough to keep the window inside the image where it fits. Such a sample is
always cropped: with the preset's crop, or for a preset without one (p_crop 0, e.g. `light`) a window
of `crop_area` (0.25–1) of the image. Its draws come before all others and only when p > 0, so p = 0
gives the old batches exactly. It moves only the map, so the fast paths and DDP are unchanged; a user's
per-sample transform (albumentations) replaces this module, so it does not apply there.

    >>> images, masks = augment_batch(images, masks, "default", torch.Generator().manual_seed(0))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..errors import SegwiseError


@dataclass(frozen=True)
class Augment:
    """Probabilities (p_*) and ranges of one augmentation recipe; the presets below are instances."""

    p_hflip: float = 0.0
    p_vflip: float = 0.0
    p_transpose: float = 0.0  # square inputs only; with both flips this gives all 8 quarter turns/mirrors
    p_affine: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)  # zoom factor, drawn log-uniformly
    rotate: float = 0.0  # ± degrees
    shear: float = 0.0  # ± degrees
    translate: float = 0.0  # ± fraction of the side
    p_crop: float = 0.0  # random resized crop: a window of the image stretched to the full size
    crop_area: tuple[float, float] = (0.25, 1.0)  # fraction of the image area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # window aspect relative to the image's
    p_color: float = 0.0
    brightness: float = 0.0  # ± fraction of the full range added
    contrast: float = 0.0  # ± fraction, around the image's mean
    saturation: float = 0.0  # ± fraction (RGB only)
    hue: float = 0.0  # ± degrees (RGB only)
    gamma: tuple[float, float] = (1.0, 1.0)
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # Gaussian sigma in pixels
    p_noise: float = 0.0
    noise_std: tuple[float, float] = (0.0, 0.04)  # Gaussian noise, fraction of the full range


_DIHEDRAL = {"p_hflip": 0.5, "p_vflip": 0.5, "p_transpose": 0.5}
PRESETS: dict[str, Augment] = {
    "none": Augment(),
    # the 8 symmetries of the square (flips only for rectangles): right for cells, tiles, aerial views
    "flips": Augment(**_DIHEDRAL),
    "light": Augment(
        p_hflip=0.5,
        p_affine=0.5,
        scale=(0.9, 1.1),
        rotate=10,
        translate=0.05,
        p_color=0.5,
        brightness=0.1,
        contrast=0.1,
    ),
    "default": Augment(
        p_hflip=0.5,
        p_affine=0.7,
        scale=(0.8, 1.25),
        rotate=15,
        shear=5,
        translate=0.1,
        p_crop=0.3,
        crop_area=(0.35, 1.0),
        p_color=0.8,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        hue=10,
        gamma=(0.8, 1.25),
        p_blur=0.2,
        blur_sigma=(0.1, 1.2),
        p_noise=0.2,
        noise_std=(0.0, 0.03),
    ),
    "heavy": Augment(
        **_DIHEDRAL,
        p_affine=0.9,
        scale=(0.6, 1.6),
        rotate=45,
        shear=10,
        translate=0.15,
        p_crop=0.5,
        crop_area=(0.2, 1.0),
        p_color=0.9,
        brightness=0.3,
        contrast=0.3,
        saturation=0.4,
        hue=20,
        gamma=(0.6, 1.6),
        p_blur=0.3,
        blur_sigma=(0.1, 2.0),
        p_noise=0.3,
        noise_std=(0.0, 0.06),
    ),
}


def resolve(preset: str | Augment) -> Augment:
    if isinstance(preset, Augment):
        return preset
    if preset not in PRESETS:
        raise SegwiseError(f"augment: unknown preset '{preset}'; choose one of {' | '.join(PRESETS)}")
    return PRESETS[preset]


@dataclass(frozen=True)
class ClassSampling:
    """Class-aware sampling (see the module docstring): `p`, the share of samples whose crop is centred
    on a chosen class, and `ratios`, one per class index, how often each is chosen among those present
    (0: never)."""

    p: float
    ratios: tuple[float, ...]

    @classmethod
    def of(cls, p: float, chosen: list[str] | None, names: list[str]) -> ClassSampling | None:
        """From the train config's `sample_p` and `sample_classes` (None: every class), equal ratios;
        None when off."""
        unknown = sorted(set(chosen or []) - set(names))
        if unknown:
            raise SegwiseError(
                f"train.sample_classes: {unknown} not among the classes {names}; name classes of the data"
            )
        if p <= 0:
            return None
        return cls(p, tuple(float(chosen is None or name in chosen) for name in names))


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    preset: str | Augment,
    generator: torch.Generator,
    fill: float | torch.Tensor = 0.0,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    *,
    fast: bool = True,
    sampling: ClassSampling | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: images N×C×H×W float on the 0..255 scale, masks N×H×W (or N×K×H×W) integers.

    Every sample draws its own parameters from `generator` (a CPU generator: the draws are a few numbers
    per sample). `fill` (a number or one value per channel, e.g. the normalization mean × 255) is what
    the image shows where the transform looks outside it; the mask holds IGNORE_INDEX there. With `mean`
    and `std` (per channel, 0..255 scale) the images come back normalized, (x − mean) / std, what the
    trainer feeds the model. `fast` chooses the fast paths (see the module's docstring) or the plain
    pipeline they are tested against. `sampling` centres some crops on chosen classes (module docstring).
    """
    recipe = resolve(preset)
    count, channels, height, width = images.shape
    # the normalization as one affine map per channel, x·scale + offset (1 and 0 without it)
    normalize = mean is not None or std is not None
    scale = torch.ones(1, channels, 1, 1, device=images.device) if std is None else 1 / std
    offset = torch.zeros_like(scale) if mean is None else -mean * scale
    sampling = sampling if sampling is not None and sampling.p > 0 else None
    if recipe == PRESETS["none"] and sampling is None:
        return (torch.addcmul(offset, images, scale), masks) if normalize else (images, masks)
    targets = None if sampling is None else class_targets(masks, sampling, generator)
    draw = _draw(recipe, count, channels, height, width, generator, targets)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    augment = _augment_fast if fast else _augment_plain
    return augment(images, masks, draw, fill, scale, offset)


@dataclass(frozen=True)
class _Draw:
    """Every random number of one batch, drawn before anything is applied: a row per sample."""

    geometry: torch.Tensor  # N×3×3 maps from output to source pixels (see _geometry)
    coloured: torch.Tensor  # N: colour and gamma drawn
    mixing: torch.Tensor  # N×C×C hue and saturation (the identity where not coloured)
    contrast: torch.Tensor  # N factors around the image mean (1 where not coloured)
    brightness: torch.Tensor  # N shifts on the 0..255 scale (0 where not coloured)
    gamma: torch.Tensor  # N exponents (1 where not coloured)
    blur: torch.Tensor  # N Gaussian sigmas in pixels (0: not blurred)
    noise: torch.Tensor  # N standard deviations on the 0..255 scale (0: no noise)
    noise_start: torch.Tensor  # N×C in [0, 1): where each channel's noise window starts in the bank,
    # a fraction of it (fast path), or that channel's noise seed (plain pipeline)


def _draw(
    recipe: Augment, count: int, channels: int, height: int, width: int, generator, targets=None
) -> _Draw:
    """Like _geometry's, every parameter is drawn for every sample, applied or not."""
    geometry = _geometry(recipe, count, height, width, generator, targets)
    coloured = torch.rand(count, generator=generator) < recipe.p_color
    brightness = _uniform(-recipe.brightness, recipe.brightness, count, generator) * 255
    contrast = 1 + _uniform(-recipe.contrast, recipe.contrast, count, generator)
    saturation = 1 + _uniform(-recipe.saturation, recipe.saturation, count, generator)
    hue = torch.deg2rad(_uniform(-recipe.hue, recipe.hue, count, generator))
    gamma = torch.exp(_uniform(math.log(recipe.gamma[0]), math.log(recipe.gamma[1]), count, generator))
    mixing = torch.eye(channels, dtype=torch.float64).expand(count, -1, -1)
    if channels == 3 and (recipe.saturation or recipe.hue):
        mixing = _hue_saturation(torch.where(coloured, hue, 0.0), torch.where(coloured, saturation, 1.0))
    blurred = torch.rand(count, generator=generator) < recipe.p_blur
    sigma = _uniform(*recipe.blur_sigma, count, generator)
    noisy = torch.rand(count, generator=generator) < recipe.p_noise
    std = _uniform(*recipe.noise_std, count, generator) * 255
    noise_start = torch.rand(count, channels, generator=generator, dtype=torch.float64)
    return _Draw(
        geometry,
        coloured,
        mixing,
        torch.where(coloured, contrast, 1.0),
        torch.where(coloured, brightness, 0.0),
        torch.where(coloured, gamma, 1.0),
        torch.where(blurred, sigma, 0.0),
        torch.where(noisy, std, 0.0),
        noise_start,
    )


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def _geometry(
    recipe: Augment, count: int, height: int, width: int, generator, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample 3×3 maps from output to source pixel coordinates, both centred on the image centre.

    source = crop · affine · dihedral · output. Every parameter is drawn for every sample whether or not
    its transform is applied, so a sample's draw does not depend on the others'. `targets` (from
    `class_targets`) crops the samples it names and centres their maps on their pixel.
    """

    def chosen(p: float) -> torch.Tensor:
        return torch.rand(count, generator=generator) < p

    def matrix(a, b, c, d, tx, ty) -> torch.Tensor:
        rows = [torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)]
        bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(count, 3)
        return torch.stack([*rows, bottom], 1)

    zero, one = torch.zeros(count, dtype=torch.float64), torch.ones(count, dtype=torch.float64)
    flip_x = torch.where(chosen(recipe.p_hflip), -one, one)
    flip_y = torch.where(chosen(recipe.p_vflip), -one, one)
    swap = chosen(recipe.p_transpose) & (height == width)  # a transposed rectangle would not fit
    dihedral = matrix(
        torch.where(swap, zero, flip_x), torch.where(swap, flip_x, zero),
        torch.where(swap, flip_y, zero), torch.where(swap, zero, flip_y), zero, zero,
    )  # fmt: skip

    on = chosen(recipe.p_affine)
    angle = torch.deg2rad(_uniform(-recipe.rotate, recipe.rotate, count, generator))
    shear = torch.tan(torch.deg2rad(_uniform(-recipe.shear, recipe.shear, count, generator)))
    log_low, log_high = math.log(recipe.scale[0]), math.log(recipe.scale[1])
    zoom = torch.exp(_uniform(log_low, log_high, count, generator))
    shift_x = _uniform(-recipe.translate, recipe.translate, count, generator) * width
    shift_y = _uniform(-recipe.translate, recipe.translate, count, generator) * height
    angle, shear = torch.where(on, angle, zero), torch.where(on, shear, zero)
    zoom = torch.where(on, zoom, one)
    shift_x, shift_y = torch.where(on, shift_x, zero), torch.where(on, shift_y, zero)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # zoom > 1 looks at a smaller region
    affine = matrix(cos, cos * shear - sin, sin, sin * shear + cos, shift_x, shift_y)

    on = chosen(recipe.p_crop)
    if targets is not None:
        on |= ~targets.isnan().any(1)
    area = _uniform(*recipe.crop_area, count, generator)
    ratio = torch.exp(
        _uniform(math.log(recipe.crop_ratio[0]), math.log(recipe.crop_ratio[1]), count, generator)
    )
    crop_w = torch.where(on, (area * ratio).sqrt().clamp(max=1.0), one)  # fractions of the side
    crop_h = torch.where(on, (area / ratio).sqrt().clamp(max=1.0), one)
    centre_x = (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5) * (1 - crop_w) * width
    centre_y = (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5) * (1 - crop_h) * height
    crop = matrix(crop_w, zero, zero, crop_h, centre_x, centre_y)
    maps = crop @ affine @ dihedral
    return maps if targets is None else _centred_on(maps, targets, height, width)


def class_targets(masks: torch.Tensor, sampling: ClassSampling, generator: torch.Generator) -> torch.Tensor:
    """N×2 source coordinates (x, y; pixel centres, centred like `_geometry`'s) of the pixel each
    sample's crop is centred on, NaN for the samples left to the ordinary draw: those not chosen (1 − p)
    and those whose mask has none of the chosen classes. Masks N×H×W of class indices, or N×K×H×W with
    a plane per label."""
    count, height, width = len(masks), masks.shape[-2], masks.shape[-1]
    chosen = torch.rand(count, generator=generator) < sampling.p
    which = torch.rand(count, generator=generator, dtype=torch.float64)  # the class, by its ratio
    where = torch.rand(count, generator=generator, dtype=torch.float64)  # the pixel, uniformly
    ratios = torch.tensor(sampling.ratios, dtype=torch.float64)
    targets = torch.full((count, 2), math.nan, dtype=torch.float64)
    for sample in chosen.nonzero().flatten().tolist():
        mask = masks[sample]
        planes = mask.dim() == 3  # one plane per label
        present = (mask.flatten(1) == 1).any(1) if planes else _present_classes(mask, len(ratios))
        shares = ratios * present.cpu()
        if shares.sum() == 0:
            continue
        cumulative = shares.cumsum(0)
        label = int(
            torch.searchsorted(cumulative, which[sample] * cumulative[-1], right=True).clamp(
                max=len(ratios) - 1
            )
        )
        pixels = ((mask[label] == 1) if planes else (mask == label)).flatten().nonzero().flatten()
        y, x = divmod(int(pixels[min(int(where[sample] * len(pixels)), len(pixels) - 1)]), width)
        targets[sample] = torch.tensor([x + 0.5 - width / 2, y + 0.5 - height / 2], dtype=torch.float64)
    return targets


def _present_classes(mask: torch.Tensor, classes: int) -> torch.Tensor:
    """Which of the class indices 0..classes−1 an H×W mask holds (void and ignored values aside)."""
    counts = torch.bincount(mask.flatten().long().clamp(0, classes), minlength=classes + 1)
    return counts[:classes] > 0


def _centred_on(maps: torch.Tensor, targets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`maps` whose output centre lands on `targets` (NaN rows left as they are), moved back just enough
    that the window's bounding box stays inside the image where it fits: the target pixel stays in the
    window, and the crop does not waste pixels on the fill beyond the image's edge."""
    targeted = ~targets.isnan().any(1)
    size = torch.tensor([width, height], dtype=torch.float64)
    half_extent = 0.5 * (maps[:, :2, :2].abs() @ size)  # N×2: the window's half width and height, source px
    room = (size / 2 - half_extent).clamp(min=0)
    centre = torch.minimum(torch.maximum(targets, -room), room)
    maps = maps.clone()
    maps[targeted, :2, 2] = centre[targeted]
    return maps


def _hue_saturation(hue: torch.Tensor, saturation: torch.Tensor) -> torch.Tensor:
    """Per-sample 3×3 RGB maps: rotate the chroma plane of YIQ by `hue` radians, scale it by `saturation`."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
    )
    cos, sin = torch.cos(hue) * saturation, torch.sin(hue) * saturation
    zero, one = torch.zeros_like(hue), torch.ones_like(hue)
    chroma = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, cos, -sin], -1),
            torch.stack([zero, sin, cos], -1),
        ],
        1,
    )
    return torch.linalg.inv(to_yiq) @ chroma @ to_yiq


# The plain pipeline: the definition the fast paths are tested against.

_STEPS = 4  # colour and gamma are computed at this many levels per grey level (a quarter level)


def _augment_plain(
    images: torch.Tensor,
    masks: torch.Tensor,
    draw: _Draw,
    fill: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample resampled on its grid, then coloured, blurred and noised on the 0..255 scale, `fill`
    (C×1×1 or 1×1×1) put where its source is outside the image, and normalized, x·scale + offset."""
    warped, labels, inside = _warp(images, masks, draw.geometry, _plain_grid)
    out = torch.empty(images.shape, device=images.device, dtype=images.dtype)
    for sample in range(len(images)):
        image = warped[sample]
        if draw.coloured[sample]:
            image = _colour(image, images[sample], draw, sample)
        if draw.blur[sample] > 0:
            image = _gaussian_blur(image.unsqueeze(0), draw.blur[sample : sample + 1])[0]
        if draw.noise[sample] > 0:
            image = _fresh_noise(image, draw, sample)
        image = torch.where(inside[sample] > 0, image, fill)
        out[sample] = image * scale[0] + offset[0]
    return out, labels.to(masks.dtype)


def _plain_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.affine_grid(theta, [len(theta), 1, height, width], align_corners=False)


def _warp(
    images: torch.Tensor, masks: torch.Tensor, matrices: torch.Tensor, sampling_grid: Callable
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples moved by their maps on one grid: images bilinear, masks nearest (as float labels, with
    IGNORE_INDEX where the source is outside), and where the source is inside (1) or not (0).
    `sampling_grid(theta, height, width)` is `F.affine_grid`'s (`_plain_grid`) or `_affine_grid`."""
    count, _, height, width = images.shape
    # pixel-centred coordinates → grid_sample's normalized ones: u = x / (W/2) with align_corners=False
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    linear = matrices[:, :2, :2] * half.view(1, 2, 1).reciprocal() * half.view(1, 1, 2)
    theta = torch.cat([linear, matrices[:, :2, 2:] / half.view(1, 2, 1)], 2)
    grid = sampling_grid(theta.to(device=images.device, dtype=images.dtype), height, width)
    # "border" clamps source coordinates to the outer pixel centres, so within half a pixel outside the
    # image the bilinear value is the edge pixel's: the same pixel nearest-neighbour picks for the mask
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    planes = masks if masks.dim() == 4 else masks.unsqueeze(1)
    # labels shifted by one, so that the zero padding marks pixels whose nearest source is outside
    shifted = F.grid_sample(
        planes.to(grid.dtype).add_(1), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    inside = shifted[:, :1].clamp(max=1)
    # inside: label + 1 + I − (I + 1) = the label; outside: 0 + I − 0 = I (IGNORE_INDEX); exact in float
    labels = shifted.add_(IGNORE_INDEX).sub_(inside, alpha=IGNORE_INDEX + 1)
    return images, labels if masks.dim() == 4 else labels.squeeze(1), inside


def _colour(image: torch.Tensor, original: torch.Tensor, draw: _Draw, sample: int) -> torch.Tensor:
    """Saturation and hue (the matrix M), contrast c around the original image's mean and brightness b:
    y = c·M·x + (1 − c)·mean(M·x̄) + b, rounded (halves up) to a quarter grey level and clamped to
    0..255, then gamma, 255·(y/255)^g (within 0.3 of the exact power from one grey level up). The
    contrast pivots on the image before the warp, so a frame of fill does not move it."""
    mixing = draw.mixing[sample]  # C×C, float64
    contrast, brightness = float(draw.contrast[sample]), float(draw.brightness[sample])
    pivot = float((mixing @ original.double().mean((1, 2))).mean())
    mixed = (mixing.to(image) @ image.reshape(len(image), -1)).view(image.shape)
    y = contrast * mixed + ((1 - contrast) * pivot + brightness)
    levels = torch.floor(y * _STEPS + 0.5).clamp(0, 255 * _STEPS) / _STEPS
    return 255 * (levels / 255) ** float(draw.gamma[sample])


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample, edges replicated, kernels cut at 3 sigma of
    the largest.

    Each pass is a weighted sum of shifted views (one multiply-add per tap), not a grouped convolution,
    whose depthwise path is slow on a CPU (tested equal to the 2-D convolution).
    """
    count = images.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.exp(-(offsets**2) / (2 * sigma.clamp(min=1e-3).view(-1, 1) ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(images.device, images.dtype)
    taps = kernels.view(count, 1, 1, 1, -1).unbind(-1)  # one count×1×1×1 weight per offset
    for dim in (-1, -2):
        size = images.shape[dim]
        padding = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        padded = F.pad(images, padding, mode="replicate")
        images = padded.narrow(dim, 0, size) * taps[0]
        for offset, weight in enumerate(taps[1:], start=1):
            images.addcmul_(padded.narrow(dim, offset, size), weight)
    return images


def _fresh_noise(image: torch.Tensor, draw: _Draw, sample: int) -> torch.Tensor:
    """Gaussian noise of the drawn strength (grey levels), fresh values per channel from a generator
    seeded by that channel's draw, then clamped to 0..255."""
    noise = torch.empty_like(image)
    for channel in range(len(image)):
        seed = int(draw.noise_start[sample, channel] * 2**53)
        generator = torch.Generator(image.device).manual_seed(seed)
        torch.randn(image.shape[1:], generator=generator, out=noise[channel])
    return (image + noise * float(draw.noise[sample])).clamp(0, 255)


# Fast paths: the plain pipeline's batch with less work (tests/test_augment.py compares the two).


def _augment_fast(
    images: torch.Tensor,
    masks: torch.Tensor,
    draw: _Draw,
    fill: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain pipeline's result: flip-only samples copied, the others warped on a broadcast grid;
    colour, gamma and the normalization one table lookup (`_ColourTables`), or an exact normalization
    for samples without a colour draw; blur and noise in normalized units; the fill last."""
    count, channels, height, width = images.shape
    device, dtype = images.device, images.dtype
    # colour before geometry: the colour maps are affine and bilinear weights sum to one, so the warped
    # table positions are the positions of the warped image (and the contrast pivots on the image's
    # own mean, not on a mean with the fill in it)
    tables = _ColourTables(images, draw, scale, offset) if draw.coloured.any() else None
    normalization = _Normalization(scale, offset)  # samples without a colour draw: exact, no lookup
    colours = [tables if coloured else normalization for coloured in draw.coloured.tolist()]
    out, out_masks = torch.empty(images.shape, device=device, dtype=dtype), torch.empty_like(masks)
    linear, shift = draw.geometry[:, :2, :2], draw.geometry[:, :2, 2]
    moves_pixels = ((linear.abs() == 1) | (linear == 0)).flatten(1).all(1) & (shift == 0).all(1)
    fill = fill * scale[0] + offset[0]
    gains, lows = scale.flatten().tolist(), offset.flatten().tolist()  # once: on a GPU each is a sync

    def finish(moved: torch.Tensor, sample: int, inside: torch.Tensor | None = None) -> None:
        """A sample's colour, blur and noise, then the fill where its source was outside the image."""
        colours[sample].finish(moved, sample, out[sample])
        _blur_and_noise(out[sample], sample, draw, gains, lows)
        if inside is not None:
            torch.lerp(fill, out[sample], inside, out=out[sample])  # exact at inside = 0 and 1

    # Flips and transposes (or nothing) move whole pixels: copied exactly, no resampling
    for sample in moves_pixels.nonzero().flatten().tolist():
        moved, out_masks[sample] = _dihedral(
            colours[sample].source(images, sample), masks[sample], linear[sample]
        )
        finish(moved, sample)
    # The others are resampled together, by one grid_sample call
    resampled = (~moves_pixels).nonzero().flatten()
    if len(resampled):
        sources = torch.empty((len(resampled), channels, height, width), device=device, dtype=dtype)
        for row, sample in enumerate(resampled.tolist()):
            colours[sample].source(images, sample, out=sources[row])
        chosen_masks = masks.index_select(0, resampled.to(masks.device))
        warped, labels, inside = _warp(sources, chosen_masks, draw.geometry[resampled], _affine_grid)
        for row, sample in enumerate(resampled.tolist()):
            out_masks[sample] = labels[row]
            finish(warped[row], sample, inside[row])
    return out, out_masks


def _dihedral(
    image: torch.Tensor, mask: torch.Tensor, linear: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample moved by a map whose 2×2 part holds only 0 and ±1: source = linear · output (centred).

    Without a transpose, output (x, y) reads source (a·x, d·y): a flip of each axis whose entry is −1.
    With one, it reads (b·y, c·x): the transposed image, flipped along x where c = −1, along y where b = −1.
    """
    (a, b), (c, d) = linear.tolist()
    if b != 0:
        image, mask = image.transpose(-1, -2), mask.transpose(-1, -2)
        a, d = c, b
    dims = [dim for dim, entry in ((-1, a), (-2, d)) if entry < 0]
    return (image.flip(dims), mask.flip(dims)) if dims else (image, mask)


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, ..., align_corners=False)` by broadcasting, instead of its batched matrix
    product with three columns, slow on a CPU."""
    device = theta.device
    xs = ((torch.arange(width, device=device, dtype=theta.dtype) * 2 + 1) / width - 1).view(1, 1, -1)
    ys = ((torch.arange(height, device=device, dtype=theta.dtype) * 2 + 1) / height - 1).view(1, -1, 1)
    grid = torch.empty(len(theta), height, width, 2, device=device, dtype=theta.dtype)
    for axis in range(2):
        a, b, c = (theta[:, axis, column].view(-1, 1, 1) for column in range(3))
        torch.add(a * xs, b * ys + c, out=grid[..., axis])
    return grid


class _ColourTables:
    """The plain pipeline's `_colour` and the normalization of the samples with a colour draw, looked
    up in one table per sample and channel.

    Saturation, hue, contrast (around the image mean) and brightness are one affine colour map per
    sample, y = a·M·x + t: one small matrix product. What follows is per sample and channel: y rounded
    to a quarter level and clamped to 0..255, gamma 255·(y/255)^g, then the normalization; since y
    takes only quarter levels, that is a table, as OpenCV's on uint8 images. The colour map yields
    table positions directly (`source`, before the warp): it scales y to quarter steps and adds one half
    (so that converting to integers rounds) plus where the channel's table starts. The tables span what
    the maps can reach from the batch's range of values; `finish` (after the warp) is one conversion
    and one lookup per sample, instead of a rounding, a clamp, a power and a normalization pass.
    """

    def __init__(self, images: torch.Tensor, draw: _Draw, scale: torch.Tensor, offset: torch.Tensor) -> None:
        channels = images.shape[1]
        device, dtype = images.device, images.dtype
        smallest, largest = torch.aminmax(_in_memory_order(images))  # 0, 255 unless inputs stray
        low, high = min(0.0, float(smallest)), max(255.0, float(largest))
        linear = _STEPS * draw.contrast.view(-1, 1, 1) * draw.mixing  # N×C×C, to quarter steps
        channel_means = _channel_means(images).to("cpu", torch.float64).unsqueeze(-1)
        image_mean = (draw.mixing @ channel_means).mean((1, 2))  # the mean of M·x, per sample
        shift = _STEPS * ((1 - draw.contrast) * image_mean + draw.brightness) + 0.5  # N
        # each row's lowest and highest position over the box [low, high]^C of inputs; one spare entry
        # on each side absorbs float rounding (of the product here and of the warp's interpolation)
        positive, negative = linear.clamp(min=0).sum(2), linear.clamp(max=0).sum(2)
        first = (shift.view(-1, 1) + positive * low + negative * high).floor() - 1  # N×C
        last = (shift.view(-1, 1) + positive * high + negative * low).floor() + 1
        size = int((last - first).max()) + 1  # entries per table
        values = (first.unsqueeze(-1) + torch.arange(size, dtype=torch.float64)) / _STEPS  # N×C×size
        values = 255 * (values.clamp(0, 255) / 255) ** draw.gamma.view(-1, 1, 1)
        tables = values.to(device) * scale.view(1, -1, 1) + offset.view(1, -1, 1)
        self.tables = tables.to(dtype).flatten(1)  # a sample's C tables end to end
        self.linear = linear.to(device, dtype)
        # a position in a sample's tables: its channel's table start, minus that table's first value
        starts = torch.arange(channels, dtype=torch.float64) * size - first
        self.added = (shift.view(-1, 1) + starts).unsqueeze(-1).to(device, dtype)  # N×C×1
        # each channel's first and last entry: `finish` clamps positions into them, as the margin may not
        # absorb every rounding (TF32 matmuls on a GPU round far more than fp32, and an index outside
        # the tables is a device-side assert there, which kills the process)
        table_starts = torch.arange(channels, device=device, dtype=torch.int32).view(-1, 1, 1) * size
        self.lowest, self.highest = table_starts, table_starts + (size - 1)

    def source(self, images: torch.Tensor, sample: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The sample's table positions, C×H×W."""
        image = images[sample]
        out = _new_plane_stack(image) if out is None else out
        torch.addmm(
            self.added[sample],
            self.linear[sample],
            image.reshape(len(image), -1),
            out=out.view(len(image), -1),
        )
        return out

    def finish(self, positions: torch.Tensor, sample: int, out: torch.Tensor) -> None:
        """`out` (contiguous) = the values at `positions` (these positions, moved)."""
        index = torch.empty(out.shape, device=out.device, dtype=torch.int32)
        index.copy_(positions)  # non-negative (up to rounding, clamped next): conversion rounds down
        torch.clamp(index, self.lowest, self.highest, out=index)
        torch.index_select(self.tables[sample], 0, index.view(-1), out=out.view(-1))


class _Normalization:
    """Samples without a colour draw: `source` is the normalized sample, `finish` copies it into place."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        self.scale, self.offset = scale[0], offset[0]  # C×1×1

    def source(self, images: torch.Tensor, sample: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The normalized sample, C×H×W, contiguous (whatever the input's layout)."""
        out = _new_plane_stack(images[sample]) if out is None else out
        return torch.addcmul(self.offset, images[sample], self.scale, out=out)

    def finish(self, source: torch.Tensor, sample: int, out: torch.Tensor) -> None:
        out.copy_(source)


def _new_plane_stack(image: torch.Tensor) -> torch.Tensor:
    """An empty contiguous C×H×W tensor like `image` (torch.empty_like would copy a channels-last layout)."""
    return torch.empty(image.shape, device=image.device, dtype=image.dtype)


def _in_memory_order(images: torch.Tensor) -> torch.Tensor:
    """A channels-last batch as N×H×W×C (a view): whole-batch reductions read it in memory order."""
    return images.permute(0, 2, 3, 1) if images.is_contiguous(memory_format=torch.channels_last) else images


def _channel_means(images: torch.Tensor) -> torch.Tensor:
    """N×C means; of a channels-last batch summed over rows of 16 pixels' channels side by side: the
    mean over H and W would reduce runs only C values long."""
    count, channels, height, width = images.shape
    if not images.is_contiguous(memory_format=torch.channels_last):
        return images.mean((2, 3))
    side_by_side = math.gcd(height * width, 16)
    sums = images.permute(0, 2, 3, 1).reshape(count, -1, side_by_side * channels).sum(1)
    return sums.view(count, side_by_side, channels).sum(1) / (height * width)


def _blur_and_noise(
    image: torch.Tensor, sample: int, draw: _Draw, gains: list[float], lows: list[float]
) -> None:
    """Blur and noise of one sample's `image` (C×H×W, owned by augment_batch) in place, in output units
    (after the normalization x·gain + low per channel): blur is linear, and the noise is scaled and
    clamped per channel, which gives what they would give before the normalization."""
    if draw.blur[sample] > 0:
        # one channel at a time: a channel's passes stay in a CPU's cache, a whole sample's do not
        for plane in image.split(1):
            plane.copy_(_gaussian_blur(plane.unsqueeze(0), draw.blur[sample : sample + 1])[0])
    if draw.noise[sample] > 0:
        # noise of std σ grey levels, then clamped to the range: σ·scale and the ends of 0..255 per channel
        plane = image[0].numel()
        bank = _noise_bank(image.device, image.dtype, plane)
        for channel, (gain, low) in enumerate(zip(gains, lows, strict=True)):
            start = int(draw.noise_start[sample, channel] * (len(bank) - plane + 1))
            window = bank[start : start + plane].view(image.shape[1:])
            image[channel].add_(window, alpha=float(draw.noise[sample]) * gain).clamp_(low, 255 * gain + low)
    # both keep the range: the tables map into it, blur averages, noise clamps


_NOISE_BANK = 2**22  # Gaussian values drawn once per device; a noisy sample adds a window of them


@functools.cache
def _noise_bank_for(device: torch.device, dtype: torch.dtype, size: int) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)


def _noise_bank(device: torch.device, dtype: torch.dtype, plane: int) -> torch.Tensor:
    """Standard normal values, drawn once per device (and size): each noisy channel adds a window of
    `plane` of them that starts where the draw says, instead of drawing fresh values (on a CPU the
    slowest step of a batch). A window is as Gaussian, and with 2²² values there are millions of
    windows, so a window repeats no more often than the same image with the same draw."""
    return _noise_bank_for(device, dtype, max(_NOISE_BANK, 4 * plane))


class PerSampleBatches:
    """Training batches augmented sample by sample on the CPU by a user's transform, for example an
    albumentations `Compose`, in DataLoader workers that read the decoded (cached) arrays.

    The transform is called as `transform(image=HxWxC uint8, mask=HxW uint8)` (masks with a plane per
    label: HxWxC, as albumentations takes them) and must return a dict with `image`
    and `mask` of the same height and width (no Normalize, no ToTensorV2: segwise normalizes on the
    device). Everything else (shuffling, batch count, normalization) is the wrapped
    `Batches`'.
    """

    def __init__(self, batches: Any, transform: Callable, workers: int | None = None) -> None:
        self.batches, self.transform = batches, transform
        self.workers = min(4, max(1, (os.cpu_count() or 2) - 1)) if workers is None else workers
        self.samples = _TransformedSamples(batches.images.numpy(), batches.masks.numpy(), transform)
        self.samples[0]  # a transform that returns the wrong thing fails here, in one clear line

    def __getattr__(self, name: str) -> Any:  # len, normalize, mean, device, batches_per_epoch: as wrapped
        return getattr(self.batches, name)

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, generator: torch.Generator, drop_last: bool):
        count, size = self.batches.batches_per_epoch(drop_last), self.batches.batch_size
        # Batches.epoch's order (this process's shard under torchrun); workers and transform seeded
        # per process, or every process would augment its samples alike
        order = self.batches.shuffled(generator)
        seed = self.batches.process_seed(generator)
        loader = torch.utils.data.DataLoader(
            self.samples,
            batch_sampler=[order[start : start + size].tolist() for start in range(0, count * size, size)],
            num_workers=self.workers,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=self.batches.device.type == "cuda",
        )
        if self.workers == 0:
            _seed_transform(self.transform, seed)
        device = self.batches.device
        for images, masks in loader:
            images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
            yield images, masks.to(device, non_blocking=True).long()


class _TransformedSamples(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, masks: np.ndarray, transform: Callable) -> None:
        self.images, self.masks, self.transform = images, masks, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = np.asarray(self.images[index]), np.asarray(self.masks[index])
        planes = mask.ndim == 3  # a plane per label, C×H×W: albumentations takes (and returns) H×W×C
        if planes:
            mask = np.ascontiguousarray(mask.transpose(1, 2, 0))
        out = self.transform(image=image, mask=mask)
        got_image, got_mask = out.get("image"), out.get("mask")
        if not (isinstance(got_image, np.ndarray) and got_image.dtype == np.uint8):
            kind = type(got_image).__name__ if not isinstance(got_image, np.ndarray) else got_image.dtype
            raise SegwiseError(
                f"augment transform returned an image of type {kind}, not uint8 numpy; remove Normalize, "
                "ToFloat and ToTensorV2 from it (segwise normalizes on the device)"
            )
        if got_image.shape[:2] != image.shape[:2] or getattr(got_mask, "shape", None) != mask.shape:
            raise SegwiseError(
                f"augment transform turned a {image.shape[0]}×{image.shape[1]} sample into image "
                f"{got_image.shape[:2]} and mask {getattr(got_mask, 'shape', type(got_mask).__name__)}; batches "
                f"need the training size as numpy arrays: end crops with A.Resize({image.shape[0]}, "
                f"{image.shape[1]}) or A.PadIfNeeded"
            )
        got_image = got_image if got_image.ndim == 3 else got_image[..., None]
        got_mask = got_mask.transpose(2, 0, 1) if planes else got_mask
        return torch.from_numpy(np.ascontiguousarray(got_image)), torch.from_numpy(
            np.ascontiguousarray(got_mask)
        )


def _seed_transform(transform: Callable, seed: int) -> None:
    """albumentations transforms keep their own random generator, which forked workers would all share."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    _seed_transform(info.dataset.transform, info.seed)
