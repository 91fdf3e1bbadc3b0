"""The training loop: read it top to bottom.

data (decoded once) → batches sliced from uint8 tensors (this process's shard) → augment and normalize
on device → (progressive resize) → model → loss → optimizer step (accumulation, clipping, EMA) →
schedule → per-epoch validation (confusion matrix, reduced over processes) → best/last checkpoints,
metrics.csv, curves → early stopping. Options live in TrainConfig; the pieces in schedules.py,
checkpoint.py, distributed.py and lr_find.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import run as runfolder
from ..config import Classes, Config, DataConfig, PreprocessConfig, RunConfig, TrainConfig, load_config
from ..constants import IGNORE_INDEX
from ..data import SegmentationData
from ..data.augment import PerSampleBatches, augment_batch
from ..data.plan import load_planned_data, loss_options, make_plan
from ..errors import SegwiseError
from ..losses import build_loss
from ..metrics import ConfusionMatrix, MultilabelConfusionMatrix
from ..models import SegmentationModel, create_model
from ..report.figures import plot_lr
from ..report.plots import plot_curves, sample_panel, write_sample_panels
from . import distributed
from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .devices import autocast_dtype, keep_freed_memory, pick_device
from .schedules import (  # noqa: F401 (one_cycle: imported from here by older code)
    build_optimizer,
    build_scheduler,
    default_encoder_lr_scale,
    encoder_decoder_groups,
    one_cycle,
)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_miou: float
    history: list[dict]
    seconds: float


class Batches:
    """Shuffled mini-batches sliced straight from the decoded uint8 arrays: no decoding, no workers."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        batch_size: int,
        mean,
        std,
        device,
        process: distributed.Process = distributed.SINGLE,
    ) -> None:
        self.images = torch.from_numpy(images)  # N×H×W×C uint8
        self.masks = torch.from_numpy(masks)  # N×H×W uint8 class indices
        self.batch_size, self.device, self.process = batch_size, device, process
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self._scale, self._shift = 1 / self.std, -self.mean / self.std  # normalize in one pass

    def __len__(self) -> int:
        return len(self.images)

    def prepare(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images N×C×H×W float (0..255, channels-last) and masks N×H×W int64 of the samples `index`."""
        # index_select, not fancy indexing: ten times faster on the cache's rows on a CPU
        images = self.images.index_select(0, index).to(self.device, non_blocking=True)
        # converted as cached, channels-last: twice as fast as reordering too, and what the model
        # (channels-last by default) and augmentation's colour step read as they are
        batch = images.float().permute(0, 3, 1, 2)
        return batch, self.masks.index_select(0, index).to(self.device, non_blocking=True).long()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, images, self._scale)  # (images − mean) / std

    def augment(self, images: torch.Tensor, masks: torch.Tensor, preset, generator: torch.Generator):
        """Augmented with `preset` and normalized, the normalization folded into augmentation's last
        pass: what training feeds the model. Pixels from outside an image show the mean (0 once normalized)."""
        return augment_batch(images, masks, preset, generator, self.mean, self.mean, self.std)

    def epoch(self, generator: torch.Generator | None, drop_last: bool):
        """This process's batches: a shuffled, sharded order with `generator`, else every sample once in
        order (validation; each process takes every world_size-th, no padding, so nothing counts twice)."""
        if generator is not None:
            order = distributed.shard(torch.randperm(len(self), generator=generator), self.process)
        else:
            order = torch.arange(len(self))[self.process.rank :: self.process.world_size]
        for start in range(0, self._batch_count(len(order), drop_last) * self.batch_size, self.batch_size):
            yield self.prepare(order[start : start + self.batch_size])

    def batches_per_epoch(self, drop_last: bool) -> int:
        """Training batches of one process in one epoch (every process gets the same number)."""
        return self._batch_count(-(-len(self) // self.process.world_size), drop_last)

    def _batch_count(self, count: int, drop_last: bool) -> int:
        """With `drop_last`, a trailing single sample is skipped (batch norm cannot train on one sample)
        unless it is the whole dataset."""
        full, rest = divmod(count, self.batch_size)
        return full + (rest > 1 or (rest == 1 and (not drop_last or full == 0)))


def predicted(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """The predicted masks: the top class of each pixel, or (multilabel) every label whose logit is
    positive (probability above one half), N×C×H×W of 0/1."""
    return (logits > 0).long() if multilabel else logits.argmax(1)


def _evaluate(
    model, batches: Batches, loss_fn, num_classes: int, multilabel: bool, dtype, channels_last: bool
):
    """Validation loss and confusion matrix over every process's share of the validation set."""
    model.eval()
    matrix = (MultilabelConfusionMatrix if multilabel else ConfusionMatrix)(num_classes, batches.device)
    total_loss, count = 0.0, 0
    with torch.no_grad(), _autocast(batches.device, dtype):
        for images, masks in batches.epoch(None, drop_last=False):
            x = batches.normalize(images)
            logits = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x).float()
            total_loss += float(loss_fn(logits, masks)) * len(masks)
            count += len(masks)
            matrix.update(predicted(logits, multilabel), masks)
    matrix.all_reduce()
    total_loss, count = distributed.all_sum(total_loss, count, device=batches.device)
    return total_loss / max(count, 1), matrix


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def model_loss(net, x: torch.Tensor, masks, loss_fn, dtype, channels_last: bool) -> torch.Tensor:
    """Normalized images → (channels-last) → model under autocast → loss in fp32: one training forward pass."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with _autocast(x.device, dtype):
        logits = net(x)
    return loss_fn(logits.float(), masks)


def resize_batch(images: torch.Tensor, masks: torch.Tensor, fraction: float):
    """Progressive resizing on the device: images bilinear (antialiased), masks nearest (labels stay
    labels); masks N×H×W, or N×C×H×W (multilabel)."""
    if fraction == 1.0:
        return images, masks
    size = [max(8, round(side * fraction)) for side in images.shape[-2:]]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    planes = masks if masks.dim() == 4 else masks[:, None]
    planes = F.interpolate(planes.float(), size=size, mode="nearest").long()
    return images, planes if masks.dim() == 4 else planes[:, 0]


def _resize_fraction(settings: TrainConfig, epoch: int) -> float:
    """The epochs split into equal phases, one per entry of `progressive_resize` (e.g. half size, then full)."""
    fractions = settings.progressive_resize or [1.0]
    return fractions[min(len(fractions) - 1, (epoch - 1) * len(fractions) // settings.epochs)]


def _better(value: float, best: float | None, settings: TrainConfig) -> bool:
    if best is None:
        return not math.isnan(value)
    mode = settings.monitor_mode
    if mode == "auto":
        mode = "min" if settings.monitor.endswith("loss") else "max"
    return value > best + settings.min_delta if mode == "max" else value < best - settings.min_delta


def planned_loss(settings: TrainConfig, classes, class_weights: list[float] | None) -> torch.nn.Module:
    """The loss of a planned run (what `train` and `lr-find` both build): `settings.loss` with one
    sigmoid per label for multilabel data, else a softmax over the classes (binary data too: background
    and foreground are two classes), class weights on every term that takes them (see loss_options)."""
    mode = "multilabel" if classes.multilabel else "multiclass"
    return build_loss(
        settings.loss, mode=mode, **loss_options(settings.loss, class_weights, classes.multilabel)
    )


def planned_model(config: Config, data_set: SegmentationData) -> SegmentationModel:
    """The fresh model of a planned run: architecture, encoder, weights and options from the config,
    classes and input channels from the loaded data (what `train` and `lr-find` both build)."""
    return create_model(
        config.model.arch,
        encoder=config.model.encoder,
        num_classes=data_set.classes.num_classes,
        in_channels=data_set.in_channels,
        encoder_weights=config.model.encoder_weights,
        **config.model.options,
    )


def _build_model(spec: dict, encoder_weights=None) -> SegmentationModel:
    return create_model(
        **{k: v for k, v in spec.items() if k != "options"},
        encoder_weights=encoder_weights,
        **spec["options"],
    )


def train(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model on the images and masks in `data` and write a run folder.

    >>> result = segwise.train("data/cells", epochs=20, encoder="resnet18")  # doctest: +SKIP
    >>> segwise.load(result.run_dir).predict("new_cell.png")                  # doctest: +SKIP
    >>> segwise.train(resume=result.run_dir)  # a killed run continues from its last epoch  # doctest: +SKIP

    `config` is a Config or a plan YAML; keyword overrides set any model/train field by name.
    `resume` continues a run folder from its last checkpoint with the run's own config and data.
    `augment` is a preset name or, from Python, a per-sample transform such as an albumentations
    `Compose` (run on the CPU in DataLoader workers instead of the on-device presets).
    """
    overrides |= {k: v for part in (overrides.pop("overrides", None) or {}).values() for k, v in part.items()}  # TEMP cli-merge
    started = time.perf_counter()
    transform = overrides.pop("augment") if callable(overrides.get("augment")) else None
    if transform is not None:
        overrides["augment"] = "none"  # the user's transform replaces the on-device presets
    checkpoint, run_dir, planned = None, None, False
    if resume is not None:
        run_dir = Path(resume)
        given = sorted(key for key, value in overrides.items() if value is not None)
        if not (run_dir / runfolder.CONFIG).is_file():
            raise SegwiseError(
                f"{run_dir / runfolder.CONFIG}: missing; --resume needs a run folder written by `segwise train`"
            )
        if config is not None or given:
            raise SegwiseError(
                f"{run_dir}: --resume continues a run with its own config and data; drop {given or ['--config']}"
            )
        run_config = RunConfig.load(run_dir / runfolder.CONFIG)
        checkpoint = load_checkpoint(run_dir)
        settings, data = run_config.train, run_config.data["root"]
        data_options = DataConfig(**run_config.data.get("plan", {}))  # how the run read its data
    else:
        planned = config is None  # no plan given: self-configure as `segwise plan` would (data/plan.py)
        if not isinstance(config, Config):
            config = load_config(config)
        config = config.override(**overrides)
        settings = config.train
    if settings.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(settings.seed)
    process, device = distributed.setup(pick_device(settings.device))
    keep_freed_memory(device)  # on a CPU every batch tensor would otherwise be fresh pages
    dtype = autocast_dtype(device, settings.precision)
    say = print if progress and process.is_main else (lambda *a, **k: None)
    if settings.sync_batchnorm and process.distributed and device.type != "cuda":
        raise SegwiseError("train.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; drop it on CPU")
    if settings.tensorboard and importlib.util.find_spec("tensorboard") is None:  # before any folder is made
        raise SegwiseError(
            "train.tensorboard needs the tensorboard package; pip install 'segwise[tensorboard]' or drop --tensorboard"
        )

    build_loss(settings.loss)  # a misspelt loss fails before any data is read or folder made
    if checkpoint is None:
        plan = make_plan(data, None if planned else config, str(device), **(overrides if planned else {}))
        config, settings, data_set, data_options = plan.config, plan.config.train, plan.data, plan.config.data
        for note in plan.notes if planned else []:
            say(f"plan: {note}")
        torch.manual_seed(settings.seed)  # after the batch-size probe, so a probe never changes the run
    else:
        data_set = load_planned_data(
            data, run_config.preprocess.input_size, settings.val_fraction, settings.seed, data_options
        )
    classes = data_set.classes
    loss_fn = planned_loss(settings, classes, data_options.class_weights)
    if checkpoint is None:
        pretrained = config.model.encoder_weights is not None
        model = planned_model(config, data_set)
        mean, std = data_options.mean, data_options.std  # chosen by the plan
        # Defaults that depend on the model are settled now and stored, so a resume needs no guessing.
        if settings.encoder_lr_scale is None:
            settings = dataclasses.replace(settings, encoder_lr_scale=default_encoder_lr_scale(pretrained))
    else:
        model = _build_model(run_config.model)
        mean, std = run_config.preprocess.mean, run_config.preprocess.std

    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.sync_batchnorm and process.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_batches = Batches(
        data_set.train_images, data_set.train_masks, settings.batch_size, mean, std, device, process
    )
    if transform is not None:
        train_batches = PerSampleBatches(train_batches, transform)
    val_batches = Batches(
        data_set.val_images, data_set.val_masks, settings.batch_size, mean, std, device, process
    )
    groups = encoder_decoder_groups(model, settings.encoder_lr_scale or 1.0)
    if settings.lr == "auto":
        from .lr_find import lr_range_test

        finding = lr_range_test(model, train_batches, loss_fn, groups, settings, dtype, process)
        settings = dataclasses.replace(settings, lr=finding.suggestion)
        say(f"segwise: lr-find suggests lr {finding.suggestion:.3g} (steepest descent of the smoothed loss)")
    steps_per_epoch = -(-train_batches.batches_per_epoch(drop_last=True) // settings.accumulate)
    optimizer = build_optimizer(
        groups, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum
    )
    scheduler = build_scheduler(
        optimizer,
        settings.schedule,
        settings.lr,
        settings.epochs * steps_per_epoch,
        round(settings.warmup_epochs * steps_per_epoch),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True)
        if settings.ema_decay
        else None
    )
    generator = torch.Generator().manual_seed(settings.seed)

    history: list[dict] = []
    best_value, best_epoch, bad_epochs, step, first_epoch = None, 0, 0, 0, 1
    if checkpoint is None:
        run_config = RunConfig(
            model=model.config,
            classes=Classes(
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
                "plan": asdict(data_options),
                "augment_transform": None if transform is None else repr(transform),
            },
        )
        if process.is_main:
            run_dir = runfolder.create_run_dir(runs_dir, name or Path(data).resolve().name)
            run_config.save(run_dir / runfolder.CONFIG)
        run_dir = distributed.broadcast(run_dir, process)
    else:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        restore_rng_state(checkpoint["rng"], generator)
        history, step = checkpoint["history"], checkpoint["step"]
        best_value, best_epoch, bad_epochs = (
            checkpoint["best_value"],
            checkpoint["best_epoch"],
            checkpoint["bad_epochs"],
        )
        first_epoch = checkpoint["epoch"] + 1
        if checkpoint["stopped"]:
            first_epoch = settings.epochs + 1
    writer = None
    if settings.tensorboard and process.is_main:
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: it is slow

        writer = SummaryWriter(run_dir / "tensorboard", purge_step=first_epoch)

    say(
        f"segwise: {'resuming at epoch ' + str(first_epoch) + ' of ' if checkpoint else 'training '}"
        f"{model.config['arch']}/{model.config['encoder']} on {len(train_batches)} images "
        f"({len(val_batches)} val) at {data_set.size[0]}×{data_set.size[1]}, {classes.num_classes} classes, "
        f"{device.type} {str(dtype).replace('torch.', '') if dtype else 'fp32'}"
        f"{f' ×{process.world_size} processes' if process.distributed else ''} → {run_dir}"
    )
    show_bar = progress and process.is_main and sys.stderr.isatty()
    net, net_frozen = None, None
    for epoch in range(first_epoch, settings.epochs + 1):
        # Freezing changes the trainable set, which DDP and torch.compile fix when built: rebuild then.
        frozen = epoch <= settings.freeze_encoder_epochs
        if frozen != net_frozen:
            model.freeze_encoder() if frozen else model.unfreeze_encoder()
            net, net_frozen = distributed.wrap(model, process, device), frozen
            if settings.compile:
                net = torch.compile(net)
        fraction = _resize_fraction(settings, epoch)
        net.train()
        epoch_start, seen, running = time.perf_counter(), 0, 0.0
        batch_count = train_batches.batches_per_epoch(drop_last=True)
        bar = tqdm(
            total=batch_count, desc=f"epoch {epoch}/{settings.epochs}", leave=False, disable=not show_bar
        )
        for index, (images, masks) in enumerate(train_batches.epoch(generator, drop_last=True)):
            x, masks = train_batches.augment(images, masks, settings.augment, generator)
            x, masks = resize_batch(x, masks, fraction)
            last_micro = (index + 1) % settings.accumulate == 0 or index + 1 == batch_count
            # DDP all-reduces gradients on every backward; between optimizer steps that is wasted.
            sync = net.no_sync() if process.distributed and not last_micro else contextlib.nullcontext()
            with sync:
                loss = model_loss(net, x, masks, loss_fn, dtype, settings.channels_last)
                scaler.scale(loss / settings.accumulate).backward()
            # Summed over processes, so every process sees the same value and stops together.
            loss_sum, count = distributed.all_sum(loss.item() * len(masks), len(masks), device=device)
            if not math.isfinite(loss_sum):
                raise SegwiseError(
                    f"{run_dir}: loss became {loss_sum / count} at epoch {epoch}; stopped, last.pt and "
                    f"model.safetensors keep the last good epoch ({epoch - 1}); lower --lr or use --precision fp32"
                )
            if last_micro:
                if settings.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
            running += loss_sum
            seen += count
            bar.update(1)
            bar.set_postfix(
                loss=f"{running / seen:.4f}",
                img_s=f"{seen / (time.perf_counter() - epoch_start):.1f}",
                **({settings.monitor: f"{best_value:.4f}"} if best_value is not None else {}),
            )
        bar.close()
        train_seconds = time.perf_counter() - epoch_start
        evaluated = ema.module if ema is not None else model
        val_loss, matrix = _evaluate(
            evaluated,
            val_batches,
            loss_fn,
            classes.num_classes,
            classes.multilabel,
            dtype,
            settings.channels_last,
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(running / max(seen, 1), 6),
                "val_loss": round(val_loss, 6),
                "val_miou": round(matrix.mean_iou(), 6),
                "val_pixel_accuracy": round(matrix.pixel_accuracy(), 6),
                "lr": scheduler.get_last_lr()[-1],  # the decoder's (the last group); the encoder's is scaled
                "images_per_s": round(seen / train_seconds, 2),
                "seconds": round(time.perf_counter() - epoch_start, 2),
            }
        )
        row = history[-1]
        improved = _better(row[settings.monitor], best_value, settings)
        if improved:
            best_value, best_epoch, bad_epochs = row[settings.monitor], epoch, 0
        else:
            bad_epochs += 1
        stop = settings.patience is not None and bad_epochs >= settings.patience
        if process.is_main:
            if improved:
                runfolder.save_weights(evaluated, run_dir / runfolder.WEIGHTS)
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_state(generator),
                    "epoch": epoch,
                    "step": step,
                    "history": history,
                    "best_value": best_value,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "stopped": stop,
                },
                run_dir,
            )
            runfolder.write_metrics(history, run_dir / runfolder.METRICS)
            plot_curves(history, run_dir / runfolder.CURVES)
            plot_lr(history, run_dir / "lr.png")
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, epoch)
                writer.flush()
        say(
            f"epoch {epoch:3d}/{settings.epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val mIoU {row['val_miou']:.4f}{' *' if improved else ''}  {row['images_per_s']:.1f} img/s  "
            f"{row['seconds']:.1f}s"
        )
        if stop:
            say(
                f"segwise: early stopping at epoch {epoch}: {settings.monitor} has not improved for "
                f"{settings.patience} epochs (best {best_value:.4f} at epoch {best_epoch})"
            )
            break
    if writer is not None:
        writer.close()

    if process.is_main:
        _write_val_samples(run_dir, model, val_batches, data_set, settings, dtype)
    distributed.teardown()
    seconds = time.perf_counter() - started
    best_miou = history[best_epoch - 1]["val_miou"] if best_epoch else float("nan")
    images_per_s = np.mean([row["images_per_s"] for row in history]) if history else 0.0
    say(
        f"segwise: best epoch {best_epoch} ({settings.monitor} {best_value}), val mIoU {best_miou:.4f}; "
        f"{seconds:.0f}s, {images_per_s:.1f} img/s; run folder {run_dir}"
    )
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
        logits = model(batches.normalize(images)).float()
        predictions = predicted(logits, data_set.classes.multilabel).cpu().numpy()
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
