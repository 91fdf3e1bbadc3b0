"""Calibration: one temperature fitted on validation pixels, the calibration error (ECE), reliability.

A network's probabilities are usually over-confident: of the pixels it calls 95 % sure, fewer than 95 %
are right. Temperature scaling (Guo et al. 2017) divides the logits by one scalar T > 1 fitted to
minimise the negative log-likelihood (NLL) of held-out pixels; it changes how sure the probabilities
are, never their order, so the top class stays the same.

- Fitting (`fit_temperature`): a random sample of at most FIT_PIXELS valid pixels (void excluded), NLL
  minimised over log T in [log T_RANGE] by golden-section search (NLL is convex in 1/T). The training
  run fits it at its end on the validation images it holds (at the training size); `segwise eval RUN
  DATA --calibrate` refits it on a split at the images' own size. Either writes RUN/calibration.json:
  T, ECE and NLL before and after, the split and the pixels used.
- Applying (`with_temperature`): to probabilities, p ∝ p^(1/T) under a softmax (exactly softmax(z/T) for one
  view: log p differs from the logits z by a constant) and sigmoid(logit(p)/T) per label, so merged
  TTA views, tiles and ensembles are tempered once, at the end. Only what is shown or written as a
  probability is tempered (predict_proba, probability maps, uncertainty maps); every decision (masks,
  thresholds, eval's scores) uses the model's own probabilities, so a mask is the same with and without
  a temperature (binary: a tuned threshold was chosen on the uncalibrated probabilities).
- ECE (`Reliability`): ECE_BINS equal-width bins of confidence; Σ_bins (pixels in bin / pixels) ×
  |accuracy − mean confidence|. Multiclass: the top class's probability and whether it is right.
  Binary and per-label: each plane's (binary: the foreground's) probability and whether the pixel has
  that label, so a bin compares "p ≈ 0.7" with how often the label is there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .constants import CALIBRATION_JSON, IGNORE_INDEX
from .errors import SegwiseError
from .io import atomic_path
from .task import Task

ECE_BINS = 15
FIT_PIXELS = 200_000
T_RANGE = (0.05, 20.0)
_GOLDEN_STEPS = 40  # the bracket shrinks to 0.618^40 of its width: far below any meaningful digit of T


@dataclass(frozen=True)
class Calibration:
    """A run's calibration.json."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    split: str  # what it was fitted on, e.g. "val (training size)" or "val"
    pixels: int  # the sampled pixels it was fitted and measured on

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / CALIBRATION_JSON
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: str | Path | None) -> Calibration | None:
        """The run's calibration, None when it has none. A file from elsewhere is checked: a
        temperature outside T_RANGE would make every probability 0/1 or uniform."""
        if run_dir is None or not (path := Path(run_dir) / CALIBRATION_JSON).is_file():
            return None
        try:
            values = json.loads(path.read_text())
            calibration = cls(**{key: values[key] for key in cls.__dataclass_fields__})
            temperature = float(calibration.temperature)
        except (ValueError, TypeError, KeyError) as error:
            raise SegwiseError(
                f"{path}: not a calibration file ({error}); delete it or refit it with segwise eval RUN DATA --calibrate"
            ) from None
        if not (math.isfinite(temperature) and T_RANGE[0] <= temperature <= T_RANGE[1]):
            raise SegwiseError(
                f"{path}: temperature {temperature} is outside {T_RANGE[0]}..{T_RANGE[1]}; delete the file or "
                "refit it with segwise eval RUN DATA --calibrate"
            )
        return calibration


def with_temperature(probabilities: np.ndarray, temperature: float | None, activation: str) -> np.ndarray:
    """Probabilities (classes or labels first, any further shape) with `temperature` applied (None or
    1: unchanged). Only for showing and writing: decide on the untempered ones (module docstring)."""
    if temperature is None or temperature == 1.0:
        return probabilities
    scores = torch.from_numpy(np.ascontiguousarray(probabilities)).double()
    logits = log_scores(scores, activation) / temperature
    out = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 0)
    return out.to(torch.float32).numpy()


def log_scores(probabilities: torch.Tensor, activation: str) -> torch.Tensor:
    """Logits recovered from probabilities (classes first): log p under a softmax (the logits up to a
    constant per pixel, which the softmax ignores), logit p per label; clamped so 0 and 1 stay finite."""
    tiny = torch.finfo(probabilities.dtype).eps if activation == "sigmoid" else 1e-30
    clamped = (
        probabilities.clamp(tiny, 1 - tiny) if activation == "sigmoid" else probabilities.clamp_min(tiny)
    )
    return clamped.logit() if activation == "sigmoid" else clamped.log()


class PixelSample:
    """A random sample of valid pixels' logits and labels, `per_image` at most from each image."""

    def __init__(self, task: Task, per_image: int, seed: int = 0) -> None:
        self.task, self.per_image = task, per_image
        self.generator = torch.Generator().manual_seed(seed)
        self.logits: list[torch.Tensor] = []  # P×K each
        self.labels: list[torch.Tensor] = []  # P (class indices) or P×K (0/1 per label)

    @classmethod
    def for_images(cls, task: Task, images: int, seed: int = 0) -> PixelSample:
        return cls(task, max(1, FIT_PIXELS // max(1, images)), seed)

    def add(self, logits: torch.Tensor, truth: torch.Tensor) -> None:
        """One image: logits K×H×W, truth H×W of class indices (or K×H×W of 0/1), void IGNORE_INDEX."""
        scores = logits.detach().float().cpu().flatten(1).T  # P×K
        labels = truth.cpu().long()
        labels = labels.flatten(1).T if self.task.per_label else labels.flatten()
        valid = (labels != IGNORE_INDEX).all(1) if self.task.per_label else labels != IGNORE_INDEX
        where = valid.nonzero().flatten()
        chosen = where[torch.randperm(len(where), generator=self.generator)[: self.per_image]]
        self.logits.append(scores[chosen])
        self.labels.append(labels[chosen])

    def __len__(self) -> int:
        return sum(len(labels) for labels in self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(self):
            raise SegwiseError(
                "calibration: no valid pixels to fit a temperature on; evaluate a split with labelled pixels"
            )
        return torch.cat(self.logits), torch.cat(self.labels)


def nll(logits: torch.Tensor, labels: torch.Tensor, task: Task, temperature: float) -> float:
    """Mean negative log-likelihood of the sampled pixels' labels under logits / temperature."""
    scaled = logits.double() / temperature
    if task.per_label:
        return float(F.binary_cross_entropy_with_logits(scaled, labels.double()))
    return float(F.cross_entropy(scaled, labels))


def fit_temperature(sample: PixelSample, split: str) -> Calibration:
    """The temperature of least NLL on the sample (golden-section search on log T), with ECE and NLL
    before and after on the same pixels."""
    logits, labels = sample.tensors()
    task = sample.task

    def loss(log_t: float) -> float:
        return nll(logits, labels, task, math.exp(log_t))

    low, high = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(_GOLDEN_STEPS):
        if loss_a < loss_b:  # the minimum lies in [low, b]
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    temperature = math.exp((low + high) / 2)
    return Calibration(
        temperature=round(temperature, 6),
        ece_before=sample_ece(logits, labels, task, 1.0),
        ece_after=sample_ece(logits, labels, task, temperature),
        nll_before=nll(logits, labels, task, 1.0),
        nll_after=nll(logits, labels, task, temperature),
        split=split,
        pixels=len(labels),
    )


def sample_ece(logits: torch.Tensor, labels: torch.Tensor, task: Task, temperature: float) -> float:
    """ECE of the sampled pixels (P×K logits) under `temperature`."""
    return sample_reliability(logits, labels, task, temperature).ece()


def sample_reliability(
    logits: torch.Tensor, labels: torch.Tensor, task: Task, temperature: float
) -> Reliability:
    """The reliability bins of the sampled pixels (P×K logits, their labels) under `temperature`."""
    scaled = logits.double() / temperature
    probabilities = torch.sigmoid(scaled) if task.activation == "sigmoid" else torch.softmax(scaled, 1)
    reliability = Reliability(task)
    reliability.add_pixels(probabilities.T, labels.T if task.per_label else labels)
    return reliability


class Reliability:
    """Confidence against accuracy in ECE_BINS equal-width bins, accumulated image by image."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.count = np.zeros(ECE_BINS)
        self.confidence = np.zeros(ECE_BINS)  # summed
        self.correct = np.zeros(ECE_BINS)  # summed

    def add(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """One image: probabilities K×H×W, truth H×W of class indices (or K×H×W of 0/1), void IGNORE_INDEX."""
        scores = torch.from_numpy(np.ascontiguousarray(probabilities)).flatten(1)
        labels = torch.from_numpy(np.ascontiguousarray(truth)).long()
        self.add_pixels(scores, labels.flatten(1) if self.task.per_label else labels.flatten())

    def add_pixels(self, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        """K×P probabilities and P labels (or K×P per label)."""
        if self.task.per_label or self.task.has_foreground_threshold:
            # each plane's own probability against whether the pixel has that label
            planes = probabilities if self.task.per_label else probabilities[1:2]
            truth = labels if self.task.per_label else labels.unsqueeze(0)
            valid = truth != IGNORE_INDEX
            confidence, outcome = planes[valid].double(), (truth[valid] == 1).double()
        else:
            valid = labels != IGNORE_INDEX
            top, predicted = probabilities[:, valid].max(0)
            confidence, outcome = top.double(), (predicted == labels[valid]).double()
        index = (confidence * ECE_BINS).long().clamp(0, ECE_BINS - 1)
        self.count += np.bincount(index.numpy(), minlength=ECE_BINS)
        self.confidence += np.bincount(index.numpy(), weights=confidence.numpy(), minlength=ECE_BINS)
        self.correct += np.bincount(index.numpy(), weights=outcome.numpy(), minlength=ECE_BINS)

    def ece(self) -> float:
        total = self.count.sum()
        if total == 0:
            return float("nan")
        return float(np.abs(self.correct - self.confidence).sum() / total)

    def bins(self) -> list[dict]:
        """Per bin: its range, pixels, mean confidence and accuracy (null where empty)."""
        rows = []
        for b in range(ECE_BINS):
            n = self.count[b]
            rows.append(
                {
                    "low": b / ECE_BINS,
                    "high": (b + 1) / ECE_BINS,
                    "pixels": int(n),
                    "confidence": float(self.confidence[b] / n) if n else None,
                    "accuracy": float(self.correct[b] / n) if n else None,
                }
            )
        return rows
