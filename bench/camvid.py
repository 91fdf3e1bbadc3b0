"""A documented CPU training run on CamVid (11 classes + Void) with a fixed budget; not part of CI.

    .venv/bin/python bench/camvid.py                      # defaults below (its wall clock: BENCHMARKS.md)
    .venv/bin/python bench/camvid.py --epochs 30 --size 360x480

Trains segwise's defaults (U-Net, AdamW + one-cycle, ce+dice, bf16 autocast where the CPU has it,
channels-last) from scratch (no ImageNet download here) with the `light` augmentation preset (horizontal
flips, mild affine and colour: the default `flips` preset would also flip road scenes upside down) on
../shared/datasets/camvid11/train, validates on its val split, then evaluates the best weights on val at
the images' own 360×480 size as `segwise eval` does. The loader reads the class names from
class_dict.csv and ignores Void (value 11), so every mIoU here is over the 11 real classes with Void
pixels excluded. Prints both mIoUs, the run folder and the exact command. The run folder is kept
outside the repository (default /work/bench-runs/camvid) so other benchmarks can reuse it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

import segwise
from segwise.cli import _size
from segwise.evaluate import evaluate_split, split_pairs

DATA = Path(__file__).resolve().parents[2] / "shared/datasets/camvid11"


def miou_without_void(matrix: torch.Tensor, names: list[str]) -> tuple[float, dict[str, float]]:
    """mIoU over the non-Void classes: pixels whose truth is Void count for nothing, a real pixel
    predicted as Void is a miss of its true class."""
    keep = [i for i, name in enumerate(names) if name.lower() != "void"]
    matrix = matrix.double()
    ious = {}
    for c in keep:
        tp = matrix[c, c]
        fn = matrix[c].sum() - tp
        fp = matrix[keep, c].sum() - tp
        union = tp + fp + fn
        if union > 0:
            ious[names[c]] = float(tp / union)
    return sum(ious.values()) / len(ious), ious


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--runs-dir", default="/work/bench-runs")
    parser.add_argument("--name", default="camvid")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=_size, default=[240, 320])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--augment", default="light", help="augmentation preset (default: light)")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"{args.data}: CamVid not found; pass --data PATH/camvid11")

    started = time.perf_counter()
    result = segwise.train(
        args.data,
        runs_dir=args.runs_dir,
        name=args.name,
        encoder=args.encoder,
        epochs=args.epochs,
        size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        seed=0,
    )
    train_seconds = time.perf_counter() - started
    predictor = segwise.load(result.run_dir)
    pairs, source = split_pairs(args.data, "val")
    evaluation = evaluate_split(predictor, pairs, source=source)
    names = list(predictor.config.classes.names)
    full_miou, ious = miou_without_void(evaluation.matrix.matrix.cpu(), names)
    images_per_s = sum(row["images_per_s"] for row in result.history) / len(result.history)
    print()
    print(f"command      {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"run folder   {result.run_dir}")
    print(f"classes      {len(names)} ({', '.join(names)})")
    print(
        f"training     {args.epochs} epochs at {args.size[0]}x{args.size[1]}, {args.encoder} U-Net from scratch, "
        f"augment {args.augment}, "
        f"{train_seconds / 60:.1f} min, {images_per_s:.1f} img/s, {torch.get_num_threads()} threads"
    )
    print(
        f"val mIoU     {result.best_miou:.4f} (training's validation at {args.size[0]}x{args.size[1]}, "
        f"best epoch {result.best_epoch})"
    )
    print(f"val mIoU     {full_miou:.4f} (best weights at 360x480, 11 classes, Void excluded)")
    print("per class    " + ", ".join(f"{name} {iou:.3f}" for name, iou in ious.items()))


if __name__ == "__main__":
    main()
