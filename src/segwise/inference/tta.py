"""Test-time augmentation: views with exact inverses, run through the model batched, merged as probabilities.

A view is a pair (image transform, inverse on the prediction). Geometric views (flips, 90° rotations,
transposes) are permutations of pixels, so their inverse is exact; a scale view resizes the image and
resizes the prediction back to the image's size; pixel-level views (brightness, contrast, blur) move no
pixel, so their inverse is the identity.

Every view's output becomes probabilities (softmax or sigmoid) *before* merging: averaging raw logits
lets one over-confident view dominate, and a geometric mean of logits is undefined (negative values).
Views go through the model together: transformed images of the same shape are concatenated along the
batch and run in chunks of at most `max_batch_pixels` pixels, so memory is bounded whatever the number
of views (and a chunk that does not fit the GPU runs in halves, see chunks.py). A 90° rotation of a non-square image changes H×W, so views are grouped by shape first.

>>> probs = predict_tta(model, images, views_for("d4"), merge="mean")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MERGES
from ..errors import SegwiseError
from .chunks import HalvingOnOutOfMemory

Tensor = torch.Tensor
Size = tuple[int, int]

PRESETS = ("none", "flips", "d4", "scales", "custom")
# Pixels per forward pass: 4 views of 512×512. A resnet34 U-Net needs roughly 1–2 kB per pixel in
# float32 at inference, so a chunk stays around 1–2 GB.
DEFAULT_BATCH_PIXELS = 4 * 512 * 512
_EPS = 1e-7  # clamp before log: keeps the geometric mean finite when a view says exactly 0


@dataclass(frozen=True)
class View:
    """`apply` maps images N×C×H×W to the view; `invert` maps the view's prediction back to `size`."""

    name: str
    apply: Callable[[Tensor], Tensor]
    invert: Callable[[Tensor, Size], Tensor]


def _rot(k: int) -> View:
    return View(
        f"rot{90 * k}",
        lambda x: torch.rot90(x, k, (-2, -1)),
        lambda y, size: torch.rot90(y, -k, (-2, -1)),
    )


def _resize(x: Tensor, size: Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _scale(factor: float) -> View:
    def apply(x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        return _resize(x, (max(1, round(height * factor)), max(1, round(width * factor))))

    return View(f"scale{factor:g}", apply, _resize)


def _keep(y: Tensor, size: Size) -> Tensor:
    return y


def _gaussian_blur(x: Tensor, sigma: float = 1.0) -> Tensor:
    radius = max(1, round(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    # Separable blur with reflected borders, so the border does not darken.
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _contrast(x: Tensor, factor: float) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 255)


# Views act on images in the 0..255 range, before normalization.
VIEWS: dict[str, View] = {
    view.name: view
    for view in (
        View("identity", lambda x: x, _keep),
        View("hflip", lambda x: x.flip(-1), lambda y, size: y.flip(-1)),
        View("vflip", lambda x: x.flip(-2), lambda y, size: y.flip(-2)),
        _rot(1),
        _rot(2),
        _rot(3),
        View("transpose", lambda x: x.transpose(-2, -1), lambda y, size: y.transpose(-2, -1)),
        # The anti-diagonal mirror: transpose after a half turn; it is its own inverse.
        View(
            "transverse",
            lambda x: torch.rot90(x, 2, (-2, -1)).transpose(-2, -1),
            lambda y, size: torch.rot90(y, 2, (-2, -1)).transpose(-2, -1),
        ),
        _scale(0.75),
        _scale(1.25),
        _scale(1.5),
        _scale(0.5),
        View("brighter", lambda x: (x + 25.5).clamp(0, 255), _keep),
        View("darker", lambda x: (x - 25.5).clamp(0, 255), _keep),
        View("contrast_up", lambda x: _contrast(x, 1.2), _keep),
        View("contrast_down", lambda x: _contrast(x, 0.8), _keep),
        View("blur", _gaussian_blur, _keep),
    )
}

_PRESET_VIEWS = {
    "none": ["identity"],
    "flips": ["identity", "hflip", "vflip"],
    "d4": ["identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "transverse"],
    "scales": ["identity", "scale0.75", "scale1.25"],
}


def views_for(preset: str | Sequence[str]) -> list[View]:
    """The views of a preset (none, flips, d4, scales) or of a custom list of view names.

    A custom list is a sequence of names or, as the CLI passes it, a comma-separated string, optionally
    after `custom:` (`"custom:identity,hflip,blur"`); a single view name is a list of one.
    """
    if isinstance(preset, str):
        if preset in _PRESET_VIEWS:
            return [VIEWS[name] for name in _PRESET_VIEWS[preset]]
        text = preset.removeprefix("custom:")
        if "," not in text and text not in VIEWS:
            raise SegwiseError(
                f"--tta {preset}: unknown preset; use one of {', '.join(PRESETS[:-1])} "
                f"or custom:VIEW,VIEW,... with views from {', '.join(VIEWS)}"
            )
        names = [name.strip() for name in text.split(",")]
    else:
        names = list(preset)
    unknown = [name for name in names if name not in VIEWS]
    if unknown or not names:
        raise SegwiseError(
            f"--tta: unknown view(s) {', '.join(unknown) or '(none given)'}; valid views are {', '.join(VIEWS)}"
        )
    return [VIEWS[name] for name in dict.fromkeys(names)]


def to_probabilities(logits: Tensor, activation: str) -> Tensor:
    """Softmax over classes (one class per pixel) or sigmoid per channel (independent labels)."""
    if activation == "softmax":
        return logits.float().softmax(1)
    if activation == "sigmoid":
        return logits.float().sigmoid()
    raise SegwiseError(f"activation '{activation}' is not valid; use softmax or sigmoid")


def check_merge(merge: str) -> None:
    if merge not in MERGES:
        raise SegwiseError(f"merge '{merge}' is not valid; use one of {', '.join(MERGES)}")


class Merger:
    """Accumulates de-augmented probability maps N×K×H×W, any images of any view at a time.

    mean: arithmetic mean. gmean: exp(mean(log p)) renormalized (per pixel over classes for softmax,
    against 1 - p for sigmoid), with p clamped to [eps, 1] so it is never NaN. max: per-class maximum
    (renormalized over classes for softmax). vote: fraction of views whose label is the class (argmax
    for softmax, p > 0.5 for sigmoid).
    """

    def __init__(self, merge: str, activation: str, num_views: int) -> None:
        check_merge(merge)
        self.merge, self.activation, self.num_views = merge, activation, num_views
        self.total: Tensor | None = None  # zeros are neutral for every merge: probabilities are ≥ 0
        self.negative: Tensor | None = None  # sigmoid gmean: sum of log(1 - p)

    def add(self, probs: Tensor, images: slice, count: int) -> None:
        """Add one view's de-augmented probabilities of images `images` (of `count` in all)."""
        if self.total is None:
            self.total = probs.new_zeros((count, *probs.shape[1:]))
            if self.merge == "gmean" and self.activation == "sigmoid":
                self.negative = torch.zeros_like(self.total)
        total = self.total[images]
        if self.merge == "mean":
            total += probs
        elif self.merge == "max":
            torch.maximum(total, probs, out=total)
        elif self.merge == "gmean":
            total += probs.clamp(_EPS, 1).log()
            if self.negative is not None:
                self.negative[images] += (1 - probs).clamp(_EPS, 1).log()
        elif self.activation == "softmax":  # vote
            total += F.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        else:
            total += (probs > 0.5).to(probs.dtype)

    def result(self) -> Tensor:
        assert self.total is not None, "no view was merged"
        if self.merge == "gmean":
            mean_log = self.total / self.num_views
            if self.activation == "softmax":
                return mean_log.softmax(1)  # exp(mean log p) / its sum over classes
            # p_g / (p_g + q_g), p_g and q_g the geometric means of p and 1 - p: a sigmoid of their log ratio
            return (mean_log - self.negative / self.num_views).sigmoid()
        if self.merge == "max":
            if self.activation == "softmax":
                return self.total / self.total.sum(1, keepdim=True)
            return self.total
        return self.total / self.num_views


def view_shape(view: View, size: Size) -> Size:
    """H×W a view gives for an image of `size`, computed on the meta device (no memory, no work)."""
    shape = view.apply(torch.empty(1, 1, *size, device="meta")).shape
    return shape[-2], shape[-1]


def predict_tta(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    views: Sequence[View],
    merge: str = "mean",
    activation: str = "softmax",
    max_batch_pixels: int = DEFAULT_BATCH_PIXELS,
) -> Tensor:
    """Merged probabilities N×K×H×W for images N×C×H×W (0..255 float) under `views`.

    `model` maps transformed images to logits of the same H×W (normalization belongs inside it).
    """
    count, size = images.shape[0], (images.shape[-2], images.shape[-1])
    merger = Merger(merge, activation, len(views))
    forward = HalvingOnOutOfMemory(model)  # a pass that does not fit the GPU runs in halves
    groups: dict[Size, list[View]] = {}  # views that give the same H×W share batches
    for view in views:
        groups.setdefault(view_shape(view, size), []).append(view)
    for (height, width), group in groups.items():
        per_pass = max(1, max_batch_pixels // (height * width))  # images per forward pass
        # The group's (view, image) pairs in order, cut into passes; a pass holds runs of consecutive
        # images of one view, each transformed only when its pass comes.
        pairs = [(view, index) for view in group for index in range(count)]
        for start in range(0, len(pairs), per_pass):
            runs: list[tuple[View, slice]] = []
            for view, index in pairs[start : start + per_pass]:
                if runs and runs[-1][0] is view:
                    runs[-1] = (view, slice(runs[-1][1].start, index + 1))
                else:
                    runs.append((view, slice(index, index + 1)))
            batch = torch.cat([view.apply(images[images_slice]) for view, images_slice in runs])
            probs = to_probabilities(forward(batch), activation)
            offset = 0
            for view, images_slice in runs:
                length = images_slice.stop - images_slice.start
                merger.add(view.invert(probs[offset : offset + length], size), images_slice, count)
                offset += length
    return merger.result()
