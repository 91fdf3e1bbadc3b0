"""The training figures live in `segwise.engine.figures` (training writes them); report/html.py still
imports plot_curves from here until it imports it from there."""

from ..engine.figures import plot_curves  # noqa: F401
