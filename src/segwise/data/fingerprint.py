"""What data a run trains on, recorded in RUN/data.json so that `train --resume` notices when it changed.

The record lists the training and validation pairs (paths relative to the data folder) and, for every
file the decoded data depends on (images, masks, class-name files, COCO annotations), its size and
modification time. Sizes and times rather than content hashes: they are what the decoded-data cache
already keys on (a file whose time changed is decoded afresh, so training sees new data either way),
and they cost one `stat` per file, where hashes would read the whole dataset again at every start and
every resume. A file saved again unchanged counts as changed; `--allow-changed-data` continues past it.

A resume on changed data that the user allowed is added to the record's `history` (when, after which
epoch, what had changed), and the record then describes the data as it is now.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import SegwiseError
from ..io import atomic_path
from .dataset import SegmentationData

FORMAT = 1
SPLITS = {"train": "training", "val": "validation"}
EXAMPLES = 2  # changed files named in the message


def fingerprint(data_set: SegmentationData) -> dict[str, Any]:
    """The record of `data_set` as it is on disk now (its `history` empty)."""
    root = Path(os.path.abspath(data_set.root))
    splits = {"train": data_set.train_pairs, "val": data_set.val_pairs}
    files = {path for pairs in splits.values() for pair in pairs for path in pair}
    if data_set.source is not None:  # class-name files, per-class masks, COCO files, regions of interest
        tested = {path for pair in data_set.source.pairs.get("test", []) for path in pair}
        files |= set(data_set.source.files()) - tested
    return {
        "format": FORMAT,
        "root": str(root),
        "splits": {
            split: [[_name(image, root), _name(mask, root)] for image, mask in pairs]
            for split, pairs in splits.items()
        },
        "files": {_name(path, root): _stat(path) for path in sorted(files)},
        "history": [],
    }


def _name(path: Path, root: Path) -> str:
    """The path relative to the data folder (absolute when it lies outside, as given folders may);
    symbolic links are not followed, so a link farm of a dataset keeps its own names."""
    path = Path(os.path.abspath(path))
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _stat(path: Path) -> list[int] | None:
    try:
        stat = Path(path).stat()
    except OSError:  # gone since it was listed
        return None
    return [stat.st_size, stat.st_mtime_ns]


def changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two records, as phrases: "8 training pairs removed", "5 masks changed (…)"."""
    before, after = _split_of(recorded), _split_of(current)
    phrases = []
    for split, label in SPLITS.items():
        removed = sum(1 for pair, was in before.items() if was == split and pair not in after)
        added = sum(1 for pair, now in after.items() if now == split and pair not in before)
        phrases += [f"{_count(removed, f'{label} pair')} removed"] if removed else []
        phrases += [f"{_count(added, f'{label} pair')} added"] if added else []
    for was, now in (("train", "val"), ("val", "train")):
        moved = sum(1 for pair, split in before.items() if split == was and after.get(pair) == now)
        if moved:
            phrases.append(f"{_count(moved, 'pair')} moved from {SPLITS[was]} to {SPLITS[now]}")
    return phrases + _file_changes(recorded["files"], current["files"], before, after)


def _split_of(record: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(image, mask): split for split, pairs in record["splits"].items() for image, mask in pairs}


def _file_changes(before: dict, after: dict, old_pairs: dict, new_pairs: dict) -> list[str]:
    """Files of both records whose size or time differ, as images and masks (pairs added or removed are
    counted as pairs); any other file (classes.txt, a COCO file) by name."""
    in_pairs = {name for pair in [*old_pairs, *new_pairs] for name in pair}
    images = {image for image, _ in [*old_pairs, *new_pairs]}
    changed = sorted(name for name in before.keys() & after.keys() if before[name] != after[name])
    phrases = []
    for kind, names in (
        ("image", [name for name in changed if name in images]),
        ("mask", [name for name in changed if name in in_pairs and name not in images]),
    ):
        if names:
            phrases.append(f"{_count(len(names), kind)} changed ({_examples(names)})")
    others = [name for name in changed if name not in in_pairs]
    others += [f"{name} removed" for name in sorted(before.keys() - after.keys() - in_pairs)]
    others += [f"{name} added" for name in sorted(after.keys() - before.keys() - in_pairs)]
    if others:
        phrases.append(f"{_count(len(others), 'other file')} changed ({_examples(others)})")
    return phrases


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _examples(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(names[:EXAMPLES]) + (", …" if len(names) > EXAMPLES else "")


def read(path: Path) -> dict[str, Any] | None:
    """A run's record; None when the run has none (written before segwise kept one). The file comes
    from a run folder that may be someone else's: only its shape is trusted, and no path in it is ever
    opened."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        _check_shape(record)
    except (OSError, ValueError) as error:
        raise SegwiseError(
            f"{path}: not a segwise data record ({error}); restore it, or pass --allow-changed-data to "
            "resume without comparing the data"
        ) from None
    return record


def _check_shape(record: Any) -> None:
    """Raise ValueError unless `record` has the shape `fingerprint` gives."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"not format {FORMAT}")
    splits, files, history = record.get("splits"), record.get("files"), record.get("history", [])
    if not isinstance(splits, dict) or not set(splits) <= set(SPLITS):
        raise ValueError(f"'splits' must map {' and '.join(SPLITS)} to pairs")
    for pairs in splits.values():
        if not isinstance(pairs, list) or not all(_is_pair(pair) for pair in pairs):
            raise ValueError("a pair is not [image, mask]")
    if not isinstance(files, dict) or not all(v is None or _is_stat(v) for v in files.values()):
        raise ValueError("'files' must map names to [size, time]")
    if not isinstance(history, list):
        raise ValueError("'history' must be a list")


def _is_pair(pair: Any) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(isinstance(name, str) for name in pair)


def _is_stat(stat: Any) -> bool:
    return isinstance(stat, list) and len(stat) == 2 and all(isinstance(v, int) for v in stat)


def write(path: Path, record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def allowed(record: dict[str, Any], previous: dict[str, Any] | None, epoch: int, what: list[str]) -> dict:
    """`record` with the history of `previous` and an entry for this resume on changed data."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "after_epoch": epoch,
        "changes": what,
    }
    history = previous.get("history", []) if previous else []
    return {**record, "history": [*history, entry]}
