"""The `segwise` command: parse arguments, call the library, print. No logic of its own.

User mistakes (SegwiseError) print one line and exit with code 2; SEGWISE_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import SegwiseError


def _size(text: str) -> list[int]:
    """'256' → [256, 256]; '192x384' → [192, 384] (height × width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size; use H or HxW, e.g. 256 or 192x384")
    return parts


def _command_train(args: argparse.Namespace) -> int:
    from .engine import train

    result = train(
        args.data,
        args.config,
        runs_dir=args.runs_dir,
        name=args.name,
        progress=not args.quiet,
        arch=args.arch,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        size=args.size,
        val_fraction=args.val_fraction,
        augment=args.augment,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
    )
    print(
        f"run folder: {result.run_dir}  (best val mIoU {result.best_miou:.4f} at epoch {result.best_epoch})"
    )
    return 0


def _command_predict(args: argparse.Namespace) -> int:
    from .inference import load
    from .inference.writers import predict_to_folder

    predictor = load(args.run, device=args.device, **_inference_options(args))
    inputs = args.inputs
    # Issue 7a: TIFFs too large for memory are predicted by region and written as tiled TIFFs.
    large = _large_tiffs(predictor, inputs)
    if large:
        from .inference.writers import collect_inputs

        inputs = [path for path in collect_inputs(inputs) if path not in large]
    written = (
        predict_to_folder(predictor, inputs, args.output, progress=sys.stderr.isatty()) if inputs else []
    )
    for path in large:
        from .inference.large import predict_large_tiff

        written.append(predict_large_tiff(predictor, path, os.path.join(args.output, f"{path.stem}.tif")))
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


def _inference_options(args: argparse.Namespace) -> dict:
    """`segwise predict` TTA and tiling flags as `InferenceOptions` keywords (issue 7a)."""
    options = {"tta": args.tta, "merge": args.merge, "tile": args.tile, "overlap": args.overlap}
    return options | ({"auto_tile_pixels": args.max_pixels} if args.max_pixels else {})


def _large_tiffs(predictor, inputs: list[str]) -> list:
    """Inputs that are TIFFs above the automatic tiling limit: they never go through memory whole."""
    from .inference.large import tiff_size
    from .inference.writers import collect_inputs

    sizes = {path: tiff_size(path) for path in collect_inputs(inputs)}
    limit = predictor.options.auto_tile_pixels
    return [path for path, size in sizes.items() if size is not None and size[0] * size[1] > limit]


def _command_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    overrides = {"epochs": args.epochs} if args.epochs else {}
    result = run_demo(args.out, progress=not args.quiet, **overrides)
    print(f"""
segwise demo finished in {result.seconds:.0f}s
  dataset      {result.data_dir}   (synthetic shapes: background, disc, rectangle, triangle, ring)
  run folder   {result.run_dir}   (config.yaml, model.safetensors, metrics.csv, curves.png, val_samples/)
  predictions  {result.predictions[0].parent}   ({len(result.predictions)} held-out test images)
  validation mIoU {result.val_miou:.4f}""")
    return 0


def _command_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import EVAL_DIR, evaluate_split, save_threshold, split_pairs, write_evaluation
    from .inference import load
    from .report.html import write_report

    predictor = load(args.run, device=args.device)
    pairs = split_pairs(args.data, args.split)
    evaluation = evaluate_split(predictor, pairs, worst_k=args.worst, progress=sys.stderr.isatty())
    out = Path(args.output) if args.output else Path(args.run) / EVAL_DIR / args.split
    metrics = write_evaluation(evaluation, predictor, out)
    overall = metrics["overall"]
    print(
        f"{len(pairs)} images  mIoU {overall['mean_iou']:.4f}  pixel accuracy {overall['pixel_accuracy']:.4f}"
    )
    for name, scores in metrics["per_class"].items():
        iou = "n/a" if scores["iou"] is None else f"{scores['iou']:.4f}"
        print(f"  {name:<20} IoU {iou}  pixels {scores['support']}")
    if evaluation.best_threshold is not None:
        threshold, dice = evaluation.best_threshold
        print(f"best foreground threshold by Dice: {threshold} (Dice {dice:.4f})")
        if args.save_threshold:
            print(f"saved to {save_threshold(Path(args.run), threshold, dice, args.split)}")
    print(f"wrote {out}")
    if not args.output:
        print(f"report: {write_report(args.run)}")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    print(f"wrote {write_report(args.run)}")
    return 0


def _command_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_runs

    print(compare_runs(args.runs, args.output, split=args.split))
    print(f"wrote {args.output}")


def _command_list_models(args: argparse.Namespace) -> int:
    from .models import list_models

    names = list_models(args.pattern)
    if not names:
        raise SegwiseError(f"no architecture matches '{args.pattern}'; there are {list_models()}")
    print("\n".join(names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segwise",
        description="Semantic segmentation from a folder of images and masks to a trained, evaluated model.",
        epilog="Start with `segwise demo`, then `segwise train DATA` on your own images/ + masks/ folder.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser(
        "train",
        help="train a model on DATA/images + DATA/masks",
        formatter_class=formatter,
        description="Train a model; classes, resolution and normalization come from the data.",
        epilog="example:\n  segwise train data/cells --encoder resnet18 --epochs 20 --size 256",
    )
    train.add_argument("data", help="folder with images/ and masks/ (optionally train/ and val/ inside)")
    train.add_argument("-c", "--config", help="plan YAML with `model:` and `train:` sections")
    train.add_argument("--name", help="run name (default: the data folder's name); never overwrites a run")
    train.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    train.add_argument("--arch", help="architecture (default: unet); `segwise list-models` lists them")
    train.add_argument("--encoder", help="timm encoder (default: resnet34)")
    train.add_argument("--encoder-weights", help="none (default), imagenet, or a path to a state dict")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--size", type=_size, help="training size H or HxW (default: the data's typical size)")
    train.add_argument(
        "--val-fraction", type=float, help="held out when DATA has no val/ split (default 0.2)"
    )
    train.add_argument("--augment", choices=["none", "flips"])
    train.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int)
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing but the result")
    train.set_defaults(handler=_command_train)

    predict = commands.add_parser(
        "predict",
        help="write masks for new images with a trained run",
        formatter_class=formatter,
        description="Predict an index-PNG mask (class palette, the input's own size) for every input image.",
        epilog="example:\n  segwise predict runs/cells new_images/ extra.png -o masks/",
    )
    predict.add_argument("run", help="run folder written by `segwise train`")
    predict.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    predict.add_argument("-o", "--output", required=True, help="folder for the masks (created if missing)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--tta",
        default="none",
        help="test-time augmentation: none (default), flips, d4, scales, or custom:VIEW,... e.g. custom:identity,hflip,blur",
    )
    predict.add_argument(
        "--merge", default="mean", choices=["mean", "gmean", "max", "vote"], help="how TTA views merge"
    )
    predict.add_argument(
        "--tile",
        help="predict in tiles of H or HxW pixels at native resolution (default: automatic for huge images)",
    )
    predict.add_argument(
        "--overlap", type=float, default=0.25, help="share of a tile its neighbour covers (0.25)"
    )
    predict.add_argument(
        "--max-pixels",
        type=int,
        help="images above this many pixels are tiled at the training size; such TIFFs are read by region "
        "and written as tiled TIFF masks (default 16777216 = 4096²)",
    )
    predict.set_defaults(handler=_command_predict)

    demo = commands.add_parser(
        "demo",
        help="the whole loop on the built-in synthetic dataset",
        formatter_class=formatter,
        description="Write a synthetic shapes dataset, train on it, evaluate, and predict held-out images.",
        epilog="example:\n  segwise demo --out demo",
    )
    demo.add_argument("--out", default="demo", help="folder for data, runs and predictions (default: demo)")
    demo.add_argument("--epochs", type=int, help="override the demo's epoch count")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(handler=_command_demo)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained run on a split of a dataset",
        formatter_class=formatter,
        description="Predict every image of a split at its own size and write metrics.json, per_image.csv, "
        "a confusion matrix, per-class IoU bars and a worst-k gallery (default folder: RUN/eval/SPLIT), "
        "then refresh RUN/report.html.",
        epilog="example:\n  segwise eval runs/cells data/cells --split val",
    )
    evaluate.add_argument("run", help="run folder written by `segwise train`")
    evaluate.add_argument("data", help="dataset folder (same layout as for training)")
    evaluate.add_argument(
        "--split", default="val", help="train, val, test, or all for a folder without splits"
    )
    evaluate.add_argument("-o", "--output", help="output folder (default: RUN/eval/SPLIT)")
    evaluate.add_argument("--worst", type=int, default=6, help="images in the worst-k gallery (default 6)")
    evaluate.add_argument(
        "--save-threshold",
        action="store_true",
        help="binary runs: write the best threshold to RUN/threshold.json",
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.set_defaults(handler=_command_eval)

    report = commands.add_parser(
        "report",
        help="(re)write RUN/report.html",
        formatter_class=formatter,
        description="Write a self-contained report.html: curves, LR schedule, evaluations, samples, config.",
        epilog="example:\n  segwise report runs/cells",
    )
    report.add_argument("run", help="run folder written by `segwise train`")
    report.set_defaults(handler=_command_report)

    compare = commands.add_parser(
        "compare",
        help="per-class IoU of evaluated runs side by side",
        formatter_class=formatter,
        description="Print per-class IoU of several runs (from RUN/eval/SPLIT/metrics.json) and write a PNG.",
        epilog="example:\n  segwise compare runs/cells runs/cells-2 --split val -o compare.png",
    )
    compare.add_argument("runs", nargs="+", help="run folders evaluated with `segwise eval`")
    compare.add_argument("--split", default="val", help="which evaluation to compare (default: val)")
    compare.add_argument("-o", "--output", default="compare.png", help="PNG to write (default: compare.png)")
    compare.set_defaults(handler=_command_compare)

    list_models = commands.add_parser(
        "list-models",
        help="list the architectures (for --arch or a plan's `model: arch:`)",
        formatter_class=formatter,
        description="Print the architecture names, one a line, optionally those matching a shell pattern.",
        epilog="example:\n  segwise list-models 'deeplab*'",
    )
    list_models.add_argument("pattern", nargs="?", default="*", help="shell-style pattern (default: *)")
    list_models.set_defaults(handler=_command_list_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "encoder_weights", None) in ("none", "None"):
        args.encoder_weights = None
    try:
        return args.handler(args)
    except SegwiseError as error:
        if os.environ.get("SEGWISE_DEBUG"):
            raise
        print(f"segwise: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segwise: interrupted", file=sys.stderr)
        return 130
