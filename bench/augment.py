"""Time augmentation's fast paths against the plain pipeline they are tested equal to: what they buy.

Run from the repository root: `.venv/bin/python bench/augment.py [--repeats 9] [--threads N]`. No
dataset needed: a CamVid-sized batch (16×3×360×480, random 0..255 values, channels-last as
`Batches.prepare` gives it, integer masks) is augmented with each preset and the ImageNet
normalization folded in, as the trainer asks, by `augment_batch(..., fast=True)` (the default) and
`fast=False` (the plain pipeline). The two alternate after one warm-up each, on the same draws; the
table shows the median wall and CPU milliseconds per batch and the ratios plain / fast (on a shared
machine the CPU time, with `--threads 1`, is the steadier one). Like the
trainer on a CPU, the process first has glibc keep freed large blocks (`keep_freed_memory`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from segwise.data.augment import augment_batch  # noqa: E402
from segwise.engine.devices import keep_freed_memory  # noqa: E402

BATCH, HEIGHT, WIDTH = 16, 360, 480
PRESETS = ("flips", "light", "default", "heavy")


def timed(*args, **kwargs) -> tuple[float, float]:
    """Wall and CPU seconds of one `augment_batch(*args, **kwargs)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    augment_batch(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `segwise train` does on a CPU: batch-sized tensors without page faults
    random = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, HEIGHT, WIDTH, 3), generator=random).float().permute(0, 3, 1, 2)
    masks = torch.randint(0, 12, (BATCH, HEIGHT, WIDTH), generator=random)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    print(
        f"augment_batch, {BATCH}×3×{HEIGHT}×{WIDTH} channels-last, normalized; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU; medians of {args.repeats} after one warm-up each\n"
    )
    print(
        "| preset | fast: wall ms | plain: wall ms | fast: CPU ms | plain: CPU ms | plain / fast: wall, CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for preset in PRESETS:
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for repeat in range(-1, args.repeats):  # -1: the warm-up, not kept
            for fast in (True, False) if repeat % 2 else (False, True):  # who goes first alternates
                generator = torch.Generator().manual_seed(repeat)  # the same draw for both
                took = timed(images, masks, preset, generator, mean, mean, std, fast=fast)
                if repeat >= 0:
                    times[fast].append(took)
        wall = {fast: statistics.median(t[0] for t in times[fast]) * 1e3 for fast in times}
        cpu = {fast: statistics.median(t[1] for t in times[fast]) * 1e3 for fast in times}
        print(
            f"| {preset} | {wall[True]:.0f} | {wall[False]:.0f} | {cpu[True]:.0f} | {cpu[False]:.0f} | "
            f"{wall[False] / wall[True]:.2f}×, {cpu[False] / cpu[True]:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
