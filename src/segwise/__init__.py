"""segwise: semantic image segmentation from a folder of images and masks to a trained, evaluated model.

>>> import segwise
>>> result = segwise.train("data/cells", epochs=20)         # doctest: +SKIP
>>> mask = segwise.load(result.run_dir).predict("new.png")   # doctest: +SKIP

The public names are loaded on first use (PEP 562), so `import segwise` and `segwise --help` start
without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# Public name → the module that defines it, imported when the name is first used.
_LAZY = {
    "train": "segwise.crossval",  # engine.train, or with folds=K cross-validation
    "load": "segwise.inference",
    "Predictor": "segwise.inference",
    "create_model": "segwise.models",
    "list_models": "segwise.models",
    "SegwiseError": "segwise.errors",
}

__all__ = ["Predictor", "SegwiseError", "__version__", "create_model", "list_models", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif importlib.util.find_spec(f"segwise.{name}") is not None:  # a subpackage, e.g. segwise.models
        value = importlib.import_module(f"segwise.{name}")
    else:
        raise AttributeError(f"module 'segwise' has no attribute '{name}'")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
