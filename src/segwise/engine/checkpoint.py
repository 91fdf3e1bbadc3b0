"""The full training state in `last.pt`, and the random-number states that make a resume exact.

A checkpoint is written atomically after every epoch (and only by rank 0). It holds nothing but tensors,
numbers, strings, lists and dicts, so it loads with `torch.load(weights_only=True)`: no pickled code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import run as runfolder
from ..errors import SegwiseError


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream training draws from: torch (CPU and CUDA), numpy, python, and the batch order."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "generator": generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    generator.set_state(state["generator"])


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    runfolder.save_checkpoint(state, run_dir / runfolder.LAST)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The last epoch's full training state; a missing or torn file is a user-facing error."""
    path = run_dir / runfolder.LAST
    if not path.is_file():
        raise SegwiseError(
            f"{path}: no checkpoint to resume from; the run stopped before its first epoch ended — "
            "start a new run with `segwise train DATA`"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign or damaged file
        raise SegwiseError(
            f"{path}: cannot be loaded ({' '.join(str(error).split())[:200]}); start a new run"
        ) from None
