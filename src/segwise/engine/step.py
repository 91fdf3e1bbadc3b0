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
        summed over processes, so every process sees the same values and stops together. Reading the
        loss waits for the device: for the LR range test and timing, which need every step's loss."""
        loss = self._forward_backward(net, x, masks, update)
        total, count = distributed.all_sum(float(loss) * len(masks), len(masks), device=x.device)
        if update and math.isfinite(total):
            self._optimizer_step()
        return total, count

    def train(self, net, x: torch.Tensor, masks: torch.Tensor, update: bool = True) -> torch.Tensor:
        """The step as training runs it: nothing read back, so the host never waits for the device.
        Returns this process's mean loss over the batch, on the device, for a `RunningLoss`. The
        optimizer steps whatever the loss (an fp16 GradScaler still skips overflowing steps): a
        non-finite loss stops the run when the running loss is next read, before anything is saved."""
        loss = self._forward_backward(net, x, masks, update)
        if update:
            self._optimizer_step()
        return loss

    def _forward_backward(self, net, x: torch.Tensor, masks: torch.Tensor, update: bool) -> torch.Tensor:
        # DDP all-reduces gradients on every backward; between optimizer steps that is wasted.
        no_sync = self.process.distributed and not update
        with net.no_sync() if no_sync else contextlib.nullcontext():
            loss = model_loss(net, x, masks, self.loss_fn, self.dtype, self.channels_last)
            self.scaler.scale(loss / self.accumulate).backward()
        return loss.detach()

    def _optimizer_step(self) -> None:
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


class RunningLoss:
    """An epoch's training loss, summed on the device and read back every `every` steps and at the
    end: each read waits for the device (and, under torchrun, for the other processes), which every
    step would leave a GPU idle between steps. All processes read at the same steps."""

    def __init__(self, device: torch.device, every: int = 32) -> None:
        self.every = every
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0  # this process's samples (a number the host knows: no need to wait for it)
        self.steps = 0
        self.read_total, self.read_count = 0.0, 0  # all processes' sums at the last read

    def add(self, loss: torch.Tensor, count: int) -> None:
        """A step's mean `loss` over its `count` samples."""
        self.total.add_(loss, alpha=count)  # a NaN or infinity stays in the sum: the next read sees it
        self.count += count
        self.steps += 1

    @property
    def due(self) -> bool:
        return self.steps % self.every == 0

    def read(self) -> tuple[float, int]:
        """The loss summed over the epoch so far and the samples, over all processes."""
        count = torch.tensor(float(self.count), dtype=torch.float64, device=self.total.device)
        sums = torch.stack([self.total, count])
        self.read_total, count = distributed.all_sum_tensor(sums).tolist()
        self.read_count = round(count)
        return self.read_total, self.read_count
