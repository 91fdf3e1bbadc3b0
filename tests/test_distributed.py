"""Data-parallel training through torchrun: 2 CPU processes (gloo) behave like 1 with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from segwise.engine import distributed

from .conftest import TINY

# Batch norm normalizes each process's own batch by design (SyncBatchNorm, GPU-only in torch, pools
# them), so for an exact comparison the driver swaps it for an identity; everything else is real.
DRIVER = """
import sys
import torch
import segwise.engine.plan as plan
from segwise.cli import main

def without_batchnorm(module):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.Identity())
        else:
            without_batchnorm(child)
    return module

create_model = plan.create_model
plan.create_model = lambda *args, **kwargs: without_batchnorm(create_model(*args, **kwargs))
sys.exit(main(sys.argv[1:]))
"""


def _train(tmp_path: Path, data: Path, name: str, processes: int, batch_size: int) -> Path:
    driver, plan = tmp_path / "driver.py", tmp_path / "plan.yaml"
    driver.write_text(DRIVER)
    plan.write_text(
        yaml.safe_dump(
            {"model": {"encoder": TINY["encoder"], "options": TINY["options"]}, "train": {"loss": "ce"}}
        )
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), str(driver), "train", str(data)]
    options = ["-c", str(plan), "--runs-dir", str(tmp_path), "--name", name, "--batch-size", str(batch_size)]
    options += ["--epochs", "2", "--precision", "fp32", "--augment", "none", "--seed", "5", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([*command, *options], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder:") == 1  # rank 0 alone prints
    return tmp_path / name


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(shapes_data, tmp_path):
    two = _train(tmp_path, shapes_data, "two", processes=2, batch_size=2)
    one = _train(tmp_path, shapes_data, "one", processes=1, batch_size=4)
    half = _train(tmp_path, shapes_data, "half", processes=1, batch_size=2)  # control: another global batch

    def weights(run_dir):
        return torch.load(run_dir / "last.pt", weights_only=True)["model"]

    def distance(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())

    assert distance(weights(two), weights(one)) < 1e-4
    assert distance(weights(half), weights(one)) > 100 * distance(weights(two), weights(one))
    for row_two, row_one in zip(_history(two), _history(one), strict=True):
        for key in ("train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr"):
            assert float(row_two[key]) == pytest.approx(float(row_one[key]), rel=1e-4, abs=1e-5), key
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == ["half", "one", "two"]


def test_each_process_gets_a_disjoint_equal_shard_like_distributed_sampler():
    from torch.utils.data.distributed import DistributedSampler

    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    for world_size in (1, 2, 3, 4):
        shards = [
            distributed.shard(order, distributed.Process(rank, world_size)) for rank in range(world_size)
        ]
        for rank, mine in enumerate(shards):
            sampler = DistributedSampler(order.tolist(), num_replicas=world_size, rank=rank, shuffle=False)
            assert mine.tolist() == [order[i].item() for i in sampler]
        assert len({len(s) for s in shards}) == 1
        assert set(torch.cat(shards).tolist()) == set(order.tolist())


def test_validation_shards_count_every_image_exactly_once():
    import numpy as np

    from segwise.engine.batches import Batches

    images = np.zeros((7, 4, 4, 1), np.uint8)
    masks = np.broadcast_to(np.arange(7, dtype=np.uint8)[:, None, None], (7, 4, 4)).copy()  # mask i holds i
    seen = []
    for rank in range(3):
        batches = Batches(images, masks, 2, [0.0], [1.0], torch.device("cpu"), distributed.Process(rank, 3))
        seen += [int(m[0, 0, 0]) for _, batch in batches.epoch(None, drop_last=False) for m in batch.split(1)]
    assert sorted(seen) == list(range(7))
