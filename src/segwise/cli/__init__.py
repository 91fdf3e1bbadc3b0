"""The `segwise` command: parse arguments, call the library, print. No logic of its own.

This root only wires the command groups, one module each (training, prediction, evaluation,
datasets, demo); each module adds its subcommands and holds their handlers. Handlers import the
library inside their bodies, so `segwise --help` never imports torch.

User mistakes (SegwiseError) print one line and exit with code 2; SEGWISE_DEBUG=1 shows the traceback.
Warnings about usable input (SegwiseWarning) print one line each and change nothing else.
SIGINT, SIGTERM and SIGHUP end a command through its `finally` blocks (no half-written temporaries)
with exit code 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from ..errors import SegwiseError, SegwiseWarning
from . import datasets, demo, evaluation, prediction, serving, training
from .arguments import apply_max_pixels, is_rank_zero, options_markdown

__all__ = ["build_parser", "main", "options_markdown"]

# In the order `segwise --help` lists their commands.
GROUPS = (training, prediction, demo, evaluation, datasets, serving)


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
    with _signals_stop_the_command(), warnings.catch_warnings():
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
        except KeyboardInterrupt as stop:
            signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
            if is_rank_zero():
                by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
                print(f"segwise: interrupted{by}", file=sys.stderr)
            return 128 + signum  # the shell's convention for a process ended by a signal


class Stopped(KeyboardInterrupt):
    """A signal that ends the command, raised where the main thread is so that every `finally` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# SIGTERM is what `kill`, schedulers' time limits and torchrun send; SIGHUP a closed terminal.
STOPPING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _signals_stop_the_command() -> Iterator[None]:
    """While a command runs, SIGINT, SIGTERM and SIGHUP raise `Stopped` instead of ending the process
    on the spot: `atomic_path` then deletes the temporary file it was writing, so a stopped command
    leaves no debris (SIGKILL cannot be caught: the next command sweeps what it leaves). A signal the
    process was told to ignore (nohup, a background job) stays ignored; a second signal ends the
    process at once, as if no handler were installed."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may install
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOPPING}
    # not ignored, and set from Python (None: by C code we would not know how to put back)
    installed = [signum for signum, handler in previous.items() if handler not in (signal.SIG_IGN, None)]

    def stop(signum: int, frame) -> None:
        for each in installed:
            signal.signal(each, signal.SIG_DFL)
        raise Stopped(signum)

    try:
        for signum in installed:
            signal.signal(signum, stop)
        yield
    finally:
        for signum in installed:
            signal.signal(signum, previous[signum])


def _one_line(show):
    """`warnings.showwarning` that prints a SegwiseWarning as one line (rank 0 only) and hands any
    other warning to `show`."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SegwiseWarning):
            show(message, category, filename, lineno, file, line)
        elif is_rank_zero():
            print(f"segwise: warning: {message}", file=sys.stderr)

    return show_warning
