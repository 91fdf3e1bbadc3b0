"""`segwise train`, `segwise lr-find` and `segwise plan`: the commands that configure and run training."""

from __future__ import annotations

import argparse

from ..errors import SegwiseError
from .arguments import add_command, add_config_flags, add_max_pixels, is_rank_zero, overrides
from .datasets import OVERRIDE_FLAGS

CONFIG_HELP = "plan YAML with `model:`, `train:` and `data:` sections"
DATA_HELP = "folder with images/ and masks/ (optionally train/ and val/ inside)"

# The config flags of the commands that take a subset of `segwise train`'s.
LR_FIND_FLAGS = (
    "arch",
    "encoder",
    "encoder_weights",
    "init_from",
    "optimizer",
    "batch_size",
    "size",
    "precision",
    "device",
    "seed",
)
PLAN_FLAGS = (
    "budget",
    "arch",
    "encoder",
    "encoder_weights",
    "init_from",
    "size",
    "batch_size",
    "epochs",
    "device",
    "layout",
    "categories",
    "mask_threshold",
    *OVERRIDE_FLAGS,
    "weighting",
)


def register(commands: argparse._SubParsersAction) -> None:
    _add_train(commands)
    _add_lr_find(commands)
    _add_plan(commands)


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = add_command(
        commands,
        "train",
        _train,
        help="train a model on DATA/images + DATA/masks",
        description="Train a model; classes, resolution and normalization come from the data.",
        examples=[
            "segwise train data/cells --encoder resnet18 --epochs 20 --size 256",
            "segwise train --resume runs/cells            # continue a killed run where it stopped",
            "torchrun --nproc-per-node 2 -m segwise train data/cells   # data-parallel, batch size per process",
        ],
    )
    train.add_argument("data", nargs="?", help=DATA_HELP)
    train.add_argument("-c", "--config", help=CONFIG_HELP)
    train.add_argument("--name", help="run name (default: the data folder's name); never overwrites a run")
    train.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    train.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint (no DATA)")
    train.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="with --resume: continue even though the data changed since the run started (recorded in "
        "RUN/data.json); without it such a resume stops and says what changed",
    )
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing but the result")
    train.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="K-fold cross-validation of DATA's training images: RUNS_DIR/NAME/fold_0 … fold_{K-1}, each "
        "an ordinary run validated on its fold (stratified by the classes an image holds, seeded by "
        "--seed), one plan for all; --budget is per fold; then cv_summary.json/.csv. Predict or "
        "evaluate with the folder as RUN: the folds as an ensemble",
    )
    train.add_argument(
        "--fold",
        type=int,
        metavar="I",
        help="with --folds K: train fold I only (0..K-1), e.g. one per machine; the same --name "
        "joins an existing folds folder",
    )
    add_max_pixels(train)
    add_config_flags(train)


def _train(args: argparse.Namespace) -> int:
    from ..crossval import CrossValidation, summary_line, train

    if (args.data is None) == (args.resume is None):
        raise SegwiseError("train: pass DATA to start a run, or --resume RUN (without DATA) to continue one")
    if args.allow_changed_data and args.resume is None:
        raise SegwiseError("train: --allow-changed-data goes with --resume RUN; a new run records its data")
    result = train(
        args.data,
        args.config,
        folds=args.folds,
        fold=args.fold,
        overrides=overrides(args),
        runs_dir=args.runs_dir,
        name=args.name,
        progress=not args.quiet,
        resume=args.resume,
        allow_changed_data=args.allow_changed_data,
    )
    if not is_rank_zero():
        return 0
    if isinstance(result, CrossValidation):
        print(summary_line(result.summary, result.run_dir))
    else:
        print(
            f"run folder: {result.run_dir}  (best val mIoU {result.best_miou:.4f} at epoch {result.best_epoch})"
        )
    return 0


def _add_lr_find(commands: argparse._SubParsersAction) -> None:
    lr_find = add_command(
        commands,
        "lr-find",
        _lr_find,
        help="LR range test: plot loss against learning rate and suggest one",
        description="Train a fresh model for up to --steps batches while the learning rate grows "
        "exponentially; plot the smoothed loss and suggest the LR of its steepest descent.",
        examples=["segwise lr-find data/cells --encoder resnet18 -o lr_find.png"],
    )
    lr_find.add_argument("data", help="folder with images/ and masks/")
    lr_find.add_argument("-c", "--config", help=CONFIG_HELP)
    lr_find.add_argument("-o", "--output", default="lr_find.png", help="plot (default: lr_find.png)")
    lr_find.add_argument("--steps", type=int, default=100, help="at most this many batches (default 100)")
    lr_find.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    lr_find.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    add_config_flags(lr_find, LR_FIND_FLAGS)


def _lr_find(args: argparse.Namespace) -> int:
    from ..engine.lr_find import find_lr

    finding = find_lr(
        args.data,
        args.config,
        overrides=overrides(args),
        output=args.output,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
    )
    print(
        f"suggested lr {finding.suggestion:.3g} (steepest descent of the smoothed loss; "
        f"{len(finding.lrs)} steps from {finding.lrs[0]:.1e} to {finding.lrs[-1]:.1e})"
    )
    print(f"wrote {args.output}; train with --lr {finding.suggestion:.3g}, or --lr auto to rerun the test")
    return 0


def _add_plan(commands: argparse._SubParsersAction) -> None:
    plan = add_command(
        commands,
        "plan",
        _plan,
        help="self-configure training on DATA and write plan.yaml",
        description="Choose classes, mode, class weights, resolution, normalization, batch size (a memory "
        "probe on --device, skipped when --batch-size is given) and epochs from DATA, and write them as an "
        "editable YAML that `segwise train DATA -c plan.yaml` uses as is. `segwise train` without -c plans "
        "the same way.",
        examples=["segwise plan data/camvid --encoder resnet18 --weighting median_frequency -o plan.yaml"],
    )
    plan.add_argument("data", help="dataset folder")
    plan.add_argument("-o", "--output", default="plan.yaml", help="YAML to write (default: plan.yaml)")
    plan.add_argument("-c", "--config", help="start from this plan/config YAML")
    add_config_flags(plan, PLAN_FLAGS)


def _plan(args: argparse.Namespace) -> int:
    from ..engine.plan import make_plan, write_plan

    plan = make_plan(args.data, args.config, overrides=overrides(args))
    print("\n".join(plan.notes))
    print(f"wrote {write_plan(plan, args.output)}")
    return 0
