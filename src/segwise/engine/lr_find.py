"""The learning-rate range test (Smith 2015; fastai's `lr_find`): `segwise lr-find DATA`, `train --lr auto`.

Train for up to `steps` mini-batches while the learning rate grows exponentially from `start_lr` to
`end_lr`; record the loss, smooth it with a bias-corrected exponential moving average, stop once it
exceeds `diverge` × its minimum. The suggestion is the **steepest descent**: the LR where the smoothed
loss falls fastest per decade of LR, looked for only before the loss minimum (past it the loss is
blowing up). The valley's bottom itself is too high a rate to train at: the loss is about to diverge
there. Model weights, optimizer state and random-number states are restored afterwards, so the test
leaves no trace on the training that follows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SegwiseError
from ..io import atomic_path
from . import distributed
from .schedules import build_optimizer


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
    batches,
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
    from .trainer import model_loss

    saved_model = copy.deepcopy(model.state_dict())
    saved_rng = torch.get_rng_state()
    # The batch order has its own generator so the training's shuffling is not advanced.
    generator = torch.Generator().manual_seed(settings.seed + 1)
    optimizer = build_optimizer(
        groups, settings.optimizer, start_lr, settings.weight_decay, settings.momentum
    )
    scaler = torch.amp.GradScaler(batches.device.type, enabled=dtype == torch.float16)
    net = distributed.wrap(model, process, batches.device)
    factor = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    try:
        net.train()
        while len(lrs) < steps:
            for images, masks in batches.epoch(generator, drop_last=True):
                lr = start_lr * factor ** len(lrs)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                x = batches.normalize(images)
                loss = model_loss(net, x, masks, loss_fn, dtype, settings.channels_last)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total, count = distributed.all_sum(
                    loss.item() * len(masks), len(masks), device=batches.device
                )
                value = total / count
                if not np.isfinite(value):
                    break
                average = smoothing * average + (1 - smoothing) * value
                lrs.append(lr)
                losses.append(value)
                smoothed.append(average / (1 - smoothing ** len(lrs)))
                if smoothed[-1] > diverge * min(smoothed) or len(lrs) == steps:
                    break
            else:
                continue
            break
    finally:
        model.load_state_dict(saved_model)
        torch.set_rng_state(saved_rng)
        optimizer.zero_grad(set_to_none=True)
    finding = LRFinding(lrs, losses, smoothed, suggest(lrs, smoothed))
    return LRFinding(lrs, losses, smoothed, distributed.broadcast(finding.suggestion, process))


def plot_lr_find(finding: LRFinding, path: Path) -> None:
    """Raw and smoothed loss against the LR (log scale), the suggestion marked."""
    from ..report.plots import plt  # matplotlib set up for files only

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(finding.lrs, finding.losses, color="tab:blue", alpha=0.3, label="loss")
    axis.plot(finding.lrs, finding.smoothed, color="tab:blue", label="smoothed loss")
    axis.axvline(
        finding.suggestion, color="tab:red", linestyle="--", label=f"suggested {finding.suggestion:.2e}"
    )
    axis.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    top = max(finding.smoothed[0], np.percentile(finding.smoothed, 90)) * 1.1
    axis.set_ylim(min(finding.losses) * 0.9, top)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)


def find_lr(
    data: str | Path,
    config: Any = None,
    *,
    output: str | Path = "lr_find.png",
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    **overrides: Any,
) -> LRFinding:
    """`segwise lr-find DATA`: the range test on a fresh model built as `segwise train` would build it.

    >>> finding = find_lr("data/cells", encoder="resnet18", output="lr.png")  # doctest: +SKIP
    >>> finding.suggestion                                                     # doctest: +SKIP
    """
    overrides |= {k: v for part in (overrides.pop("overrides", None) or {}).values() for k, v in part.items()}  # TEMP cli-merge
    from ..config import Config, load_config
    from ..data.plan import make_plan
    from .devices import autocast_dtype, keep_freed_memory, pick_device
    from .schedules import default_encoder_lr_scale, encoder_decoder_groups
    from .trainer import Batches, planned_loss, planned_model

    planned = config is None  # no plan given: self-configure exactly as `segwise train` does
    if not isinstance(config, Config):
        config = load_config(config)
    device = pick_device(config.override(**overrides).train.device)
    keep_freed_memory(device)
    plan = make_plan(data, None if planned else config, str(device), **overrides)
    config, settings, data_set = plan.config, plan.config.train, plan.data
    torch.manual_seed(settings.seed)
    dtype = autocast_dtype(device, settings.precision)
    loss_fn = planned_loss(settings, data_set.classes, config.data.class_weights)
    pretrained = config.model.encoder_weights is not None
    model = planned_model(config, data_set).to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = config.data.mean, config.data.std  # chosen by the plan, as in training
    batches = Batches(data_set.train_images, data_set.train_masks, settings.batch_size, mean, std, device)
    scale = settings.encoder_lr_scale or default_encoder_lr_scale(pretrained)
    finding = lr_range_test(
        model,
        batches,
        loss_fn,
        encoder_decoder_groups(model, scale),
        settings,
        dtype,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
    )
    plot_lr_find(finding, Path(output))
    return finding
