"""`segwise predict` and `segwise export`: masks for new images, and the model as ONNX or TorchScript."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import BACKENDS, EXPORT_FORMATS, MERGES, POLYGON_TOLERANCE
from ..errors import SegwiseError
from .arguments import (
    ENSEMBLE_RUN_HELP,
    RUN_HELP,
    add_command,
    add_ensemble,
    add_max_pixels,
    add_no_postprocess,
    is_rank_zero,
    runs_of,
)


def register(commands: argparse._SubParsersAction) -> None:
    _add_predict(commands)
    _add_export(commands)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = add_command(
        commands,
        "predict",
        _predict,
        help="write masks for new images with a trained run",
        description="Predict every input image at its own size (EXIF orientation applied): an index-PNG mask "
        "in the class palette, or any of --format's outputs, optionally cleaned (--min-size, --fill-holes, "
        "--largest). Under torchrun each process predicts a disjoint share of the inputs. Nothing existing "
        "is replaced, nor a dataset's images or masks folder written into, without --overwrite; an input "
        "that cannot be read is skipped and named at the end (exit code 2).",
        examples=[
            "segwise predict runs/cells new_images/ extra.png -o masks/",
            "segwise predict runs/cells 'scans/**/*.tif' -o out --format png,overlay,json --min-size 50",
            "torchrun --nproc-per-node 4 -m segwise predict runs/cells big_folder/ -o out   # 4 processes",
            "segwise predict runs/cells-cv new_images/ -o masks/   # the folds of `train --folds 5`",
            "segwise predict runs/a new_images/ --ensemble runs/b -o masks/   # two runs averaged",
        ],
    )
    predict.add_argument("run", help=f"{ENSEMBLE_RUN_HELP}; or a folder written by save_pretrained")
    predict.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    add_ensemble(predict)
    _add_output_options(predict)
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    predict.add_argument(
        "--threshold",
        type=float,
        help="binary: foreground where P > T (default: RUN/postprocess.json's or RUN/threshold.json's if "
        "recorded, else 0.5); "
        "multiclass: pixels whose best probability is ≤ T become background; per-label runs: each "
        "label present where its P > T (default 0.5)",
    )
    predict.add_argument(
        "--min-size",
        type=int,
        help="remove objects under N pixels, every class (overrides RUN/postprocess.json)",
    )
    predict.add_argument("--fill-holes", action="store_true", help="fill background holes inside objects")
    predict.add_argument("--largest", action="store_true", help="keep only the largest object of each class")
    add_no_postprocess(predict)
    predict.add_argument(
        "--crop", action="store_true", help="also write NAME_crop.png: the objects' box on a white background"
    )
    _add_backend_options(predict)
    _add_tta_and_tile_options(predict)


def _add_output_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("-o", "--output", required=True, help="folder for the masks (created if missing)")
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs and write into a folder holding a dataset's images or masks "
        "(an input is never overwritten)",
    )
    predict.add_argument(
        "--format",
        "--output-format",
        default="png",
        help="comma-separated outputs: png (index mask, default), overlay, rgba, npy, tiff (probabilities), "
        "json (object boxes), uncertainty (16-bit PNG of the probabilities' normalized entropy), coco "
        "(one COCO instances file for all inputs, objects as RLE, or polygons with --coco-polygons)",
    )
    predict.add_argument(
        "--coco-polygons",
        action="store_true",
        help="coco format: segmentations as polygons (holes kept), simplified to --polygon-tolerance "
        "pixels, instead of RLE",
    )
    predict.add_argument(
        "--polygon-tolerance",
        type=float,
        default=POLYGON_TOLERANCE,
        metavar="PX",
        help=f"how far a polygon may stray from the mask, pixels (default {POLYGON_TOLERANCE:g}); less "
        "where an object would keep an IoU under 0.98 with its mask, 0 for the exact outline",
    )


def _add_backend_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch (default) or onnxruntime: the run's model.onnx from `segwise export` (or --onnx FILE)",
    )
    predict.add_argument("--onnx", metavar="FILE", help="ONNX file for --backend onnxruntime (implies it)")


def _add_tta_and_tile_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument(
        "--tta",
        default="none",
        help="test-time augmentation: none (default), flips, d4, scales, or custom:VIEW,... "
        "e.g. custom:identity,hflip,blur",
    )
    predict.add_argument("--merge", default="mean", choices=MERGES, help="how TTA views merge")
    predict.add_argument(
        "--tile",
        help="predict in tiles of H or HxW pixels at native resolution (default: automatic for huge images)",
    )
    predict.add_argument(
        "--overlap", type=float, default=0.25, help="share of a tile its neighbour covers (0.25)"
    )
    add_max_pixels(predict)


def _predict(args: argparse.Namespace) -> int:
    from ..inference import predict_folder

    report = predict_folder(
        runs_of(args),
        args.inputs,
        args.output,
        device=args.device,
        backend=args.backend,
        onnx=args.onnx,
        tta=args.tta,
        merge=args.merge,
        tile=args.tile,
        overlap=args.overlap,
        formats=args.format,
        threshold=args.threshold,
        min_size=args.min_size,
        fill_holes=args.fill_holes,
        largest=args.largest,
        crop=args.crop,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
        coco_polygons=args.coco_polygons,
        polygon_tolerance=args.polygon_tolerance,
        overwrite=args.overwrite,
        postprocess=not args.no_postprocess,
    )
    if is_rank_zero():
        if report.postprocessing is not None:
            print(report.postprocessing)
        print(f"wrote {report.total} file(s) to {args.output}")
    if report.skipped:
        raise SegwiseError(_skipped_message(report.skipped))
    return 0


def _skipped_message(skipped: list[tuple[Path, str]], shown: int = 3) -> str:
    """One line for the inputs that could not be read: the first few by name, the first one's reason
    (which names its fix)."""
    if len(skipped) == 1:
        return f"not predicted: {skipped[0][1]}"
    names = ", ".join(str(path) for path, _ in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{len(skipped)} inputs not predicted ({names}{more}); the first: {skipped[0][1]}"


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = add_command(
        commands,
        "export",
        _export,
        help="export a run's model to ONNX, TorchScript or a model-hub folder",
        description="Export the model with dynamic batch, height and width, checked against PyTorch at two "
        "sizes (max abs difference of the logits ≤ 1e-4, else nothing is written). The file's metadata holds "
        "the class names, palette, mean, std and input size. An ONNX export predicts through "
        "`segwise predict RUN ... --backend onnxruntime`. --format pretrained writes a folder in the layout "
        "model hubs expect (config.json, model.safetensors, a README.md model card with the run's `segwise "
        "eval` metrics) that `segwise predict` and segwise.load take like a run.",
        examples=[
            "segwise export runs/cells --format onnx    # writes runs/cells/model.onnx",
            "segwise export runs/cells --format pretrained -o cells-model/",
        ],
    )
    export.add_argument("run", help=RUN_HELP)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="default: onnx")
    export.add_argument(
        "-o",
        "--output",
        help="file (folder for pretrained) to write (default: RUN/model.onnx, RUN/model.torchscript.pt "
        "or RUN/pretrained/)",
    )


def _export(args: argparse.Namespace) -> int:
    from ..inference.backends import export_run

    path, differences = export_run(args.run, args.format, args.output)
    if not differences:  # a pretrained folder holds the PyTorch model itself
        print(
            f"wrote {path}  (config.json, model.safetensors, README.md; segwise.load({str(path)!r}) takes it)"
        )
        return 0
    checks = ", ".join(f"{difference:.2g} at {h}×{w}" for (h, w), difference in differences)
    print(f"wrote {path}  (parity with PyTorch, max abs difference of the logits: {checks})")
    return 0
