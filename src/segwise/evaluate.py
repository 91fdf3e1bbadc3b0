"""Evaluating a trained run on image/mask pairs, at each image's own resolution.

`evaluate_run` is `segwise eval`: the run's split of a dataset evaluated (its masks post-processed as
`segwise predict` would, `inference.tuned`), the evaluation folder written, the best threshold saved
when asked, the report refreshed. Underneath, `evaluate_split` gives the
confusion matrix (dataset-level and per image), the worst images for a gallery, boundary scores and,
for binary runs, the best foreground threshold by Dice. A per-label task (one mask per label) is
scored per label, a label predicted where its probability exceeds 0.5. `write_evaluation` writes it
all into a folder (by default `RUN/eval/<split>/`):

    metrics.json        every metric, overall and per class (by name), and the confusion matrix
                        (per-label task: one 2×2 matrix per label)
    per_image.csv       one row per image: pixels, pixel accuracy, mIoU, IoU of each class
    confusion.png       confusion matrix, each row divided by its class's support (per-label task:
                        one row per label with its true/false positive and negative rates)
    iou_per_class.png   per-class IoU bar chart
    worst.png           the k worst images by mIoU: image | truth | prediction | error map
    reliability.png     confidence against accuracy (calibration.py), with the run's temperature when it has one

Scores and thresholds use the model's own probabilities; the calibration error (`ece`) is measured on
them over every valid pixel and, with a temperature (RUN/calibration.json, or fitted here with
`calibrate`), `ece_calibrated` on a random sample of the pixels with it applied.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration import (
    Calibration,
    PixelSample,
    Reliability,
    fit_temperature,
    log_scores,
    sample_reliability,
)
from .config import RunConfig
from .constants import (
    CONFUSION_PNG,
    EVAL_DIR,
    HELD_OUT,
    IGNORE_INDEX,
    IOU_PNG,
    METRICS_JSON,
    PER_IMAGE_CSV,
    RELIABILITY_PNG,
    WORST_PNG,
)
from .data.dataset import read_pair
from .data.formats import DataSource, Pair, find_data
from .data.overrides import Overrides
from .errors import SegwiseError
from .inference import Ensemble, Predictor, load
from .inference.postprocess import Steps
from .inference.threshold import THRESHOLDS, write_threshold
from .inference.tuned import applied_steps
from .io import atomic_path, make_folder
from .metrics import BoundaryScores, ConfusionMatrix, boundary_scores_for, confusion_matrix_for
from .run import held_out_name
from .task import Classes


@dataclass
class Sample:
    """One evaluated image, kept only for the worst-k gallery (a label stack: truth and prediction C×H×W)."""

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
    reliability: Reliability | None = None  # the model's own probabilities, every valid pixel
    sample: PixelSample | None = None  # a random sample of the pixels, to fit or apply a temperature
    calibration: Calibration | None = None  # the temperature `ece_calibrated` is measured with

    @property
    def best_threshold(self) -> tuple[float, float] | None:
        """(threshold, Dice) with the highest foreground Dice on the split; None unless binary."""
        if not self.threshold_dice:
            return None
        best = max(self.threshold_dice, key=lambda t: (self.threshold_dice[t], -abs(t - 0.5)))
        return best, self.threshold_dice[best]

    def metrics(self) -> dict:
        metrics = metrics_dict(self.matrix, self.names, self.boundary, self.best_threshold, len(self.pairs))
        return metrics | self.calibration_metrics(metrics["overall"])

    def calibrated_reliability(self) -> Reliability | None:
        if self.calibration is None or self.sample is None:
            return None
        return sample_reliability(*self.sample.tensors(), self.sample.task, self.calibration.temperature)

    def calibration_metrics(self, overall: dict) -> dict:
        """`ece` (and `ece_calibrated`) added to `overall`; the bins and the temperature under "calibration"."""
        if self.reliability is None:
            return {}
        overall["ece"] = _number(self.reliability.ece())
        found = {"bins": self.reliability.bins()}
        calibrated = self.calibrated_reliability()
        if calibrated is not None:
            overall["ece_calibrated"] = _number(calibrated.ece())
            found |= {
                "temperature": self.calibration.temperature,
                "fitted_on": self.calibration.split,
                "sampled_pixels": int(calibrated.count.sum()),
                "bins_calibrated": calibrated.bins(),
            }
        return {"calibration": found}


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
    counts = matrix.counts()  # per class, for a C×C matrix and one 2×2 matrix per label alike
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
    result = {
        "images": images,
        "pixels": matrix.pixels(),
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": matrix.describe(names),
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
    steps: Steps | None = None,
    on_image: Callable[[Path, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> Evaluation:
    """Predict every pair at its own size; per-image scores, boundary scores, worst images, thresholds.

    `source` reads masks that are not plain files (COCO annotations, per-class mask folders). `steps`
    turns probabilities into masks (default: the task's decision, no cleaning); the best-threshold
    search always reads the probabilities themselves. `on_image(image path, probabilities, truth, its
    confusion matrix)` sees each image as it is scored (cross-validation keeps them: crossval.py)."""
    if not pairs:
        raise SegwiseError("no image/mask pairs to evaluate; pick a split that holds images")
    classes = predictor.config.classes
    task = classes.task
    matrix = confusion_matrix_for(task, per_image=True)
    boundary = boundary_scores_for(task)
    by_threshold = {t: ConfusionMatrix(2) for t in THRESHOLDS} if task.has_foreground_threshold else {}
    worst: list[Sample] = []
    decide = steps or Steps(task)  # as `predict` decides: the top class, or each label on its own
    reliability, sample = Reliability(task), PixelSample.for_images(task, len(pairs))
    for image_path, mask_path in tqdm(pairs, desc="evaluating", disable=not progress, leave=False):
        image, truth = read_truth((image_path, mask_path), classes, source)
        probabilities = predictor.predict_proba(image, calibrated=False)  # as decisions use them
        reliability.add(probabilities, truth)
        sample.add(log_scores(torch.from_numpy(probabilities), task.activation), torch.from_numpy(truth))
        prediction = decide(probabilities).astype(truth.dtype)  # the truth's type: 0/1 planes, not booleans
        target = torch.from_numpy(truth)[None]
        matrix.update(torch.from_numpy(prediction)[None], target)
        if on_image is not None:
            on_image(image_path, probabilities, truth, matrix.image_matrices[-1].numpy())
        boundary.update(torch.from_numpy(prediction)[None], target)
        for threshold, counts in by_threshold.items():
            counts.update(torch.from_numpy(probabilities[1] > threshold).long()[None], target)
        score = matrix.image_mean_iou(-1)
        worst.append(Sample(image_path.stem, score, image, truth, prediction))
        worst = sorted(worst, key=lambda s: (not math.isnan(s.mean_iou), s.mean_iou))[:worst_k]
    thresholds = {t: float(counts.dice()[1]) for t, counts in by_threshold.items()} or None
    return Evaluation(
        classes.names, pairs, matrix, boundary, worst, thresholds, reliability, sample, predictor.calibration
    )


def read_truth(
    pair: Pair, classes: Classes, source: DataSource | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An image and its truth as the run's class indices (a per-label task: C×H×W of 0/1), void outside
    the source's region of interest."""
    image_path, mask_path = pair
    image, mask = read_pair(image_path, mask_path, source)
    truth = classes.to_indices(mask, mask_path)
    return image, source.void_outside_roi(truth, image_path) if source else truth


def trained_reading(config: RunConfig) -> tuple[str, list[str] | None, Overrides]:
    """How the run read its data: the layout, the categories, and the folders, mask pattern and sets."""
    plan = config.data.get("plan") or {}
    return plan.get("layout", "auto"), plan.get("categories"), Overrides.of(plan)


def run_source(config: RunConfig, data: str | Path) -> DataSource:
    """`data` read as the run was trained on it (`trained_reading`)."""
    source = find_data(data, *trained_reading(config))
    source.check()
    return source


def split_pairs(
    data: str | Path,
    split: str,
    layout: str = "auto",
    categories: list[str] | None = None,
    held_out: Path | None = None,
    overrides: Overrides | None = None,
) -> tuple[list[Pair], DataSource]:
    """The pairs of one split of a dataset folder (a folder without splits has only 'all') and the
    source that reads their masks; read with the layout the run was trained with. Without a 'val'
    split, 'val' is the images the run held out, listed in `held_out` (RUN/val.txt), when there is one."""
    source = find_data(data, layout, categories, overrides)
    source.check()
    return pairs_of_split(source, split, held_out), source


def pairs_of_split(source: DataSource, split: str, held_out: Path | None = None) -> list[Pair]:
    """One split's pairs (see `split_pairs`)."""
    if split == "val" and split not in source.pairs and held_out is not None and held_out.is_file():
        return held_out_pairs(source, held_out)
    if split not in source.pairs:
        raise SegwiseError(
            f"{source.root}: no '{split}' split (found {sorted(source.pairs)}); pass --split with one of those"
        )
    return source.pairs[split]


def held_out_pairs(source: DataSource, listing: Path) -> list[Pair]:
    """The pairs whose images `listing` names (paths relative to the data folder, one a line)."""
    by_path = {
        held_out_name(image, source.root): (image, mask)
        for pairs in source.pairs.values()
        for image, mask in pairs
    }
    wanted = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    missing = [name for name in wanted if name not in by_path]
    if missing or not wanted:
        raise SegwiseError(
            f"{listing}: {len(missing)} of the {len(wanted)} images the run held out are not in {source.root} "
            f"(first: {missing[0] if missing else 'none listed'}); evaluate on the data the run trained on, "
            "or pass --split with one of the data's splits"
        )
    return [by_path[name] for name in wanted]


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
    from .report.figures import (
        plot_confusion,
        plot_iou_bars,
        plot_label_confusion,
        plot_reliability,
        plot_worst,
    )

    make_folder(out)
    metrics = evaluation.metrics()
    write_json(metrics, out / METRICS_JSON)
    write_per_image_csv(evaluation, out / PER_IMAGE_CSV)
    classes = predictor.config.classes
    # A per-label task's matrix is one 2×2 matrix per label: drawn as rates per label, not class × class.
    plot = plot_label_confusion if classes.task.per_label else plot_confusion
    plot(evaluation.matrix.matrix.numpy(), evaluation.names, out / CONFUSION_PNG)
    plot_iou_bars({name: c["iou"] for name, c in metrics["per_class"].items()}, out / IOU_PNG)
    if evaluation.worst:
        plot_worst(evaluation.worst, classes.palette, IGNORE_INDEX, out / WORST_PNG)
    if "calibration" in metrics:
        found = metrics["calibration"]
        plot_reliability(
            found["bins"], found.get("bins_calibrated"), found.get("temperature"), out / RELIABILITY_PNG
        )
    return metrics


@dataclass
class EvaluationReport:
    """What `evaluate_run` found and wrote."""

    images: int  # image/mask pairs evaluated
    metrics: dict  # as metrics.json holds them
    best_threshold: tuple[float, float] | None  # (threshold, Dice) of a binary run, else None
    threshold_file: Path | None  # RUN/threshold.json when it was saved, else None
    output: Path  # the evaluation folder
    report: Path | None  # RUN/report.html when it was refreshed (output folder left at its default)
    held_out: Path | None = None  # RUN/val.txt when it chose the images (the data has no val split)
    postprocessing: str | None = None  # one line: the recorded post-processing applied, if any
    members: int = 1  # the runs whose probabilities were averaged (an ensemble: more than one)
    calibration_file: Path | None = None  # RUN/calibration.json when `calibrate` refitted it


def evaluate_run(
    run: str | Path | Sequence[str | Path],
    data: str | Path,
    *,
    split: str = "val",
    output: str | Path | None = None,
    worst: int = 6,
    save_threshold: bool = False,
    calibrate: bool = False,
    device: str = "auto",
    progress: bool = False,
    postprocess: bool = True,
) -> EvaluationReport:
    """`segwise eval`: evaluate the run on one split of `data`, read with the layout and categories the
    run was trained with (split "val" of data without a val split: the images the run held out, RUN/val.txt); write the evaluation folder (default RUN/eval/SPLIT) with `worst` images in the
    gallery; with `save_threshold`, record a binary run's best threshold in RUN/threshold.json; with
    `calibrate`, fit the temperature on the split and write RUN/calibration.json (calibration.py);
    refresh RUN/report.html unless `output` is given. The masks are post-processed as `segwise predict`
    would (RUN/postprocess.json, else RUN/threshold.json: `inference.tuned`) unless `postprocess` is False.

    `run` may be an ensemble (inference/ensemble.py): a folds parent, evaluated into PARENT/eval/SPLIT,
    or a list of runs, which has no folder of its own: give `output`.

    >>> evaluate_run("runs/cells", "data/cells", split="val").metrics["overall"]["mean_iou"]  # doctest: +SKIP
    """
    from .report.html import write_report

    predictor = load(run, device=device)
    folder = predictor.run_dir  # a run folder, a folds parent, or None: an ensemble of several runs
    if folder is None and (output is None or save_threshold):
        raise SegwiseError(
            "eval: an ensemble of several runs has no run folder of its own; pass -o FOLDER for its "
            "evaluation (and --save-threshold only for one run or a folds parent)"
        )
    if calibrate and isinstance(predictor, Ensemble):
        raise SegwiseError(
            "eval --calibrate fits one run's temperature; calibrate each run (each fold) on its own, "
            "the ensemble averages their calibrated probabilities"
        )
    listing = None if folder is None else folder / HELD_OUT
    source = run_source(predictor.config, data)  # as the (first) run was trained on it
    pairs = pairs_of_split(source, split, listing)
    held_out = listing if split == "val" and "val" not in source.pairs else None
    applied = applied_steps(folder, predictor.task, predictor.class_names, recorded=postprocess)
    evaluation = evaluate_split(predictor, pairs, worst, progress, source, applied.steps)
    calibration_file = None
    if calibrate:
        evaluation.calibration = fit_temperature(evaluation.sample, split)
        calibration_file = evaluation.calibration.save(folder)
    out = Path(output) if output else folder / EVAL_DIR / split
    metrics = write_evaluation(evaluation, predictor, out)
    best = evaluation.best_threshold
    saved = write_threshold(folder, *best, split) if save_threshold and best is not None else None
    report = None if output or isinstance(predictor, Ensemble) else write_report(folder)
    members = len(predictor.members) if isinstance(predictor, Ensemble) else 1
    return EvaluationReport(
        len(pairs), metrics, best, saved, out, report, held_out, applied.message, members, calibration_file
    )
