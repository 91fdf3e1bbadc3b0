"""Per-pixel uncertainty maps: `segwise predict --format uncertainty` writes `<name>_uncertainty.png`.

The file is a 16-bit grey PNG (values 0..65535 for uncertainty 0..1; 16-bit PNGs open in every image
library, where float TIFFs do not): 0 where the model is sure, 65535 where it cannot tell.

- `entropy_map`: the entropy of each pixel's (calibrated, when the run has a temperature) probabilities,
  −Σ p log p, divided by log C so that a uniform distribution is 1; a per-label task: the mean over
  labels of each label's binary entropy divided by log 2.
- `spread_map`: for several probability maps of one image (TTA views, ensemble members), the variance
  across them, averaged over classes and divided by 0.25 (the largest variance of values in [0, 1]), so
  1 where the maps disagree completely. The hook an ensemble calls with its members' stack.

With TTA of several views (`--tta flips`, ...), the file holds the spread across the views (`view_spread`:
each view predicted on its own, one more pass per view) instead of the entropy of their merge.
"""

from __future__ import annotations

import numpy as np

from ..errors import SegwiseError
from .tta import views_for

UNCERTAINTY_LEVELS = 65535  # uncertainty 1 as a 16-bit value
_TINY = 1e-12


def entropy_map(probabilities: np.ndarray, per_label: bool) -> np.ndarray:
    """H×W float32 in [0, 1] from probabilities C×H×W (module docstring)."""
    p = np.clip(probabilities.astype(np.float64), _TINY, 1.0)
    if per_label:
        q = np.clip(1.0 - probabilities.astype(np.float64), _TINY, 1.0)
        binary = -(p * np.log(p) + q * np.log(q)) / np.log(2)
        return np.clip(binary.mean(0), 0, 1).astype(np.float32)
    classes = probabilities.shape[0]
    if classes < 2:
        raise SegwiseError(f"uncertainty: {classes} class plane(s); entropy needs at least two")
    return np.clip(-(p * np.log(p)).sum(0) / np.log(classes), 0, 1).astype(np.float32)


def spread_map(stack: np.ndarray) -> np.ndarray:
    """H×W float32 in [0, 1]: the variance across the first axis of a stack M×C×H×W of probability maps
    (TTA views or ensemble members of one image), averaged over classes, divided by 0.25."""
    if stack.ndim != 4 or len(stack) < 2:
        raise SegwiseError(f"uncertainty: a stack of at least two M×C×H×W maps is needed, got {stack.shape}")
    return np.clip(stack.astype(np.float64).var(0).mean(0) / 0.25, 0, 1).astype(np.float32)


def to_png16(uncertainty: np.ndarray) -> np.ndarray:
    """H×W uint16 for a 16-bit grey PNG: uncertainty × 65535, rounded."""
    return np.round(np.clip(uncertainty, 0, 1) * UNCERTAINTY_LEVELS).astype(np.uint16)


def view_spread(predictor, image: np.ndarray) -> np.ndarray | None:
    """The spread across an ensemble's members (`Ensemble.member_probabilities`, each with its own TTA),
    else across `predictor`'s TTA views of `image` (each view's probabilities as `predict_proba` shows
    them), or None when there is a single view (the entropy is used then)."""
    members = getattr(predictor, "member_probabilities", None)
    if members is not None:
        return spread_map(members(image))
    views = views_for(predictor.options.tta)
    if len(views) < 2:
        return None
    return spread_map(np.stack([predictor.predict_proba(image, tta=(view.name,)) for view in views]))
