"""The `segwise` command: parse arguments, call the library, print. No logic of its own.

User mistakes (SegwiseError) print one line and exit with code 2; SEGWISE_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import AUGMENT_PRESETS
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


def _lr(text: str) -> float | str:
    """A positive number or 'auto' (the LR range test picks it)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a learning rate; use a positive number or auto")
    return value


def _fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of fractions; use e.g. 0.5,1.0") from None


def _command_train(args: argparse.Namespace) -> int:
    from .engine import train

    if (args.data is None) == (args.resume is None):
        raise SegwiseError("train: pass DATA to start a run, or --resume RUN (without DATA) to continue one")
    result = train(
        args.data,
        args.config,
        runs_dir=args.runs_dir,
        name=args.name,
        progress=not args.quiet,
        resume=args.resume,
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
        layout=args.layout,
        categories=args.categories,
        mask_threshold=args.mask_threshold,
        weighting=args.weighting,
        **_training_options(args),
    )
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line from rank 0 only
        print(
            f"run folder: {result.run_dir}  (best val mIoU {result.best_miou:.4f} at epoch {result.best_epoch})"
        )
    return 0


# Flag name → TrainConfig field, for the training-engine options (issue 6); None means "not given".
_TRAINING_FLAGS = (
    "optimizer",
    "schedule",
    "warmup_epochs",
    "encoder_lr_scale",
    "freeze_encoder_epochs",
    "clip_grad_norm",
    "accumulate",
    "ema_decay",
    "progressive_resize",
    "monitor",
    "monitor_mode",
    "patience",
    "min_delta",
)


def _training_options(args: argparse.Namespace) -> dict:
    options = {name: getattr(args, name) for name in _TRAINING_FLAGS}
    for flag in ("compile", "sync_batchnorm", "tensorboard", "deterministic"):
        options[flag] = True if getattr(args, flag) else None
    return options


def _command_lr_find(args: argparse.Namespace) -> int:
    from .engine.lr_find import find_lr

    finding = find_lr(
        args.data,
        args.config,
        output=args.output,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        arch=args.arch,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        batch_size=args.batch_size,
        size=args.size,
        precision=args.precision,
        device=args.device,
        optimizer=args.optimizer,
        seed=args.seed,
    )
    print(
        f"suggested lr {finding.suggestion:.3g} (steepest descent of the smoothed loss; "
        f"{len(finding.lrs)} steps from {finding.lrs[0]:.1e} to {finding.lrs[-1]:.1e})"
    )
    print(f"wrote {args.output}; train with --lr {finding.suggestion:.3g}, or --lr auto to rerun the test")
    return 0


def _command_predict(args: argparse.Namespace) -> int:
    from .inference import load
    from .inference.postprocess import Steps
    from .inference.writers import (
        collect_inputs,
        parse_formats,
        predict_to_folder,
        process_device,
        process_group,
        saved_threshold,
        total_over_processes,
    )

    formats = parse_formats(args.format)  # a typo fails before the model loads
    with process_group() as (rank, world_size):
        device, options = process_device(args.device), _inference_options(args)
        if args.backend == "onnxruntime" or args.onnx:
            from .inference.backends import load_onnx

            predictor = load_onnx(args.run, args.onnx, device=device, **options)
        else:
            predictor = load(args.run, device=device, **options)
        threshold = args.threshold
        if threshold is None:
            threshold = saved_threshold(args.run, predictor)
            if threshold is not None and rank == 0:
                print(
                    f"foreground threshold {threshold} from {args.run}/threshold.json (--threshold overrides)"
                )
        inputs = args.inputs
        # Issue 7a: TIFFs too large for memory are predicted by region and written as tiled TIFF masks.
        large = _large_tiffs(predictor, inputs)
        if large:
            inputs = [path for path in collect_inputs(inputs) if path not in large]
        written = (
            predict_to_folder(
                predictor,
                inputs,
                args.output,
                progress=rank == 0 and sys.stderr.isatty(),
                formats=formats,
                steps=Steps(threshold, args.min_size, args.fill_holes, args.largest),
                crop=args.crop,
                batch_size=args.batch_size,
                shard=(rank, world_size),
            )
            if inputs
            else []
        )
        for path in sorted(large)[rank::world_size]:
            from .inference.large import predict_large_tiff

            written.append(predict_large_tiff(predictor, path, os.path.join(args.output, f"{path.stem}.tif")))
        total = total_over_processes(len(written))
    if rank == 0:
        print(f"wrote {total} file(s) to {args.output}")
    return 0


def _command_export(args: argparse.Namespace) -> int:
    from .inference.backends import export_run

    path, differences = export_run(args.run, args.format, args.output)
    checks = ", ".join(f"{difference:.2g} at {h}×{w}" for (h, w), difference in differences)
    print(f"wrote {path}  (parity with PyTorch, max abs difference of the logits: {checks})")
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
    plan = predictor.config.data.get("plan") or {}  # the layout the run was trained with
    pairs, source = split_pairs(args.data, args.split, plan.get("layout", "auto"), plan.get("categories"))
    evaluation = evaluate_split(
        predictor, pairs, worst_k=args.worst, progress=sys.stderr.isatty(), source=source
    )
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


def _categories(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_data_options(parser: argparse.ArgumentParser, weighting: bool = True) -> None:
    """How to read DATA (shared by check, plan and train) and, for plan and train, the class weighting."""
    from .data.formats import LAYOUTS

    parser.add_argument("--layout", choices=LAYOUTS, help="dataset layout (default: auto-detected)")
    parser.add_argument(
        "--categories", type=_categories, help="COCO: comma-separated category names to keep (default: all)"
    )
    parser.add_argument(
        "--mask-threshold", type=int, help="binary masks: stored value ≥ this is foreground (e.g. 128)"
    )
    if weighting:
        parser.add_argument(
            "--weighting",
            choices=["none", "inverse", "one_minus", "median_frequency"],
            help="class weights for the loss from pixel frequencies (default: none)",
        )


def _command_plan(args: argparse.Namespace) -> int:
    from .data.plan import make_plan, write_plan

    plan = make_plan(
        args.data,
        args.config,
        device=args.device,
        arch=args.arch,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        size=args.size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        layout=args.layout,
        categories=args.categories,
        mask_threshold=args.mask_threshold,
        weighting=args.weighting,
    )
    print("\n".join(plan.notes))
    print(f"wrote {write_plan(plan, args.output)}")
    return 0


def _command_check(args: argparse.Namespace) -> int:
    from .data.check import check_data

    report = check_data(
        args.data, args.layout or "auto", categories=args.categories, mask_threshold=args.mask_threshold
    )
    print(report.text())
    return report.exit_code


def _command_show(args: argparse.Namespace) -> int:
    from .data.show import write_augmented_grid

    path = write_augmented_grid(args.data, args.output, args.augment, args.count, args.seed, args.size)
    print(f"wrote {path}  ({args.count} augmented training samples, preset {args.augment})")
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
        epilog="example:\n  segwise train data/cells --encoder resnet18 --epochs 20 --size 256\n"
        "  segwise train --resume runs/cells            # continue a killed run where it stopped\n"
        "  torchrun --nproc-per-node 2 -m segwise train data/cells   # data-parallel, batch size per process",
    )
    train.add_argument(
        "data", nargs="?", help="folder with images/ and masks/ (optionally train/ and val/ inside)"
    )
    train.add_argument("-c", "--config", help="plan YAML with `model:` and `train:` sections")
    train.add_argument("--name", help="run name (default: the data folder's name); never overwrites a run")
    train.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    train.add_argument("--arch", help="architecture (default: unet); `segwise list-models` lists them")
    train.add_argument("--encoder", help="timm encoder (default: resnet34)")
    train.add_argument("--encoder-weights", help="none (default), imagenet, or a path to a state dict")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=_lr, help="peak learning rate, or auto (LR range test; default 1e-3)")
    train.add_argument("--size", type=_size, help="training size H or HxW (default: the data's typical size)")
    train.add_argument(
        "--val-fraction", type=float, help="held out when DATA has no val/ split (default 0.2)"
    )
    train.add_argument(
        "--augment", choices=AUGMENT_PRESETS, help="augmentation preset (default: flips); see README"
    )
    train.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int)
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing but the result")
    _add_data_options(train)
    train.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint (no DATA)")
    train.add_argument("--optimizer", choices=["adamw", "sgd", "adam"], help="default adamw; sgd is Nesterov")
    train.add_argument("--schedule", choices=["one_cycle", "cosine", "poly"], help="default one_cycle")
    train.add_argument("--warmup-epochs", type=float, help="cosine/poly linear warm-up (default 1)")
    train.add_argument(
        "--encoder-lr-scale", type=float, help="encoder LR = lr × this (default 0.1 pretrained)"
    )
    train.add_argument("--freeze-encoder-epochs", type=int, help="train decoder and head only for N epochs")
    train.add_argument("--clip-grad-norm", type=float, help="clip the gradient norm to this")
    train.add_argument("--accumulate", type=int, help="micro-batches per optimizer step (default 1)")
    train.add_argument("--ema-decay", type=float, help="keep an EMA of the weights, e.g. 0.999; it is saved")
    train.add_argument(
        "--progressive-resize", type=_fractions, help="size fraction per epoch phase, e.g. 0.5,1.0"
    )
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument(
        "--monitor", choices=["val_miou", "val_loss", "val_pixel_accuracy", "train_loss"], help="best-by"
    )
    train.add_argument("--monitor-mode", choices=["auto", "max", "min"])
    train.add_argument("--patience", type=int, help="stop after N epochs without improvement")
    train.add_argument("--min-delta", type=float, help="smallest change that counts as improvement")
    train.add_argument("--sync-batchnorm", action="store_true", help="torchrun on GPUs: SyncBatchNorm")
    train.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard/")
    train.add_argument("--deterministic", action="store_true", help="reproducible kernels (slower)")
    train.set_defaults(handler=_command_train)

    lr_find = commands.add_parser(
        "lr-find",
        help="LR range test: plot loss against learning rate and suggest one",
        formatter_class=formatter,
        description="Train a fresh model for up to --steps batches while the learning rate grows "
        "exponentially; plot the smoothed loss and suggest the LR of its steepest descent.",
        epilog="example:\n  segwise lr-find data/cells --encoder resnet18 -o lr_find.png",
    )
    lr_find.add_argument("data", help="folder with images/ and masks/")
    lr_find.add_argument("-c", "--config", help="plan YAML with `model:` and `train:` sections")
    lr_find.add_argument("-o", "--output", default="lr_find.png", help="plot (default: lr_find.png)")
    lr_find.add_argument("--steps", type=int, default=100, help="at most this many batches (default 100)")
    lr_find.add_argument("--start-lr", type=float, default=1e-7)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--arch")
    lr_find.add_argument("--encoder")
    lr_find.add_argument("--encoder-weights", help="none (default), imagenet, or a path to a state dict")
    lr_find.add_argument("--optimizer", choices=["adamw", "sgd", "adam"])
    lr_find.add_argument("--batch-size", type=int)
    lr_find.add_argument("--size", type=_size)
    lr_find.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    lr_find.add_argument("--device")
    lr_find.add_argument("--seed", type=int)
    lr_find.set_defaults(handler=_command_lr_find)

    predict = commands.add_parser(
        "predict",
        help="write masks for new images with a trained run",
        formatter_class=formatter,
        description="Predict every input image at its own size (EXIF orientation applied): an index-PNG mask "
        "in the class palette, or any of --format's outputs, optionally cleaned (--min-size, --fill-holes, "
        "--largest). Under torchrun each process predicts a disjoint share of the inputs.",
        epilog="example:\n  segwise predict runs/cells new_images/ extra.png -o masks/\n"
        "  segwise predict runs/cells 'scans/**/*.tif' -o out --format png,overlay,json --min-size 50\n"
        "  torchrun --nproc-per-node 4 -m segwise predict runs/cells big_folder/ -o out   # 4 processes",
    )
    predict.add_argument("run", help="run folder written by `segwise train`")
    predict.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    predict.add_argument("-o", "--output", required=True, help="folder for the masks (created if missing)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--format",
        "--output-format",
        default="png",
        help="comma-separated outputs: png (index mask, default), overlay, rgba, npy, tiff (probabilities), "
        "json (object boxes)",
    )
    predict.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    predict.add_argument(
        "--threshold",
        type=float,
        help="binary: foreground where P > T (default: RUN/threshold.json if saved, else 0.5); "
        "multiclass: pixels whose best probability is ≤ T become background; multilabel: each "
        "label present where its P > T (default 0.5)",
    )
    predict.add_argument("--min-size", type=int, help="remove objects under N pixels (per class)")
    predict.add_argument("--fill-holes", action="store_true", help="fill background holes inside objects")
    predict.add_argument("--largest", action="store_true", help="keep only the largest object of each class")
    predict.add_argument(
        "--crop", action="store_true", help="also write NAME_crop.png: the objects' box on a white background"
    )
    predict.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch (default) or onnxruntime: the run's model.onnx from `segwise export` (or --onnx FILE)",
    )
    predict.add_argument("--onnx", metavar="FILE", help="ONNX file for --backend onnxruntime (implies it)")
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

    export = commands.add_parser(
        "export",
        help="export a run's model to ONNX or TorchScript",
        formatter_class=formatter,
        description="Export the model with dynamic batch, height and width, checked against PyTorch at two "
        "sizes (max abs difference of the logits ≤ 1e-4, else nothing is written). The file's metadata holds "
        "the class names, palette, mean, std and input size. An ONNX export predicts through "
        "`segwise predict RUN ... --backend onnxruntime`.",
        epilog="example:\n  segwise export runs/cells --format onnx    # writes runs/cells/model.onnx",
    )
    export.add_argument("run", help="run folder written by `segwise train`")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default: onnx")
    export.add_argument(
        "-o", "--output", help="file to write (default: RUN/model.onnx or RUN/model.torchscript.pt)"
    )
    export.set_defaults(handler=_command_export)

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

    check = commands.add_parser(
        "check",
        help="summarise DATA and list every problem in it",
        formatter_class=formatter,
        description="Read every image and mask once; print pairs per split, sizes, channels, classes with "
        "pixel shares and the void share, then every problem (unmatched, duplicate, unreadable, size "
        "mismatch, unexpected mask values, classes absent from a split).\n"
        "Exit code 0: clean; 1: problems found; 2: DATA cannot be used at all.\n"
        "Layouts: images/+masks/ (split subfolders, x_mask.png names, masks/<class>/ multilabel), fastai "
        "(images/ labels/ codes.txt valid.txt), segnet (train/ trainannot/ ...), voc (JPEGImages/ "
        "SegmentationClass/), coco (annotations/*.json); class names from class_dict.csv, classes.txt "
        "or codes.txt.",
        epilog="example:\n  segwise check data/camvid",
    )
    check.add_argument("data", help="dataset folder")
    _add_data_options(check, weighting=False)
    check.set_defaults(handler=_command_check)

    plan = commands.add_parser(
        "plan",
        help="self-configure training on DATA and write plan.yaml",
        formatter_class=formatter,
        description="Choose classes, mode, class weights, resolution, normalization, batch size (a memory "
        "probe on the device) and epochs from DATA, and write them as an editable YAML that "
        "`segwise train DATA -c plan.yaml` uses as is. `segwise train` without -c plans the same way.",
        epilog="example:\n  segwise plan data/camvid --encoder resnet18 --weighting median_frequency -o plan.yaml",
    )
    plan.add_argument("data", help="dataset folder")
    plan.add_argument("-o", "--output", default="plan.yaml", help="YAML to write (default: plan.yaml)")
    plan.add_argument("-c", "--config", help="start from this plan/config YAML")
    plan.add_argument("--arch", help="architecture (default: unet)")
    plan.add_argument("--encoder", help="timm encoder (default: resnet34)")
    plan.add_argument("--encoder-weights", help="none (default), imagenet, or a path to a state dict")
    plan.add_argument("--size", type=_size, help="training size H or HxW instead of the planned one")
    plan.add_argument("--batch-size", type=int, help="skip the memory probe and use this batch size")
    plan.add_argument("--epochs", type=int)
    plan.add_argument("--device", help="device to probe: auto, cpu, cuda or cuda:N")
    _add_data_options(plan)
    plan.set_defaults(handler=_command_plan)
    show = commands.add_parser(
        "show",
        help="write a PNG grid of augmented training images beside their masks",
        formatter_class=formatter,
        description="Draw training samples through an augmentation preset and write image | mask cells "
        "(masks in the class palette, void grey) as one PNG: see what the model will see.",
        epilog="example:\n  segwise show data/cells -o show.png --augment heavy -n 16",
    )
    show.add_argument("data", help="dataset folder (same layout as for training)")
    show.add_argument("-o", "--output", default="show.png", help="PNG to write (default: show.png)")
    show.add_argument(
        "--augment", choices=AUGMENT_PRESETS, default="default", help="preset to draw (default: default)"
    )
    show.add_argument("-n", "--count", type=int, default=16, help="samples in the grid (default 16)")
    show.add_argument("--size", type=_size, help="training size H or HxW (default: the data's typical size)")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(handler=_command_show)
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
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every process fails alike; one line
            print(f"segwise: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segwise: interrupted", file=sys.stderr)
        return 130
