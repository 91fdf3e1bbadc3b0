"""Segmentation losses, and their weighted sums by name ("ce+dice", {"ce": 1.0, "dice": 0.5}).

Every loss takes logits N×C×H×W and class indices N×H×W (IGNORE_INDEX where a pixel counts for nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.dataset import IGNORE_INDEX
from .errors import SegwiseError


class CrossEntropyLoss(nn.Module):
    """torch's cross-entropy, except that a batch where every pixel is ignored gives 0, not NaN."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(
            logits, target, self.class_weights, ignore_index=self.ignore_index, reduction="sum"
        )
        valid = target != self.ignore_index
        # torch's "mean" divides by the summed weights of the counted pixels; so do we, but never by 0.
        count = valid.sum() if self.class_weights is None else self.class_weights[target[valid]].sum()
        return total / count.clamp_min(1)


class DiceLoss(nn.Module):
    """1 − soft Dice per class over the whole batch, averaged over the classes present in the target.

    Classes absent from the target contribute nothing (as in segmentation-models-pytorch), so an
    image without a class is not rewarded for predicting none of it. Ignored pixels are masked out.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 0.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.ignore_index, self.smooth, self.eps = ignore_index, smooth, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(dim=1) * valid
        one_hot = F.one_hot(target.where(valid.squeeze(1), 0), num_classes).permute(0, 3, 1, 2) * valid
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)
        cardinality = (probs + one_hot).sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)
        present = one_hot.sum(dims) > 0
        return ((1 - dice) * present).sum() / present.sum().clamp_min(1)


LOSSES: dict[str, type[nn.Module]] = {"ce": CrossEntropyLoss, "dice": DiceLoss}


class WeightedSum(nn.Module):
    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * term(logits, target) for name, term in self.terms.items())


def build_loss(spec: str | dict[str, float], ignore_index: int = IGNORE_INDEX) -> nn.Module:
    """`build_loss("ce+dice")` or `build_loss({"ce": 1.0, "dice": 0.5})`."""
    weights = {name.strip(): 1.0 for name in spec.split("+")} if isinstance(spec, str) else dict(spec)
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown or not weights:
        raise SegwiseError(f"unknown loss {unknown or spec!r}; choose from {sorted(LOSSES)}, joined by '+'")
    return WeightedSum({name: LOSSES[name](ignore_index=ignore_index) for name in weights}, weights)
