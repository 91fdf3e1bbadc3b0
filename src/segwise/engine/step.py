"""One training step, the same for training and the LR range test: forward under autocast → loss in
fp32 → scaled backward → (once every `accumulate` micro-batches) unscale, clip, optimizer step."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from . import distributed


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in `dtype` on `device`; plain fp32 when dtype is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def model_loss(net, x: torch.Tensor, masks, loss_fn, dtype, channels_last: bool) -> torch.Tensor:
    """Normalized images → (channels-last) → model under autocast → loss in fp32: one training forward pass."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, dtype):
        logits = net(x)
    return loss_fn(logits.float(), masks)


@dataclass
class Step:
    """The training step. `model` is the bare model (its parameters are clipped); the network it runs
    is passed on each call, since training rebuilds it (DDP, torch.compile) when freezing changes."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    channels_last: bool
    process: distributed.Process = distributed.SINGLE
    accumulate: int = 1
    clip_grad_norm: float | None = None

    def __call__(self, net, x: torch.Tensor, masks: torch.Tensor, update: bool = True) -> tuple[float, int]:
        """Forward and backward on normalized images `x`; with `update`, the optimizer step too (skipped
        when the loss is not finite). Returns the loss summed over the batch and the sample count, both
        summed over processes, so every process sees the same values and stops together."""
        # DDP all-reduces gradients on every backward; between optimizer steps that is wasted.
        no_sync = self.process.distributed and not update
        with net.no_sync() if no_sync else contextlib.nullcontext():
            loss = model_loss(net, x, masks, self.loss_fn, self.dtype, self.channels_last)
            self.scaler.scale(loss / self.accumulate).backward()
        loss_sum, count = distributed.all_sum(loss.item() * len(masks), len(masks), device=x.device)
        if update and math.isfinite(loss_sum):
            self._optimizer_step()
        return loss_sum, count

    def _optimizer_step(self) -> None:
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
