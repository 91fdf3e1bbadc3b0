"""The `segwise` command: parse arguments, call the library, print. No logic of its own.

This root only wires the command groups, one module each (training, prediction, evaluation,
datasets, demo); each module adds its subcommands and holds their handlers. Handlers import the
library inside their bodies, so `segwise --help` never imports torch.

User mistakes (SegwiseError) print one line and exit with code 2; SEGWISE_DEBUG=1 shows the traceback.
Warnings about usable input (SegwiseWarning) print one line each and change nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import SegwiseError, SegwiseWarning
from . import datasets, demo, evaluation, prediction, training
from .arguments import apply_max_pixels, is_rank_zero, options_markdown

__all__ = ["build_parser", "main", "options_markdown"]

# In the order `segwise --help` lists their commands.
GROUPS = (training, prediction, demo, evaluation, datasets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segwise",
        description="Semantic segmentation from a folder of images and masks to a trained, evaluated model.",
        epilog="Start with `segwise demo`, then `segwise train DATA` on your own images/ + masks/ folder.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_max_pixels(args)
    with warnings.catch_warnings():
        warnings.simplefilter("always", SegwiseWarning)  # each command says all of its own
        warnings.showwarning = _one_line(warnings.showwarning)
        try:
            return args.handler(args)
        except SegwiseError as error:
            if os.environ.get("SEGWISE_DEBUG"):
                raise
            if is_rank_zero():  # under torchrun every process fails alike; one line
                print(f"segwise: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("segwise: interrupted", file=sys.stderr)
            return 130


def _one_line(show):
    """`warnings.showwarning` that prints a SegwiseWarning as one line (rank 0 only) and hands any
    other warning to `show`."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SegwiseWarning):
            show(message, category, filename, lineno, file, line)
        elif is_rank_zero():
            print(f"segwise: warning: {message}", file=sys.stderr)

    return show_warning
