"""segwise's default training step against a plain fp32 PyTorch loop around segmentation-models-pytorch.

Run from the repository root: `.venv/bin/python bench/train.py` (needs segmentation-models-pytorch).

1. Speed, one process, same inputs: batch 8 at 256×256, 12 classes. segwise's default step (U-Net /
   resnet34, bf16 autocast where the hardware runs it fast, channels-last, ce+dice, AdamW, one-cycle)
   against `smp.Unet("resnet34", encoder_weights=None)` trained in fp32 with AdamW and cross-entropy.
   Measurements alternate segwise, peer, segwise, peer, … (the CPU is shared, so interleaving spreads
   its noise evenly); each is `--steps` steps; the table shows medians and images/s.
2. Quality: both train the same number of epochs on the built-in synthetic dataset (segwise with every
   default through `segwise.train`, the peer with its plain loop on the same decoded arrays); both are
   scored by the same confusion matrix on the validation split.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import segmentation_models_pytorch as smp  # noqa: E402

import segwise  # noqa: E402
from segwise.data import load_data  # noqa: E402
from segwise.data.synthetic import write_synthetic_dataset  # noqa: E402
from segwise.engine.batches import Batches  # noqa: E402
from segwise.engine.devices import autocast_dtype, pick_device  # noqa: E402
from segwise.engine.schedules import build_optimizer, encoder_decoder_groups, one_cycle  # noqa: E402
from segwise.engine.step import model_loss  # noqa: E402
from segwise.losses import build_loss  # noqa: E402
from segwise.metrics import ConfusionMatrix  # noqa: E402
from segwise.models import create_model  # noqa: E402


def segwise_step(batches: Batches, images, masks, device, classes: int, total_steps: int):
    """One step of segwise's default recipe, built from the trainer's own pieces."""
    model = create_model("unet", encoder="resnet34", num_classes=classes).to(device)
    model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, "auto")
    loss_fn = build_loss("ce+dice")
    optimizer = build_optimizer(encoder_decoder_groups(model, 1.0), "adamw", 1e-3, 1e-4)
    scheduler = one_cycle(optimizer, 1e-3, total_steps)
    model.train()

    def step() -> None:
        loss = model_loss(model, batches.normalize(images), masks, loss_fn, dtype, channels_last=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return step, dtype


def peer_model(classes: int, device) -> torch.nn.Module:
    return smp.Unet("resnet34", encoder_weights=None, classes=classes).to(device)


def peer_step(batches: Batches, images, masks, device, classes: int, dtype=None, channels_last=False):
    """The loop users copy: fp32, contiguous NCHW, AdamW, cross-entropy. With `dtype` and
    `channels_last` (the --ablation row) the same loop with only autocast and channels-last added."""
    model = peer_model(classes, device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def step() -> None:
        x = batches.normalize(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, steps: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds per step. On a shared, oversubscribed CPU the wall clock mostly measures
    the other jobs; this process's CPU time (with one thread: no spinning OpenMP workers) does not."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def speed(device, batch: int, size: int, rounds: int, steps: int, ablation: bool) -> None:
    torch.manual_seed(0)
    classes = 12
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).numpy()
    masks = torch.randint(0, classes, (batch, size, size), dtype=torch.uint8).numpy()
    batches = Batches(images, masks, batch, [0.45] * 3, [0.25] * 3, device)
    x, y = batches.prepare(torch.arange(batch))
    ours, dtype = segwise_step(batches, x, y, device, classes, total_steps=(rounds + 1) * steps + 10)
    precision = str(dtype).replace("torch.", "") if dtype else "fp32"
    loops = {
        f"segwise default (unet/resnet34, {precision}, channels-last, ce+dice, AdamW + one-cycle)": ours,
        "plain fp32 loop, smp.Unet('resnet34'), AdamW, CE": peer_step(batches, x, y, device, classes),
    }
    if ablation and dtype is not None:
        name = f"the plain loop with only {precision} autocast + channels-last added"
        loops[name] = peer_step(batches, x, y, device, classes, dtype, channels_last=True)
    for step in loops.values():  # warm-up: allocator, oneDNN primitives, cuDNN autotuning
        timed(step, 2)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, step in loops.items():  # interleaved: the machine's noise spreads evenly
            times[name].append(timed(step, steps))
    medians = {
        name: [statistics.median(t[i] for t in values) for i in (0, 1)] for name, values in times.items()
    }
    print(f"\n## training step, batch {batch} at {size}×{size}, {device}, {torch.get_num_threads()} threads")
    print(f"median of {rounds} interleaved measurements of {steps} steps each\n")
    print("| loop | wall s/step | images/s (wall) | CPU s/step | images per CPU-s |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, cpu) in medians.items():
        print(f"| {name} | {wall:.3f} | {batch / wall:.2f} | {cpu:.3f} | {batch / cpu:.2f} |")
    (ours_wall, ours_cpu), (peer_wall, peer_cpu) = list(medians.values())[:2]
    print(
        f"\nratio segwise / peer: {peer_wall / ours_wall:.2f}× (wall), {peer_cpu / ours_cpu:.2f}× (CPU time)"
    )
    for name, (wall, cpu) in list(medians.items())[2:]:
        print(f"ratio {name} / peer: {peer_wall / wall:.2f}× (wall), {peer_cpu / cpu:.2f}× (CPU time)")


def peer_train(data_dir: Path, epochs: int, batch: int, device) -> list[float]:
    """The plain loop on the same decoded arrays; val mIoU after each epoch."""
    torch.manual_seed(0)
    data = load_data(data_dir)
    mean, std = data.mean_std()
    train = Batches(data.train_images, data.train_masks, batch, mean, std, device)
    val = Batches(data.val_images, data.val_masks, batch, mean, std, device)
    model = peer_model(data.classes.num_classes, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    mious = []
    for _ in range(epochs):
        model.train()
        for images, masks in train.epoch(generator, drop_last=True):
            loss = F.cross_entropy(model(train.normalize(images)), masks, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        matrix = ConfusionMatrix(data.classes.num_classes, device)
        with torch.no_grad():
            for images, masks in val.epoch(None, drop_last=False):
                matrix.update(model(val.normalize(images)).argmax(1), masks)
        mious.append(matrix.mean_iou())
    return mious


def quality(epochs: int, batch: int, size: int, train_images: int, device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_synthetic_dataset(
            Path(tmp) / "shapes", num_train=train_images, num_val=train_images // 4, size=size
        )
        started = time.perf_counter()
        ours = segwise.train(
            data_dir,
            runs_dir=Path(tmp) / "runs",
            encoder="resnet34",
            epochs=epochs,
            batch_size=batch,
            device=str(device),
            progress=False,
        )
        ours_minutes = (time.perf_counter() - started) / 60
        started = time.perf_counter()
        peer = peer_train(data_dir, epochs, batch, device)
        peer_minutes = (time.perf_counter() - started) / 60
    ours_mious = [row["val_miou"] for row in ours.history]
    print(
        f"\n## synthetic shapes ({size}×{size}, {train_images} train / {train_images // 4} val), "
        f"{epochs} epochs, batch {batch}, {device}\n"
    )
    print("| loop | val mIoU last epoch | best | minutes |")
    print("|---|---:|---:|---:|")
    print(f"| segwise defaults | {ours_mious[-1]:.4f} | {max(ours_mious):.4f} | {ours_minutes:.1f} |")
    print(
        f"| plain fp32 loop, smp.Unet('resnet34') | {peer[-1]:.4f} | {max(peer):.4f} | {peer_minutes:.1f} |"
    )
    verdict = "holds" if ours_mious[-1] >= peer[-1] - 0.01 else "FAILS"
    print(f"\nsegwise − peer (last epoch): {ours_mious[-1] - peer[-1]:+.4f}; goal ≥ −0.01 {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--synthetic-size", type=int, default=96)
    parser.add_argument("--synthetic-train", type=int, default=320, help="training images (val: a quarter)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="add the plain loop with only autocast + channels-last: what precision and layout alone give",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if not args.skip_speed:
        speed(device, batch=8, size=256, rounds=args.rounds, steps=args.steps, ablation=args.ablation)
    if not args.skip_quality:
        quality(
            args.epochs, batch=8, size=args.synthetic_size, train_images=args.synthetic_train, device=device
        )


if __name__ == "__main__":
    main()
