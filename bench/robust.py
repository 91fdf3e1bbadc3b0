"""Issue 23, results that hold up: cross-validation ensembles (and, later, class-aware sampling and
calibration) on CamVid under one wall-clock budget per trained model. Not part of CI.

    .venv/bin/python bench/robust.py --rows folds                    # 3 folds of 4 minutes each
    .venv/bin/python bench/robust.py --rows folds --budget 20s --folds 2 --runs-dir /tmp/smoke

Rows (`--rows`, comma-separated names of ROWS):
  folds   `segwise train camvid11 --folds K` with the shared ImageNet tf_efficientnet_lite0 weights,
          each fold trained under --budget (the plan made once, fitted to one fold's budget); then
          every fold and the K-fold ensemble (`segwise eval PARENT`: the folds' probabilities averaged)
          evaluated on the data's own val split (101 images at 360×480, 11 classes, Void excluded),
          which no fold trained on. Reported: the best single fold's val mIoU, the ensemble's, and
          the difference (issue 23's goal: ensemble ≥ best fold + 0.01).
Each row prints a markdown table (its header and its row) and appends its numbers to RUNS_DIR/robust.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import segwise
from segwise.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "shared/datasets/camvid11"
LITE0 = ROOT / "shared/weights/tf_efficientnet_lite0.safetensors"


def val_miou(run: Path, output: Path) -> float:
    """mIoU on the data's val split at the images' own size (as `segwise eval RUN DATA`)."""
    report = evaluate_run(run, DATA, split="val", output=output, worst=0)
    return report.metrics["overall"]["mean_iou"]


def folds_row(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    cv = segwise.train(
        DATA,
        folds=args.folds,
        runs_dir=args.runs_dir,
        name="robust-folds",
        seed=0,
        encoder="tf_efficientnet_lite0",
        encoder_weights=str(LITE0),
        budget=args.budget,
    )
    seconds = time.perf_counter() - started
    parent = cv.run_dir
    folds = [val_miou(parent / f"fold_{i}", parent / "bench" / f"fold_{i}") for i in range(args.folds)]
    ensemble = val_miou(parent, parent / "bench" / "ensemble")
    best = max(folds)
    return {
        "row": "folds",
        "k": args.folds,
        "budget_per_fold": args.budget,
        "seconds": round(seconds),
        "fold_val_miou": [round(v, 4) for v in folds],
        "out_of_fold_miou_mean": cv.summary["mean"].get("overall.mean_iou"),
        "best_fold_val_miou": round(best, 4),
        "ensemble_val_miou": round(ensemble, 4),
        "difference": round(ensemble - best, 4),
        "markdown": "\n".join(
            [
                "| row | best single fold val mIoU | ensemble val mIoU | difference |",
                "|---|---:|---:|---:|",
                f"| {args.folds}-fold ensemble, {args.budget} per fold | {best:.4f} | {ensemble:.4f} | "
                f"{ensemble - best:+.4f} |",
            ]
        ),
    }


ROWS: dict[str, Callable[[argparse.Namespace], dict]] = {"folds": folds_row}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--budget", default="4m", help="wall-clock budget per trained model (default 4m)")
    parser.add_argument("--folds", type=int, default=3, help="folds of the folds row (default 3)")
    parser.add_argument("--runs-dir", type=Path, default=Path("/work/bench-runs"))
    args = parser.parse_args()
    rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    for name in rows:  # each row prints its own small markdown table
        result = ROWS[name](args)
        print(result["markdown"], flush=True)
        with open(args.runs_dir / "robust.jsonl", "a") as log:
            log.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
