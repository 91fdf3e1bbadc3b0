"""Benchmark segwise inference against its peers: d4 TTA vs ttach, sliding window vs MONAI, CamVid TTA.

Run from the repository root: `.venv/bin/python bench/infer.py [--camvid-run RUN] [--repeats 5]`
(needs ttach and monai). Times are interleaved (peer, segwise, peer, segwise, …) after one warm-up each
and the median is reported; ratio = peer time / segwise time (> 1 means segwise is faster). Peak memory
of each sliding-window implementation is measured in its own subprocess (peak RSS growth while it runs).

(a) d4 TTA on a resnet34 U-Net, batch 4 at 256²: ttach runs 8 forward passes and averages logits;
    segwise batches the 8 views (in chunks of `max_batch_pixels`) and averages probabilities.
(b) sliding window, same tile, overlap, Gaussian weighting and batch of tiles, the model returning
    probabilities for both.
(c) with --camvid-run RUN: CamVid val mIoU with and without d4 TTA (skipped when the run is missing).
(d) with --huge SIZE (e.g. 20000): a SIZE² RGB tiled TIFF is written to /tmp from a generator (never
    whole in memory), predicted with `predict_large_tiff` in a fresh process, and that process's peak
    RSS is reported (goal for 20000²: under 3 GiB).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from segwise.errors import SegwiseError  # noqa: E402
from segwise.inference.sliding import predict_sliding  # noqa: E402
from segwise.inference.tta import predict_tta, views_for  # noqa: E402
from segwise.models import create_model  # noqa: E402


def interleaved(functions: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn A, B, A, B, … so load changes hit both alike."""
    for function in functions.values():
        function()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def unet(classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet", "resnet34", num_classes=classes).eval()


def bench_tta(repeats: int, batch: int, size: int) -> tuple:
    import ttach

    model = unet(12)
    images = torch.rand(batch, 3, size, size) * 255
    normalized = lambda x: model(x / 255)  # noqa: E731  normalization inside, as in the Predictor
    peer = ttach.SegmentationTTAWrapper(lambda x: model(x), ttach.aliases.d4_transform(), merge_mode="mean")
    views = views_for("d4")

    @torch.no_grad()
    def ours():
        return predict_tta(normalized, images, views)

    @torch.no_grad()
    def theirs():
        return peer(images / 255).softmax(1)  # ttach averages logits; softmax once so both give probabilities

    medians = interleaved({"ttach": theirs, "segwise": ours}, repeats)
    return (
        f"d4 TTA, resnet34 U-Net, batch {batch}×3×{size}², 12 classes",
        "ttach d4_transform, mean",
        medians,
    )


@functools.cache
def sliding_case(size: int, tile: int):
    model = unet(12)  # built once: the timed runs compare stitching, not model construction
    image = torch.rand(1, 3, size, size) * 255
    probabilities = lambda tiles: model(tiles / 255).softmax(1)  # noqa: E731
    return model, image, probabilities


def run_sliding(which: str, size: int, tile: int, overlap: float, batch: int) -> torch.Tensor:
    _, image, probabilities = sliding_case(size, tile)
    with torch.no_grad():
        if which == "segwise":
            return predict_sliding(probabilities, image[0], (tile, tile), overlap, "gaussian", batch)
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(
            image, (tile, tile), batch, probabilities, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )[0]


def peak_rss_mib(which: str, size: int, tile: int, overlap: float, batch: int) -> float:
    """Peak RSS growth (MiB) of one sliding-window run in a fresh process (VmHWM before and after)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import infer, torch\n"
        "hwm = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        f"infer.sliding_case({size}, {tile})  # model built and touched before the baseline\n"
        "with torch.no_grad(): infer.run_sliding('segwise', 64, 32, 0.25, 1)  # warm kernels on a tiny case\n"
        f"before = hwm(); infer.run_sliding({which!r}, {size}, {tile}, {overlap}, {batch}); print(hwm() - before)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


def bench_sliding(repeats: int, size: int, tile: int, overlap: float, batch: int) -> tuple:
    ours = run_sliding("segwise", size, tile, overlap, batch)
    theirs = run_sliding("monai", size, tile, overlap, batch)
    difference = (ours - theirs).abs().max().item()
    medians = interleaved(
        {
            "monai": lambda: run_sliding("monai", size, tile, overlap, batch),
            "segwise": lambda: run_sliding("segwise", size, tile, overlap, batch),
        },
        repeats,
    )
    memory = {which: peak_rss_mib(which, size, tile, overlap, batch) for which in ("monai", "segwise")}
    case = f"sliding window {size}², tile {tile}, overlap {overlap}, Gaussian, {batch} tiles/batch, resnet34 U-Net"
    return case, f"MONAI sliding_window_inference (max |Δ| {difference:.1e})", medians, memory


def load_model_only(run: Path):
    """A Predictor from a run's model, classes, preprocessing and data sections, ignoring its train section."""
    from segwise.config import PreprocessConfig, RunConfig, TrainConfig, read_yaml
    from segwise.inference import Predictor
    from segwise.run import load_weights
    from segwise.task import Classes

    raw = read_yaml(run / "config.yaml")
    spec = dict(raw["model"])
    model = create_model(**{k: v for k, v in spec.items() if k != "options"}, **spec.get("options", {}))
    load_weights(model, run / "model.safetensors")
    config = RunConfig(
        raw["model"],
        Classes(**raw["classes"]),
        PreprocessConfig(**raw["preprocess"]),
        TrainConfig(),
        raw.get("data", {}),
    )
    return Predictor(model.eval(), config)


def bench_camvid(run: Path) -> list[tuple[str, float, float]] | None:
    """CamVid val mIoU without and with d4 TTA (and the seconds each took)."""
    from dataclasses import replace

    from segwise.data.formats import read_class_names
    from segwise.evaluate import evaluate_split, split_pairs
    from segwise.inference import load

    if not (run / "model.safetensors").is_file():
        print(f"(c) skipped: {run} holds no finished run (model.safetensors missing)")
        return None
    try:
        predictor = load(run)
    except SegwiseError as error:  # a run written by a newer branch: keep its model, default the rest
        print(f"(c) {error}\n    → loading the model and preprocessing only")
        predictor = load_model_only(run)
    from camvid import miou_without_void  # bench/camvid.py, beside this script

    root = Path(predictor.config.data["root"])
    pairs, source = split_pairs(root, "val")
    # A run trained before Void was read from class_dict.csv has Void as a class named class_11:
    # name classes from the file so the score leaves Void out either way.
    table = read_class_names(root)
    file_names = table.names if table is not None else []
    names = [
        file_names[v] if v < len(file_names) else name
        for v, name in zip(predictor.config.classes.values, predictor.config.classes.names, strict=True)
    ]
    rows = []
    for tta in ("none", "flips", "d4"):
        predictor.options = replace(predictor.options, tta=tta)
        start = time.perf_counter()
        evaluation = evaluate_split(predictor, pairs, worst_k=0, source=source)
        miou, _ = miou_without_void(evaluation.matrix.matrix.cpu(), names)
        rows.append((tta, miou, time.perf_counter() - start))
    return rows


HUGE_SCRIPT = """
import sys, time
sys.path.insert(0, {src!r})
import torch
from segwise.config import PreprocessConfig, RunConfig, TrainConfig
from segwise.task import Classes
from segwise.inference.large import predict_large_tiff
from segwise.inference.predictor import InferenceOptions, Predictor
from segwise.io import default_palette
from segwise.models import create_model

torch.manual_seed(0)
if {model!r} == "unet":
    model = create_model("unet", "test_resnet", 5, 3, decoder_channels=[32, 16, 16, 8, 8])
else:  # a 1×1 convolution: the pipeline's own memory and time, without a network's per-tile cost
    model = torch.nn.Conv2d(3, 5, 1)
    model.num_classes, model.config = 5, dict(in_channels=3, num_classes=5)
config = RunConfig(model.config, Classes([str(i) for i in range(5)], list(range(5)), default_palette(5)),
                   PreprocessConfig([512, 512], [0.5] * 3, [0.25] * 3), TrainConfig())
predictor = Predictor(model, config, "cpu", InferenceOptions(tile=(512, 512), overlap=0.25))
start = time.perf_counter()
predict_large_tiff(predictor, {source!r}, {target!r})
seconds = time.perf_counter() - start
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(peak / 2**20, seconds)
"""


def bench_huge(size: int, model: str) -> tuple[float, float]:
    """Peak RSS (GiB) and seconds of predicting a size² RGB TIFF (tile 512, overlap 0.25, 5 classes)."""
    import numpy as np
    import tifffile

    source, target = Path(f"/tmp/segwise_huge_{size}.tif"), Path(f"/tmp/segwise_huge_{size}_mask.tif")
    if not source.is_file():
        tile = 512
        yy, xx = np.mgrid[0:tile, 0:tile]

        def tiles():  # a smooth pattern with discs, tile by tile: compressible, never whole in memory
            for index in range(math.ceil(size / tile) ** 2):
                disc = ((yy - 256) ** 2 + (xx - 256) ** 2 < (40 + index % 200) ** 2).astype(np.uint8)
                yield np.stack([(yy // 2 + index) % 256, (xx // 2) % 256, disc * 200], -1).astype(np.uint8)

        tifffile.imwrite(source, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                         photometric="rgb", compression="zlib", bigtiff=True)  # fmt: skip
    code = HUGE_SCRIPT.format(src=str(ROOT / "src"), source=str(source), target=str(target), model=model)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, seconds = map(float, result.stdout.split()[-2:])
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--camvid-run", type=Path, help="run folder trained on CamVid for part (c)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tta", "sliding"])
    parser.add_argument("--sliding-size", type=int, default=1024)
    parser.add_argument("--huge", type=int, help="(d): predict a HUGE×HUGE TIFF and report peak RSS")
    parser.add_argument("--huge-model", choices=["unet", "pointwise"], default="unet", help="model for (d)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print("| case | peer | peer median (s) | segwise median (s) | ratio (peer / segwise) |")
    print("|---|---|---:|---:|---:|")
    memory = None
    if "tta" not in args.skip:
        case, peer, medians = bench_tta(args.repeats, batch=4, size=256)
        ours, theirs = medians["segwise"], medians["ttach"]
        print(f"| {case} | {peer} | {theirs:.3f} | {ours:.3f} | {theirs / ours:.2f}× |", flush=True)
    if "sliding" not in args.skip:
        case, peer, medians, memory = bench_sliding(args.repeats, args.sliding_size, 256, 0.25, 4)
        ours, theirs = medians["segwise"], medians["monai"]
        print(f"| {case} | {peer} | {theirs:.3f} | {ours:.3f} | {theirs / ours:.2f}× |", flush=True)
    if memory:
        print(
            f"\npeak RSS growth of one sliding-window run: MONAI {memory['monai']:.0f} MiB, "
            f"segwise {memory['segwise']:.0f} MiB (ratio {memory['monai'] / max(memory['segwise'], 1e-9):.2f}×)"
        )
    if args.huge:
        peak, seconds = bench_huge(args.huge, args.huge_model)
        print(
            f"\n{args.huge}×{args.huge} RGB TIFF → tiled TIFF mask, {args.huge_model} model: peak RSS {peak:.2f} GiB, {seconds:.0f} s"
        )
    if args.camvid_run:
        rows = bench_camvid(args.camvid_run)
        if rows:
            print("\n| CamVid val | mIoU | seconds |\n|---|---:|---:|")
            for tta, miou, seconds in rows:
                print(f"| tta {tta} | {miou:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
