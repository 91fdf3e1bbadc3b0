"""Decode a dataset once: the training-size uint8 arrays live in a cache folder as .npy files, memory-mapped.

The first `load_data` decodes every image and mask, resizes them to the training size and writes the
arrays; every later epoch slices those arrays, and every later run on unchanged data maps them back
without decoding anything. An entry is keyed by a hash of

- each file's path, size, modification time and inode (a rewritten or replaced file changes the key),
- the small files beside the data (classes.txt, class_dict.csv, split lists, ...),
- the decode options (training size, classes forced by a run, ...),
- the source of the decoding code, so a segwise upgrade that decodes differently never reads stale arrays.

Where: `$SEGWISE_CACHE_DIR`, else `$XDG_CACHE_HOME/segwise`, else `~/.cache/segwise` (never inside the
data folder, which may be read-only or shared); if that is not writable, a folder in the system's
temporary directory; if nothing is writable, the arrays stay in memory. `SEGWISE_CACHE_DIR=off` (or
`load_data(..., use_cache=False)`) turns caching off. Each (dataset, options) keeps one entry: writing a new
version removes the old one. Deleting the folder is always safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "SEGWISE_CACHE_DIR"
_OFF = ("", "0", "off", "none", "false")
_META = "meta.json"


@dataclass
class Decoded:
    """What decoding a dataset yields: arrays per split plus what was learned while decoding."""

    arrays: dict[str, np.ndarray]  # e.g. train_images N×H×W×C uint8, train_masks N×H×W uint8
    info: dict[str, Any]  # JSON-safe: classes, size, channels


def cache_dirs() -> list[Path]:
    """Candidate cache folders, preferred first; empty when caching is switched off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return [] if chosen.strip().lower() in _OFF else [Path(chosen).expanduser()]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return [Path(base) / "segwise", Path(tempfile.gettempdir()) / f"segwise-cache-{user}"]


def _hash_files(digest: hashlib._Hash, paths: Iterable[Path]) -> None:
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\n".encode())


def _code_version() -> str:
    """Hash of the modules that decide how files become arrays (not augment/show, which act later)."""
    package = Path(__file__).resolve().parents[1]
    sources = sorted(package.glob("data/*.py")) + [package / "io.py"]
    digest = hashlib.sha256()
    for source in sources:
        if source.stem not in ("augment", "show", "synthetic", "__init__"):
            digest.update(source.read_bytes())
    return digest.hexdigest()


def cache_key(root: Path, files: Iterable[Path], options: dict[str, Any]) -> tuple[str, str]:
    """(which dataset and options, which version of its files): together they name a cache entry."""
    root = Path(root).resolve()
    source = hashlib.sha256(
        json.dumps({"root": str(root), **options}, sort_keys=True, default=str).encode()
    ).hexdigest()
    digest = hashlib.sha256(_code_version().encode())
    # small files beside the data (class names, colour tables, split lists) change how it decodes
    _hash_files(digest, sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")))
    _hash_files(digest, files)
    return source[:16], digest.hexdigest()[:16]


def cached(
    root: Path,
    files: Iterable[Path],
    options: dict[str, Any],
    decode: Callable[[], Decoded],
    enabled: bool = True,
) -> Decoded:
    """Return the decoded dataset from the cache, or run `decode` once and store its arrays.

    Arrays come back memory-mapped copy-on-write: pages are read on first touch and shared by the OS
    between runs; a write (e.g. by torch) stays private to the process and never reaches the file.
    """
    folders = cache_dirs() if enabled else []
    if not folders:
        return decode()
    source, version = cache_key(root, files, options)
    name = f"{Path(root).resolve().name[:40]}-{source}-{version}"
    for folder in folders:
        if (folder / name / _META).is_file():
            try:
                return _read(folder / name)
            except (OSError, ValueError):
                shutil.rmtree(folder / name, ignore_errors=True)  # torn or foreign entry: decode again
    decoded = decode()
    for folder in folders:
        try:
            entry = _write(folder, name, decoded)
        except OSError:
            continue  # read-only or full: try the next folder
        for old in folder.glob(f"*-{source}-*"):  # one entry per dataset and options
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return _read(entry)
    warnings.warn(
        f"segwise: no writable cache folder among {[str(f) for f in folders]}; set {CACHE_ENV} to a "
        "writable folder so later runs skip decoding",
        stacklevel=2,
    )
    return decoded


def _write(folder: Path, name: str, decoded: Decoded) -> Path:
    """Write into a temporary folder, then rename it into place: readers never see a partial entry."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    try:
        for key, array in decoded.arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (tmp / _META).write_text(json.dumps(decoded.info))
        try:
            os.rename(tmp, folder / name)
        except OSError:
            if not (folder / name / _META).is_file():  # not a concurrent run finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / name


def _read(entry: Path) -> Decoded:
    arrays = {
        path.stem: np.load(path, mmap_mode="c", allow_pickle=False) for path in sorted(entry.glob("*.npy"))
    }
    return Decoded(arrays, json.loads((entry / _META).read_text()))


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON values (for Decoded.info)."""
    if dataclasses.is_dataclass(value):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
