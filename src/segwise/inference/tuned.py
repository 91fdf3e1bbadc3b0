"""The post-processing recorded in a run folder, and what `predict` and `eval` apply by default.

Two files record it. `RUN/postprocess.json`, written by `segwise tune-postprocess` (`inference.choose`),
holds per class the options chosen on validation or out-of-fold predictions: threshold, minimum object
size, hole filling, largest component. `RUN/threshold.json`, written by `segwise eval --save-threshold`
(`inference.threshold`), holds a binary run's foreground threshold alone. postprocess.json is the whole
recorded post-processing when present (threshold.json is then not read: the chooser tried thresholds
too); otherwise threshold.json's threshold applies. Options given explicitly (`--threshold`,
`--min-size`, `--fill-holes`, `--largest`) replace the recorded ones for every class; `recorded=False`
(`--no-postprocess`) ignores both files.

postprocess.json, for a binary run whose class 'cell' kept a threshold and a minimum size:

    {"format": 1, "metric": "iou", "margin": 0.005, "split": "val", "images": 12,
     "classes": {"cell": {"index": 1, "pixels": 52311, "before": 0.71, "after": 0.80,
                          "kept": {"threshold": 0.35, "min_size": 64},
                          "tried": [{"option": "threshold", "value": 0.35, "before": 0.71,
                                     "after": 0.76, "kept": true}, ...]}}}

Only `kept` is applied; the rest says how it was chosen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import POSTPROCESS_JSON, THRESHOLD_JSON
from ..errors import SegwiseError
from ..io import atomic_path
from ..task import LABEL_THRESHOLD, Task
from .postprocess import Cleaning, Steps
from .threshold import saved_threshold

FORMAT = 1  # postprocess.json's layout; a file of another format is refused, never guessed at
KEPT_KEYS = ("threshold", "min_size", "fill_holes", "largest")
HOW_TO_FIX = "rerun `segwise tune-postprocess` or delete it"


@dataclass(frozen=True)
class Kept:
    """The options kept for one class (or label): a threshold (binary and per-label tasks) and a cleaning."""

    threshold: float | None = None
    cleaning: Cleaning = field(default_factory=Cleaning)

    def describe(self) -> list[str]:
        """The kept options in words, in the order they apply."""
        words = [] if self.threshold is None else [f"threshold {self.threshold:g}"]
        if self.cleaning.min_size:
            words.append(f"min size {self.cleaning.min_size} px")
        if self.cleaning.fill_holes:
            words.append("fill holes")
        if self.cleaning.largest:
            words.append("largest object")
        return words

    def to_dict(self) -> dict:
        kept = {"threshold": self.threshold, "min_size": self.cleaning.min_size}
        kept |= {"fill_holes": self.cleaning.fill_holes, "largest": self.cleaning.largest}
        return {key: value for key, value in kept.items() if value}


@dataclass
class Applied:
    """The post-processing a prediction goes through, and where its recorded part came from."""

    steps: Steps
    threshold: float | None = None  # a binary run's foreground threshold; None: the argmax
    threshold_file: Path | None = None  # the file that threshold came from, when not given
    message: str | None = None  # one line for the user when a recorded file applies


def tuned_classes(task: Task) -> range:
    """The classes post-processing is chosen for: every label, or every class but the background."""
    return range(task.num_classes) if task.per_label else range(1, task.num_classes)


def write_postprocess(folder: str | Path, record: dict) -> Path:
    """Write `record` (see the module doc; `choose.Choices.record`) as FOLDER/postprocess.json, atomically."""
    path = Path(folder) / POSTPROCESS_JSON
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, **record}, indent=2) + "\n")
    return path


def read_postprocess(folder: str | Path, task: Task, names: Sequence[str]) -> dict[int, Kept] | None:
    """The kept options by class index from FOLDER/postprocess.json; None when there is no such file.
    A file that is not valid for this run raises SegwiseError naming it and the problem."""
    path = Path(folder) / POSTPROCESS_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise SegwiseError(f"{path}: not a JSON file; {HOW_TO_FIX}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise SegwiseError(
            f"{path}: post-processing format {found!r}, this segwise reads format {FORMAT}; {HOW_TO_FIX}"
        )
    classes = record.get("classes")
    if not isinstance(classes, dict):
        raise SegwiseError(f"{path}: no 'classes' mapping; {HOW_TO_FIX}")
    return {
        _class_index(path, name, entry, names, task): _kept(path, name, entry, task)
        for name, entry in classes.items()
    }


def _class_index(path: Path, name: str, entry: object, names: Sequence[str], task: Task) -> int:
    """The index of a recorded class, checked against the run's classes."""
    index = names.index(name) if name in names else None
    if index is None or index not in tuned_classes(task):
        raise SegwiseError(
            f"{path}: class '{name}' is not one of this run's classes {list(names)}; it was tuned for "
            f"another run: {HOW_TO_FIX}"
        )
    if not isinstance(entry, dict) or entry.get("index") != index:
        raise SegwiseError(
            f"{path}: class '{name}' is recorded with another index than {index}; {HOW_TO_FIX}"
        )
    return index


def _kept(path: Path, name: str, entry: dict, task: Task) -> Kept:
    """One class's kept options, each checked for its type and range."""
    kept = entry.get("kept", {})
    unknown = set(kept) - set(KEPT_KEYS) if isinstance(kept, dict) else {"kept"}
    if unknown:
        raise SegwiseError(f"{path}: class '{name}': unknown options {sorted(unknown)}; {HOW_TO_FIX}")
    threshold, min_size = kept.get("threshold"), kept.get("min_size")
    flags = [kept.get("fill_holes", False), kept.get("largest", False)]
    problems = [
        threshold is not None
        and (not task.per_label and not task.has_foreground_threshold or not _is_probability(threshold)),
        min_size is not None
        and (not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1),
        not all(isinstance(flag, bool) for flag in flags),
    ]
    if any(problems):
        raise SegwiseError(
            f"{path}: class '{name}': kept options {kept} are not valid (threshold a probability, binary and "
            f"per-label runs only; min_size an integer ≥ 1; fill_holes and largest true or false); {HOW_TO_FIX}"
        )
    return Kept(threshold, Cleaning(min_size, *flags))


def _is_probability(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def applied_steps(
    folder: str | Path | None,
    task: Task,
    names: Sequence[str],
    *,
    threshold: float | None = None,
    min_size: int | None = None,
    fill_holes: bool = False,
    largest: bool = False,
    recorded: bool = True,
) -> Applied:
    """The post-processing to apply: the given options, and for those not given what `folder` records
    (postprocess.json, else threshold.json) unless `recorded` is False or there is no folder."""
    given = Steps(task, threshold, min_size, fill_holes, largest)  # checks the given values
    if folder is None or not recorded:
        return Applied(given, threshold)
    folder = Path(folder)
    choices = read_postprocess(folder, task, names)
    if choices is None:
        saved = None if threshold is not None else saved_threshold(folder, task)
        if saved is None:
            return Applied(given, threshold)
        message = f"foreground threshold {saved} from {folder / THRESHOLD_JSON} (--threshold overrides)"
        return Applied(
            Steps(task, saved, min_size, fill_holes, largest), saved, folder / THRESHOLD_JSON, message
        )
    return _with_choices(folder / POSTPROCESS_JSON, task, names, choices, given)


def _with_choices(
    path: Path, task: Task, names: Sequence[str], choices: dict[int, Kept], given: Steps
) -> Applied:
    """`given` completed by the recorded choices: each option not given takes each class's recorded value."""
    effective = {index: _completed(given, choices.get(index, Kept())) for index in tuned_classes(task)}
    threshold = given.threshold if given.threshold is not None else _recorded_threshold(task, effective)
    steps = Steps(task, threshold, per_class={index: kept.cleaning for index, kept in effective.items()})
    described = [
        f"class '{names[index]}' " + ", ".join(words)
        for index, kept in choices.items()
        if (words := _in_effect(kept, effective[index]))
    ]
    if not described:  # say why nothing applies: nothing was kept, or the flags replace all of it
        overridden = any(kept.describe() for kept in choices.values())
        described = ["every recorded option replaced by the flags" if overridden else "nothing kept"]
    message = (
        f"post-processing from {path}: {'; '.join(described)} (flags override, --no-postprocess ignores it)"
    )
    if not task.has_foreground_threshold:
        return Applied(steps, message=message)
    from_file = given.threshold is None and threshold is not None
    return Applied(steps, threshold, path if from_file else None, message)


def _completed(given: Steps, recorded: Kept) -> Kept:
    """One class's options: those given, and the recorded ones for the rest."""
    cleaning = Cleaning(
        given.min_size if given.min_size is not None else recorded.cleaning.min_size,
        given.fill_holes or recorded.cleaning.fill_holes,
        given.largest or recorded.cleaning.largest,
    )
    return Kept(recorded.threshold if given.threshold is None else None, cleaning)


def _recorded_threshold(task: Task, effective: dict[int, Kept]) -> float | list[float] | None:
    """The decision threshold the recorded choices give: a binary run's one, or one per label."""
    if not any(kept.threshold is not None for kept in effective.values()):
        return None
    if task.per_label:
        return [LABEL_THRESHOLD if kept.threshold is None else kept.threshold for kept in effective.values()]
    return effective[1].threshold


def _in_effect(recorded: Kept, effective: Kept) -> list[str]:
    """The recorded options of one class that the given flags leave in effect, in words."""
    same = Kept(
        recorded.threshold if recorded.threshold == effective.threshold else None,
        Cleaning(
            recorded.cleaning.min_size if recorded.cleaning.min_size == effective.cleaning.min_size else None,
            recorded.cleaning.fill_holes,
            recorded.cleaning.largest,
        ),
    )
    return same.describe()
