"""Benchmark segwise's confusion matrix and losses against their peers on the same tensors.

Run from the repository root: `.venv/bin/python bench/metrics.py` (needs torchmetrics and
segmentation-models-pytorch). Prints a Markdown table of median times and the ratio
peer time / segwise time (> 1 means segwise is faster).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import segmentation_models_pytorch.losses as smp_losses  # noqa: E402
from torchmetrics.classification import MulticlassJaccardIndex  # noqa: E402

from segwise.constants import IGNORE_INDEX  # noqa: E402
from segwise.losses import DiceLoss, FocalLoss, LovaszLoss  # noqa: E402
from segwise.metrics import ConfusionMatrix  # noqa: E402


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    rows = []

    classes = 21
    target = torch.randint(0, classes, (16, 512, 512))
    target[:, :32] = IGNORE_INDEX
    prediction = torch.randint(0, classes, (16, 512, 512))
    ours = ConfusionMatrix(classes)
    peer = MulticlassJaccardIndex(num_classes=classes, ignore_index=IGNORE_INDEX)
    rows.append(
        (
            "confusion matrix update, 16×512×512, 21 classes",
            "torchmetrics MulticlassJaccardIndex.update",
            median_seconds(lambda: peer.update(prediction, target), 7),
            median_seconds(lambda: ours.update(prediction, target), 7),
        )
    )

    logits = torch.randn(4, classes, 128, 128)
    target = torch.randint(0, classes, (4, 128, 128))
    target[:, :8] = IGNORE_INDEX
    losses = [
        ("focal", FocalLoss(), smp_losses.FocalLoss("multiclass", ignore_index=IGNORE_INDEX)),
        ("dice", DiceLoss(), smp_losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX)),
        ("lovasz", LovaszLoss(), smp_losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)),
    ]
    for name, segwise_loss, smp_loss in losses:

        def step(loss=None):
            x = logits.clone().requires_grad_(True)
            loss(x, target).backward()

        rows.append(
            (
                f"{name} loss forward+backward, 4×21×128×128",
                f"smp {type(smp_loss).__name__}",
                median_seconds(lambda loss=smp_loss: step(loss), 7),
                median_seconds(lambda loss=segwise_loss: step(loss), 7),
            )
        )

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print("| case | peer | peer median (ms) | segwise median (ms) | ratio (peer / segwise) |")
    print("|---|---|---:|---:|---:|")
    for case, peer_name, peer_time, our_time in rows:
        print(
            f"| {case} | {peer_name} | {peer_time * 1e3:.1f} | {our_time * 1e3:.1f} | {peer_time / our_time:.2f}× |"
        )


if __name__ == "__main__":
    main()
