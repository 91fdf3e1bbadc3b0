"""The training loop: read it top to bottom.

A run starts (start.py: planned from the data, or as a resumed run folder recorded it), builds its
pieces — batches sliced from the decoded uint8 arrays (this process's shard), loss, optimizer, schedule,
scaler, EMA — and then, epoch after epoch:

    train steps   augment and normalize on the device → (progressive resize) → the training step
                  (step.py: model under autocast → loss → scaled backward → optimizer step) → schedule, EMA
    validate      loss and confusion matrix over the validation set (reduced over processes)
    record, save  metrics.csv row, best weights, last.pt (the whole TrainingState), curves
    early stop    once the monitored metric has not improved for `patience` epochs

A resumed run restores its TrainingState into the same pieces and runs the same loop. Options live in
TrainConfig; the pieces in batches.py, step.py, schedules.py, checkpoint.py, distributed.py, lr_find.py.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import run as runfolder
from ..calibration import Calibration, PixelSample, fit_temperature
from ..config import Config, PreprocessConfig, RunConfig, TrainConfig
from ..constants import (
    CONFIG,
    CURVES,
    DATA_RECORD,
    HELD_OUT,
    IGNORE_INDEX,
    LAST,
    LR_PLOT,
    METRICS,
    SAMPLES,
    TENSORBOARD,
    WEIGHTS,
)
from ..data import fingerprint
from ..data.augment import ClassSampling, PerSampleBatches
from ..errors import SegwiseError, SegwiseWarning
from ..io import sweep_temporaries
from ..metrics import ConfusionMatrix, confusion_matrix_for
from ..task import Task
from . import distributed
from .batches import Batches, resize_batch
from .budget import parse_budget
from .checkpoint import TrainingState, restore_rng_state, rng_state
from .figures import plot_curves, plot_lr, sample_panel, write_sample_panels
from .lr_find import lr_range_test
from .plan import Sections, entry_overrides
from .schedules import build_optimizer, build_scheduler, encoder_decoder_groups
from .start import Environment, NewRun, ResumedRun, Start, training_environment
from .step import RunningLoss, Step, autocast


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_miou: float
    history: list[dict]
    seconds: float


def train(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    *,
    overrides: Sections | None = None,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    allow_changed_data: bool = False,
    **fields: Any,
) -> TrainResult:
    """Train a model on the images and masks in `data` and write a run folder.

    >>> result = segwise.train("data/cells", epochs=20, encoder="resnet18")  # doctest: +SKIP
    >>> segwise.load(result.run_dir).predict("new_cell.png")                  # doctest: +SKIP
    >>> segwise.train(resume=result.run_dir)  # a killed run continues from its last epoch  # doctest: +SKIP

    `config` is a Config or a plan YAML; `overrides` set fields per section (`{"train": {"epochs": 5}}`)
    and `fields` by name (`epochs=5`). Without a config, everything not given is planned from the data.
    `resume` continues a run folder from its last checkpoint with the run's own config and data; if the
    data changed since the run started it refuses, unless `allow_changed_data` (recorded in RUN/data.json).
    `augment` is a preset name or, from Python, a per-sample transform such as an albumentations
    `Compose` (run on the CPU in DataLoader workers instead of the on-device presets).
    """
    started = time.perf_counter()
    overrides = entry_overrides(overrides, fields)
    transform = overrides.get("train", {}).get("augment")
    if callable(transform):
        overrides["train"]["augment"] = "none"  # the user's transform replaces the on-device presets
    else:
        transform = None
    if resume is not None:
        run = ResumedRun(resume, config, overrides)
    else:
        run = NewRun(data, config, overrides, started)
    env = training_environment(run.settings, progress)
    trainer = Trainer(run.start(env), env, transform)
    trainer.open_run_dir(runs_dir, name, allow_changed_data)
    return trainer.fit(started)


_TRANSFORM_SAMPLING = (
    "train.sample_p: class-aware sampling centres the on-device crops, so it does not apply to a user's "
    "augment transform and is off; crop around classes in the transform instead"
)


class Trainer:
    """One run's pieces and its epoch loop (see the module docstring)."""

    def __init__(self, start: Start, env: Environment, transform=None) -> None:
        self.start, self.env, self.settings = start, env, start.settings
        self.task: Task = start.data_set.classes.task
        self.loss_fn = start.loss(env.device)
        self.model = start.model
        below = self.settings.norm_statistics_below
        if start.encoder_weights is not None and self.settings.batch_size < below:
            self.model.keep_encoder_norm_statistics()  # a small batch's statistics would undo pretraining's
        if self.settings.sync_batchnorm and env.process.distributed:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.train_batches = start.batches("train", env.device, env.process)
        names = list(start.data_set.classes.names)
        self.sampling = ClassSampling.of(self.settings.sample_p, self.settings.sample_classes, names)
        if transform is not None:
            self.train_batches = PerSampleBatches(self.train_batches, transform)
            if self.sampling is not None:
                warnings.warn(SegwiseWarning(_TRANSFORM_SAMPLING), stacklevel=2)
            self.sampling = None
        self.val_batches = start.batches("val", env.device, env.process)
        self.transform = transform
        groups = encoder_decoder_groups(self.model, self.settings.encoder_lr_scale or 1.0)
        if self.settings.lr == "auto":
            self.settings = dataclasses.replace(self.settings, lr=self._find_lr(groups))
        self._build_optimization(groups)
        self.generator = torch.Generator().manual_seed(self.settings.seed)
        self.state = TrainingState()
        self.run_dir: Path | None = None
        self.net, self.net_frozen = None, None
        self.deadline: float | None = None  # when the time budget ends (perf_counter), if it has one
        self.val_seconds = 0.0  # the last validation pass, kept free before the deadline

    def _find_lr(self, groups: list[dict]) -> float:
        settings, env = self.settings, self.env
        finding = lr_range_test(
            self.model, self.train_batches, self.loss_fn, groups, settings, env.dtype, env.process
        )
        env.say(
            f"segwise: lr-find suggests lr {finding.suggestion:.3g} (steepest descent of the smoothed loss)"
        )
        return finding.suggestion

    def _build_optimization(self, groups: list[dict]) -> None:
        """Optimizer, LR schedule, gradient scaler (fp16 only), EMA of the weights, and the step using them."""
        settings, device = self.settings, self.env.device
        steps_per_epoch = -(-self.train_batches.batches_per_epoch(drop_last=True) // settings.accumulate)
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = build_optimizer(
            groups, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            settings.schedule,
            settings.lr,
            settings.epochs * steps_per_epoch,
            round(settings.warmup_epochs * steps_per_epoch),
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.env.dtype == torch.float16)
        self.ema = None
        if settings.ema_decay:
            averaging = get_ema_multi_avg_fn(settings.ema_decay)
            self.ema = AveragedModel(self.model, multi_avg_fn=averaging, use_buffers=True)
        self.step = Step(
            self.model,
            self.loss_fn,
            self.optimizer,
            self.scaler,
            self.env.dtype,
            settings.channels_last,
            self.env.process,
            settings.accumulate,
            settings.clip_grad_norm,
        )

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validated and kept: the EMA's when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # ---- the run folder and the state in last.pt

    def open_run_dir(self, runs_dir: str | Path, name: str | None, allow_changed_data: bool = False) -> None:
        """A resumed run restores its state from its folder once its data proves unchanged (or changed
        with `allow_changed_data`); a new one makes its folder and records its config and data there,
        now that every recorded value (the LR found by lr-find included) is settled."""
        if self.start.state is not None:
            self.run_dir = self.start.run_dir
            if self.env.process.is_main:  # what a killed process was writing when it died
                sweep_temporaries(self.run_dir, recursive=True)
            changed = self._check_data(allow_changed_data)
            self.restore(self.start.state, replan_schedule=changed)
            if changed and self.env.process.is_main:  # last.pt's schedule now fits the data data.json records
                self.captured().save(self.run_dir)
            return
        run_dir = None
        if self.env.process.is_main:
            run_dir = runfolder.create_run_dir(runs_dir, name or self.start.data_root.name)
            self._run_config().save(run_dir / CONFIG)
            self._record_data(run_dir, fingerprint.fingerprint(self.start.data_set))
        self.run_dir = distributed.broadcast(run_dir, self.env.process)

    def _record_data(self, run_dir: Path, record: dict) -> None:
        data_set = self.start.data_set
        if data_set.held_out:  # so that `segwise eval` can score these same images later
            runfolder.write_held_out(data_set.val_pairs, data_set.root, run_dir / HELD_OUT)
        fingerprint.write(run_dir / DATA_RECORD, record)

    def _check_data(self, allow: bool) -> bool:
        """Refuse to resume on data that changed since the run started (RUN/data.json), unless `allow`:
        then say so, and record it in data.json's history, with config.yaml's image counts and val.txt
        updated to the data the run goes on with. A run folder without a readable record gets one.
        Whether the run goes on with changed data."""
        path, epoch = self.run_dir / DATA_RECORD, self.start.state.epoch
        current = fingerprint.fingerprint(self.start.data_set)
        try:
            recorded = fingerprint.read(path)
        except SegwiseError:
            if not allow:
                raise
            recorded = None  # unreadable: allowed to go on, the data now is recorded afresh
        changed = fingerprint.changes(recorded, current) if recorded is not None else []
        if changed and not allow:
            raise SegwiseError(
                f"{self.run_dir}: the data changed since the run started: {', '.join(changed)}; resuming "
                f"would go on with other data than its first {epoch} epoch(s) saw. Restore the data, start "
                "a new run, or pass --allow-changed-data to continue on the data as it is now"
            )
        going_on = bool(changed)
        if changed:
            self._go_on_with_changed_data(changed, path)
        elif recorded is None:
            self.env.say(
                f"segwise: {path} missing or unreadable: the data cannot be compared with what the run "
                "started on; it is recorded as it is now"
            )
            changed = ["not compared: no readable record of the data the run started on"]
        if changed and self.env.process.is_main:
            self._record_data(self.run_dir, fingerprint.allowed(current, recorded, epoch, changed))
        return going_on

    def _go_on_with_changed_data(self, changed: list[str], path: Path) -> None:
        """config.yaml's image counts follow the data; its classes cannot (the model's head has them)."""
        config, now = RunConfig.load(self.run_dir / CONFIG), self.start.data_set
        if (config.classes.names, config.classes.values) != (now.classes.names, now.classes.values):
            raise SegwiseError(
                f"{self.run_dir}: the classes changed with the data ({config.classes.names} → "
                f"{now.classes.names}); a run cannot go on with other classes: restore the data or start a new run"
            )
        self.env.say(f"segwise: resuming on changed data ({', '.join(changed)}); recorded in {path}")
        if self.env.process.is_main:
            config.data["train_images"], config.data["val_images"] = (
                len(now.train_images),
                len(now.val_images),
            )
            config.save(self.run_dir / CONFIG)

    def _run_config(self) -> RunConfig:
        data_set, options = self.start.data_set, self.start.data_options
        return RunConfig(
            model=self.model.config,
            classes=data_set.classes,
            preprocess=PreprocessConfig(list(data_set.size), self.start.mean, self.start.std),
            train=self.settings,
            data={
                "root": str(self.start.data_root),
                "train_images": len(data_set.train_images),
                "val_images": len(data_set.val_images),
                "plan": asdict(options),
                "max_side": self.start.max_side,  # how the size was chosen, so a resume reads the data alike
                "encoder_weights": self.start.encoder_weights,  # where training started from
                "init_from": self.start.init_from,  # a whole checkpoint's summary: layout, tensors, new head
                "augment_transform": None if self.transform is None else repr(self.transform),
            },
        )

    def captured(self) -> TrainingState:
        """The state as last.pt keeps it: the loop's counters and every piece's state dict."""
        return dataclasses.replace(
            self.state,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            rng=rng_state(self.generator),
        )

    def restore(self, state: TrainingState, replan_schedule: bool = False) -> None:
        """Put `state` into the pieces. On changed data (`replan_schedule`) an epoch has another number
        of steps, so the schedule saved for the old number does not fit (one-cycle would run out of
        steps): the one built for the data as it is now continues from the same epoch instead."""
        self.model.load_state_dict(state.model)
        if len(state.optimizer["param_groups"]) != len(self.optimizer.param_groups):
            raise SegwiseError(
                f"{self.start.run_dir}: written by an older segwise whose optimizer grouped the parameters "
                "differently; it cannot be resumed exactly: start a new run (its weights load as they are)"
            )
        self.optimizer.load_state_dict(state.optimizer)
        if replan_schedule:
            with warnings.catch_warnings():  # torch warns of scheduler steps before any optimizer step
                warnings.simplefilter("ignore")
                for _ in range(state.epoch * self.steps_per_epoch):
                    self.scheduler.step()
        else:
            self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        if self.ema is not None:
            self.ema.load_state_dict(state.ema)
        restore_rng_state(state.rng, self.generator)
        # keep the counters; the pieces now hold the rest
        pieces = ("model", "optimizer", "scheduler", "scaler", "ema", "rng")
        self.state = dataclasses.replace(state, **dict.fromkeys(pieces))

    # ---- the loop

    def fit(self, started: float) -> TrainResult:
        """Per epoch: train steps → validate → record and save → stop early once the monitor stalls."""
        settings, say = self.settings, self.env.say
        epochs = range(
            settings.epochs + 1 if self.state.stopped else self.state.epoch + 1, settings.epochs + 1
        )
        self._say_start(epochs.start)
        writer = self._tensorboard(epochs.start)
        self.deadline = self._deadline(started)
        for epoch in epochs:
            epoch_start = time.perf_counter()
            train_loss, seen = self.train_epoch(epoch)
            train_seconds = time.perf_counter() - epoch_start
            val_loss, matrix = validate(
                self.evaluated,
                self.val_batches,
                self.loss_fn,
                self.task,
                self.env.dtype,
                settings.channels_last,
            )
            row = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": round(val_loss, 6),
                "val_miou": round(matrix.mean_iou(), 6),
                "val_pixel_accuracy": round(matrix.pixel_accuracy(), 6),
                # the decoder's LR (the last group); the encoder's is scaled from it
                "lr": self.scheduler.get_last_lr()[-1],
                "images_per_s": round(seen / train_seconds, 2),
                "seconds": round(time.perf_counter() - epoch_start, 2),
            }
            self.val_seconds = row["seconds"] - train_seconds
            improved = self.record(row)
            out_of_time = self.out_of_time()
            self.state.stopped = self.state.stopped or out_of_time  # a resume does not continue past it
            if self.env.process.is_main:
                self.save(row, improved, writer)
            say(
                f"epoch {epoch:3d}/{settings.epochs}  train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val mIoU {row['val_miou']:.4f}{' *' if improved else ''}  "
                f"{row['images_per_s']:.1f} img/s  {row['seconds']:.1f}s"
            )
            if out_of_time:  # after the last epoch too: that is the budget's end, not early stopping
                if epoch < settings.epochs:
                    say(f"segwise: the time budget {settings.budget} is spent; stopping after epoch {epoch}")
                break
            if self.state.stopped:
                say(
                    f"segwise: early stopping at epoch {epoch}: {settings.monitor} has not improved for "
                    f"{settings.patience} epochs (best {self.state.best_value:.4f} at epoch {self.state.best_epoch})"
                )
                break
        if writer is not None:
            writer.close()
        return self.finish(started)

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this process's training batches; the mean loss and the samples seen (all processes)."""
        settings, state = self.settings, self.state
        net = self._network(epoch)
        fraction = resize_fraction(settings, epoch)
        net.train()
        started, running = time.perf_counter(), RunningLoss(self.env.device)
        batch_count = self.train_batches.batches_per_epoch(drop_last=True)
        show = self.env.progress and sys.stderr.isatty()
        bar = tqdm(total=batch_count, desc=f"epoch {epoch}/{settings.epochs}", leave=False, disable=not show)
        draws = distributed.augmentation_generator(self.generator, self.env.process, settings.seed, epoch)
        for index, (images, masks) in enumerate(self.train_batches.epoch(self.generator, drop_last=True)):
            x, masks = self.train_batches.augment(images, masks, settings.augment, draws, self.sampling)
            x, masks = resize_batch(x, masks, fraction)
            update = (index + 1) % settings.accumulate == 0 or index + 1 == batch_count
            running.add(self.step.train(net, x, masks, update), len(masks))
            if update:
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                state.step += 1
            bar.update(1)
            if running.due:  # the loss is read back every few steps only: each read waits for the device
                self._check_loss(running, epoch)
                best = {settings.monitor: f"{state.best_value:.4f}"} if state.best_value is not None else {}
                speed = running.read_count / (time.perf_counter() - started)
                bar.set_postfix(
                    loss=f"{running.read_total / running.read_count:.4f}", img_s=f"{speed:.1f}", **best
                )
            if update and self.out_of_time(every=16):
                break  # validate and save what there is: the budget ends the run
        bar.close()
        self._check_loss(running, epoch)
        return running.read_total / max(running.read_count, 1), running.read_count

    def _check_loss(self, running: RunningLoss, epoch: int) -> None:
        """Read the running loss (all processes at once); a non-finite one stops the run."""
        loss_sum, count = running.read()
        if not math.isfinite(loss_sum):
            raise SegwiseError(
                f"{self.run_dir}: loss became {loss_sum / max(count, 1)} at epoch {epoch}; stopped, {LAST} and "
                f"{WEIGHTS} keep the last good epoch ({epoch - 1}); lower --lr or use --precision fp32"
            )

    def _deadline(self, started: float) -> float | None:
        """When a new run's time budget ends (perf_counter time); a resumed run has none (it counted
        from a start long past)."""
        if self.settings.budget is None or self.start.state is not None:
            return None
        return started + parse_budget(self.settings.budget)

    def out_of_time(self, every: int = 1) -> bool:
        """The budget leaves no room for another validation pass (as long as the last one took). Every
        process decides alike: rank 0's clock decides for all, asked every `every` steps under torchrun
        (a broadcast per step would cost more than the seconds it saves)."""
        if self.deadline is None or (self.env.process.distributed and self.state.step % every):
            return False
        late = time.perf_counter() + self.val_seconds > self.deadline
        return bool(distributed.broadcast(late, self.env.process))

    def _network(self, epoch: int) -> torch.nn.Module:
        """The model as trained this epoch. Freezing changes the trainable set, which DDP and
        torch.compile fix when built: rebuilt then."""
        frozen = epoch <= self.settings.freeze_encoder_epochs
        if frozen != self.net_frozen:
            self.model.freeze_encoder() if frozen else self.model.unfreeze_encoder()
            self.net = distributed.wrap(self.model, self.env.process, self.env.device)
            self.net_frozen = frozen
            if self.settings.compile:
                self.net = torch.compile(self.net)
        return self.net

    def record(self, row: dict) -> bool:
        """Add the epoch's row to the history and follow the monitored metric; True if it improved."""
        settings, state = self.settings, self.state
        state.history.append(row)
        state.epoch = row["epoch"]
        improved = better(row[settings.monitor], state.best_value, settings)
        if improved:
            state.best_value, state.best_epoch, state.bad_epochs = row[settings.monitor], row["epoch"], 0
        else:
            state.bad_epochs += 1
        state.stopped = settings.patience is not None and state.bad_epochs >= settings.patience
        return improved

    def save(self, row: dict, improved: bool, writer) -> None:
        """Rank 0's files after an epoch: best weights, last.pt, metrics.csv, curves, TensorBoard scalars."""
        run_dir = self.run_dir
        if improved:
            runfolder.save_weights(self.evaluated, run_dir / WEIGHTS)
        self.captured().save(run_dir)
        runfolder.write_metrics(self.state.history, run_dir / METRICS)
        plot_curves(self.state.history, run_dir / CURVES)
        plot_lr(self.state.history, run_dir / LR_PLOT)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])
            writer.flush()

    def finish(self, started: float) -> TrainResult:
        if self.env.process.is_main:
            self._write_val_samples()
            self._calibrate()
        distributed.teardown()
        state, seconds = self.state, time.perf_counter() - started
        best_miou = state.history[state.best_epoch - 1]["val_miou"] if state.best_epoch else float("nan")
        images_per_s = np.mean([row["images_per_s"] for row in state.history]) if state.history else 0.0
        self.env.say(
            f"segwise: best epoch {state.best_epoch} ({self.settings.monitor} {state.best_value}), val mIoU "
            f"{best_miou:.4f}; {seconds:.0f}s, {images_per_s:.1f} img/s; run folder {self.run_dir}"
        )
        return TrainResult(self.run_dir, state.best_epoch, best_miou, state.history, seconds)

    # ---- what the run prints and writes besides the loop's files

    def _say_start(self, first_epoch: int) -> None:
        env, data_set, config = self.env, self.start.data_set, self.model.config
        dtype = str(env.dtype).replace("torch.", "") if env.dtype else "fp32"
        processes = f" ×{env.process.world_size} processes" if env.process.distributed else ""
        doing = f"resuming at epoch {first_epoch} of " if self.start.state is not None else "training "
        env.say(
            f"segwise: {doing}{config['arch']}/{config['encoder']} on {len(self.train_batches)} images "
            f"({len(self.val_batches)} val) at {data_set.size[0]}×{data_set.size[1]}, "
            f"{data_set.classes.num_classes} classes, {env.device.type} {dtype}{processes} → {self.run_dir}"
        )

    def _tensorboard(self, first_epoch: int):
        if not (self.settings.tensorboard and self.env.process.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: it is slow

        return SummaryWriter(self.run_dir / TENSORBOARD, purge_step=first_epoch)

    def _calibrate(self) -> None:
        """RUN/calibration.json for the best weights (those the run folder keeps), fitted on the
        validation images the trainer holds: cheap, one pass at the training size."""
        if self.run_dir is None or not (self.run_dir / WEIGHTS).is_file():
            return
        runfolder.load_weights(self.model, self.run_dir / WEIGHTS)
        found = _fit_calibration(self.model, self.val_batches, self.task, self.env.dtype, self.settings.seed)
        if found is not None:
            found.save(self.run_dir)
            self.env.say(
                f"segwise: temperature {found.temperature:.3f} fitted on val: calibration error (ECE) "
                f"{found.ece_before:.4f} → {found.ece_after:.4f}"
            )

    def _write_val_samples(self) -> None:
        """Panels from the best weights (the ones the run folder keeps), not from the last epoch."""
        batches, data_set = self.val_batches, self.start.data_set
        count = min(self.settings.val_samples, len(batches))
        if count == 0:
            return
        runfolder.load_weights(self.model, self.run_dir / WEIGHTS)
        self.model.eval()
        images, masks = batches.prepare(torch.arange(count))
        with torch.no_grad(), autocast(batches.device, self.env.dtype):
            logits = self.model(batches.normalize(images)).float()
            predictions = self.task.decide_logits(logits).cpu().numpy()
        palette = data_set.classes.palette
        panels = [
            sample_panel(data_set.val_images[i], data_set.val_masks[i], predictions[i], palette, IGNORE_INDEX)
            for i in range(count)
        ]
        write_sample_panels(
            panels, self.run_dir / SAMPLES, [data_set.val_pairs[i][0].stem for i in range(count)]
        )


def _fit_calibration(model, batches: Batches, task: Task, dtype, seed: int) -> Calibration | None:
    """The temperature of `model`'s probabilities on this process's validation images, at the training
    size (calibration.py); None without labelled validation pixels or with non-finite logits."""
    if len(batches) == 0:
        return None
    sample = PixelSample.for_images(task, len(batches), seed)
    model.eval()
    with torch.no_grad(), autocast(batches.device, dtype):
        for images, masks in batches.epoch(None, drop_last=False):
            for logits, truth in zip(model(batches.normalize(images)).float(), masks, strict=True):
                sample.add(logits, truth)
    if len(sample) == 0 or not torch.isfinite(sample.tensors()[0]).all():
        return None
    return fit_temperature(sample, "val (training size)")


def validate(
    model, batches: Batches, loss_fn, task: Task, dtype, channels_last: bool
) -> tuple[float, ConfusionMatrix]:
    """Validation loss and confusion matrix over every process's share of the validation set."""
    model.eval()
    matrix = confusion_matrix_for(task, batches.device)
    total_loss, count = (
        torch.zeros((), dtype=torch.float64, device=batches.device),
        0,
    )  # read once, at the end
    with torch.no_grad(), autocast(batches.device, dtype):
        for images, masks in batches.epoch(None, drop_last=False):
            x = batches.normalize(images)
            logits = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x).float()
            total_loss.add_(loss_fn(logits, masks), alpha=len(masks))
            count += len(masks)
            matrix.update(task.decide_logits(logits), masks)
    matrix.all_reduce()
    total_loss, count = distributed.all_sum(float(total_loss), count, device=batches.device)
    return total_loss / max(count, 1), matrix


def resize_fraction(settings: TrainConfig, epoch: int) -> float:
    """The epochs split into equal phases, one per entry of `progressive_resize` (e.g. half size, then full)."""
    fractions = settings.progressive_resize or [1.0]
    return fractions[min(len(fractions) - 1, (epoch - 1) * len(fractions) // settings.epochs)]


def better(value: float, best: float | None, settings: TrainConfig) -> bool:
    """Whether the monitored `value` improves on `best` by more than `min_delta` (the first finite one does)."""
    if best is None:
        return not math.isnan(value)
    mode = settings.monitor_mode
    if mode == "auto":
        mode = "min" if settings.monitor.endswith("loss") else "max"
    return value > best + settings.min_delta if mode == "max" else value < best - settings.min_delta
