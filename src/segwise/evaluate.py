"""Evaluating a trained run on image/mask pairs, at each image's own resolution.

`evaluate_split` gives the confusion matrix (dataset-level and per image), the worst images for a
gallery, boundary scores and, for binary runs, the best foreground threshold by Dice. Multilabel runs
(one mask per class) are scored per label, a label predicted where its probability exceeds 0.5.
`write_evaluation` writes it all into a folder (by default `RUN/eval/<split>/`):

    metrics.json        every metric, overall and per class (by name), and the confusion matrix
                        (multilabel: one 2×2 matrix per label)
    per_image.csv       one row per image: pixels, pixel accuracy, mIoU, IoU of each class
    confusion.png       confusion matrix, each row divided by its class's support (multilabel: one
                        row per label with its true/false positive and negative rates)
    iou_per_class.png   per-class IoU bar chart
    worst.png           the k worst images by mIoU: image | truth | prediction | error map
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .constants import IGNORE_INDEX
from .data.dataset import read_pair
from .data.formats import DataSource, Pair, find_data
from .errors import SegwiseError
from .inference import Predictor
from .inference.postprocess import Steps
from .io import atomic_path
from .metrics import BoundaryScores, ConfusionMatrix, MultilabelConfusionMatrix

EVAL_DIR = "eval"
METRICS_JSON, PER_IMAGE_CSV, CONFUSION_PNG, IOU_PNG, WORST_PNG = (
    "metrics.json",
    "per_image.csv",
    "confusion.png",
    "iou_per_class.png",
    "worst.png",
)
THRESHOLD_JSON = "threshold.json"  # written into the run folder by `segwise eval --save-threshold`
THRESHOLDS = [round(t, 2) for t in np.arange(0.05, 0.96, 0.05)]


@dataclass
class Sample:
    """One evaluated image, kept only for the worst-k gallery (multilabel: truth and prediction C×H×W)."""

    name: str
    mean_iou: float
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


@dataclass
class Evaluation:
    """Everything measured on one split; `metrics()` turns it into the metrics.json dictionary."""

    names: list[str]
    pairs: list[Pair]
    matrix: ConfusionMatrix  # per_image=True
    boundary: BoundaryScores
    worst: list[Sample] = field(default_factory=list)
    threshold_dice: dict[float, float] | None = None  # binary runs: foreground Dice per threshold

    @property
    def best_threshold(self) -> tuple[float, float] | None:
        """(threshold, Dice) with the highest foreground Dice on the split; None unless binary."""
        if not self.threshold_dice:
            return None
        best = max(self.threshold_dice, key=lambda t: (self.threshold_dice[t], -abs(t - 0.5)))
        return best, self.threshold_dice[best]

    def metrics(self) -> dict:
        return metrics_dict(self.matrix, self.names, self.boundary, self.best_threshold, len(self.pairs))


def _number(value: float) -> float | None:
    """JSON has no NaN: undefined scores (a class absent from truth and prediction) become null."""
    value = float(value)
    return None if math.isnan(value) else value


def metrics_dict(
    matrix: ConfusionMatrix,
    names: list[str],
    boundary: BoundaryScores | None = None,
    best_threshold: tuple[float, float] | None = None,
    images: int | None = None,
) -> dict:
    """Every metric of the metrics module for one confusion matrix, overall and per class by name."""
    counts = matrix.counts()  # per class, for the multiclass C×C and the multilabel C×2×2 matrix alike
    support = counts.tp + counts.fn
    predicted = counts.tp + counts.fp
    scores = {
        "iou": matrix.iou(),
        "dice": matrix.dice(),
        "precision": matrix.precision(),
        "recall": matrix.recall(),
        "accuracy": matrix.accuracy(),
    }
    if matrix.per_image:
        scores |= {f"{name}_imagewise": getattr(matrix, name)("image") for name in list(scores)}
    if boundary is not None:
        scores |= {"boundary_iou": boundary.iou(), "boundary_f1": boundary.f1()}
    overall = {
        "mean_iou": _number(matrix.mean_iou()),
        "mean_dice": _number(scores["dice"].nanmean()),
        "mean_precision": _number(scores["precision"].nanmean()),
        "mean_recall": _number(scores["recall"].nanmean()),
        "frequency_weighted_iou": _number(matrix.frequency_weighted_iou()),
        "pixel_accuracy": _number(matrix.pixel_accuracy()),
    }
    if matrix.per_image:
        overall["mean_iou_imagewise"] = _number(matrix.mean_iou("image"))
    if boundary is not None:
        overall["mean_boundary_iou"] = _number(scores["boundary_iou"].nanmean())
        overall["mean_boundary_f1"] = _number(scores["boundary_f1"].nanmean())
    per_class = {
        name: {
            "index": index,
            "support": int(support[index]),
            "predicted": int(predicted[index]),
            **{key: _number(values[index]) for key, values in scores.items()},
        }
        for index, name in enumerate(names)
    }
    confusion = {"rows": "truth", "columns": "prediction", "counts": matrix.matrix.tolist()}
    if isinstance(matrix, MultilabelConfusionMatrix):  # counts[c] = label c's [[TN, FP], [FN, TP]]
        confusion = {"labels": names, "rows": "truth 0/1", "columns": "prediction 0/1", **confusion}
    result = {
        "images": images,
        "pixels": matrix.pixels(),
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": confusion,
    }
    if best_threshold is not None:
        result["best_threshold"] = {"threshold": best_threshold[0], "dice": _number(best_threshold[1])}
    return result


def evaluate_split(
    predictor: Predictor,
    pairs: list[Pair],
    worst_k: int = 6,
    progress: bool = False,
    source: DataSource | None = None,
) -> Evaluation:
    """Predict every pair at its own size; per-image scores, boundary scores, worst images, thresholds.

    `source` reads masks that are not plain files (COCO annotations, per-class mask folders)."""
    if not pairs:
        raise SegwiseError("no image/mask pairs to evaluate; pick a split that holds images")
    classes = predictor.config.classes
    binary = classes.mode == "binary"  # a 2-label multilabel run has no single foreground to threshold
    counter = MultilabelConfusionMatrix if classes.multilabel else ConfusionMatrix
    matrix = counter(classes.num_classes, per_image=True)
    boundary = BoundaryScores(classes.num_classes, multilabel=classes.multilabel)
    by_threshold = {t: ConfusionMatrix(2) for t in THRESHOLDS} if binary else {}
    worst: list[Sample] = []
    decide = Steps(multilabel=classes.multilabel)
    for image_path, mask_path in tqdm(pairs, desc="evaluating", disable=not progress, leave=False):
        image, mask = read_pair(image_path, mask_path, source)
        truth = classes.to_indices(mask, mask_path)
        probabilities = predictor.predict_proba(image)
        # decided as `predict` decides: the top class, or (multilabel) each label on its own
        prediction = decide(probabilities)
        if classes.multilabel:
            prediction = prediction.astype(np.uint8)  # 0/1 like the truth, not booleans
        target = torch.from_numpy(truth)[None]
        matrix.update(torch.from_numpy(prediction)[None], target)
        boundary.update(torch.from_numpy(prediction)[None], target)
        for threshold, counts in by_threshold.items():
            counts.update(torch.from_numpy(probabilities[1] > threshold).long()[None], target)
        score = matrix.image_mean_iou(-1)
        worst.append(Sample(image_path.stem, score, image, truth, prediction))
        worst = sorted(worst, key=lambda s: (not math.isnan(s.mean_iou), s.mean_iou))[:worst_k]
    thresholds = {t: float(counts.dice()[1]) for t, counts in by_threshold.items()} if binary else None
    return Evaluation(classes.names, pairs, matrix, boundary, worst, thresholds)


def split_pairs(
    data: str | Path, split: str, layout: str = "auto", categories: list[str] | None = None
) -> tuple[list[Pair], DataSource]:
    """The pairs of one split of a dataset folder (a folder without splits has only 'all') and the
    source that reads their masks; read with the layout the run was trained with."""
    source = find_data(data, layout, categories)
    source.check()
    if split not in source.pairs:
        raise SegwiseError(
            f"{data}: no '{split}' split (found {sorted(source.pairs)}); pass --split with one of those"
        )
    return source.pairs[split], source


def write_per_image_csv(evaluation: Evaluation, path: Path) -> None:
    fields = ["image", "mask", "pixels", "pixel_accuracy", "mean_iou"] + [
        f"iou_{n}" for n in evaluation.names
    ]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for (image, mask), row in zip(evaluation.pairs, evaluation.matrix.per_image_stats(), strict=True):
            ious = ["" if v is None else round(v, 6) for v in row["iou"]]
            writer.writerow(
                [
                    image,
                    mask,
                    row["pixels"],
                    round(row["pixel_accuracy"], 6),
                    round(row["mean_iou"], 6),
                    *ious,
                ]
            )


def write_json(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_evaluation(evaluation: Evaluation, predictor: Predictor, out: Path) -> dict:
    """Write metrics.json, per_image.csv and the figures into `out`; return the metrics dictionary."""
    from .report.figures import plot_confusion, plot_iou_bars, plot_label_confusion, plot_worst

    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluation.metrics()
    write_json(metrics, out / METRICS_JSON)
    write_per_image_csv(evaluation, out / PER_IMAGE_CSV)
    if isinstance(evaluation.matrix, MultilabelConfusionMatrix):
        plot_label_confusion(evaluation.matrix.matrix.numpy(), evaluation.names, out / CONFUSION_PNG)
    else:
        plot_confusion(evaluation.matrix.matrix.numpy(), evaluation.names, out / CONFUSION_PNG)
    plot_iou_bars({name: c["iou"] for name, c in metrics["per_class"].items()}, out / IOU_PNG)
    if evaluation.worst:
        plot_worst(evaluation.worst, predictor.config.classes.palette, IGNORE_INDEX, out / WORST_PNG)
    return metrics


def save_threshold(run_dir: Path, threshold: float, dice: float, split: str) -> Path:
    """Record the best foreground threshold in the run folder (threshold.json)."""
    path = Path(run_dir) / THRESHOLD_JSON
    write_json({"threshold": threshold, "dice": dice, "split": split}, path)
    return path
