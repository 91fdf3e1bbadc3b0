"""Fixtures that make tiny datasets on the fly; no test needs files from outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segwise.data.synthetic import write_synthetic_dataset

# A model small enough to train in seconds on a CPU; the same for every test that trains.
TINY = {"encoder": "test_resnet", "options": {"decoder_channels": [32, 16, 16, 8, 8]}, "batch_size": 4}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded-data cache in a temporary folder, never the user's ~/.cache/segwise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGWISE_CACHE_DIR", str(tmp_path_factory.mktemp("segwise-cache")))
        yield


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """Synthetic multiclass data, 64×64: train/, val/ and test/ splits plus classes.txt."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=16, num_val=6, num_test=2, size=64
    )


@pytest.fixture(scope="session")
def trained_run(shapes_data, tmp_path_factory) -> Path:
    """One short training run shared by the tests that only read a run folder."""
    import segwise

    result = segwise.train(
        shapes_data, runs_dir=tmp_path_factory.mktemp("runs"), name="tiny", epochs=2, progress=False, **TINY
    )
    return result.run_dir


def write_pair(root: Path, stem: str, size=(40, 50), mask_values=(0, 1), image_suffix=".png") -> None:
    """An RGB image and an index mask (left half first value, right half second) under root/images|masks."""
    height, width = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        root / "images" / (stem + image_suffix)
    )
    mask = np.full((height, width), mask_values[0], np.uint8)
    mask[:, width // 2 :] = mask_values[1]
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m segwise ARGS` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("SEGWISE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "segwise", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
