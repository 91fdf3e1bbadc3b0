"""Plans that fit a time budget: `segwise train DATA --budget 20m` (and `train.budget` in a plan).

The plan times the real training step (forward, loss, backward, optimizer) and a validation forward
pass on the training device at a few candidate resolutions, then picks what makes the most of the
budget. The rules, and why:

- **batch**: 8 unless given (at most an eighth of the training images, and what fits in memory).
  Smaller batches give more updates for the same images; on CamVid, 30 epochs at batch 8 beat 14 at
  batch 16 in the same time (BENCHMARKS.md, "Recipes");
- **resolution**: the largest candidate (the data's aspect ratio kept; long side 1, 3/4, 2/3 or 1/2
  of the full-size plan) at which the budget still buys enough training: TARGET_EPOCHS epochs from
  scratch, TARGET_EPOCHS_PRETRAINED from pretrained weights, or TARGET_STEPS optimizer steps for a
  large dataset. Resolution is spent only once the model has seen the data often enough: from scratch,
  a plan that spends the budget on resolution and too few updates loses to a smaller one (360×480 for
  14 epochs: 0.41 val mIoU; 240×320 for 30: 0.57). A pretrained encoder needs fewer passes and gains
  more from resolution (CamVid, lite0 weights: 192×256 for 28 epochs 0.663, 240×320 for 15 epochs
  0.675). When no candidate buys that much, the smallest one is taken;
- **epochs**: as many as fit in what is left of the budget once the data is read and the candidates
  timed (the fastest of StepTimer.REPEATS steps after a warm-up one: a single step over-estimated an epoch
  by 10-20 %, so planned runs ended early), with EPOCH_MARGIN for augmentation and batching the timing does not see, at most MAX_EPOCHS;
  the LR schedule spans exactly these epochs, so it completes when the budget does;
- the trainer stops on time regardless: once the budget is spent it ends the epoch, validates and
  saves (trainer.py).

Values given explicitly are kept: a given size is the only candidate, given epochs pick the largest
resolution at which they fit.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from ..config import Config
from ..data import SegmentationData
from ..data.dataset import choose_size
from ..errors import SegwiseError
from .devices import autocast_dtype
from .step import Step

DEFAULT_BUDGET = "20m"  # what a plan without --budget and without --epochs aims for
BATCH = 8
SIDE_SCALES = (1.0, 3 / 4, 2 / 3, 1 / 2)
MIN_SIDE = 128
TARGET_EPOCHS = 30
TARGET_EPOCHS_PRETRAINED = 20
TARGET_STEPS = 4_000
MAX_EPOCHS = 300
EPOCH_MARGIN = 1.03  # augmentation, batching and metrics: measured epochs ran within 3 % of the timed step
FINISH_SHARE = 0.03  # of the budget, kept for the best weights' sample panels and the last save
UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_budget(text: str) -> float:
    """Seconds in a budget such as `20m`, `1h30m`, `90s` or `1.5h`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text.strip().lower())
    if not parts or re.sub(r"\d+(?:\.\d+)?\s*[hms]", "", text.strip().lower()).strip():
        raise SegwiseError(f"train.budget: {text!r} is not a duration; write e.g. 20m, 1h30m or 90s")
    seconds = sum(float(number) * UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise SegwiseError(f"train.budget: {text!r} is no time at all; give a positive duration")
    return seconds


@dataclass(frozen=True)
class Candidate:
    """One resolution the plan timed: the long-side cap, the size it gives, and the seconds one epoch takes."""

    max_side: int
    size: tuple[int, int]
    epoch_seconds: float
    steps_per_epoch: int

    def epochs_within(self, seconds: float) -> float:
        return seconds / self.epoch_seconds


@dataclass(frozen=True)
class BudgetPlan:
    max_side: int
    size: tuple[int, int]
    batch_size: int
    epochs: int
    notes: list[str]


def budget_batch(data_set: SegmentationData, given: int | None) -> int:
    """The batch a budget plan trains with (see the module docstring); memory is checked by the timing."""
    if given is not None:
        return given
    return max(2, min(BATCH, len(data_set.train_images) // 8))


def candidate_sides(full_side: int) -> list[int]:
    """Long-side caps to time, largest first: the full-size plan's and the SIDE_SCALES of it."""
    sides = {max(MIN_SIDE, int(round(full_side * scale / 32)) * 32) for scale in SIDE_SCALES}
    return sorted(sides, reverse=True)


def choose(
    candidates: list[Candidate], seconds: float, epochs_given: int | None, target_epochs: int = TARGET_EPOCHS
) -> tuple[Candidate, int, str]:
    """The candidate, its epochs and the reason (module docstring), from the timed candidates (largest
    first); `target_epochs` is the passes a model needs before resolution is worth more."""
    if epochs_given is not None:
        fitting = [c for c in candidates if c.epochs_within(seconds) >= epochs_given]
        chosen = fitting[0] if fitting else candidates[-1]
        return chosen, epochs_given, f"the largest whose {epochs_given} given epochs fit"
    for candidate in candidates:
        epochs = candidate.epochs_within(seconds)
        if epochs >= target_epochs or epochs * candidate.steps_per_epoch >= TARGET_STEPS:
            why = f"the largest that buys {target_epochs} epochs or {TARGET_STEPS} steps"
            return candidate, min(MAX_EPOCHS, int(epochs)), why
    if seconds <= 0:
        raise SegwiseError(
            "train.budget: reading the data and timing the step used the whole budget; give a longer --budget"
        )
    smallest = candidates[-1]
    epochs = int(smallest.epochs_within(seconds))
    if epochs < 1:
        raise SegwiseError(
            f"train.budget: one epoch at {smallest.size[0]}×{smallest.size[1]} takes about "
            f"{smallest.epoch_seconds:.0f} s, more than the {seconds:.0f} s left; give a longer --budget"
        )
    return smallest, epochs, f"none buys {target_epochs} epochs: the smallest"


def plan_budget(
    config: Config,
    data_set: SegmentationData,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    device: torch.device,
    budget: str,
    deadline: float,
    epochs_given: int | None,
    batch_given: int | None,
    size_given: bool,
) -> BudgetPlan:
    """Time the candidates with `model` (the planned one; its weights do not matter) and `loss_fn`, and
    choose (module docstring). `deadline` is the perf_counter time the budget ends; what is left of it
    when the timing is done is what training may use."""
    batch = budget_batch(data_set, batch_given)
    shapes = data_set.original_sizes()
    sides = [max(data_set.size)] if size_given else candidate_sides(max(data_set.size))
    timer = StepTimer(model, loss_fn, config, data_set, device, batch)
    steps = -(-len(data_set.train_images) // batch)
    val_batches = -(-len(data_set.val_images) // batch)
    candidates = []
    for side in sides:
        size = tuple(data_set.size) if size_given else choose_size(shapes, side)
        step, forward = timer.seconds(size)
        candidates.append(Candidate(side, size, EPOCH_MARGIN * (steps * step + val_batches * forward), steps))
    total = parse_budget(budget)
    seconds = deadline - time.perf_counter() - FINISH_SHARE * total
    pretrained = config.model.pretrained
    target = TARGET_EPOCHS_PRETRAINED if pretrained else TARGET_EPOCHS
    chosen, epochs, why = choose(candidates, seconds, epochs_given, target)
    why += " (pretrained encoder)" if pretrained and epochs_given is None else ""
    timings = ", ".join(f"{c.size[0]}×{c.size[1]} {c.epoch_seconds:.1f} s" for c in candidates)
    notes = [
        f"budget {budget}: {seconds:.0f} s left for training; one epoch (batch {batch}, measured): {timings}",
        f"size {chosen.size[0]}×{chosen.size[1]}: {why}",
        f"epochs {epochs}: what fits in the budget (the schedule ends with it)",
        f"batch size {batch}: more, smaller updates (the budget rule's batch)",
    ]
    return BudgetPlan(chosen.max_side, chosen.size, batch, epochs, notes)


class StepTimer:
    """Times the real training step and a validation forward pass of the planned model at a size."""

    REPEATS = 3

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: torch.nn.Module,
        config: Config,
        data_set: SegmentationData,
        device: torch.device,
        batch: int,
    ) -> None:
        self.device, self.batch, self.data_set = device, batch, data_set
        self.dtype = autocast_dtype(device, config.train.precision)
        self.model = model.to(device)
        self.channels_last = config.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.step = Step(self.model, loss_fn.to(device), optimizer, scaler, self.dtype, self.channels_last)

    def seconds(self, size: tuple[int, int]) -> tuple[float, float]:
        """(training step, validation forward) seconds for one batch at `size`."""
        x, masks = self._batch(size)
        self.model.train()
        self.step(
            self.model, x, masks, True
        )  # a new shape's first step pays for allocation and kernel choice
        times = []
        for _ in range(self.REPEATS):  # the fastest: what the machine does undisturbed, in steady state
            started = self._now()
            self.step(self.model, x, masks, True)
            times.append(self._now() - started)
        step = min(times)
        self.model.eval()
        started = self._now()
        with torch.no_grad(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None):
            self.model(x)
        return step, self._now() - started

    def _batch(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        task, channels = self.data_set.classes.task, self.data_set.in_channels
        x = torch.randn(self.batch, channels, *size, device=self.device)
        if task.per_label:
            masks = torch.randint(0, 2, (self.batch, task.num_classes, *size), device=self.device)
        else:
            masks = torch.randint(0, task.num_classes, (self.batch, *size), device=self.device)
        return x, masks

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def budget_of(config: Config, given: set[str]) -> str | None:
    """The budget a plan fits: the given one, or DEFAULT_BUDGET when neither it nor the epochs are given."""
    if config.train.budget is not None:
        return config.train.budget
    return None if "epochs" in given else DEFAULT_BUDGET
