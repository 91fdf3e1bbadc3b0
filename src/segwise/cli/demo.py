"""`segwise demo` and `segwise list-models`: what a newcomer runs first."""

from __future__ import annotations

import argparse

from ..errors import SegwiseError
from .arguments import add_command


def register(commands: argparse._SubParsersAction) -> None:
    demo = add_command(
        commands,
        "demo",
        _demo,
        help="the whole loop on the built-in synthetic dataset",
        description="Write a synthetic shapes dataset, train on it, evaluate, and predict held-out images.",
        examples=["segwise demo --out demo"],
    )
    demo.add_argument("--out", default="demo", help="folder for data, runs and predictions (default: demo)")
    demo.add_argument("--epochs", type=int, help="override the demo's epoch count")
    demo.add_argument("-q", "--quiet", action="store_true")

    list_models = add_command(
        commands,
        "list-models",
        _list_models,
        help="list the architectures (for --arch or a plan's `model: arch:`)",
        description="Print the architecture names, one a line, optionally those matching a shell pattern.",
        examples=["segwise list-models 'deeplab*'"],
    )
    list_models.add_argument("pattern", nargs="?", default="*", help="shell-style pattern (default: *)")


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, progress=not args.quiet, **({"epochs": args.epochs} if args.epochs else {}))
    print(f"""
segwise demo finished in {result.seconds:.0f}s
  dataset      {result.data_dir}   (synthetic shapes: background, disc, rectangle, triangle, ring)
  run folder   {result.run_dir}   (config.yaml, model.safetensors, metrics.csv, curves.png, val_samples/)
  predictions  {result.predictions[0].parent}   ({len(result.predictions)} held-out test images)
  validation mIoU {result.val_miou:.4f}""")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    from ..models import list_models

    names = list_models(args.pattern)
    if not names:
        raise SegwiseError(f"no architecture matches '{args.pattern}'; there are {list_models()}")
    print("\n".join(names))
    return 0
