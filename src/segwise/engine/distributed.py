"""Multi-process data parallelism with PyTorch's own engine: `torchrun --nproc-per-node N -m segwise train`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins the process group (gloo on CPU, nccl on
GPUs). `batch_size` is per process, as with torch's DistributedSampler, so the global batch is
`batch_size × WORLD_SIZE`. Each process trains on its own shard of the epoch's shuffled order
(`shard`), gradients are averaged by DistributedDataParallel, metrics are summed with all_reduce, and
only rank 0 writes files or prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Process()  # a plain, one-process run


def current() -> Process:
    """This process's place in a torchrun launch (rank 0 of 1 when started plainly)."""
    env = os.environ
    return Process(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[Process, torch.device]:
    """Join the process group when launched by torchrun; each process then uses its own GPU."""
    process = current()
    if not process.distributed or dist.is_initialized():
        return process, device
    if device.type == "cuda":
        device = torch.device("cuda", process.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return process, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(order: torch.Tensor, process: Process) -> torch.Tensor:
    """DistributedSampler's split: pad the order by wrapping round to a multiple of the world size, then
    take every world_size-th index from `rank`, so every process sees as many samples per epoch."""
    if not process.distributed:
        return order
    total = -(-len(order) // process.world_size) * process.world_size
    padded = torch.cat([order, order[: total - len(order)]]) if total > len(order) else order
    return padded[process.rank : total : process.world_size]


def own_seed(generator: torch.Generator, process: Process) -> int:
    """A seed of this process's own, from one draw of `generator`, which every process shares (and
    so draws alike). Rank 0 keeps the draw, so a one-process run draws as it always did."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return (seed + process.rank * 0x9E3779B97F4A7C15) % 2**63  # ranks' seeds far apart: unrelated streams


def augmentation_generator(
    generator: torch.Generator, process: Process, seed: int, epoch: int
) -> torch.Generator:
    """The generator an epoch's augmentation draws from. Every process shares `generator` (seeded
    alike) so that they shuffle alike and each takes its shard; augmenting from it too would give
    every process the same draws. Under torchrun each process gets its own, seeded from the run's
    `seed`, the epoch and its rank (a resumed run draws the same), without drawing from the shared
    one, whose order then stays the one-process run's. A one-process run keeps the shared one."""
    if not process.distributed:
        return generator
    own = np.random.SeedSequence([seed, epoch, process.rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(own) % 2**63)


def wrap(model: nn.Module, process: Process, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (itself when not distributed). Wrap again whenever the set
    of trainable parameters changes (freezing), since DDP fixes it when it is built."""
    if not process.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def all_sum(*values: float, device: torch.device) -> list[float]:
    """Sum numbers over all processes (themselves when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    return all_sum_tensor(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def all_sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all processes, in place, on its device (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast(value, process: Process):
    """Rank 0's `value` on every process (e.g. the run folder it created)."""
    if not process.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
