"""Ensembles: several trained runs that predict as one, their probabilities averaged.

`load(RUN)` is a `Predictor`; `load(PARENT)` of a folds parent (`segwise train --folds K`) and
`load([RUN, RUN2, ...])` are an `Ensemble`, with the same API. Each member predicts with its own
preprocessing (input size, normalization), TTA and tiling, at the input's own size; the ensemble's
probabilities are the mean of the members'. Members must agree on what a probability means: the same
class list, task mode and input channels (refused otherwise, naming the two runs that differ).

`Ensemble.member_probabilities` gives the members' probabilities stacked (M×C×H×W), e.g. for a map of
how much the members disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..constants import CONFIG, FOLDS, WEIGHTS
from ..errors import SegwiseError
from ..folds import Folds, fold_dir
from .predictor import ImageLike, InferenceOptions, Predictor
from .predictor import load as load_run

RunLike = str | Path


class Ensemble(Predictor):
    """Members (Predictors of runs that agree on classes, mode and channels) predicting as one.

    `run_dir` is the folds parent it was loaded from (its threshold.json applies), or None for a list
    of runs. `model` is the first member's, for what the inputs are read with (its input channels).
    """

    def __init__(self, members: Sequence[Predictor], run_dir: str | Path | None = None) -> None:
        if not members:
            raise SegwiseError("an ensemble needs at least one run")
        check_agreement(members)
        first = members[0]
        self.members = list(members)
        self.options, self.device, self.model = first.options, first.device, first.model
        self.config = first.config
        self.class_names, self.palette, self.task = first.class_names, first.palette, first.task
        self.run_dir = None if run_dir is None else Path(run_dir)
        # Each member tempers its own probabilities (its calibration.json) before they are averaged, for
        # decisions too: an ensemble has no probabilities of its own to keep apart, nor a temperature.
        self.calibration = None

    @torch.no_grad()
    def member_probabilities(self, image: ImageLike, *, calibrated: bool = True, **options) -> np.ndarray:
        """Each member's (calibrated) probabilities for `image`, stacked: M×C×H×W float32 at its size."""
        array = self._as_array(image)
        return np.stack([member.predict_proba(array, **options) for member in self.members])

    @torch.no_grad()
    def predict_proba(self, image: ImageLike, *, calibrated: bool = True, **options) -> np.ndarray:
        """The mean of the members' (calibrated) probabilities, C×H×W float32 at the image's own size;
        `calibrated` is accepted for the Predictor API: see the note in __init__."""
        array = self._as_array(image)
        total = self.members[0].predict_proba(array, **options)
        for member in self.members[1:]:  # summed one at a time: a large image's stack is never held
            total += member.predict_proba(array, **options)
        return total / len(self.members)

    @torch.no_grad()
    def predict_proba_batch(
        self, images: Sequence[ImageLike], *, calibrated: bool = True, **options
    ) -> list[np.ndarray]:
        """`predict_proba` of each image, each member predicting the batch in its own forward passes."""
        arrays = [self._as_array(image) for image in images]
        totals = self.members[0].predict_proba_batch(arrays, **options)
        for member in self.members[1:]:
            for total, probabilities in zip(
                totals, member.predict_proba_batch(arrays, **options), strict=True
            ):
                total += probabilities
        return [total / len(self.members) for total in totals]

    def tile_predictor(self, options: InferenceOptions) -> Callable[[torch.Tensor], torch.Tensor]:
        """The members' tile probabilities averaged (a streamed image is tiled once, for all members)."""
        predictors = [member.tile_predictor(options) for member in self.members]
        return lambda tiles: sum(predict(tiles) for predict in predictors) / len(predictors)


def check_agreement(members: Sequence[Predictor]) -> None:
    """Refuse members whose probabilities mean different things, naming the first pair that differ."""
    first = members[0]
    for member in members[1:]:
        for what, mine, theirs in (
            ("classes", first.class_names, member.class_names),
            ("task mode", first.config.classes.mode, member.config.classes.mode),
            ("input channels", first.model.in_channels, member.model.in_channels),
        ):
            if mine != theirs:
                raise SegwiseError(
                    f"{member.run_dir}: its {what} {theirs} differ from {first.run_dir}'s {mine}; an "
                    "ensemble averages the probabilities of runs trained on the same classes and inputs"
                )


def is_folds_parent(path: RunLike) -> bool:
    """A folder written by `segwise train --folds K` (folds.json) that is not itself a run."""
    path = Path(path)
    return (path / FOLDS).is_file() and not (path / CONFIG).is_file()


def fold_runs(parent: RunLike) -> list[Path]:
    """The fold run folders of a folds parent, in fold order; every fold must be trained."""
    parent = Path(parent)
    drawn = Folds.read(parent)
    runs = [fold_dir(parent, index) for index in range(drawn.k)]
    missing = [run for run in runs if not (run / WEIGHTS).is_file()]
    if missing:
        index = runs.index(missing[0])
        raise SegwiseError(
            f"{missing[0]}: fold {index} of {parent} is not trained; train it with `segwise train "
            f"{drawn.data} --folds {drawn.k} --fold {index} --name {parent.name} --runs-dir {parent.parent}`"
        )
    return runs


def is_ensemble(run: RunLike | Sequence[RunLike]) -> bool:
    """Whether `run` loads as an Ensemble: several runs, or a folds parent."""
    if isinstance(run, (str, Path)):
        return is_folds_parent(run)
    return len(run) != 1 or is_folds_parent(run[0])


def load(run: RunLike | Sequence[RunLike], device: str = "auto", **options) -> Predictor:
    """A run folder's Predictor, or the Ensemble of a folds parent or of several runs (each of which
    may itself be a folds parent: its folds join); keyword options set every member's InferenceOptions.

    >>> segwise.load("runs/camvid-cv").predict("street.png")                  # doctest: +SKIP
    >>> segwise.load(["runs/a", "runs/b"], tta="flips").predict_proba(image)   # doctest: +SKIP
    """
    runs = [run] if isinstance(run, (str, Path)) else list(run)
    if not runs:
        raise SegwiseError("load: no run given; pass a run folder, a folds parent or a list of runs")
    if not is_ensemble(runs):
        return load_run(runs[0], device, **options)
    members = [path for given in runs for path in (fold_runs(given) if is_folds_parent(given) else [given])]
    parent = runs[0] if len(runs) == 1 else None  # a single folds parent is the ensemble's own folder
    return Ensemble([load_run(member, device, **options) for member in members], parent)
