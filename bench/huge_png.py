"""Peak memory and time of `segwise predict` on one huge PNG, with a real (small) network.

Run from the repository root: `.venv/bin/python bench/huge_png.py [--size 12000] [--encoder resnet18]`.
A U-Net on the given encoder (random initialisation: the weights do not change the cost) is trained
for one epoch at 64×64 on the synthetic shapes, which makes a run trained at a size far below the
image's; a SIZE×SIZE RGB PNG is written to /tmp, and `segwise predict RUN IMAGE -o OUT` runs in a
child process, whose peak RSS (the kernel's ru_maxrss for children) and wall time are reported.
Goal (issue 20): a 12000×12000 PNG under 3 GiB of peak RSS, with a progress bar.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_png(path: Path, size: int) -> None:
    """A smooth gradient with bright discs, built band by band (the array itself is size² × 3 bytes)."""
    image = np.empty((size, size, 3), np.uint8)
    x = np.arange(size)
    for top in range(0, size, 1000):
        y = np.arange(top, min(size, top + 1000))[:, None]
        disc = ((y % 700 - 350) ** 2 + (x % 700 - 350) ** 2 < 200**2).astype(np.uint8)
        image[top : top + len(y), :, 0] = (y // 50) % 256
        image[top : top + len(y), :, 1] = (x // 50) % 256
        image[top : top + len(y), :, 2] = disc * 200
    Image.fromarray(image).save(path, compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12000)
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import segwise
    from segwise.data.synthetic import write_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="segwise_huge_png_"))
    write_synthetic_dataset(work / "data", 24, 8, 0, size=64)
    result = segwise.train(
        work / "data", runs_dir=work / "runs", encoder=args.encoder, encoder_weights=None,
        epochs=1, size=[64, 64], batch_size=8, progress=False,
    )  # fmt: skip
    image = work / "huge.png"
    write_png(image, args.size)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "segwise", "predict", str(result.run_dir), str(image), "-o", str(work / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB → GiB
    if done.returncode != 0:
        sys.exit(f"predict failed ({done.returncode}): {done.stderr[-2000:]}")
    masks = sorted((work / "out").iterdir())
    bar = [line for line in done.stderr.replace("\r", "\n").splitlines() if "tile" in line][-1:]
    print(
        f"{args.size}×{args.size} PNG ({image.stat().st_size / 2**20:.0f} MiB), U-Net/{args.encoder} trained at 64×64"
    )
    print(f"outputs: {[m.name for m in masks]}; last progress line: {bar}")
    print(f"peak RSS {peak:.2f} GiB, {seconds:.0f} s (goal: under 3 GiB)")


if __name__ == "__main__":
    main()
