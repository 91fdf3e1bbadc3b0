"""One command that checks segwise on a GPU and prints one table: `.venv/bin/python bench/gpu_check.py`.

Sections (one function each, in the order of the table):
  environment   torch, CUDA, cuDNN, the GPU
  tests         tests/test_gpu_paths.py (the GPU paths' tests, runnable on any device)
  training      images/s and estimated MFU of U-Net/resnet34 (512², bf16): segwise's full step
                (batches from the uint8 arrays, flips augmentation on the device, the step, the running
                loss) against a plain smp bf16 channels-last loop and a plain fp32 loop, same run
  augmentation  ms per batch of each preset on the device
  memory        the probe's batch size against the measured peak memory of 10 real steps at it
  inference     d4 TTA against ttach, sliding window against MONAI (skipped when they are missing)
  torchrun      a 1-process NCCL initialisation through the real trainer (gloo on a CPU): the process
                is made to count as distributed, so DDP, the collectives and the plan's broadcast run

`--dry-run` runs every section at toy sizes on the CPU (well under 2 minutes), so tests/test_gpu_check.py
keeps the script from rotting; what needs CUDA says "skipped: no GPU" but the code paths run on the
CPU where they can. A section that fails shows its error in the table and the exit code is 1.
MFU: model FLOPs (forward + backward, counted by torch's FlopCounterMode at batch 1) × images/s over
the GPU's dense bf16 peak from NVIDIA's datasheets (PEAK_BF16; "n/a" for a GPU not listed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from segwise.data.augment import PRESETS  # noqa: E402
from segwise.engine import plan  # noqa: E402
from segwise.engine.batches import Batches  # noqa: E402
from segwise.engine.devices import autocast_dtype, set_kernel_policy  # noqa: E402
from segwise.engine.step import RunningLoss, Step, autocast  # noqa: E402
from segwise.inference.sliding import predict_sliding  # noqa: E402
from segwise.inference.tta import predict_tta, views_for  # noqa: E402
from segwise.losses import build_loss  # noqa: E402
from segwise.models import create_model  # noqa: E402

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
NO_GPU = "skipped: no GPU"
Rows = list[tuple[str, str, str]]  # (section, what, result)


@dataclass(frozen=True)
class Sizes:
    """The sizes a run uses: the real ones on a GPU, toy ones for --dry-run."""

    side: int = 512
    batch: int = 16
    classes: int = 12
    steps: int = 30
    warmup: int = 5
    tta_batch: int = 4
    sliding_side: int = 2048
    tile: int = 512
    repeats: int = 5

    @classmethod
    def dry(cls) -> Sizes:
        return cls(
            side=64, batch=2, classes=3, steps=2, warmup=1, tta_batch=1, sliding_side=96, tile=64, repeats=1
        )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median seconds of `function` after one warm-up call, the device synchronized around each."""
    function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unet(classes: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet", "resnet34", num_classes=classes).to(device, memory_format=torch.channels_last)


# ---- sections


def environment(device: torch.device, sizes: Sizes) -> Rows:
    rows = [("environment", "torch", torch.__version__)]
    if device.type != "cuda":
        return [*rows, ("environment", "CUDA / cuDNN / GPU", NO_GPU)]
    properties = torch.cuda.get_device_properties(device)
    return rows + [
        ("environment", "CUDA", str(torch.version.cuda)),
        ("environment", "cuDNN", str(torch.backends.cudnn.version())),
        ("environment", "GPU", f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"),
        ("environment", "bf16 native", str(torch.cuda.is_bf16_supported(including_emulation=False))),
    ]


def tests(device: torch.device, sizes: Sizes, dry: bool) -> Rows:
    """The GPU paths' tests (on a dry run only a quick few: the CI runs the whole file itself)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu_paths.py"]
    command += ["-k", "precision"] if dry else []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=400)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-200:]
    if result.returncode != 0:
        raise RuntimeError(f"tests failed: {summary}")
    return [("tests", "tests/test_gpu_paths.py" + (" (a few)" if dry else ""), summary)]


def training(device: torch.device, sizes: Sizes) -> Rows:
    dtype = torch.bfloat16 if device.type == "cuda" else autocast_dtype(device)
    set_kernel_policy(device, "auto", deterministic=False)
    flops, peak = _flops_per_image(sizes, device), _peak_flops(device)
    rows = []
    for name, make, step_dtype in (
        ("segwise full step", _segwise_step, dtype),
        ("smp channels-last", _smp_step, dtype),
        ("smp", _smp_step, None),
    ):
        images_s = sizes.batch / _seconds_per_step(make(device, sizes, step_dtype), device, sizes)
        mfu = f"{flops * images_s / peak:.1%}" if peak else "n/a"
        what = f"{name} ({'fp32' if step_dtype is None else 'bf16'}, {sizes.side}², batch {sizes.batch})"
        rows.append(("training", what, f"{images_s:.1f} img/s, MFU {mfu}"))
    return rows


def _seconds_per_step(step: Callable[[], object], device: torch.device, sizes: Sizes) -> float:
    for _ in range(sizes.warmup):  # cuDNN's benchmark and the allocator settle here
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(sizes.steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / sizes.steps


def _flops_per_image(sizes: Sizes, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = unet(sizes.classes, device).eval()  # batch norm's statistics need more than one image
    x = torch.randn(1, 3, sizes.side, sizes.side, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops()


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _uint8_data(sizes: Sizes, count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, sizes.side, sizes.side, 3), dtype=np.uint8)
    return images, rng.integers(0, sizes.classes, (count, sizes.side, sizes.side), dtype=np.uint8)


def _segwise_step(device: torch.device, sizes: Sizes, dtype) -> Callable[[], None]:
    """One step as trainer.py runs it (without validation and files): batches sliced from uint8
    arrays, flips on the device, the step, the running loss read every 32 steps."""
    model = unet(sizes.classes, device).train()
    images, masks = _uint8_data(sizes, sizes.batch * 4)
    batches = Batches(images, masks, sizes.batch, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step = Step(model, build_loss("ce+dice").to(device), optimizer, scaler, dtype, True)
    running, generator = RunningLoss(device), torch.Generator().manual_seed(0)

    def endless():
        while True:
            yield from batches.epoch(generator, drop_last=True)

    stream = endless()

    def one() -> None:
        images_batch, masks_batch = next(stream)
        x, y = batches.augment(images_batch, masks_batch, "flips", generator)
        running.add(step.train(model, x, y), len(y))
        if running.due:
            running.read()

    return one


def _smp_step(device: torch.device, sizes: Sizes, dtype) -> Callable[[], None]:
    """A plain segmentation-models-pytorch step on a batch already on the device; channels-last with
    autocast, plain fp32 without."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    layout = torch.contiguous_format if dtype is None else torch.channels_last
    model = smp.Unet("resnet34", encoder_weights=None, classes=sizes.classes)
    model = model.to(device, memory_format=layout).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(sizes.batch, 3, sizes.side, sizes.side, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, sizes.classes, (sizes.batch, sizes.side, sizes.side), device=device)

    def one() -> None:
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return one


def augmentation(device: torch.device, sizes: Sizes) -> Rows:
    images, masks = _uint8_data(sizes, sizes.batch)
    batches = Batches(images, masks, sizes.batch, [0.5] * 3, [0.25] * 3, device)
    x, y = batches.prepare(torch.arange(sizes.batch))
    rows = []
    for preset in PRESETS:
        generator = torch.Generator().manual_seed(0)
        took = seconds(lambda p=preset, g=generator: batches.augment(x, y, p, g), device, sizes.repeats)
        rows.append(
            ("augmentation", f"{preset} (batch {sizes.batch}, {sizes.side}²)", f"{took * 1e3:.1f} ms")
        )
    return rows


def memory(device: torch.device, sizes: Sizes) -> Rows:
    """The probe's batch, then 10 real steps at it: their peak against the memory free before them."""
    model = unet(sizes.classes, device).train()
    shape, dtype = (3, sizes.side, sizes.side), autocast_dtype(device)
    if device.type != "cuda":
        batch, how = plan._cpu_batch(model, shape, dtype, device, cap=2)
        return [
            ("memory", "probe batch (CPU probe)", f"{batch}: {how}"),
            ("memory", "peak of 10 real steps", NO_GPU),
        ]
    batch = plan._gpu_batch(model, shape, dtype, device, cap=plan.MAX_BATCH)
    del model
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info(device)[0]
    torch.cuda.reset_peak_memory_stats(device)
    step = _segwise_step(device, Sizes(side=sizes.side, batch=batch, classes=sizes.classes), dtype)
    try:
        for _ in range(10):
            step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        outcome = f"{peak:.1f} GiB of {free / 2**30:.1f} GiB free, no OOM"
    except torch.cuda.OutOfMemoryError:
        outcome = f"OUT OF MEMORY at the probed batch ({free / 2**30:.1f} GiB free)"
    return [("memory", "probe batch", str(batch)), ("memory", "peak of 10 real steps", outcome)]


@torch.no_grad()
def inference(device: torch.device, sizes: Sizes) -> Rows:
    model, dtype = unet(sizes.classes, device).eval(), autocast_dtype(device)

    def logits(x: torch.Tensor) -> torch.Tensor:  # normalization inside, as in the Predictor
        with autocast(device, dtype):
            return model((x / 255).contiguous(memory_format=torch.channels_last)).float()

    images = torch.rand(sizes.tta_batch, 3, sizes.side, sizes.side, device=device) * 255
    ours = seconds(lambda: predict_tta(logits, images, views_for("d4")), device, sizes.repeats)
    rows = [("inference", f"d4 TTA segwise ({sizes.tta_batch}×{sizes.side}²)", f"{ours * 1e3:.1f} ms")]
    rows.append(_peer("ttach", "d4 TTA ttach", lambda: _ttach(logits, images), device, sizes, ours))
    image = torch.rand(3, sizes.sliding_side, sizes.sliding_side, device=device) * 255
    tile = (sizes.tile, sizes.tile)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return logits(x).softmax(1)

    ours = seconds(
        lambda: predict_sliding(probabilities, image, tile, 0.25, "gaussian", 4), device, sizes.repeats
    )
    what = f"sliding window segwise ({sizes.sliding_side}², tile {sizes.tile}, 4 tiles a batch)"
    rows.append(("inference", what, f"{ours * 1e3:.1f} ms"))
    rows.append(
        _peer(
            "monai", "sliding window MONAI", lambda: _monai(probabilities, image, sizes), device, sizes, ours
        )
    )
    return rows


def _peer(package: str, what: str, run: Callable[[], object], device, sizes: Sizes, ours: float):
    try:
        __import__(package)
    except ImportError:
        return ("inference", what, f"skipped: {package} not installed")
    theirs = seconds(run, device, sizes.repeats)
    return ("inference", what, f"{theirs * 1e3:.1f} ms (segwise {theirs / ours:.2f}× as fast)")


def _ttach(logits, images: torch.Tensor) -> torch.Tensor:
    import ttach

    # ttach averages logits; softmax once so both give probabilities
    return ttach.SegmentationTTAWrapper(logits, ttach.aliases.d4_transform(), merge_mode="mean")(
        images
    ).softmax(1)


def _monai(probabilities, image: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    tile = (sizes.tile, sizes.tile)
    return sliding_window_inference(
        image[None], tile, 4, probabilities, overlap=0.25, mode="gaussian", sigma_scale=0.125
    )


# The real trainer in a fresh process made to count as distributed with one process, so that joining
# the group (NCCL on a GPU), DDP, the all-reduces and the plan's broadcast all run.
TORCHRUN_DRIVER = """
import sys
from segwise.engine import distributed
from segwise.cli import main

class OneOfOne(distributed.Process):
    @property
    def distributed(self):
        return True

distributed.current = lambda: OneOfOne(0, 1, 0)
sys.exit(main(sys.argv[1:]))
"""


def torchrun(device: torch.device, sizes: Sizes) -> Rows:
    from segwise.data.synthetic import write_synthetic_dataset

    backend = "NCCL" if device.type == "cuda" else "gloo (no GPU)"
    with tempfile.TemporaryDirectory() as folder:
        data = write_synthetic_dataset(Path(folder) / "data", num_train=8, num_val=2, num_test=0, size=64)
        command = [sys.executable, "-c", TORCHRUN_DRIVER, "train", str(data), "--runs-dir", folder]
        command += [
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--encoder",
            "test_resnet",
            "--encoder-weights",
            "none",
        ]
        command += ["-q", "--device", device.type]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MASTER_ADDR": "127.0.0.1"}
        env |= {"MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    if result.returncode != 0:
        raise RuntimeError(f"training through {backend} failed: {result.stderr.strip()[-300:]}")
    took = time.perf_counter() - started
    return [("torchrun", f"1-process {backend} run of the trainer", f"ok, 1 epoch in {took:.0f} s")]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- the table


def run_sections(device: torch.device, sizes: Sizes, dry: bool) -> tuple[Rows, bool]:
    """Every section's rows; a failing section gives one row with its error (and the run fails)."""
    sections: list[tuple[str, Callable[[], Rows]]] = [
        ("environment", lambda: environment(device, sizes)),
        ("tests", lambda: tests(device, sizes, dry)),
        ("training", lambda: training(device, sizes)),
        ("augmentation", lambda: augmentation(device, sizes)),
        ("memory", lambda: memory(device, sizes)),
        ("inference", lambda: inference(device, sizes)),
        ("torchrun", lambda: torchrun(device, sizes)),
    ]
    rows, ok = [], True
    for name, section in sections:
        started = time.perf_counter()
        try:
            rows += section()
        except Exception as error:  # one broken section must not hide the others' results
            traceback.print_exc(file=sys.stderr)
            rows.append((name, "FAILED", " ".join(str(error).split())[:200]))
            ok = False
        print(f"gpu_check: {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return rows, ok


def table(rows: Rows) -> str:
    """A Markdown table (for BENCHMARKS.md as it is)."""
    lines = ["| section | what | result |", "|---|---|---|"]
    return "\n".join(lines + [f"| {section} | {what} | {result} |" for section, what, result in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every section at toy sizes on the CPU")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU here; run with --dry-run to check the script on the CPU", file=sys.stderr
        )
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    rows, ok = run_sections(device, Sizes.dry() if args.dry_run else Sizes(), args.dry_run)
    print(table(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
