"""Metrics from one streaming confusion matrix (as in torchvision's references/segmentation).

`matrix[t, p]` counts pixels of true class t predicted as p; ignored pixels are never counted.
Every score is derived from the per-class counts TP, FP, FN, TN, in one place (`_Counts`), so the
multiclass, binary and multilabel forms, and the dataset-level and image-wise reductions, share
one formula each. Names and formulas: docs/metrics.md.

- dataset-level ("dataset"): counts summed over every pixel seen, then the score;
- image-wise ("image"): the score of each image (NaN where a class is absent from an image's
  truth and prediction), then the mean over the images where it is defined.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from .constants import IGNORE_INDEX
from .errors import SegwiseError
from .task import Task

Reduction = Literal["dataset", "image"]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, NaN where the denominator is 0 (the score is undefined there)."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.nan)


class _Counts(NamedTuple):
    """Per-class pixel counts (float64), shape C, or N×C for per-image counts."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def iou(self) -> torch.Tensor:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def dice(self) -> torch.Tensor:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def precision(self) -> torch.Tensor:
        return _ratio(self.tp, self.tp + self.fp)

    def recall(self) -> torch.Tensor:
        return _ratio(self.tp, self.tp + self.fn)

    def accuracy(self) -> torch.Tensor:
        return _ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn)


class ConfusionMatrix:
    """Streaming multiclass confusion matrix; `per_image=True` also keeps one matrix per image.

    For binary segmentation use `ConfusionMatrix(2)` with predictions `logits > 0` (class 1's
    scores are the foreground scores); for multilabel, `MultilabelConfusionMatrix`.
    """

    def __init__(
        self,
        num_classes: int,
        device: torch.device | str = "cpu",
        ignore_index: int = IGNORE_INDEX,
        per_image: bool = False,
    ) -> None:
        self.num_classes, self.ignore_index, self.per_image = num_classes, ignore_index, per_image
        self.matrix = torch.zeros(self._shape(), dtype=torch.int64, device=device)
        self.image_matrices = torch.zeros((0, *self._shape()), dtype=torch.int64, device=device)

    def _shape(self) -> tuple[int, ...]:
        return (self.num_classes, self.num_classes)

    def _bincount(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Counts as images×C×C (1×C×C unless per_image) from one bincount over (image, truth, prediction).

        Uncounted pixels get an extra code that is dropped afterwards: cheaper than boolean indexing.
        """
        c = self.num_classes
        images = target.shape[0] if self.per_image else 1
        target, prediction = target.reshape(images, -1), prediction.reshape(images, -1)
        keep = (target >= 0) & (target < c) & (target != self.ignore_index)
        codes = target * c + prediction
        if images > 1:
            codes += torch.arange(images, device=codes.device).view(-1, 1) * (c * c)
        codes = codes.masked_fill_(~keep, images * c * c)
        return torch.bincount(codes.reshape(-1), minlength=images * c * c + 1)[:-1].reshape(images, c, c)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class indices (matching shapes; the first dim is the image)."""
        if prediction.shape != target.shape:
            raise SegwiseError(
                f"prediction shape {tuple(prediction.shape)} differs from target {tuple(target.shape)}"
            )
        device = self.matrix.device
        counts = self._bincount(prediction.to(device, torch.int64), target.to(device, torch.int64))
        self.matrix += counts.sum(0)
        if self.per_image:
            self.image_matrices = torch.cat([self.image_matrices, counts])

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix.to(self.matrix.device)
        self.image_matrices = torch.cat([self.image_matrices, other.image_matrices.to(self.matrix.device)])
        return self

    def all_reduce(self) -> None:
        """Sum the matrix (and gather the per-image matrices) over all processes of a torch.distributed run."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        torch.distributed.all_reduce(self.matrix)
        if self.per_image:
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.image_matrices.cpu())
            self.image_matrices = torch.cat(gathered).to(self.matrix.device)

    def _counts_of(self, matrix: torch.Tensor) -> _Counts:
        """TP, FP, FN, TN per class of one matrix C×C, or of each of N matrices N×C×C."""
        matrix = matrix.double()
        tp = matrix.diagonal(dim1=-2, dim2=-1)
        fp = matrix.sum(-2) - tp
        fn = matrix.sum(-1) - tp
        tn = matrix.sum((-2, -1)).unsqueeze(-1) - tp - fp - fn
        return _Counts(tp, fp, fn, tn)

    def counts(self, reduction: Reduction = "dataset") -> _Counts:
        if reduction == "dataset":
            return self._counts_of(self.matrix)
        if reduction == "image":
            if not self.per_image:
                raise SegwiseError("image-wise scores need ConfusionMatrix(..., per_image=True)")
            return self._counts_of(self.image_matrices)
        raise SegwiseError(f"unknown reduction {reduction!r}; choose from ['dataset', 'image']")

    def _score(self, name: str, reduction: Reduction) -> torch.Tensor:
        scores = getattr(self.counts(reduction), name)()
        return scores if reduction == "dataset" else scores.nanmean(0)

    def iou(self, reduction: Reduction = "dataset") -> torch.Tensor:
        """Per-class IoU = TP / (TP + FP + FN), NaN for classes absent from both truth and prediction."""
        return self._score("iou", reduction)

    def dice(self, reduction: Reduction = "dataset") -> torch.Tensor:
        """Per-class Dice = F1 = 2TP / (2TP + FP + FN)."""
        return self._score("dice", reduction)

    f1 = dice

    def precision(self, reduction: Reduction = "dataset") -> torch.Tensor:
        return self._score("precision", reduction)

    def recall(self, reduction: Reduction = "dataset") -> torch.Tensor:
        """Per-class recall = TP / (TP + FN); its mean is the "mean class accuracy" of FCN."""
        return self._score("recall", reduction)

    def accuracy(self, reduction: Reduction = "dataset") -> torch.Tensor:
        """Per-class (one-vs-rest) accuracy = (TP + TN) / all counted pixels."""
        return self._score("accuracy", reduction)

    def mean_iou(self, reduction: Reduction = "dataset") -> float:
        """Mean IoU over classes present (in truth or prediction); image-wise: the mean of each image's mIoU."""
        if reduction == "dataset":
            return float(self.iou().nanmean())
        return float(self.counts("image").iou().nanmean(-1).nanmean())

    def image_mean_iou(self, image: int) -> float:
        """The mIoU of one image (its index in update order; -1 for the latest); needs per_image=True."""
        if not self.per_image:
            raise SegwiseError("image-wise scores need ConfusionMatrix(..., per_image=True)")
        return float(self._counts_of(self.image_matrices[image]).iou().nanmean())

    def frequency_weighted_iou(self) -> float:
        """Σ_c freq_c · IoU_c with freq_c = (TP + FN)_c / counted pixels: IoU weighted by true pixel share."""
        counts = self.counts()
        support = counts.tp + counts.fn
        total = support.sum()
        if total == 0:
            return float("nan")
        return float((support * counts.iou().nan_to_num(0.0)).sum() / total)

    def _correct(self, matrices: torch.Tensor) -> torch.Tensor:
        """Correctly predicted pixels of a matrix, or of each of N matrices."""
        return matrices.diagonal(dim1=-2, dim2=-1).sum(-1)

    def _pixels(self, matrices: torch.Tensor) -> torch.Tensor:
        """Counted pixels of a matrix, or of each of N matrices."""
        return matrices.sum((-2, -1))

    def pixels(self) -> int:
        """Pixels counted so far (ignored pixels are never counted)."""
        return int(self._pixels(self.matrix))

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (ignored pixels are never counted)."""
        total = self.matrix.sum()
        return float(self._correct(self.matrix)) / float(total) if total > 0 else float("nan")

    def describe(self, names: list[str]) -> dict:
        """The matrix as metrics.json stores it: counts[t][p] of truth t predicted as p."""
        return {"rows": "truth", "columns": "prediction", "counts": self.matrix.tolist()}

    def per_image_stats(self) -> list[dict[str, object]]:
        """One row per image for reports: pixels counted, pixel accuracy, mIoU and per-class IoU (None if absent)."""
        counts = self.counts("image")
        ious = counts.iou()
        pixels = self._pixels(self.image_matrices)
        # Accuracy is over every counted decision, as in pixel_accuracy (multilabel: one per label).
        decisions = self.image_matrices.flatten(1).sum(1)
        correct = self._correct(self.image_matrices)
        rows = []
        for image in range(len(pixels)):
            iou = ious[image]
            rows.append(
                {
                    "pixels": int(pixels[image]),
                    "pixel_accuracy": float(correct[image]) / float(decisions[image])
                    if decisions[image] > 0
                    else float("nan"),
                    "mean_iou": float(iou.nanmean()),
                    "iou": [None if torch.isnan(v) else float(v) for v in iou],
                }
            )
        return rows


class MultilabelConfusionMatrix(ConfusionMatrix):
    """One 2×2 matrix per label, `matrix[c, t, p]`, for N×C×H×W predictions and targets in {0, 1}.

    The target may hold `ignore_index` per element. Every score of ConfusionMatrix applies per label
    (the positive class of each label's 2×2 matrix); pixel_accuracy is over all counted elements
    (pixel × label decisions), while `pixels()` counts pixels, each once.
    """

    def _shape(self) -> tuple[int, ...]:
        return (self.num_classes, 2, 2)

    def _bincount(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c = target.shape[0], self.num_classes
        if target.dim() < 2 or target.shape[1] != c:
            raise SegwiseError(f"multilabel target must be N×{c}×..., got {tuple(target.shape)}")
        images = n if self.per_image else 1
        target, prediction = target.reshape(n, c, -1), prediction.reshape(n, c, -1)
        keep = (target == 0) | (target == 1)
        codes = (torch.arange(c, device=target.device).view(1, c, 1) * 2 + target) * 2 + (prediction != 0)
        if images > 1:
            codes = codes + torch.arange(n, device=codes.device).view(n, 1, 1) * (c * 4)
        codes = codes.masked_fill(~keep, images * c * 4)
        return torch.bincount(codes.reshape(-1), minlength=images * c * 4 + 1)[:-1].reshape(images, c, 2, 2)

    def _counts_of(self, matrix: torch.Tensor) -> _Counts:
        matrix = matrix.double()
        return _Counts(matrix[..., 1, 1], matrix[..., 0, 1], matrix[..., 1, 0], matrix[..., 0, 0])

    def describe(self, names: list[str]) -> dict:
        """As metrics.json stores it: the labels, and counts[c] = label c's [[TN, FP], [FN, TP]]."""
        return {"labels": names, "rows": "truth", "columns": "prediction", "counts": self.matrix.tolist()}

    def _correct(self, matrices: torch.Tensor) -> torch.Tensor:
        return (matrices[..., 0, 0] + matrices[..., 1, 1]).sum(-1)

    def _pixels(self, matrices: torch.Tensor) -> torch.Tensor:
        # Every label's 2×2 matrix counts each pixel once; summing all C would count it C times.
        # Exact while void covers whole pixels (augmentation padding, the only void multilabel has).
        return matrices.sum((-2, -1)).amax(-1)


def _erode(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Binary erosion with a (2w+1)² square; outside the image counts as background (as in Cheng et al.)."""
    padded = F.pad((~masks).float(), (width,) * 4, value=1.0)
    return F.max_pool2d(padded, 2 * width + 1, stride=1) == 0


def _dilate(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Binary dilation with a (2w+1)² square (max-pool; outside the image adds nothing)."""
    return F.max_pool2d(masks.float(), 2 * width + 1, stride=1, padding=width) > 0


def _inner_boundary(masks: torch.Tensor, width: int, void: torch.Tensor) -> torch.Tensor:
    """Pixels of a mask within `width` pixels (chessboard distance) of its contour, inside the mask.

    Void pixels count as inside while eroding, so the edge of an ignored region is no contour.
    """
    return masks & ~_erode(masks | void, width) & ~void


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N×H×W class indices → N×C×H×W bool (ignored or out-of-range indices match no class)."""
    return labels.unsqueeze(1) == torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)


def confusion_matrix_for(
    task: Task, device: torch.device | str = "cpu", per_image: bool = False
) -> ConfusionMatrix:
    """The matrix a task's predictions are counted in: C×C over classes, or one 2×2 per label
    (a per-label task's labels are independent decisions, so there is no class-to-class confusion)."""
    kind = MultilabelConfusionMatrix if task.per_label else ConfusionMatrix
    return kind(task.num_classes, device, per_image=per_image)


class BoundaryScores:
    """Streaming boundary IoU (Cheng et al. 2021) and boundary F1 (Csurka et al. 2013) per class.

    Boundary IoU: G_d, P_d = the pixels of truth and prediction within `tolerance` pixels of their
    contours; IoU = |G_d ∩ P_d| / |G_d ∪ P_d|. Boundary F1: with 1-pixel contours B_G, B_P,
    precision = |B_P ∩ dilate(B_G, tolerance)| / |B_P|, recall = |B_G ∩ dilate(B_P, tolerance)| / |B_G|,
    F1 = 2PR / (P + R). Pixels whose truth is ignored are left out of every count, and the edge of an
    ignored region is not a contour (the class beyond it is unknown). Counts are kept
    per image, so both the dataset-level and the image-wise reductions are available.

    `multilabel=True` takes N×C×H×W masks of 0/1 (target: `ignore_index` per element) instead of
    N×H×W class indices; each label's mask is scored on its own, as each class's is.
    """

    def __init__(
        self,
        num_classes: int,
        tolerance: int = 2,
        ignore_index: int = IGNORE_INDEX,
        multilabel: bool = False,
    ) -> None:
        if tolerance < 1:
            raise SegwiseError(f"boundary tolerance must be at least 1 pixel, got {tolerance}")
        self.num_classes, self.tolerance, self.ignore_index = num_classes, tolerance, ignore_index
        self.multilabel = multilabel
        # Per image and class: intersection, union, matched prediction contour, prediction contour,
        # matched truth contour, truth contour.
        self.image_counts = torch.zeros(0, num_classes, 6, dtype=torch.int64)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add N×H×W predicted and true class indices (multilabel: N×C×H×W masks of 0/1)."""
        if prediction.shape != target.shape:
            raise SegwiseError(
                f"prediction shape {tuple(prediction.shape)} differs from target {tuple(target.shape)}"
            )
        if self.multilabel:
            if target.dim() != 4 or target.shape[1] != self.num_classes:
                raise SegwiseError(
                    f"multilabel target must be N×{self.num_classes}×H×W, got {tuple(target.shape)}"
                )
            void = target == self.ignore_index
            truth, predicted = target == 1, prediction != 0  # as MultilabelConfusionMatrix counts them
        else:
            void = (target == self.ignore_index).unsqueeze(1)
            truth, predicted = _one_hot(target, self.num_classes), _one_hot(prediction, self.num_classes)
        truth_band = _inner_boundary(truth, self.tolerance, void)
        predicted_band = _inner_boundary(predicted, self.tolerance, void)
        truth_contour = _inner_boundary(truth, 1, void)
        predicted_contour = _inner_boundary(predicted, 1, void)
        parts = [
            truth_band & predicted_band,
            truth_band | predicted_band,
            predicted_contour & _dilate(truth_contour, self.tolerance),
            predicted_contour,
            truth_contour & _dilate(predicted_contour, self.tolerance),
            truth_contour,
        ]
        counts = torch.stack([part.sum((-2, -1)) for part in parts], dim=-1)
        self.image_counts = torch.cat([self.image_counts, counts.cpu()])

    def merge(self, other: BoundaryScores) -> BoundaryScores:
        self.image_counts = torch.cat([self.image_counts, other.image_counts])
        return self

    def _counts(self, reduction: Reduction) -> torch.Tensor:
        if reduction not in ("dataset", "image"):
            raise SegwiseError(f"unknown reduction {reduction!r}; choose from ['dataset', 'image']")
        counts = self.image_counts.double()
        return counts.sum(0) if reduction == "dataset" else counts

    def _reduce(self, scores: torch.Tensor, reduction: Reduction) -> torch.Tensor:
        return scores if reduction == "dataset" else scores.nanmean(0)

    def iou(self, reduction: Reduction = "dataset") -> torch.Tensor:
        """Per-class boundary IoU, NaN where a class has no boundary in truth or prediction."""
        counts = self._counts(reduction)
        return self._reduce(_ratio(counts[..., 0], counts[..., 1]), reduction)

    def f1(self, reduction: Reduction = "dataset") -> torch.Tensor:
        """Per-class boundary F1 (BF score), NaN where a class has no contour in truth or prediction.

        A contour present on one side only scores 0 (its precision or recall is 0).
        """
        counts = self._counts(reduction)
        precision = _ratio(counts[..., 2], counts[..., 3]).nan_to_num(0.0)
        recall = _ratio(counts[..., 4], counts[..., 5]).nan_to_num(0.0)
        defined = (counts[..., 3] + counts[..., 5]) > 0
        f1 = torch.where(
            defined, _ratio(2 * precision * recall, precision + recall).nan_to_num(0.0), torch.nan
        )
        return self._reduce(f1, reduction)


def boundary_scores_for(task: Task, tolerance: int = 2) -> BoundaryScores:
    """The boundary scores of a task's predictions: per class, or per label on each label's own plane."""
    return BoundaryScores(task.num_classes, tolerance, multilabel=task.per_label)
