"""The full training state in `last.pt`, and the random-number states that make a resume exact.

A checkpoint is written atomically after every epoch (and only by rank 0). It holds nothing but tensors,
numbers, strings, lists and dicts, so it loads with `torch.load(weights_only=True)`: no pickled code.
Resuming builds the same pieces as a fresh run, restores this state into them and runs the same loop.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import LAST
from ..errors import SegwiseError
from ..io import atomic_path


@dataclass
class TrainingState:
    """Everything a resume needs, as last.pt holds it: the counters of the epoch loop and, once captured
    for saving (or loaded), the state dicts of the training pieces and every random stream."""

    epoch: int = 0  # the last finished epoch
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)  # one metrics.csv row per finished epoch
    best_value: float | None = None  # of the monitored metric
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    stopped: bool = False  # stopped early: a resume trains nothing more
    model: dict | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    ema: dict | None = None
    rng: dict | None = None  # rng_state()

    def save(self, run_dir: Path) -> None:
        """Write RUN/last.pt atomically: a plain dict of tensors, numbers, lists and dicts."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        # through a Python file, so that a full disk surfaces as its OSError (torch's own file writer
        # reports only a RuntimeError without the cause) and atomic_path can say so in one line
        with atomic_path(run_dir / LAST) as tmp, open(tmp, "wb") as handle:
            torch.save(values, handle)

    @classmethod
    def load(cls, run_dir: Path) -> TrainingState:
        """The last epoch's full training state; a missing or torn file is a user-facing error."""
        path = run_dir / LAST
        if not path.is_file():
            raise SegwiseError(
                f"{path}: no checkpoint to resume from; the run stopped before its first epoch ended — "
                "start a new run with `segwise train DATA`"
            )
        try:
            values = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**values)
        except Exception as error:  # a foreign or damaged file
            raise SegwiseError(
                f"{path}: cannot be loaded ({' '.join(str(error).split())[:200]}); start a new run"
            ) from None


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
