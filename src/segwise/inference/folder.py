"""`segwise predict` as one library call: load a run (PyTorch or onnxruntime), predict its inputs into a
folder, and under torchrun share the inputs among the processes, each on its own device.

>>> report = predict_folder("runs/cells", ["new/"], "masks", formats=["png", "json"])  # doctest: +SKIP
>>> report.total                                                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import BACKENDS, POLYGON_TOLERANCE
from ..errors import SegwiseError
from . import coco
from .backends import load_onnx
from .ensemble import is_ensemble, load
from .predictor import PredictionReport
from .shards import process_device, process_group
from .writers import parse_formats


def predict_folder(
    run: str | Path | Sequence[str | Path],
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    device: str = "auto",
    backend: str = "torch",
    onnx: str | Path | None = None,
    tta: str = "none",
    merge: str = "mean",
    tile: str | int | tuple[int, int] | None = None,
    overlap: float = 0.25,
    formats: str | Sequence[str] = ("png",),
    threshold: float | None = None,
    min_size: int | None = None,
    fill_holes: bool = False,
    largest: bool = False,
    crop: bool = False,
    batch_size: int = 1,
    progress: bool = False,
    coco_polygons: bool = False,
    polygon_tolerance: float = POLYGON_TOLERANCE,
    overwrite: bool = False,
    postprocess: bool = True,
) -> PredictionReport:
    """Predict `inputs` with the run and write them into `output`; see `Predictor.predict_to_folder`.

    `run` is a run folder, or an ensemble (a folds parent, or a list of runs: `ensemble.load`).
    `backend` "onnxruntime" (or an `onnx` file, which implies it) runs RUN/model.onnx or that file;
    `tta`, `merge`, `tile` and `overlap` are `InferenceOptions`; `postprocess` False ignores the run's
    recorded post-processing (postprocess.json, threshold.json).
    Under torchrun (WORLD_SIZE > 1) every process calls this: each predicts its share on its own GPU,
    and the report's `total` counts the files of all of them. The formats and the polygon options
    are checked first, so a typo fails before a model loads.
    """
    formats = parse_formats(formats)
    coco.checked_polygon_tolerance(formats, coco_polygons, polygon_tolerance)
    if backend not in BACKENDS:
        raise SegwiseError(f"backend '{backend}' is not valid; choose from {', '.join(BACKENDS)}")
    if (backend == "onnxruntime" or onnx) and is_ensemble(run):
        raise SegwiseError(
            "--backend onnxruntime predicts with one run's model.onnx; drop it for an ensemble"
        )
    options = {"tta": tta, "merge": merge, "tile": tile, "overlap": overlap}
    with process_group() as (rank, world_size):
        device = process_device(device)
        if backend == "onnxruntime" or onnx:
            predictor = load_onnx(run, onnx, device=device, **options)
        else:
            predictor = load(run, device=device, **options)
        return predictor.predict_to_folder(
            inputs,
            output,
            formats=formats,
            threshold=threshold,
            min_size=min_size,
            fill_holes=fill_holes,
            largest=largest,
            crop=crop,
            batch_size=batch_size,
            progress=progress,
            shard=(rank, world_size),
            coco_polygons=coco_polygons,
            polygon_tolerance=polygon_tolerance,
            overwrite=overwrite,
            postprocess=postprocess,
        )
