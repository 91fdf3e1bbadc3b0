"""`segwise eval`, `segwise tune-postprocess`, `segwise report` and `segwise compare`: how good a trained
run is, and the post-processing that makes it better."""

from __future__ import annotations

import argparse
import sys

from ..config import POSTPROCESS_MARGIN, POSTPROCESS_METRICS
from ..constants import POSTPROCESS_JSON
from .arguments import (
    ENSEMBLE_RUN_HELP,
    RUN_HELP,
    add_command,
    add_ensemble,
    add_max_pixels,
    add_no_postprocess,
    runs_of,
)


def register(commands: argparse._SubParsersAction) -> None:
    _add_eval(commands)
    _add_tune(commands)
    _add_report(commands)
    _add_compare(commands)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = add_command(
        commands,
        "eval",
        _eval,
        help="evaluate a trained run on a split of a dataset",
        description="Predict every image of a split at its own size and write metrics.json, per_image.csv, "
        "a confusion matrix, per-class IoU bars and a worst-k gallery (default folder: RUN/eval/SPLIT), "
        "then refresh RUN/report.html.",
        examples=[
            "segwise eval runs/cells data/cells --split val",
            "segwise eval runs/cells-cv data/cells   # the folds as an ensemble → runs/cells-cv/eval/val",
            "segwise eval runs/a data/cells --ensemble runs/b -o eval-ab   # two runs averaged",
        ],
    )
    evaluate.add_argument("run", help=ENSEMBLE_RUN_HELP)
    evaluate.add_argument("data", help="dataset folder (same layout as for training)")
    add_ensemble(evaluate)
    evaluate.add_argument(
        "--split",
        default="val",
        help="train, val (default; without a val split: the images the run held out), test, or all",
    )
    evaluate.add_argument(
        "-o", "--output", help="output folder (default: RUN/eval/SPLIT; needed with --ensemble)"
    )
    evaluate.add_argument("--worst", type=int, default=6, help="images in the worst-k gallery (default 6)")
    evaluate.add_argument(
        "--save-threshold",
        action="store_true",
        help="binary runs: write the best threshold to RUN/threshold.json",
    )
    add_no_postprocess(evaluate)
    evaluate.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the temperature of the run's probabilities on this split and write RUN/calibration.json "
        "(masks do not change; probability and uncertainty maps use it)",
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_max_pixels(evaluate)


def _eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_run

    report = evaluate_run(
        runs_of(args),
        args.data,
        split=args.split,
        output=args.output,
        worst=args.worst,
        save_threshold=args.save_threshold,
        calibrate=args.calibrate,
        device=args.device,
        progress=sys.stderr.isatty(),
        postprocess=not args.no_postprocess,
    )
    overall = report.metrics["overall"]
    if report.members > 1:
        print(f"ensemble of {report.members} runs: their probabilities averaged")
    if report.postprocessing is not None:
        print(report.postprocessing)
    if report.held_out is not None:
        print(f"val: the {report.images} images the run held out for validation ({report.held_out})")
    print(
        f"{report.images} images  mIoU {overall['mean_iou']:.4f}  pixel accuracy {overall['pixel_accuracy']:.4f}"
    )
    for name, scores in report.metrics["per_class"].items():
        iou = "n/a" if scores["iou"] is None else f"{scores['iou']:.4f}"
        print(f"  {name:<20} IoU {iou}  pixels {scores['support']}")
    _say_calibration(report)
    if report.best_threshold is not None:
        threshold, dice = report.best_threshold
        print(f"best foreground threshold by Dice: {threshold} (Dice {dice:.4f})")
        if report.threshold_file is not None:
            print(f"saved to {report.threshold_file}")
            if (report.threshold_file.parent / POSTPROCESS_JSON).is_file():  # it takes precedence
                print(
                    f"note: predict and eval apply {report.threshold_file.parent / POSTPROCESS_JSON} instead"
                )
    print(f"wrote {report.output}")
    if report.report is not None:
        print(f"report: {report.report}")
    return 0


def _add_tune(commands: argparse._SubParsersAction) -> None:
    tune = add_command(
        commands,
        "tune-postprocess",
        _tune,
        help="choose each class's post-processing on held-out predictions (predict and eval apply it)",
        description="Choose per class, in this order and each on top of what was kept, the threshold "
        "(binary and per-label runs), the minimum object size, hole filling and keeping only the largest "
        "object, on predictions the model did not train on: the data's val split (without one, the images "
        "the run held out), or for a folds parent each fold's held-out images. An option is kept only if "
        "it raises the class's IoU or Dice by --margin. The choices go to RUN/postprocess.json, which "
        "`segwise predict` and `segwise eval` apply from then on (their flags override it, "
        "--no-postprocess ignores it).",
        examples=[
            "segwise tune-postprocess runs/cells data/cells",
            "segwise tune-postprocess runs/cells-cv data/cells --metric dice --margin 0.01   # folds parent",
        ],
    )
    tune.add_argument("run", help=RUN_HELP + ", or a folds parent (folds.json beside fold_0/ …)")
    tune.add_argument("data", help="dataset folder (same layout as for training)")
    tune.add_argument(
        "--split",
        help="split to choose on: val (default; without a val split: the images the run held out), "
        "train, test or all; not for a folds parent",
    )
    tune.add_argument(
        "--metric", choices=POSTPROCESS_METRICS, default="iou", help="per-class score to raise (default iou)"
    )
    tune.add_argument(
        "--margin",
        type=float,
        default=POSTPROCESS_MARGIN,
        help=f"least gain in the metric for an option to be kept (default {POSTPROCESS_MARGIN})",
    )
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_max_pixels(tune)


def _tune(args: argparse.Namespace) -> int:
    from ..tune import tune_postprocess

    report = tune_postprocess(
        args.run,
        args.data,
        split=args.split,
        metric=args.metric,
        margin=args.margin,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    choices = report.choices
    metric = {"iou": "IoU", "dice": "Dice"}[choices.metric]
    print(f"chosen on {report.split}: {choices.images} images, {metric}, margin {choices.margin}")
    for choice in choices.classes:
        if choice.before is None:
            print(f"  {choice.name:<20} not in these images' masks: nothing chosen")
            continue
        kept = ", ".join(choice.kept.describe()) or "nothing kept"
        print(f"  {choice.name:<20} {metric} {choice.before:.4f} -> {choice.after:.4f}  {kept}")
    print(f"wrote {report.path} (predict and eval apply it; --no-postprocess ignores it)")
    return 0


def _say_calibration(report) -> None:
    overall, found = report.metrics["overall"], report.metrics.get("calibration", {})
    if overall.get("ece") is None:
        return
    line = f"calibration error (ECE) {overall['ece']:.4f}"
    if overall.get("ece_calibrated") is not None:
        line += f", {overall['ece_calibrated']:.4f} at temperature {found['temperature']:.3f}"
    print(line)
    if report.calibration_file is not None:
        print(f"saved to {report.calibration_file}")


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = add_command(
        commands,
        "report",
        _report,
        help="(re)write RUN/report.html",
        description="Write a self-contained report.html: curves, LR schedule, evaluations, samples, config.",
        examples=["segwise report runs/cells"],
    )
    report.add_argument("run", help=RUN_HELP)


def _report(args: argparse.Namespace) -> int:
    from ..report.html import write_report

    print(f"wrote {write_report(args.run)}")
    return 0


def _add_compare(commands: argparse._SubParsersAction) -> None:
    compare = add_command(
        commands,
        "compare",
        _compare,
        help="per-class IoU of evaluated runs side by side",
        description="Print per-class IoU of several runs (from RUN/eval/SPLIT/metrics.json) and write a PNG.",
        examples=["segwise compare runs/cells runs/cells-2 --split val -o compare.png"],
    )
    compare.add_argument("runs", nargs="+", help="run folders evaluated with `segwise eval`")
    compare.add_argument("--split", default="val", help="which evaluation to compare (default: val)")
    compare.add_argument("-o", "--output", default="compare.png", help="PNG to write (default: compare.png)")


def _compare(args: argparse.Namespace) -> int:
    from ..report.compare import compare_runs

    print(compare_runs(args.runs, args.output, split=args.split))
    print(f"wrote {args.output}")
    return 0
