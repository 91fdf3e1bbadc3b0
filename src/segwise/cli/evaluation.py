"""`segwise eval`, `segwise report` and `segwise compare`: how good a trained run is."""

from __future__ import annotations

import argparse
import sys

from .arguments import RUN_HELP, add_command, add_max_pixels


def register(commands: argparse._SubParsersAction) -> None:
    _add_eval(commands)
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
        examples=["segwise eval runs/cells data/cells --split val"],
    )
    evaluate.add_argument("run", help=RUN_HELP)
    evaluate.add_argument("data", help="dataset folder (same layout as for training)")
    evaluate.add_argument(
        "--split",
        default="val",
        help="train, val (default; without a val split: the images the run held out), test, or all",
    )
    evaluate.add_argument("-o", "--output", help="output folder (default: RUN/eval/SPLIT)")
    evaluate.add_argument("--worst", type=int, default=6, help="images in the worst-k gallery (default 6)")
    evaluate.add_argument(
        "--save-threshold",
        action="store_true",
        help="binary runs: write the best threshold to RUN/threshold.json",
    )
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
        args.run,
        args.data,
        split=args.split,
        output=args.output,
        worst=args.worst,
        save_threshold=args.save_threshold,
        calibrate=args.calibrate,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    overall = report.metrics["overall"]
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
    print(f"wrote {report.output}")
    if report.report is not None:
        print(f"report: {report.report}")
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
