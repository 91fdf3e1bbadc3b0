"""`segwise tune-postprocess`: each class's post-processing chosen on predictions the model did not train on.

Where the predictions come from (`held_out_predictions`):

- a run folder: its predictions on the data's val split, or, when the data has none, on the images the
  run held out (RUN/val.txt), as `segwise eval --split val` picks them; another split if asked;
- a folds parent (`folds.json` beside fold_0/ … fold_{K-1}/, from cross-validation): out-of-fold
  predictions, each fold's model on the images it held out (fold_i/val.txt), so that no image is scored
  by a model that trained on it. The choice is recorded in the parent, for the folds' ensemble.

The choosing itself (`inference.choose.choose_postprocessing`) takes any iterable of (probabilities,
truth) pairs; `tune_postprocess` joins the two and records the result in RUN/postprocess.json, which
`predict` and `eval` then apply (`inference.tuned`).

>>> tune_postprocess("runs/cells", "data/cells").path   # doctest: +SKIP
PosixPath('runs/cells/postprocess.json')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .config import RunConfig
from .constants import CONFIG, FOLDS_JSON, HELD_OUT
from .data.formats import DataSource, Pair
from .errors import SegwiseError
from .evaluate import held_out_pairs, pairs_of_split, read_truth, run_source
from .inference import Predictor, load
from .inference.choose import DEFAULT_MARGIN, DEFAULT_METRIC, Choices, check_options, choose_postprocessing
from .inference.tuned import write_postprocess


@dataclass
class Predictions:
    """Probabilities and truth of images a model did not train on, predicted as they are read."""

    config: RunConfig  # of the (first) run: its classes and task
    split: str  # which images, in words (postprocess.json's "split")
    images: int
    samples: Iterator[tuple[np.ndarray, np.ndarray]]


@dataclass
class TuneReport:
    """What `tune_postprocess` chose and where it recorded it."""

    choices: Choices
    path: Path  # RUN/postprocess.json
    split: str


def tune_postprocess(
    run: str | Path,
    data: str | Path,
    *,
    split: str | None = None,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    device: str = "auto",
    progress: bool = False,
) -> TuneReport:
    """Choose each class's post-processing on the run's held-out predictions (`held_out_predictions`)
    by `metric` (iou or dice) and `margin` (`choose_postprocessing`) and write RUN/postprocess.json."""
    check_options(metric, margin)  # before a model loads
    predictions = held_out_predictions(run, data, split, device, progress)
    classes = predictions.config.classes
    choices = choose_postprocessing(classes.task, classes.names, predictions.samples, metric, margin)
    path = write_postprocess(run, choices.record(predictions.split))
    return TuneReport(choices, path, predictions.split)


def held_out_predictions(
    run: str | Path, data: str | Path, split: str | None = None, device: str = "auto", progress: bool = False
) -> Predictions:
    """The predictions to choose on (see the module doc): a run's on `split` (default val), or a folds
    parent's out-of-fold ones (no `split`: each fold's own held-out images)."""
    run = Path(run)
    if (run / FOLDS_JSON).is_file():
        if split is not None:
            raise SegwiseError(
                f"{run} is a folds parent: it is tuned on its out-of-fold predictions (each fold's held-out "
                "images); leave out --split, or give one fold's run folder"
            )
        return _out_of_fold(run, data, device, progress)
    split = split or "val"
    predictor = load(run, device=device)
    source = run_source(predictor.config, data)
    pairs = pairs_of_split(source, split, run / HELD_OUT)
    if split == "val" and "val" not in source.pairs:
        split = f"val (the images the run held out, {run / HELD_OUT})"
    samples = _predicted([(lambda: predictor, pairs)], source, progress)
    return Predictions(predictor.config, split, len(pairs), samples)


def _out_of_fold(parent: Path, data: str | Path, device: str, progress: bool) -> Predictions:
    """Each fold's model on the images it held out, fold after fold (one model loaded at a time)."""
    folds = fold_runs(parent)
    configs = [RunConfig.load(fold / CONFIG) for fold in folds]
    for fold, config in zip(folds, configs, strict=True):
        if config.classes.names != configs[0].classes.names:
            raise SegwiseError(
                f"{fold}: classes {config.classes.names} differ from {folds[0].name}'s "
                f"{configs[0].classes.names}; the folds of one parent must share their classes"
            )
    source = run_source(configs[0], data)
    jobs = [(_loader(fold, device), held_out_pairs(source, fold / HELD_OUT)) for fold in folds]
    count = sum(len(pairs) for _, pairs in jobs)
    return Predictions(
        configs[0], f"out-of-fold ({len(folds)} folds)", count, _predicted(jobs, source, progress)
    )


def fold_runs(parent: Path) -> list[Path]:
    """A folds parent's fold_0 … fold_{K-1}, in order; missing or stray folds raise SegwiseError."""
    found = {int(m[1]): path for path in parent.iterdir() if (m := re.fullmatch(r"fold_(\d+)", path.name))}
    if not found or sorted(found) != list(range(len(found))):
        raise SegwiseError(
            f"{parent}: folds {sorted(found)} found beside {FOLDS_JSON}, expected fold_0 … fold_K-1; "
            "rerun the cross-validation or point at one fold's run folder"
        )
    return [found[index] for index in range(len(found))]


def _loader(run: Path, device: str) -> Callable[[], Predictor]:
    return lambda: load(run, device=device)


def _predicted(
    jobs: Sequence[tuple[Callable[[], Predictor], list[Pair]]], source: DataSource, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(probabilities, truth) of every pair of every job, each job's predictor loaded when it starts."""
    total = sum(len(pairs) for _, pairs in jobs)
    with tqdm(total=total, desc="predicting", unit="image", disable=not progress, leave=False) as bar:
        for predictor_of, pairs in jobs:
            predictor = predictor_of()
            for pair in pairs:
                image, truth = read_truth(pair, predictor.config.classes, source)
                yield predictor.predict_proba(image), truth
                bar.update()
