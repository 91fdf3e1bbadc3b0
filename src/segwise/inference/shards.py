"""Prediction under torchrun: each process predicts a disjoint share of the inputs on its own device.

The processes exchange only small Python objects (how many files all of them wrote, the COCO
records of their share), never images or tensors, so a gloo process group serves every device and
NCCL would buy nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..engine import distributed


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size): under torchrun with WORLD_SIZE > 1 a gloo process group for the block (one
    the caller already set up is used as it is), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield 0, 1
        return
    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def process_shard() -> tuple[int, int]:
    """This process's (rank, world size): the process group's, else torchrun's RANK and WORLD_SIZE,
    else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    process = distributed.current()
    return process.rank, process.world_size


def total_over_processes(count: int) -> int:
    """The sum of `count` over the processes of the process group (`count` itself without one)."""
    (total,) = distributed.all_sum(count, device=torch.device("cpu"))  # predict's group is gloo: CPU
    return round(total)


def gathered(items: Sequence) -> list:
    """The items of every process of the process group, rank after rank (`items` itself without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, list(items))
    return [item for share in shares for item in share]


def process_device(device: str) -> str:
    """The device for this process: under torchrun each process takes its own GPU (LOCAL_RANK)."""
    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and device in ("auto", "cuda")
        and torch.cuda.is_available()
    ):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device
