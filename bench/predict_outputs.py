"""Benchmark prediction's post-processing and backends against their peers, in one process.

Run from the repository root: `.venv/bin/python bench/predict_outputs.py` (needs monai; the backend rows
need onnx, onnxscript and onnxruntime). Cases run interleaved (A, B, A, B, …) and each time is the median (5 runs for hole filling, 3 for the backends);
the script checks that both sides give the same result before timing them. Prints a Markdown table with
ratio = peer time / segwise time (> 1 means segwise is faster).

- hole filling on a binary 1024×1024 mask of ~400 rings: `postprocess.fill_holes` against MONAI's
  `FillHoles(connectivity=1)` (the same rule for binary masks: 4-connected background);
- a UNet (resnet18) at 256×256 on 16 images: the PyTorch backend against the onnxruntime backend, each
  with batch size 1 and 8 (here the "peer" column is the PyTorch model at batch size 1).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from monai.transforms import FillHoles  # noqa: E402

from segwise.config import PreprocessConfig, RunConfig, TrainConfig  # noqa: E402
from segwise.constants import CONFIG, WEIGHTS  # noqa: E402
from segwise.inference import Predictor, postprocess  # noqa: E402
from segwise.io import default_palette  # noqa: E402
from segwise.models import create_model  # noqa: E402
from segwise.run import save_weights  # noqa: E402
from segwise.task import Classes


def interleaved_medians(functions: list, repeats: int) -> list[float]:
    for function in functions:
        function()  # warm-up
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def rings(size: int, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(count):
        cy, cx = rng.integers(0, size, 2)
        outer = rng.integers(6, 20)
        distance = np.hypot(yy - cy, xx - cx)
        mask |= (distance <= outer) & (distance > outer / 2)
    return mask


def fill_holes_row() -> tuple:
    mask = rings(1024, 400)
    peer = FillHoles(connectivity=1)
    ours = postprocess.fill_holes(mask)
    theirs = np.asarray(peer(torch.from_numpy(mask[None].astype(np.uint8))))[0].astype(bool)
    assert (ours == theirs).all(), "fill_holes and MONAI FillHoles disagree"
    peer_time, our_time = interleaved_medians(
        [lambda: peer(torch.from_numpy(mask[None].astype(np.uint8))), lambda: postprocess.fill_holes(mask)], 5
    )
    return ("fill holes, binary 1024×1024, ~400 rings", "MONAI FillHoles", peer_time, our_time)


def backend_rows() -> list[tuple]:
    from segwise.inference.backends import export_run, load_onnx

    model = create_model("unet", encoder="resnet18", num_classes=5, in_channels=3).eval()
    config = RunConfig(
        model={"arch": "unet", "encoder": "resnet18", "num_classes": 5, "in_channels": 3},
        classes=Classes(names=[f"c{i}" for i in range(5)], values=list(range(5)), palette=default_palette(5)),
        preprocess=PreprocessConfig(input_size=[256, 256], mean=[0.5] * 3, std=[0.25] * 3),
        train=TrainConfig(),
    )
    run = Path(tempfile.mkdtemp()) / "run"
    run.mkdir()
    config.save(run / CONFIG)
    save_weights(model, run / WEIGHTS)
    export_run(run, "onnx")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(16)]
    torch_predictor = Predictor(model, config, "cpu")
    onnx_predictor = load_onnx(run, device="cpu")

    def run_batches(predictor: Predictor, batch: int):
        return lambda: [
            predictor.predict_proba_batch(images[i : i + batch]) for i in range(0, len(images), batch)
        ]

    cases = [
        ("PyTorch, batch 8", run_batches(torch_predictor, 8)),
        ("onnxruntime, batch 1", run_batches(onnx_predictor, 1)),
        ("onnxruntime, batch 8", run_batches(onnx_predictor, 8)),
    ]
    times = interleaved_medians([run_batches(torch_predictor, 1)] + [c for _, c in cases], 3)
    return [
        (f"UNet-resnet18 256×256, 16 images: {name}", "PyTorch, batch 1", times[0], t)
        for (name, _), t in zip(cases, times[1:], strict=True)
    ]


def main() -> None:
    rows = [fill_holes_row()]
    try:
        rows += backend_rows()
    except Exception as error:  # the onnx extra is optional
        print(f"backend rows skipped: {error}", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| case | peer | peer median (ms) | segwise median (ms) | ratio (peer / segwise) |")
    print("|---|---|---:|---:|---:|")
    for case, peer, peer_time, our_time in rows:
        print(
            f"| {case} | {peer} | {peer_time * 1e3:.1f} | {our_time * 1e3:.1f} | {peer_time / our_time:.2f}× |"
        )


if __name__ == "__main__":
    main()
