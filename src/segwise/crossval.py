"""Cross-validation: `segwise train DATA --folds K`, its out-of-fold predictions and its summary.

The data's training images are dealt into K folds (folds.py: seeded by the run's seed, stratified by
the classes each image holds). The plan is made once, on the data as a single run would read it, and
every fold trains with it: fold i is an ordinary run folder whose validation images are fold i
(`data.held_out`, so RUN/val.txt lists exactly them) and whose training images are the other folds.
A time budget (`--budget`) is per fold. The folds parent, `runs/<name>/`:

    folds.json        K, seed, the data folder, each fold's images (written first)
    plan.yaml         the plan every fold trains with
    fold_i/           an ordinary run; fold_i/oof/ holds its best weights' predictions of fold i at
                      each image's own size: NNNN.npz (probabilities as uint8 = round(255·P), C×H×W;
                      truth, as the masks decode to class indices, or per label 0/1 planes, 255 void;
                      confusion, the image's confusion matrix), index.csv (file,image: the .npz of each
                      image, named relative to the data folder) and metrics.json (as `segwise eval`'s)
    cv_summary.json   per fold, mean and standard deviation over the folds of every metric of the
    cv_summary.csv    folds' metrics.json (overall and per class), and the pooled out-of-fold scores
                      of the summed per-image confusion matrices

`--fold I` trains fold I only (folds spread over machines: each draws the same folds from the same
seed; into an existing folds parent it joins its folds.json and plan.yaml). A killed fold resumes as
any run, `segwise train --resume PARENT/fold_I`, and then writes its out-of-fold predictions.
`out_of_fold(PARENT)` reads every fold's predictions back, e.g. to choose post-processing on them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, RunConfig
from .constants import (
    CONFIG,
    CV_SUMMARY_CSV,
    CV_SUMMARY_JSON,
    FOLDS,
    FOLDS_PLAN,
    HELD_OUT,
    METRICS_JSON,
    OUT_OF_FOLD,
    OUT_OF_FOLD_INDEX,
)
from .data import SegmentationData
from .data.dataset import held_out_name
from .engine import TrainResult
from .engine import train as train_run
from .engine.plan import make_plan, write_plan
from .errors import SegwiseError
from .evaluate import evaluate_split, held_out_pairs, metrics_dict, run_source, write_json
from .folds import Folds, fold_dir, stratified_folds
from .inference.predictor import load as load_run
from .io import atomic_path, make_folder
from .metrics import confusion_matrix_for
from .run import create_run_dir, folder_name


@dataclass
class CrossValidation:
    """What `train(..., folds=K)` did: the folds parent, the folds it trained, the summary it wrote."""

    run_dir: Path  # the folds parent
    folds: dict[int, TrainResult]
    summary: dict


@dataclass
class OutOfFold:
    """One held-out image's prediction by the fold that did not train on it."""

    fold: int
    image: str  # relative to the data folder
    probabilities: np.ndarray  # C×H×W float32, dequantised from uint8 (steps of 1/255)
    truth: np.ndarray  # H×W class indices (per-label task: C×H×W of 0/1), 255 = void
    confusion: np.ndarray  # the image's confusion matrix (per-label task: C×2×2)


def train(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    *,
    folds: int | None = None,
    fold: int | None = None,
    resume: str | Path | None = None,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    progress: bool = True,
    **options: Any,
) -> TrainResult | CrossValidation:
    """`segwise.train`: one run (`engine.train`, whose options it takes), or with `folds` K-fold
    cross-validation (the module docstring); `fold` trains one fold only. A resumed fold writes its
    out-of-fold predictions and the summary once trained.

    >>> cv = segwise.train("data/cells", folds=5, budget="10m")   # doctest: +SKIP
    >>> segwise.load(cv.run_dir).predict("new.png")               # the 5 folds as an ensemble  # doctest: +SKIP
    """
    if folds is None:
        if fold is not None:
            raise SegwiseError("train: --fold I picks one of --folds K; give --folds too")
        result = train_run(
            data, config, resume=resume, runs_dir=runs_dir, name=name, progress=progress, **options
        )
        if resume is not None and (result.run_dir.parent / FOLDS).is_file() and _main_process():
            finish_fold(result.run_dir, progress)
        return result
    if resume is not None:
        raise SegwiseError("train: --folds starts new folds; resume a fold alone with --resume PARENT/fold_I")
    if data is None:
        raise SegwiseError("train: --folds K needs DATA")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise SegwiseError("train: --folds runs in one process; spread the folds over machines with --fold I")
    return train_folds(data, config, folds, fold, Path(runs_dir), name, progress, options)


def _main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def train_folds(
    data: str | Path,
    config: Config | str | Path | None,
    k: int,
    only: int | None,
    runs_dir: Path,
    name: str | None,
    progress: bool,
    options: dict[str, Any],
) -> CrossValidation:
    """Plan once, draw the folds, then train each fold (or fold `only`) and keep its predictions."""
    if only is not None and not 0 <= only < k:
        raise SegwiseError(f"--fold {only}: folds are numbered 0 to {k - 1}; pick one of those")
    transform = options.pop("augment", None) if callable(options.get("augment")) else None
    options.pop("allow_changed_data", None)  # a new fold's data is recorded, never compared
    parent, drawn = _folds_parent(data, config, k, only, runs_dir, name or Path(data).name, progress, options)
    trained = {}
    for index in range(k) if only is None else [only]:
        if fold_dir(parent, index).exists():
            raise SegwiseError(
                f"{fold_dir(parent, index)}: fold {index} exists; continue it with "
                f"`segwise train --resume {fold_dir(parent, index)}`, or pass another --name"
            )
        overrides = {"data": {"held_out": drawn.folds[index]}}
        if transform is not None:
            overrides["train"] = {"augment": transform}
        result = train_run(
            data,
            parent / FOLDS_PLAN,
            overrides=overrides,
            runs_dir=parent,
            name=fold_dir(parent, index).name,
            progress=progress,
        )
        trained[index] = result
        finish_fold(result.run_dir, progress)
    return CrossValidation(parent, trained, write_summary(parent))


def _folds_parent(
    data: str | Path,
    config: Config | str | Path | None,
    k: int,
    only: int | None,
    runs_dir: Path,
    name: str,
    progress: bool,
    options: dict[str, Any],
) -> tuple[Path, Folds]:
    """The folds parent and its folds: for `--fold I`, an existing parent of the same K and data is
    joined; otherwise the plan is made, the folds drawn and both written into a new parent."""
    root = str(Path(data).resolve())
    if only is not None and (runs_dir / folder_name(name) / FOLDS).is_file():
        parent = runs_dir / folder_name(name)
        drawn = Folds.read(parent)
        if (drawn.k, drawn.data) != (k, root):
            raise SegwiseError(
                f"{parent / FOLDS}: holds {drawn.k} folds of {drawn.data}, not {k} of {root}; "
                "pass another --name for these folds"
            )
        return parent, drawn
    plan = make_plan(data, config, overrides=options.pop("overrides", None), **options)
    for note in plan.notes if progress else []:
        print(f"plan: {note}")
    names, presence = class_presence(plan.data)
    drawn = Folds(
        k, plan.config.train.seed, root, stratified_folds(names, presence, k, plan.config.train.seed)
    )
    if only is None:
        parent = create_run_dir(runs_dir, name)
    else:
        parent = runs_dir / folder_name(name)
        if parent.exists():
            raise SegwiseError(f"{parent}: exists and holds no {FOLDS}; pass another --name for the folds")
        make_folder(parent)
    drawn.write(parent)
    write_plan(plan, parent / FOLDS_PLAN)
    return parent, drawn


def class_presence(data_set: SegmentationData) -> tuple[list[str], np.ndarray]:
    """The training pool's images (the data's train split, or all its pairs when it has no val split:
    the images a single run held out are part of it) by name, and which classes each holds (N×C)."""
    pairs, masks = data_set.train_pairs, data_set.train_masks
    if data_set.held_out:
        pairs = pairs + data_set.val_pairs
        masks = np.concatenate([masks, data_set.val_masks])
    per_image, _ = data_set.classes.task.pixel_counts(masks)
    return [held_out_name(image, data_set.root) for image, _ in pairs], per_image > 0


# ---- out-of-fold predictions


def finish_fold(run_dir: Path, progress: bool = True) -> None:
    """A trained fold's out-of-fold predictions, then the parent's summary over the folds done so far."""
    parent = run_dir.parent
    drawn = Folds.read(parent)
    metrics = write_out_of_fold(run_dir, drawn.data)
    summary = write_summary(parent)
    if progress:
        index = next(i for i in range(drawn.k) if fold_dir(parent, i) == run_dir)
        print(
            f"fold {index}: out-of-fold mIoU {metrics['overall']['mean_iou']:.4f} on its "
            f"{metrics['images']} held-out images ({len(summary['done'])} of {drawn.k} folds done)"
        )


def write_out_of_fold(run_dir: Path, data: str | Path, device: str = "auto") -> dict:
    """Predict a fold's held-out images (RUN/val.txt) with its best weights into RUN/oof/; the metrics."""
    predictor = load_run(run_dir, device=device)
    source = run_source(predictor.config, data)
    pairs = held_out_pairs(source, run_dir / HELD_OUT)
    folder = make_folder(run_dir / OUT_OF_FOLD)
    rows: list[tuple[str, str]] = []

    def keep(image: Path, probabilities: np.ndarray, truth: np.ndarray, confusion: np.ndarray) -> None:
        file = f"{len(rows):05d}.npz"
        quantised = np.rint(np.clip(probabilities, 0, 1) * 255).astype(np.uint8)
        with atomic_path(folder / file) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, probabilities=quantised, truth=truth, confusion=confusion)
        rows.append((file, held_out_name(image, source.root)))

    evaluation = evaluate_split(predictor, pairs, worst_k=0, source=source, on_image=keep)
    with atomic_path(folder / OUT_OF_FOLD_INDEX) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "image"), *rows])
    metrics = evaluation.metrics()
    write_json(metrics, folder / METRICS_JSON)  # last: a fold with it has all its predictions
    return metrics


def out_of_fold(parent: str | Path) -> Iterator[OutOfFold]:
    """Every out-of-fold prediction of a folds parent, fold by fold (folds not yet done are skipped)."""
    parent = Path(parent)
    for index in range(Folds.read(parent).k):
        folder = fold_dir(parent, index) / OUT_OF_FOLD
        if not (folder / METRICS_JSON).is_file():
            continue
        for file, image in _index(folder):
            with np.load(folder / file, allow_pickle=False) as stored:
                yield OutOfFold(
                    index,
                    image,
                    stored["probabilities"].astype(np.float32) / 255,
                    stored["truth"],
                    stored["confusion"],
                )


def _index(folder: Path) -> list[tuple[str, str]]:
    """index.csv's (file, image) rows; a file must be a .npz of the folder itself (no path in it)."""
    path = folder / OUT_OF_FOLD_INDEX
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))[1:]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SegwiseError(f"{path}: not readable ({error}); train the fold again") from None
    for row in rows:
        if len(row) != 2 or Path(row[0]).name != row[0] or not row[0].endswith(".npz"):
            raise SegwiseError(f"{path}: row {row} is not `NNNNN.npz,image`; train the fold again")
    return [(file, image) for file, image in rows]


# ---- the summary


def write_summary(parent: Path) -> dict:
    """cv_summary.json and .csv over the folds whose out-of-fold metrics exist (see the module docstring)."""
    drawn = Folds.read(parent)
    per_fold = {}
    for index in range(drawn.k):
        path = fold_dir(parent, index) / OUT_OF_FOLD / METRICS_JSON
        if path.is_file():
            per_fold[index] = _flat(json.loads(path.read_text()))
    keys = list(dict.fromkeys(key for metrics in per_fold.values() for key in metrics))
    values = {key: [metrics.get(key) for metrics in per_fold.values()] for key in keys}
    summary = {
        "k": drawn.k,
        "seed": drawn.seed,
        "data": drawn.data,
        "done": list(per_fold),
        "per_fold": {f"fold_{index}": metrics for index, metrics in per_fold.items()},
        "mean": {key: _number(_nanmean(found)) for key, found in values.items()},
        "std": {key: _number(_nanstd(found)) for key, found in values.items()},
        "pooled": _flat(pooled_metrics(parent, list(per_fold))) if per_fold else {},
    }
    write_json(summary, parent / CV_SUMMARY_JSON)
    _write_summary_csv(summary, keys, parent / CV_SUMMARY_CSV)
    return summary


def pooled_metrics(parent: Path, done: list[int]) -> dict:
    """Every confusion-matrix metric of all held-out images together (their matrices summed)."""
    config = RunConfig.load(fold_dir(parent, done[0]) / CONFIG)
    matrices = []
    for index in done:
        folder = fold_dir(parent, index) / OUT_OF_FOLD
        for file, _ in _index(folder):
            with np.load(folder / file, allow_pickle=False) as stored:
                matrices.append(torch.from_numpy(stored["confusion"]))
    matrix = confusion_matrix_for(config.classes.task, per_image=True)
    matrix.image_matrices = torch.stack(matrices)
    matrix.matrix = matrix.image_matrices.sum(0)
    return metrics_dict(matrix, config.classes.names, images=len(matrices))


def _flat(metrics: dict) -> dict[str, float | None]:
    """A metrics.json's overall and per-class scores as `overall.mean_iou`, `per_class.road.iou`, ..."""
    flat = {f"overall.{key}": value for key, value in metrics["overall"].items()}
    for name, scores in metrics["per_class"].items():
        flat |= {f"per_class.{name}.{key}": value for key, value in scores.items() if key != "index"}
    return flat


def _finite(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _nanmean(values: list) -> float:
    found = _finite(values)
    return float(np.mean(found)) if found else math.nan


def _nanstd(values: list) -> float:
    """The sample standard deviation over the folds (undefined for fewer than two)."""
    found = _finite(values)
    return float(np.std(found, ddof=1)) if len(found) > 1 else math.nan


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _write_summary_csv(summary: dict, keys: list[str], path: Path) -> None:
    """One row per metric: each fold's value, the mean, the std, the pooled value."""
    folds = list(summary["per_fold"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", *folds, "mean", "std", "pooled"])
        for key in keys:
            cells = [summary["per_fold"][fold].get(key) for fold in folds]
            cells += [summary["mean"][key], summary["std"][key], summary["pooled"].get(key)]
            writer.writerow([key, *("" if cell is None else cell for cell in cells)])


def summary_line(summary: dict, parent: Path) -> str:
    """What `segwise train --folds` prints last."""
    key = "overall.mean_iou"
    mean, std, pooled = summary["mean"].get(key), summary["std"].get(key), summary["pooled"].get(key)
    spread = f" ± {std:.4f}" if std is not None else ""
    shown = "n/a" if mean is None else f"{mean:.4f}{spread}"
    return (
        f"cross-validation: {len(summary['done'])} of {summary['k']} folds, held-out mIoU {shown} "
        f"(mean ± std of the folds), pooled out-of-fold mIoU "
        f"{'n/a' if pooled is None else f'{pooled:.4f}'}; wrote {parent / CV_SUMMARY_JSON}"
    )
