"""Crash-proof training: a run killed with SIGKILL mid-epoch and resumed ends exactly like one never killed."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import TINY, run_cli

STEPS_PER_EPOCH = 4  # 16 training images, batch 4
EPOCHS = 4
KILL_AT_STEP = 2 * STEPS_PER_EPOCH + 2  # in the middle of epoch 3

# Runs `segwise train` in a child process whose loss function SIGKILLs the process at a chosen training
# step: a deterministic "kill -9 mid-epoch", no timing involved.
KILLER = """
import os, signal, sys, torch
import segwise.engine.plan as plan
from segwise.cli import main
build_loss, calls = plan.build_loss, [0]
class Killing(torch.nn.Module):  # a module, as the trainer moves the loss to its device
    def __init__(self, loss):
        super().__init__()
        self.loss = loss
    def forward(self, logits, masks):
        if torch.is_grad_enabled():  # training steps only, not validation
            calls[0] += 1
            if calls[0] == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)
        return self.loss(logits, masks)
def killing_build_loss(spec, **options):
    return Killing(build_loss(spec, **options))
plan.build_loss = killing_build_loss
sys.exit(main(sys.argv[1:]))
"""

TIMING = ("seconds", "images_per_s")


def _plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model": {"encoder": TINY["encoder"], "options": TINY["options"]}}))
    return path


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def _train_args(data: Path, runs: Path, plan: Path) -> list[str]:
    return [
        "train",
        str(data),
        "-c",
        str(plan),
        "--runs-dir",
        str(runs),
        "--name",
        "run",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "4",
        "--precision",
        "fp32",
        "--deterministic",
        "--ema-decay",
        "0.9",
        "--seed",
        "3",
        "-q",
    ]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Bit-for-bit reproducibility across processes: deterministic kernels and one thread each."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_run(shapes_data, tmp_path):
    plan = _plan(tmp_path)
    straight = run_cli(*_train_args(shapes_data, tmp_path / "straight", plan))
    assert straight.returncode == 0, straight.stderr

    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *_train_args(shapes_data, tmp_path / "killed", plan)],
        capture_output=True,
        text=True,
        env={**os.environ, "KILL_AT_STEP": str(KILL_AT_STEP)},
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed" / "run"
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1, 2]  # died in epoch 3
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 2 * STEPS_PER_EPOCH

    resumed = run_cli("train", "--resume", str(run_dir), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert _history(run_dir) == _history(tmp_path / "straight" / "run")
    final = torch.load(run_dir / "last.pt", weights_only=True)
    expected = torch.load(tmp_path / "straight" / "run" / "last.pt", weights_only=True)
    assert final["epoch"] == EPOCHS and final["step"] == EPOCHS * STEPS_PER_EPOCH
    assert all(torch.equal(final["model"][k], expected["model"][k]) for k in expected["model"])
    assert all(torch.equal(final["ema"][k], expected["ema"][k]) for k in expected["ema"])
    assert list((tmp_path / "killed").iterdir()) == [run_dir]  # the same folder, no run-2


def test_checkpoint_holds_the_full_training_state(trained_run):
    state = torch.load(trained_run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "rng", "epoch", "step", "history"} <= set(
        state
    )
    assert {"torch", "numpy", "python", "generator"} <= set(state["rng"])
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["step"] == 2 * STEPS_PER_EPOCH


def test_resuming_a_finished_run_trains_nothing_more(trained_run):
    before = _history(trained_run)
    result = run_cli("train", "--resume", str(trained_run), "-q")
    assert result.returncode == 0, result.stderr
    assert _history(trained_run) == before


def test_resume_refuses_new_options_and_missing_checkpoints(trained_run, tmp_path):
    changed = run_cli("train", "--resume", str(trained_run), "--epochs", "9")
    assert changed.returncode == 2 and "drop ['epochs']" in changed.stderr
    assert "Traceback" not in changed.stderr
    (tmp_path / "empty").mkdir()
    missing = run_cli("train", "--resume", str(tmp_path / "empty"))
    assert missing.returncode == 2 and "segwise train" in missing.stderr
    both = run_cli("train")
    assert both.returncode == 2 and "--resume" in both.stderr
