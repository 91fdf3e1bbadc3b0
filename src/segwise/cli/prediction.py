"""`segwise predict` and `segwise export`: masks for new images, and the model as ONNX or TorchScript."""

from __future__ import annotations

import argparse
import sys

from .arguments import RUN_HELP, add_command, is_rank_zero


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
        "--largest). Under torchrun each process predicts a disjoint share of the inputs.",
        examples=[
            "segwise predict runs/cells new_images/ extra.png -o masks/",
            "segwise predict runs/cells 'scans/**/*.tif' -o out --format png,overlay,json --min-size 50",
            "torchrun --nproc-per-node 4 -m segwise predict runs/cells big_folder/ -o out   # 4 processes",
        ],
    )
    predict.add_argument("run", help=RUN_HELP)
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
        "multiclass: pixels whose best probability is ≤ T become background; per-label runs: each "
        "label present where its P > T (default 0.5)",
    )
    predict.add_argument("--min-size", type=int, help="remove objects under N pixels (per class)")
    predict.add_argument("--fill-holes", action="store_true", help="fill background holes inside objects")
    predict.add_argument("--largest", action="store_true", help="keep only the largest object of each class")
    predict.add_argument(
        "--crop", action="store_true", help="also write NAME_crop.png: the objects' box on a white background"
    )
    _add_backend_options(predict)
    _add_tta_and_tile_options(predict)


def _add_backend_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
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


def _predict(args: argparse.Namespace) -> int:
    report = predict_folder(
        args.run,
        args.inputs,
        args.output,
        device=args.device,
        backend=args.backend,
        onnx=args.onnx,
        tta=args.tta,
        merge=args.merge,
        tile=args.tile,
        overlap=args.overlap,
        max_pixels=args.max_pixels,
        formats=args.format,
        threshold=args.threshold,
        min_size=args.min_size,
        fill_holes=args.fill_holes,
        largest=args.largest,
        crop=args.crop,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    if is_rank_zero():
        if report.threshold_file is not None:
            print(
                f"foreground threshold {report.threshold} from {report.threshold_file} (--threshold overrides)"
            )
        print(f"wrote {report.total} file(s) to {args.output}")
    return 0


def predict_folder(
    run,
    inputs,
    output,
    *,
    device,
    backend,
    onnx,
    tta,
    merge,
    tile,
    overlap,
    max_pixels,
    formats,
    threshold,
    min_size,
    fill_holes,
    largest,
    crop,
    batch_size,
    progress,
):
    """TEMP cli-merge: stands in for `segwise.inference.predict_folder` (helper infer); at merge, delete it
    and import that instead. The body is what `segwise predict` did before."""
    import os
    from pathlib import Path
    from types import SimpleNamespace

    from ..constants import THRESHOLD_JSON
    from ..inference.postprocess import Steps
    from ..inference.writers import (
        collect_inputs,
        parse_formats,
        predict_to_folder,
        process_device,
        process_group,
        saved_threshold,
        total_over_processes,
    )

    formats = parse_formats(formats)  # a typo fails before the model loads
    with process_group() as (rank, world_size):
        options = {"tta": tta, "merge": merge, "tile": tile, "overlap": overlap}
        options |= {"auto_tile_pixels": max_pixels} if max_pixels else {}
        predictor = _load_predictor(run, process_device(device), backend, onnx, options)
        threshold_file = None
        if threshold is None:
            threshold = saved_threshold(run, predictor)
            threshold_file = None if threshold is None else Path(run) / THRESHOLD_JSON
        large = _large_tiffs(predictor, inputs)  # TIFFs too large for memory: predicted by region
        if large:
            inputs = [path for path in collect_inputs(inputs) if path not in large]
        steps = Steps(threshold, min_size, fill_holes, largest)
        written = (
            predict_to_folder(
                predictor,
                inputs,
                output,
                progress=rank == 0 and progress,
                formats=formats,
                steps=steps,
                crop=crop,
                batch_size=batch_size,
                shard=(rank, world_size),
            )
            if inputs
            else []
        )
        for path in sorted(large)[rank::world_size]:
            from ..inference.large import predict_large_tiff

            written.append(predict_large_tiff(predictor, path, os.path.join(output, f"{path.stem}.tif")))
        total = total_over_processes(len(written))
    return SimpleNamespace(files=written, total=total, threshold=threshold, threshold_file=threshold_file)


def _load_predictor(run, device: str, backend: str, onnx, options: dict):
    """TEMP cli-merge (part of the predict_folder stand-in): the run's model on the chosen backend."""
    if backend == "onnxruntime" or onnx:
        from ..inference.backends import load_onnx

        return load_onnx(run, onnx, device=device, **options)
    from ..inference import load

    return load(run, device=device, **options)


def _large_tiffs(predictor, inputs: list[str]) -> list:
    """TEMP cli-merge (part of the predict_folder stand-in): inputs that are TIFFs above the automatic
    tiling limit; they never go through memory whole."""
    from ..inference.large import tiff_size
    from ..inference.writers import collect_inputs

    sizes = {path: tiff_size(path) for path in collect_inputs(inputs)}
    limit = predictor.options.auto_tile_pixels
    return [path for path, size in sizes.items() if size is not None and size[0] * size[1] > limit]


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = add_command(
        commands,
        "export",
        _export,
        help="export a run's model to ONNX or TorchScript",
        description="Export the model with dynamic batch, height and width, checked against PyTorch at two "
        "sizes (max abs difference of the logits ≤ 1e-4, else nothing is written). The file's metadata holds "
        "the class names, palette, mean, std and input size. An ONNX export predicts through "
        "`segwise predict RUN ... --backend onnxruntime`.",
        examples=["segwise export runs/cells --format onnx    # writes runs/cells/model.onnx"],
    )
    export.add_argument("run", help=RUN_HELP)
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default: onnx")
    export.add_argument(
        "-o", "--output", help="file to write (default: RUN/model.onnx or RUN/model.torchscript.pt)"
    )


def _export(args: argparse.Namespace) -> int:
    from ..inference.backends import export_run

    path, differences = export_run(args.run, args.format, args.output)
    checks = ", ".join(f"{difference:.2g} at {h}×{w}" for (h, w), difference in differences)
    print(f"wrote {path}  (parity with PyTorch, max abs difference of the logits: {checks})")
    return 0
