"""`segwise demo`: the whole loop on the built-in synthetic dataset, sized for a 2-core CPU."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .data.formats import find_pairs
from .data.synthetic import write_synthetic_dataset
from .engine import train
from .evaluate import evaluate_split
from .inference import load

# Sized for a small CPU that must still clear 0.85 mIoU: 96×96 images, a light encoder and decoder,
# small batches (more steps) and a one-cycle peak of 3e-3.
DEMO_IMAGE_SIZE = 96
DEMO_OVERRIDES = {
    # from scratch, so the demo never reaches for the network and gives the same numbers everywhere
    "model": {
        "encoder": "resnet18",
        "encoder_weights": "none",
        "options": {"decoder_channels": [128, 64, 32, 16, 16]},
    },
    "train": {"epochs": 5, "batch_size": 8, "lr": 3e-3},
}


@dataclass
class DemoResult:
    data_dir: Path
    run_dir: Path
    predictions: list[Path]
    val_miou: float
    seconds: float


def run_demo(out: str | Path = "demo", progress: bool = True, **fields) -> DemoResult:
    """Write the synthetic dataset under `out/data`, train into `out/runs`, evaluate, predict the test images.

    `fields` change the demo's training by name (`epochs=2`)."""
    started = time.perf_counter()
    out = Path(out)
    data_dir = write_synthetic_dataset(out / "data", size=DEMO_IMAGE_SIZE)
    result = train(
        data_dir, runs_dir=out / "runs", name="shapes", progress=progress, overrides=DEMO_OVERRIDES, **fields
    )
    # Evaluate the saved run as a user would: load it, predict each validation image at its own size.
    predictor = load(result.run_dir)
    splits = find_pairs(data_dir)
    matrix = evaluate_split(predictor, splits["val"], progress=progress and sys.stderr.isatty()).matrix
    predictions = predictor.predict_to_folder(  # the demo's own folder: a second demo replaces its files
        [image for image, _ in splits["test"]], out / "predictions", overwrite=True
    ).files
    return DemoResult(data_dir, result.run_dir, predictions, matrix.mean_iou(), time.perf_counter() - started)
