"""`segwise check` and `segwise show`: look at a dataset before training on it."""

from __future__ import annotations

import argparse

from ..config import Config
from .arguments import add_command, add_config_flags, add_max_pixels, overrides

OVERRIDE_FLAGS = ("images", "masks", "mask_pattern", "mask_set", "roi")  # data/overrides.py
CHECK_FLAGS = ("layout", "categories", "mask_threshold", *OVERRIDE_FLAGS)
SHOW_FLAGS = ("augment", "size", "seed", *OVERRIDE_FLAGS)
SHOW_DEFAULTS = {"augment": "default", "seed": 0}  # show draws with a livelier preset than training's


def register(commands: argparse._SubParsersAction) -> None:
    _add_check(commands)
    _add_show(commands)


def _add_check(commands: argparse._SubParsersAction) -> None:
    check = add_command(
        commands,
        "check",
        _check,
        help="summarise DATA and list every problem in it",
        description="Read every image and mask once; print pairs per split, sizes, channels, classes with "
        "pixel shares and the void share, then every problem (unmatched, duplicate, unreadable, size "
        "mismatch, unexpected mask values, classes absent from a split, too few pairs to hold validation "
        "images out) and warnings (no foreground in the training masks, classes no class-name file declared).\n"
        "Exit code 0: clean; 1: problems found; 2: DATA cannot be used at all.\n"
        "Layouts: images/+masks/ (split subfolders, x_mask.png names, masks/<class>/ one binary mask per "
        "label), fastai (images/ labels/ codes.txt valid.txt), segnet (train/ trainannot/ ...), voc "
        "(JPEGImages/ SegmentationClass/), coco (annotations/*.json); class names from class_dict.csv, "
        "classes.txt or codes.txt.",
        examples=["segwise check data/camvid"],
    )
    check.add_argument("data", help="dataset folder")
    add_max_pixels(check)
    add_config_flags(check, CHECK_FLAGS)


def _check(args: argparse.Namespace) -> int:
    from ..data.check import check_data
    from ..data.overrides import Overrides

    options = Config().updated(overrides(args)).data  # validated like a plan's `data:` section
    report = check_data(
        args.data,
        options.layout,
        categories=options.categories,
        mask_threshold=options.mask_threshold,
        overrides=Overrides.of(options),
    )
    print(report.text())
    return report.exit_code


def _add_show(commands: argparse._SubParsersAction) -> None:
    show = add_command(
        commands,
        "show",
        _show,
        help="write a PNG grid of augmented training images beside their masks",
        description="Draw training samples through an augmentation preset and write image | mask cells "
        "(masks in the class palette, void grey) as one PNG: see what the model will see.",
        examples=["segwise show data/cells -o show.png --augment heavy -n 16"],
    )
    show.add_argument("data", help="dataset folder (same layout as for training)")
    show.add_argument("-o", "--output", default="show.png", help="PNG to write (default: show.png)")
    show.add_argument("-n", "--count", type=int, default=16, help="samples in the grid (default 16)")
    add_config_flags(show, SHOW_FLAGS, defaults=SHOW_DEFAULTS)


def _show(args: argparse.Namespace) -> int:
    from ..data.overrides import Overrides
    from ..data.show import write_augmented_grid

    config = Config().updated(overrides(args))  # validated like a plan's sections
    settings = config.train
    path = write_augmented_grid(
        args.data,
        args.output,
        settings.augment,
        args.count,
        settings.seed,
        settings.size,
        Overrides.of(config.data),
    )
    print(f"wrote {path}  ({args.count} augmented training samples, preset {settings.augment})")
    return 0
