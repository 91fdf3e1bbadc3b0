"""Metrics from one streaming confusion matrix (as in torchvision's references/segmentation).

`matrix[t, p]` counts pixels of true class t predicted as p; ignored pixels are never counted.
IoU_c = TP / (TP + FP + FN); mIoU is the mean over classes that occur in truth or prediction.
"""

from __future__ import annotations

import torch

from .data.dataset import IGNORE_INDEX


class ConfusionMatrix:
    def __init__(
        self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = IGNORE_INDEX
    ):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class indices (any matching shapes)."""
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        prediction = prediction.reshape(-1).to(self.matrix.device, torch.int64)
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        codes = target[keep] * self.num_classes + prediction[keep]
        self.matrix += torch.bincount(codes, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of a torch.distributed run."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def iou(self) -> torch.Tensor:
        """Per-class IoU, NaN for classes absent from both truth and prediction."""
        matrix = self.matrix.double()
        tp = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)

    def dice(self) -> torch.Tensor:
        matrix = self.matrix.double()
        tp = matrix.diag()
        total = matrix.sum(0) + matrix.sum(1)
        return torch.where(total > 0, 2 * tp / total.clamp_min(1), torch.nan)

    def mean_iou(self) -> float:
        return float(self.iou().nanmean())

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum() / total) if total > 0 else float("nan")
