"""Segmentation losses, and their weighted sums by name ("ce+dice", {"ce": 1.0, "dice": 0.5}).

Every loss is called as `loss(logits, target)` with raw logits and one of three modes:

- "binary":     logits N×1×H×W, target N×H×W (or N×1×H×W) in {0, 1};
- "multiclass": logits N×C×H×W, target N×H×W of class indices (softmax over C);
- "multilabel": logits N×C×H×W, target N×C×H×W in {0, 1} (one sigmoid per channel).

Target pixels (or, in multilabel mode, elements) equal to `ignore_index` count for nothing, and
a batch where everything is ignored gives 0 with zero gradients instead of NaN. All losses work
on every class at once (no Python loop over classes); the formulas, and where they follow
segmentation-models-pytorch's conventions, are in docs/metrics.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .constants import IGNORE_INDEX
from .errors import SegwiseError
from .task import MODES  # the loss modes are the task modes (binary data may also train as multiclass)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SegwiseError(f"unknown loss mode {mode!r}; choose from {list(MODES)}")
    return mode


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, mode: str, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring any mode to one layout: logits N×K×P, truth N×K×P (bool) and valid N×1×P or N×K×P.

    K is 1 in binary mode and C otherwise; P is the number of pixels. Truth is False wherever the
    target is ignored, so the region losses only have to multiply predictions by `valid`.
    """
    n, k = logits.shape[0], logits.shape[1] if logits.dim() > 1 else 1
    logits = logits.reshape(n, k, -1)
    if mode == "multiclass":
        target = target.reshape(n, 1, -1)
        valid = target != ignore_index
        # Comparing against arange builds the one-hot directly in N×C×P; ignored indices match no class.
        truth = target == torch.arange(k, device=target.device).view(1, k, 1)
    else:
        target = target.reshape(n, k, -1)
        valid = target != ignore_index
        truth = target == 1
    return logits, truth, valid


def _probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    return logits.softmax(dim=1) if mode == "multiclass" else logits.sigmoid()


def _softmax_counts(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class soft true positives, predicted and actual pixel counts over the batch (multiclass).

    The same sums as over a one-hot N×C×P truth, without building it: TP gathers each valid pixel's
    probability of its true class and adds it to that class; predicted sums the valid pixels'
    probabilities in one matrix product. Fewer passes over N×C×P in the forward and backward pass.
    """
    n, k = logits.shape[0], logits.shape[1]
    probs = logits.reshape(n, k, -1).softmax(dim=1)
    target = target.reshape(n, -1)
    valid = target != ignore_index
    label = target.where(valid, 0)  # any class will do: an ignored pixel's weight is 0
    weight = valid.to(probs.dtype)
    predicted = torch.einsum("nkp,np->k", probs, weight)
    picked = probs.gather(1, label.unsqueeze(1)).squeeze(1) * weight
    tp = torch.zeros(k, dtype=probs.dtype, device=probs.device).index_add(
        0, label.flatten(), picked.flatten()
    )
    # counted by index_add, not bincount(label[valid]): the boolean mask and bincount's size both
    # wait for the device on a GPU. In int64, exact at any batch size (float32 stops counting at 2^24)
    counts = torch.zeros(k, dtype=torch.int64, device=label.device)
    actual = counts.index_add_(0, label.flatten(), valid.flatten().long()).to(probs.dtype)
    return tp, predicted, actual


def _class_mean(per_class: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of a per-class loss, or its weighted mean Σ w·l / Σ w when class weights are given."""
    if class_weights is None:
        return per_class.mean()
    return (per_class * class_weights).sum() / class_weights.sum()


class _SegLoss(nn.Module):
    """Shared settings: mode, ignore_index and optional per-class weights (a buffer, so it follows .to())."""

    # the modes in which the loss takes class_weights (binary has one output: use pos_weight or none)
    class_weight_modes: tuple[str, ...] = ("multiclass", "multilabel")

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.mode = _check_mode(mode)
        self.ignore_index = ignore_index
        if class_weights is not None and mode == "binary":
            raise SegwiseError(
                "class_weights need several classes; in binary mode use pos_weight (bce) or none"
            )
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)


class BCEWithLogitsLoss(_SegLoss):
    """Binary cross-entropy on each channel (the one-hot target in multiclass mode), mean over valid elements.

    Equal to torch's `binary_cross_entropy_with_logits(weight=class_weights, pos_weight=pos_weight)`
    when nothing is ignored. `smoothing` s maps targets 1 → 1 − s and 0 → s (smp's convention).
    """

    def __init__(
        self,
        mode: str = "binary",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        pos_weight: float | Sequence[float] | torch.Tensor | None = None,
        smoothing: float = 0.0,
    ) -> None:
        super().__init__(mode, ignore_index, class_weights)
        self.smoothing = smoothing
        pos = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1, 1)
        self.register_buffer("pos_weight", pos)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, truth, valid = _prepare(logits, target, self.mode, self.ignore_index)
        soft = truth.to(logits.dtype)
        if self.smoothing:
            soft = soft * (1 - 2 * self.smoothing) + self.smoothing
        weight = None if self.class_weights is None else self.class_weights.view(-1, 1)
        losses = F.binary_cross_entropy_with_logits(
            logits, soft, weight, pos_weight=self.pos_weight, reduction="none"
        )
        count = valid.expand_as(losses).sum()
        return (losses * valid).sum() / count.clamp_min(1)


class CrossEntropyLoss(_SegLoss):
    """torch's cross-entropy (class weights, label smoothing), except that an all-ignored batch gives 0, not NaN.

    In binary and multilabel modes the cross-entropy of a Bernoulli is the binary cross-entropy,
    so those modes delegate to `BCEWithLogitsLoss`.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        smoothing: float = 0.0,
    ) -> None:
        super().__init__(mode, ignore_index, class_weights)
        self.smoothing = smoothing
        self.binary = (
            None
            if mode == "multiclass"
            else BCEWithLogitsLoss(mode, ignore_index, class_weights, None, smoothing)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary is not None:
            return self.binary(logits, target)
        total = F.cross_entropy(
            logits,
            target,
            self.class_weights,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.smoothing,
        )
        valid = target != self.ignore_index
        # torch's "mean" divides by the summed weights of the counted pixels; so do we, but never by 0.
        if self.class_weights is None:
            count = valid.sum()
        else:  # gathered at every pixel and zeroed where ignored: a boolean mask would wait for the device
            count = (self.class_weights[target.where(valid, 0)] * valid).sum()
        return total / count.clamp_min(1)


class TverskyLoss(_SegLoss):
    """(mean over classes of 1 − Tversky index)^gamma; Dice (α = β = ½) and Jaccard (α = β = 1) are special cases.

    Tversky_c = (TP + smooth) / (TP + α·FP + β·FN + smooth), with soft counts summed over the batch.
    A class absent from the (non-ignored) target contributes 0 but still counts in the mean, as in
    segmentation-models-pytorch: otherwise an image without a class would be rewarded or punished
    for a ratio of two near-zero numbers.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(mode, ignore_index, class_weights)
        self.alpha, self.beta, self.gamma, self.smooth, self.eps = alpha, beta, gamma, smooth, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mode == "multiclass":
            tp, predicted, actual = _softmax_counts(logits, target, self.ignore_index)
        else:
            logits, truth, valid = _prepare(logits, target, self.mode, self.ignore_index)
            probs = _probabilities(logits, self.mode) * valid
            truth = truth.to(probs.dtype)
            dims = (0, 2)
            tp = (probs * truth).sum(dims)
            predicted, actual = probs.sum(dims), truth.sum(dims)
        fp, fn = predicted - tp, actual - tp
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)
        per_class = (1 - score) * (actual > 0)
        return _class_mean(per_class, self.class_weights) ** self.gamma


class DiceLoss(TverskyLoss):
    """1 − soft Dice = 1 − 2·TP / (2·TP + FP + FN), per class over the batch (see TverskyLoss)."""

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(mode, ignore_index, class_weights, 0.5, 0.5, 1.0, smooth, eps)


class JaccardLoss(TverskyLoss):
    """1 − soft IoU = 1 − TP / (TP + FP + FN), per class over the batch (see TverskyLoss)."""

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(mode, ignore_index, class_weights, 1.0, 1.0, 1.0, smooth, eps)


class FocalLoss(_SegLoss):
    """Sigmoid focal loss −α_t (1 − p_t)^γ log p_t on every channel (one-vs-rest in multiclass mode).

    Averaged over the valid pixels of each class, then over classes (as segmentation-models-pytorch's
    FocalLoss, whose multiclass mode is also one-vs-rest). `alpha` weighs positives by α and
    negatives by 1 − α; None weighs both by 1.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        alpha: float | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(mode, ignore_index, class_weights)
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, truth, valid = _prepare(logits, target, self.mode, self.ignore_index)
        truth = truth.to(logits.dtype)
        log_pt = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        losses = (1 - torch.exp(-log_pt)).pow(self.gamma) * log_pt
        if self.alpha is not None:
            losses = losses * (self.alpha * truth + (1 - self.alpha) * (1 - truth))
        dims = (0, 2)
        per_class = (losses * valid).sum(dims) / valid.expand_as(losses).sum(dims).clamp_min(1)
        return _class_mean(per_class, self.class_weights)


def _lovasz_extension(errors: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Lovász extension of the Jaccard loss along the last dimension (Berman et al. 2018, Alg. 1).

    `errors` B×K×P (ignored entries already set to −inf so that they sort last and add nothing),
    `truth` B×K×P in {0, 1}. Returns B×K. Sorting along the last dimension treats all K rows at once.
    """
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    truth_sorted = truth.gather(-1, order)
    positives = truth_sorted.sum(-1, keepdim=True)
    intersection = positives - truth_sorted.cumsum(-1)
    union = positives + (1 - truth_sorted).cumsum(-1)
    jaccard = 1 - intersection / union
    grad = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
    return (errors_sorted.relu() * grad).sum(-1)


class LovaszLoss(_SegLoss):
    """Lovász-softmax (multiclass) or Lovász hinge (binary, multilabel): a convex surrogate of 1 − IoU.

    Multiclass: per class, errors |1[y = c] − p_c| over the batch (or per image), averaged over
    classes present in the target (weighted by class_weights if given). Binary and multilabel: hinge
    errors 1 − logit·(2y − 1) over all elements pooled together, as segmentation-models-pytorch does.
    """

    class_weight_modes = ("multiclass",)  # the hinge pools all labels: no per-label weights

    def __init__(
        self,
        mode: str = "multiclass",
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        per_image: bool = False,
    ) -> None:
        if class_weights is not None and mode == "multilabel":
            raise SegwiseError(
                "the Lovász hinge pools all labels, so it takes no class_weights in multilabel mode"
            )
        super().__init__(mode, ignore_index, class_weights)
        self.per_image = per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, truth, valid = _prepare(logits, target, self.mode, self.ignore_index)
        truth = truth.to(logits.dtype)
        if self.mode == "multiclass":
            errors = (truth - logits.softmax(dim=1)).abs()
        else:
            errors = 1 - logits * (2 * truth - 1)
        errors = errors.masked_fill(~valid, float("-inf"))
        n, k = errors.shape[:2]
        if self.mode == "multiclass":
            # Rows are (image, class) or (class) over the whole batch: B×C×P with B = N or 1.
            if not self.per_image:
                errors = errors.transpose(0, 1).reshape(1, k, -1)
                truth = truth.transpose(0, 1).reshape(1, k, -1)
            present = truth.sum(-1) > 0
            weights = present.to(errors.dtype)
            if self.class_weights is not None:
                weights = weights * self.class_weights
            per_row = _lovasz_extension(errors, truth)
            per_image = (per_row * weights).sum(-1) / weights.sum(-1).clamp_min(1e-12)
        else:
            rows = n if self.per_image else 1
            per_image = _lovasz_extension(errors.reshape(rows, 1, -1), truth.reshape(rows, 1, -1)).squeeze(1)
        return per_image.mean()


LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "bce": BCEWithLogitsLoss,
    "jaccard": JaccardLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
    "lovasz": LovaszLoss,
}


def takes_class_weights(name: str, mode: str) -> bool:
    """Whether the loss `name` takes class_weights in `mode` (building it with them fails otherwise)."""
    loss = LOSSES[name]
    return "class_weights" in _options_of(loss) and mode in loss.class_weight_modes


class WeightedSum(nn.Module):
    """Σ weight · term(logits, target) over named loss terms."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * term(logits, target) for name, term in self.terms.items())


def _options_of(loss: type[nn.Module]) -> list[str]:
    return [
        name
        for name in inspect.signature(loss.__init__).parameters
        if name not in ("self", "mode", "ignore_index")
    ]


def term_weights(spec: str | Mapping[str, float]) -> dict[str, float]:
    """The terms of a loss spec and their weights: "ce+dice" (each 1.0) or {"ce": 1.0, "dice": 0.5}."""
    return {name.strip(): 1.0 for name in spec.split("+")} if isinstance(spec, str) else dict(spec)


def build_loss(
    spec: str | Mapping[str, float],
    ignore_index: int = IGNORE_INDEX,
    mode: str = "multiclass",
    **options: Mapping[str, Any],
) -> nn.Module:
    """`build_loss("ce+dice")`, `build_loss({"ce": 1.0, "dice": 0.5})`, `build_loss("focal", focal={"gamma": 3})`.

    Keyword arguments named after a loss hold that loss's options (e.g. `dice={"smooth": 1.0}`),
    so that a config file can set them without code; anything unknown is a SegwiseError.
    """
    _check_mode(mode)
    weights = term_weights(spec)
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown or not weights:
        raise SegwiseError(f"unknown loss {unknown or spec!r}; choose from {sorted(LOSSES)}, joined by '+'")
    stray = sorted(set(options) - set(weights))
    if stray:
        raise SegwiseError(f"options given for {stray}, which are not in the loss {sorted(weights)}")
    terms = {}
    for name in weights:
        given = dict(options.get(name, {}))
        bad = sorted(set(given) - set(_options_of(LOSSES[name])))
        if bad:
            raise SegwiseError(
                f"unknown option {bad} for loss {name!r}; choose from {_options_of(LOSSES[name])}"
            )
        terms[name] = LOSSES[name](mode=mode, ignore_index=ignore_index, **given)
    return WeightedSum(terms, weights)
