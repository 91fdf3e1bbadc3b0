"""Recipes under one wall-clock budget on CamVid (11 classes, Void ignored): train → val. Not part of CI.

    .venv/bin/python bench/recipes.py                       # all four rows, 20 minutes each
    .venv/bin/python bench/recipes.py --rows 3,4 --budget 5m

Rows (each one process-wide run, one after the other, nothing else running):
  1  segwise's plan before `--budget` (issue 19): every default, no weights: U-Net/resnet34 at the
     images' full 360×480, the probed batch, 14 epochs (5 000 image presentations), stopped by the budget
  2  segwise `--budget` from scratch (encoder_weights none), every other value planned
  3  segwise `--budget` with the shared ImageNet tf_efficientnet_lite0 weights (../shared/weights)
  4  the peer: smp Unet("tu-tf_efficientnet_lite0") with the same weights in a plain bf16 channels-last
     loop, AdamW + one-cycle (peak 3e-3), CE + Dice, horizontal flips, 240×320, batch 8, on the data
     segwise decodes (same images, same masks); its epochs fitted to the budget from timed steps,
     and it stops when the budget is spent
The budget counts from the start of each row: data reading, planning and training. Reported: the best
validation mIoU during training (at the training size) and the best weights evaluated on val at the
images' own 360×480 (11 classes, Void excluded); segwise rows also say what the plan chose.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import segwise
from segwise.data import load_data
from segwise.engine.budget import parse_budget

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "shared/datasets/camvid11"
LITE0 = ROOT / "shared/weights/tf_efficientnet_lite0.safetensors"


def segwise_row(row: int, budget: str, runs: Path, extra: dict) -> dict:
    options = (
        {  # row 1: the plan the issue measured, all four values as it chose them, stopped by the budget
            1: {"size": [360, 480], "batch_size": 16, "epochs": 14, "encoder_weights": "none"},
            2: {"encoder_weights": "none"},
            3: {"encoder": "tf_efficientnet_lite0", "encoder_weights": str(LITE0)},
        }[row]
        | {"budget": budget}
        | extra
    )
    started = time.perf_counter()
    result = segwise.train(DATA, runs_dir=runs, name=f"recipes-row{row}", seed=0, **options)
    seconds = time.perf_counter() - started
    config = segwise.load(result.run_dir).config
    return {
        "row": row,
        "seconds": round(seconds),
        "best_val_miou": result.best_miou,
        "full_size_val_miou": full_size_miou(result.run_dir),
        "epochs_run": len(result.history),
        "plan": {k: getattr(config.train, k) for k in ("size", "batch_size", "epochs", "lr")}
        | {"encoder": config.model["encoder"]},
        "set": extra,
    }


def full_size_miou(run_dir: Path) -> float:
    """The run's best weights on val at 360×480, 11 classes, Void excluded (as `segwise eval`)."""
    from segwise.evaluate import evaluate_split, split_pairs

    predictor = segwise.load(run_dir)
    pairs, source = split_pairs(DATA, "val")
    matrix = evaluate_split(predictor, pairs, source=source).matrix
    return float(matrix.mean_iou())


def peer_row(budget: str) -> dict:
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    started = time.perf_counter()
    deadline = started + parse_budget(budget)
    data = load_data(DATA, size=(240, 320), seed=0)
    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=11)
    state = load_file(str(LITE0))
    missing, _ = model.encoder.model.load_state_dict(state, strict=False)
    assert not missing, missing  # every feature tensor comes from the file
    model = model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(data.train_images).permute(0, 3, 1, 2)
    masks = torch.from_numpy(data.train_masks).long()
    loss = PeerLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    step_seconds = timed_steps(model, images, masks, loss, optimizer)
    batches = math.ceil(len(images) / 8)
    epoch_seconds = 1.1 * batches * step_seconds * (1 + 0.35 * len(data.val_images) / len(images))
    epochs = max(1, int((deadline - time.perf_counter()) / epoch_seconds))
    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=11)  # fresh after the timing
    model.encoder.model.load_state_dict(state, strict=False)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * batches)
    best, generator, epochs_run = 0.0, torch.Generator().manual_seed(0), 0
    while epochs_run < epochs and time.perf_counter() < deadline:
        epochs_run += 1
        model.train()
        for index in torch.randperm(len(images), generator=generator).split(8):
            x, y = augment(images[index], masks[index], generator)
            with torch.autocast("cpu", torch.bfloat16):
                value = loss(model(normalize(x).contiguous(memory_format=torch.channels_last)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            if time.perf_counter() > deadline:
                break
        best = max(best, peer_miou(model, data))
    return {
        "row": 4,
        "seconds": round(time.perf_counter() - started),
        "best_val_miou": best,
        "epochs_run": epochs_run,
        "plan": {"size": [240, 320], "batch_size": 8, "epochs": epochs, "lr": 3e-3},
    }


class PeerLoss(torch.nn.Module):
    def __init__(self) -> None:
        import segmentation_models_pytorch as smp

        super().__init__()
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=255)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=255) + self.dice(logits, target)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.5  # the weights' own mean and std


def augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    flip = torch.rand(len(x), generator=generator) < 0.5
    x, y = x.clone(), y.clone()
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return x, y


def timed_steps(model, images, masks, loss, optimizer, steps: int = 3) -> float:
    model.train()
    times = []
    for step in range(steps):
        begun = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            value = loss(
                model(normalize(images[:8]).contiguous(memory_format=torch.channels_last)).float(), masks[:8]
            )
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - begun)
    return float(np.mean(times))


@torch.no_grad()
def peer_miou(model, data) -> float:
    """mIoU over the 11 classes of the validation set at the training size, Void (255) excluded."""
    model.eval()
    matrix = torch.zeros(11, 11, dtype=torch.long)
    images = torch.from_numpy(data.val_images).permute(0, 3, 1, 2)
    truth = torch.from_numpy(data.val_masks).long()
    for index in torch.arange(len(images)).split(8):
        with torch.autocast("cpu", torch.bfloat16):
            predicted = model(normalize(images[index]).contiguous(memory_format=torch.channels_last)).argmax(
                1
            )
        keep = truth[index] != 255
        matrix += torch.bincount(truth[index][keep] * 11 + predicted[keep], minlength=121).reshape(11, 11)
    inter = matrix.diag().double()
    union = matrix.sum(0) + matrix.sum(1) - matrix.diag()
    return float((inter[union > 0] / union[union > 0]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,2,3,4")
    parser.add_argument("--budget", default="20m")
    parser.add_argument("--runs-dir", default="/work/bench-runs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="segwise rows: a config field (experiments)",
    )
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    extra = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    for row in (int(r) for r in args.rows.split(",")):
        result = peer_row(args.budget) if row == 4 else segwise_row(row, args.budget, runs, extra)
        print(json.dumps(result), flush=True)
        with open(runs / "recipes.jsonl", "a") as log:
            log.write(json.dumps({"budget": args.budget, **result}) + "\n")


if __name__ == "__main__":
    main()
