"""Optimizers, learning-rate schedules and encoder/decoder parameter groups.

Every parameter group carries `lr_scale`, its share of the peak learning rate (the encoder's for
discriminative rates), so a schedule or the LR finder sets `lr × lr_scale` and never needs to know
which group is which.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OPTIMIZERS, SCHEDULES


def default_encoder_lr_scale(pretrained: bool) -> float:
    """A pretrained encoder already holds good features: move it at a tenth of the decoder's rate."""
    return 0.1 if pretrained else 1.0


def encoder_decoder_groups(model: nn.Module, encoder_lr_scale: float) -> list[dict]:
    """The model's encoder and decoder parameter groups (`SegmentationModel.parameter_groups`), each
    with its LR as a share of the peak LR (`lr_scale`): the optimizer and every schedule multiply the
    peak LR by it, so the encoder keeps its share through warm-up and decay. Each is split in two:
    biases and norm-layer scales (one-dimensional tensors) take no weight decay, which would only
    pull them towards zero without regularising anything (the usual practice of timm and torchvision's
    references). Frozen parameters stay in their group: an optimizer only skips them while their grad
    is None.
    """
    groups = []
    for group in model.parameter_groups(encoder_lr=encoder_lr_scale, decoder_lr=1.0):
        weights = [p for p in group["params"] if p.ndim > 1]
        others = [p for p in group["params"] if p.ndim <= 1]
        groups.append({"params": weights, "name": group["name"], "lr_scale": group["lr"]})
        groups.append(
            {
                "params": others,
                "name": group["name"] + "_no_decay",
                "lr_scale": group["lr"],
                "weight_decay": 0.0,
            }
        )
    return groups


def build_optimizer(
    groups: list[dict], name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """AdamW (default), SGD with Nesterov momentum, or Adam; each group at `lr × lr_scale`, with
    `weight_decay` unless the group sets its own."""
    groups = [{**group, "lr": lr * group.get("lr_scale", 1.0)} for group in groups]
    # torch's fused kernels update every parameter in one pass (CPU and CUDA); elsewhere its default
    fused = (
        all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
        or None
    )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay, fused=fused
        )
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")  # config validates first


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle with a quarter of the steps warming up; torch's OneCycleLR divides by zero when a phase
    is shorter than one step, so a very short run (a smoke test, a tiny dataset) keeps the LR constant."""
    if total_steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    peaks = [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps)
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from ~0 to the peak over `warmup_steps`, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def poly(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LRScheduler:
    """DeepLab's poly decay, (1 - progress)^0.9 from the peak to 0, after the same linear warm-up as
    `warmup_cosine`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps)) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, lr: float, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if name == "one_cycle":
        return one_cycle(optimizer, lr, total_steps)
    if name == "cosine":
        return warmup_cosine(optimizer, total_steps, warmup_steps)
    if name == "poly":
        return poly(optimizer, total_steps, warmup_steps)
    raise ValueError(f"unknown schedule {name!r}; choose from {SCHEDULES}")  # config validates first
