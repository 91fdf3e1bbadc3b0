"""Turning inputs (files, folders, globs) into predicted mask files."""

from __future__ import annotations

import glob
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SegwiseError
from ..io import IMAGE_SUFFIXES, is_image_file, write_index_png
from .predictor import Predictor


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Expand files, folders (their images, sorted) and glob patterns; anything that matches nothing fails."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if is_image_file(p))
            if not images:
                raise SegwiseError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if is_image_file(Path(p)))
            if not matches:
                raise SegwiseError(f"{item}: pattern matches no images")
            found += matches
        else:
            raise SegwiseError(f"{path}: input not found; pass image files, folders or glob patterns")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem] != path:
            raise SegwiseError(
                f"{path}: same name as {stems[path.stem]}; outputs would collide, predict them separately"
            )
        stems[path.stem] = path
    return list(dict.fromkeys(found))


def predict_to_folder(
    predictor: Predictor, inputs: list[str | Path], out_dir: str | Path, progress: bool = False
) -> list[Path]:
    """Write `out_dir/<stem>.png` (index PNG in the class palette, the input's size) for every input."""
    paths = collect_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(paths, desc="predicting", disable=not progress, leave=False):
        target = out_dir / f"{path.stem}.png"
        write_index_png(target, predictor.predict(path), predictor.palette)
        written.append(target)
    return written
