"""The learning-rate range test (Smith 2015; fastai's `lr_find`): `segwise lr-find DATA`, `train --lr auto`.

Train for up to `steps` mini-batches while the learning rate grows exponentially from `start_lr` to
`end_lr`; record the loss, smooth it with a bias-corrected exponential moving average, stop once it
exceeds `diverge` × its minimum. The suggestion is the **steepest descent**: the LR where the smoothed
loss falls fastest per decade of LR, looked for only before the loss minimum (past it the loss is
blowing up). The valley's bottom itself is too high a rate to train at: the loss is about to diverge
there. Model weights, optimizer state and random-number states are restored afterwards, so the test
leaves no trace on the training that follows. Each step is the training step itself (step.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import SegwiseError
from . import distributed
from .batches import Batches
from .devices import autocast_dtype, keep_freed_memory, pick_device
from .figures import plot_lr_find
from .plan import Sections, entry_overrides
from .schedules import build_optimizer, encoder_decoder_groups
from .start import Environment, NewRun
from .step import Step


@dataclass
class LRFinding:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float


def suggest(lrs: list[float], smoothed: list[float], skip: int = 3) -> float:
    """Steepest descent of the smoothed loss against log10(LR), before its minimum."""
    if len(lrs) < skip + 3:
        raise SegwiseError(
            f"lr-find: the loss diverged after {len(lrs)} steps; lower the start LR (--start-lr) or check the data"
        )
    lowest = int(np.argmin(smoothed))
    end = max(lowest, skip + 2) + 1
    slopes = np.gradient(np.asarray(smoothed[:end]), np.log10(lrs[:end]))
    return float(lrs[skip + int(np.argmin(slopes[skip:]))])


def lr_range_test(
    model: torch.nn.Module,
    batches: Batches,
    loss_fn,
    groups: list[dict],
    settings,
    dtype: torch.dtype | None,
    process: distributed.Process = distributed.SINGLE,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.8,  # light: a heavier average lags decades of LR behind the raw loss
    diverge: float = 4.0,
) -> LRFinding:
    """Run the range test on `model` with the optimizer `settings` name; the model comes back untouched."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_rng = torch.get_rng_state()
    optimizer = build_optimizer(
        groups, settings.optimizer, start_lr, settings.weight_decay, settings.momentum
    )
    scaler = torch.amp.GradScaler(batches.device.type, enabled=dtype == torch.float16)
    step = Step(model, loss_fn, optimizer, scaler, dtype, settings.channels_last, process)
    net = distributed.wrap(model, process, batches.device)
    # The batch order has its own generator so the training's shuffling is not advanced.
    batch_stream = _endless(batches, torch.Generator().manual_seed(settings.seed + 1))
    factor = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    try:
        net.train()
        while len(lrs) < steps:
            images, masks = next(batch_stream)
            lr = start_lr * factor ** len(lrs)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            total, count = step(net, batches.normalize(images), masks)
            value = total / count
            if not np.isfinite(value):
                break
            average = smoothing * average + (1 - smoothing) * value
            lrs.append(lr)
            losses.append(value)
            smoothed.append(average / (1 - smoothing ** len(lrs)))
            if smoothed[-1] > diverge * min(smoothed):
                break
    finally:
        model.load_state_dict(saved_model)
        torch.set_rng_state(saved_rng)
        optimizer.zero_grad(set_to_none=True)
    finding = LRFinding(lrs, losses, smoothed, suggest(lrs, smoothed))
    return LRFinding(lrs, losses, smoothed, distributed.broadcast(finding.suggestion, process))


def _endless(batches: Batches, generator: torch.Generator):
    """Training batches epoch after epoch, reshuffled by `generator` each time."""
    while True:
        yield from batches.epoch(generator, drop_last=True)


def find_lr(
    data: str | Path,
    config: Config | str | Path | None = None,
    *,
    overrides: Sections | None = None,
    output: str | Path = "lr_find.png",
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    **fields: Any,
) -> LRFinding:
    """`segwise lr-find DATA`: the range test on a fresh model built as `segwise train` would build it.

    `overrides` are per section (`{"model": {"encoder": "resnet18"}}`), `fields` by name (`encoder=...`).

    >>> finding = find_lr("data/cells", encoder="resnet18", output="lr.png")  # doctest: +SKIP
    >>> finding.suggestion                                                     # doctest: +SKIP
    """
    run = NewRun(data, config, entry_overrides(overrides, fields), fit_budget=False)
    device = pick_device(run.settings.device)
    keep_freed_memory(device)
    env = Environment(
        distributed.SINGLE, device, autocast_dtype(device, run.settings.precision), progress=False
    )
    start = run.start(env)
    finding = lr_range_test(
        start.model,
        start.batches("train", device),
        start.loss(env.device),
        encoder_decoder_groups(start.model, start.settings.encoder_lr_scale),
        start.settings,
        env.dtype,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
    )
    plot_lr_find(finding, Path(output))
    return finding
