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
  sampling  two trainings under the same --budget, lite0 weights, one fixed plan (SAMPLING_PLAN: what
          the 6m budget plans on two idle cores; fixed so that a busy machine during one run's timing
          probe cannot give the two runs different lengths), every other value planned: class-aware
          sampling on the classes the plan names (on CamVid: pole, sign, fence, pedestrian, bicyclist, one
          crop in three) and off (sample_p 0). Both evaluated on val at 360×480: the thin classes'
          mean IoU (Pole, SignSymbol, Pedestrian, Bicyclist) and mIoU (goal: thin +0.05, no mIoU
          loss). Calibration of the 'on' run on val: ECE of the model's own probabilities and with
          its stored temperature (fitted at the end of training on val at the training size), and,
          held out, with a temperature fitted on the even val images measured on the odd ones
          (goal: ECE halved).
Each row prints a markdown table (its header and its row) and appends its numbers to RUNS_DIR/robust.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import segwise
from segwise.calibration import fit_temperature
from segwise.evaluate import evaluate_run, evaluate_split, split_pairs

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


THIN = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")
SAMPLING_PLAN = {"size": [192, 256], "batch_size": 8, "epochs": 10}


def sampling_row(args: argparse.Namespace) -> dict:
    found = {}
    for label, overrides in (("on", {"sample_p": 0.33}), ("off", {"sample_p": 0.0})):
        result = segwise.train(
            DATA,
            runs_dir=args.runs_dir,
            name=f"robust-sampling-{label}",
            seed=0,
            encoder="tf_efficientnet_lite0",
            encoder_weights=str(LITE0),
            budget=args.budget,
            **SAMPLING_PLAN,
            **overrides,
        )
        report = evaluate_run(result.run_dir, DATA, split="val", output=result.run_dir / "bench", worst=0)
        per_class, overall = report.metrics["per_class"], report.metrics["overall"]
        train = segwise.load(result.run_dir).config.train
        found[label] = {
            "run": str(result.run_dir),
            "sample_p": train.sample_p,
            "sample_classes": train.sample_classes,
            "epochs_run": len(result.history),
            "miou": round(overall["mean_iou"], 4),
            "thin_miou": round(sum(per_class[name]["iou"] or 0.0 for name in THIN) / len(THIN), 4),
            "thin_iou": {name: per_class[name]["iou"] for name in THIN},
            "ece": overall["ece"],
            "ece_stored_temperature": overall.get("ece_calibrated"),
        }
    print(json.dumps(found), flush=True)  # the trainings' numbers, before anything else can fail
    held_out = held_out_calibration(Path(found["on"]["run"]))
    on, off = found["on"], found["off"]
    return {
        "row": "sampling",
        "budget": args.budget,
        **found,
        "held_out_calibration": held_out,
        "markdown": "\n".join(
            [
                "| row | thin-class mean IoU | mIoU | ECE | ECE, stored T | ECE, held-out T |",
                "|---|---:|---:|---:|---:|---:|",
                f"| class-aware sampling on ({args.budget}) | {on['thin_miou']:.4f} | {on['miou']:.4f} | "
                f"{_f(on['ece'])} | {_f(on['ece_stored_temperature'])} | {_f(held_out['ece_calibrated'])} "
                f"(held-out ECE without it {_f(held_out['ece'])}) |",
                f"| class-aware sampling off ({args.budget}) | {off['thin_miou']:.4f} | {off['miou']:.4f} | "
                f"{_f(off['ece'])} | {_f(off['ece_stored_temperature'])} | — |",
                f"| difference (on − off) | {on['thin_miou'] - off['thin_miou']:+.4f} | "
                f"{on['miou'] - off['miou']:+.4f} | | | |",
            ]
        ),
    }


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def held_out_calibration(run: Path) -> dict:
    """A temperature fitted on the even val images and its ECE on the odd ones (none fitted on)."""
    pairs, source = split_pairs(DATA, "val")
    predictor = segwise.load(run)
    fitted = fit_temperature(
        evaluate_split(predictor, pairs[::2], 0, source=source).sample, "val, even images"
    )
    predictor.calibration = fitted
    overall = evaluate_split(predictor, pairs[1::2], 0, source=source).metrics()["overall"]
    return {
        "temperature": fitted.temperature,
        "ece": overall["ece"],
        "ece_calibrated": overall["ece_calibrated"],
    }


ROWS: dict[str, Callable[[argparse.Namespace], dict]] = {"folds": folds_row, "sampling": sampling_row}


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
