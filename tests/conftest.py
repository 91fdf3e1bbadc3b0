"""Fixtures that make tiny datasets on the fly; no test needs files from outside the repository."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segwise.data.synthetic import write_synthetic_dataset

# A model small enough to train in seconds on a CPU; the same for every test that trains.
TINY = {"encoder": "test_resnet", "options": {"decoder_channels": [32, 16, 16, 8, 8]}, "batch_size": 4}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded-data cache in a temporary folder, never the user's ~/.cache/segwise; empty weight caches
    and no hub: `encoder_weights: auto` trains from scratch, the same on every machine, with no network
    attempt (the tests of the online path set their own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGWISE_CACHE_DIR", str(tmp_path_factory.mktemp("segwise-cache")))
        weights = tmp_path_factory.mktemp("weights-cache")
        for name in ("HF_HOME", "TORCH_HOME"):
            patch.setenv(name, str(weights / name.lower()))
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
            patch.delenv(name, raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
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


def run_cli(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `segwise ARGS` in this process and return what a subprocess would: exit code, stdout, stderr.

    `segwise.cli.main` is what `python -m segwise` runs; calling it here spares each test an interpreter
    start that imports torch. What a fresh process would not inherit is put back afterwards: the working
    directory, the environment, torch's thread count (OMP_NUM_THREADS is honoured as at process start),
    deterministic-algorithm mode and the global random states. An exception other than SegwiseError
    ends as a traceback on stderr with exit code 1, as the interpreter reports it.
    """
    from segwise.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with _process_state(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([os.fspath(arg) for arg in args])
        except SystemExit as exit:  # argparse: 0 after --help, 2 for a usage error
            code = _exit_status(exit.code)
        except Exception:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(
        ["segwise", *map(os.fspath, args)], code, stdout.getvalue(), stderr.getvalue()
    )


def _exit_status(code: object) -> int:
    """The status `raise SystemExit(code)` gives a process (a message is printed on stderr, status 1)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _process_state(cwd: Path | None):
    """The state a `segwise` process starts with and may change, restored on exit."""
    import random

    import torch

    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    os.environ.pop("SEGWISE_DEBUG", None)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as PYTHONWARNINGS=ignore did for the subprocess
            yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])


def run_cli_subprocess(*args: str | os.PathLike, cwd: Path | None = None, env: dict | None = None):
    """Run `python -m segwise ARGS` in a new interpreter, as a user would: for what only a real process
    shows (its exit status, tracebacks, imports, the console entry point)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    env.pop("SEGWISE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "segwise", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
