"""The training loop: read it top to bottom.

data (decoded once) → batches sliced from uint8 tensors → augment on device → normalize → model
→ loss → AdamW + one-cycle → per-epoch validation (confusion matrix) → run folder.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import run as runfolder
from ..config import ClassesConfig, Config, PreprocessConfig, RunConfig, load_config
from ..data import SegmentationData
from ..data.augment import PerSampleBatches, augment_batch
from ..data.dataset import IGNORE_INDEX
from ..data.plan import loss_options, make_plan
from ..errors import SegwiseError
from ..losses import build_loss
from ..metrics import ConfusionMatrix
from ..models import create_model
from ..report.plots import plot_curves, sample_panel, write_sample_panels
from .devices import autocast_dtype, pick_device


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_miou: float
    history: list[dict]
    seconds: float


class Batches:
    """Shuffled mini-batches sliced straight from the decoded uint8 arrays: no decoding, no workers."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, batch_size: int, mean, std, device) -> None:
        self.images = torch.from_numpy(images)  # N×H×W×C uint8
        self.masks = torch.from_numpy(masks)  # N×H×W uint8 class indices
        self.batch_size, self.device = batch_size, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.images)

    def prepare(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[index].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return images, self.masks[index].to(self.device, non_blocking=True).long()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def epoch(self, generator: torch.Generator | None, drop_last: bool):
        order = (
            torch.randperm(len(self), generator=generator)
            if generator is not None
            else torch.arange(len(self))
        )
        for start in range(0, self.batches_per_epoch(drop_last) * self.batch_size, self.batch_size):
            yield self.prepare(order[start : start + self.batch_size])

    def batches_per_epoch(self, drop_last: bool) -> int:
        """Batches in one epoch; with `drop_last`, a trailing single sample is skipped (batch norm cannot
        train on one sample) unless it is the whole dataset."""
        full, rest = divmod(len(self), self.batch_size)
        return full + (rest > 1 or (rest == 1 and (not drop_last or full == 0)))


def _evaluate(model, batches: Batches, loss_fn, num_classes: int, dtype, channels_last: bool):
    model.eval()
    matrix = ConfusionMatrix(num_classes, batches.device)
    total_loss, count = 0.0, 0
    with torch.no_grad(), _autocast(batches.device, dtype):
        for images, masks in batches.epoch(None, drop_last=False):
            x = batches.normalize(images)
            logits = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x).float()
            total_loss += float(loss_fn(logits, masks)) * len(masks)
            count += len(masks)
            matrix.update(logits.argmax(1), masks)
    return total_loss / max(count, 1), matrix


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle with a quarter of the steps warming up; torch's OneCycleLR divides by zero when a phase
    is shorter than one step, so a very short run (a smoke test, a tiny dataset) keeps the LR constant."""
    if total_steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps)
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train(
    data: str | Path,
    config: Config | str | Path | None = None,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a model on the images and masks in `data` and write a run folder.

    >>> result = segwise.train("data/cells", epochs=20, encoder="resnet18")  # doctest: +SKIP
    >>> segwise.load(result.run_dir).predict("new_cell.png")                  # doctest: +SKIP

    `config` is a Config or a plan YAML; keyword overrides set any model/train field by name.
    `augment` is a preset name or, from Python, a per-sample transform such as an albumentations
    `Compose` (run on the CPU in DataLoader workers instead of the on-device presets).
    """
    started = time.perf_counter()
    transform = overrides.pop("augment") if callable(overrides.get("augment")) else None
    if transform is not None:
        overrides["augment"] = "none"  # the user's transform replaces the on-device presets
    planned = config is None  # no plan given: self-configure as `segwise plan` would (data/plan.py)
    if not isinstance(config, Config):
        config = load_config(config)
    config = config.override(**overrides)
    settings = config.train
    device = pick_device(settings.device)
    dtype = autocast_dtype(device, settings.precision)
    say = print if progress else (lambda *a, **k: None)

    build_loss(settings.loss)  # a misspelt loss fails before any data is read or folder made
    plan = make_plan(data, None if planned else config, str(device), **(overrides if planned else {}))
    config, settings, data_set = plan.config, plan.config.train, plan.data
    for note in plan.notes if planned else []:
        say(f"plan: {note}")
    torch.manual_seed(settings.seed)  # after the batch-size probe, so a probe never changes the run
    classes = data_set.classes
    if classes.multilabel:
        raise SegwiseError(
            f"{data}: multilabel masks (one channel per class) load, check and plan, but the trainer "
            "trains binary/multiclass data only so far; merge the labels into one index mask per image"
        )
    loss_fn = build_loss(settings.loss, **loss_options(settings.loss, config.data.class_weights))
    model = create_model(
        config.model.arch,
        encoder=config.model.encoder,
        num_classes=classes.num_classes,
        in_channels=data_set.in_channels,
        encoder_weights=config.model.encoder_weights,
        **config.model.options,
    )
    mean, std = config.data.mean, config.data.std  # chosen by the plan
    run_config = RunConfig(
        model=model.config,
        classes=ClassesConfig(
            classes.names,
            classes.values,
            classes.palette,
            classes.ignore_value,
            classes.colours,
            classes.threshold,
            classes.multilabel,
        ),
        preprocess=PreprocessConfig(list(data_set.size), mean, std),
        train=settings,
        data={
            "root": str(Path(data).resolve()),
            "train_images": len(data_set.train_images),
            "val_images": len(data_set.val_images),
            "plan": asdict(config.data),
            "augment_transform": None if transform is None else repr(transform),
        },
    )
    run_dir = runfolder.create_run_dir(runs_dir, name or Path(data).resolve().name)
    run_config.save(run_dir / runfolder.CONFIG)

    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    train_batches = Batches(
        data_set.train_images, data_set.train_masks, settings.batch_size, mean, std, device
    )
    if transform is not None:
        train_batches = PerSampleBatches(train_batches, transform)
    val_batches = Batches(data_set.val_images, data_set.val_masks, settings.batch_size, mean, std, device)
    steps_per_epoch = train_batches.batches_per_epoch(drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = one_cycle(optimizer, settings.lr, settings.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator().manual_seed(settings.seed)

    say(
        f"segwise: training {model.config['arch']}/{model.config['encoder']} on {len(train_batches)} images "
        f"({len(val_batches)} val) at {data_set.size[0]}×{data_set.size[1]}, {classes.num_classes} classes, "
        f"{device.type} {str(dtype).replace('torch.', '') if dtype else 'fp32'} → {run_dir}"
    )
    history: list[dict] = []
    best_miou, best_epoch = -1.0, 0
    show_bar = progress and sys.stderr.isatty()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        epoch_start, seen, running = time.perf_counter(), 0, 0.0
        bar = tqdm(
            total=steps_per_epoch, desc=f"epoch {epoch}/{settings.epochs}", leave=False, disable=not show_bar
        )
        for images, masks in train_batches.epoch(generator, drop_last=True):
            images, masks = augment_batch(images, masks, settings.augment, generator, train_batches.mean)
            x = train_batches.normalize(images)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, dtype):
                logits = model(x)
            loss = loss_fn(logits.float(), masks)
            if not torch.isfinite(loss):
                raise SegwiseError(
                    f"{run_dir}: loss became {float(loss)} at epoch {epoch}; the last good weights are kept there; "
                    "lower --lr or use --precision fp32"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += loss.item() * len(masks)
            seen += len(masks)
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()
        train_seconds = time.perf_counter() - epoch_start
        val_loss, matrix = _evaluate(
            model, val_batches, loss_fn, classes.num_classes, dtype, settings.channels_last
        )
        miou = matrix.mean_iou()
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(running / max(seen, 1), 6),
                "val_loss": round(val_loss, 6),
                "val_miou": round(miou, 6),
                "val_pixel_accuracy": round(matrix.pixel_accuracy(), 6),
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": round(seen / train_seconds, 2),
                "seconds": round(time.perf_counter() - epoch_start, 2),
            }
        )
        if miou > best_miou:
            best_miou, best_epoch = miou, epoch
            runfolder.save_weights(model, run_dir / runfolder.WEIGHTS)
        runfolder.save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best_miou": best_miou,
            },
            run_dir / runfolder.LAST,
        )
        runfolder.write_metrics(history, run_dir / runfolder.METRICS)
        plot_curves(history, run_dir / runfolder.CURVES)
        row = history[-1]
        say(
            f"epoch {epoch:3d}/{settings.epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val mIoU {miou:.4f}{' *' if best_epoch == epoch else ''}  {row['images_per_s']:.1f} img/s  "
            f"{row['seconds']:.1f}s"
        )

    _write_val_samples(run_dir, model, val_batches, data_set, settings, dtype)
    seconds = time.perf_counter() - started
    say(f"segwise: best val mIoU {best_miou:.4f} at epoch {best_epoch}; {seconds:.0f}s; run folder {run_dir}")
    return TrainResult(run_dir, best_epoch, best_miou, history, seconds)


def _write_val_samples(
    run_dir: Path, model, batches: Batches, data_set: SegmentationData, settings, dtype
) -> None:
    """Panels from the best weights (the ones the run folder keeps), not from the last epoch."""
    count = min(settings.val_samples, len(batches))
    if count == 0:
        return
    runfolder.load_weights(model, run_dir / runfolder.WEIGHTS)
    model.eval()
    images, masks = batches.prepare(torch.arange(count))
    with torch.no_grad(), _autocast(batches.device, dtype):
        predictions = model(batches.normalize(images)).float().argmax(1).cpu().numpy()
    panels = [
        sample_panel(
            data_set.val_images[i],
            data_set.val_masks[i],
            predictions[i],
            data_set.classes.palette,
            IGNORE_INDEX,
        )
        for i in range(count)
    ]
    write_sample_panels(
        panels, run_dir / runfolder.SAMPLES, [data_set.val_pairs[i][0].stem for i in range(count)]
    )
