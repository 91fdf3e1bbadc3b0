"""bench/gpu_check.py --dry-run: every section of the GPU check runs at toy sizes on the CPU, so the
script cannot rot between the runs on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_prints_every_section_in_one_table():
    pytest.importorskip("segmentation_models_pytorch")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    sections = {row.split("|")[1].strip() for row in rows[1:]}
    expected = {"environment", "tests", "training", "augmentation", "memory", "inference", "torchrun"}
    assert sections == expected
    assert "FAILED" not in result.stdout
    assert "skipped: no GPU" in result.stdout  # what needs CUDA says so
    assert "1-process gloo (no GPU) run of the trainer | ok" in result.stdout
