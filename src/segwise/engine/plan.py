"""Self-configuration: `segwise plan DATA -o plan.yaml`, and what `segwise train DATA` does without a plan.

A plan is an ordinary config (sections model, train, data) with every data-dependent value filled in,
written as YAML for a person to read and edit. How each value is chosen:

- classes, their names, the mode (one of task.MODES) and the void value: from the masks and class-name
  files (data/dataset.py); recorded so that training refuses data that no longer matches;
- resolution: the median aspect ratio and median area of the training images, long side capped (512 on
  a CPU, 1024 on a GPU), both sides multiples of 32 (a uniform dataset under the cap keeps its own
  size); chosen by `load_data` from the images it decodes, so the data is read once;
- a whole model to start from (`init_from`, `resolve_init_from`): its folder's config.json gives the
  architecture, encoder and options (given ones that contradict it stop the plan), and its weights
  replace the encoder's, so none are looked for;
- encoder weights (`resolve_encoder_weights`): `auto` (the default) starts from ImageNet weights when
  the encoder has published ones that can be had, from a local cache (no network) or the hub (a
  reachability check of at most 5 s, skipped under HF_HUB_OFFLINE), and from scratch otherwise, said
  in a note; an explicit `imagenet` that cannot be had stops the plan with the fix;
- normalization: the statistics the pretrained weights were trained with (a .safetensors file's own
  `mean`/`std` metadata, else the encoder's pretrained config) when it starts from them and the
  images are RGB, the training images' own mean/std otherwise;
- class weights (`weighting`): from the training masks' pixel frequencies f_c:
  inverse 1/f_c and one_minus 1 − f_c (both scaled to mean 1), or median_frequency median(f)/f_c with
  f_c the class's pixels over the pixels of the images it appears in (Eigen & Fergus 2015, SegNet);
  classes with no training pixels get weight 0. Per-label data: f_c is the share of (non-ignored)
  elements with label c, and the weights balance the labels against each other by scaling each
  label's term of the loss (the Lovász hinge pools all labels, so it stays unweighted).
  Default none: weights can hurt as often as help;
- augmentation (`planned_augment`): `flips` (the 8 symmetries of the square) for data without an up
  and a down — cells, tissue, aerial tiles; `light` (horizontal flips, a mild affine, colour) when the
  training masks show one: a class of at least 1 % of the pixels with UPRIGHT_SHARE or more of them in
  one half of the image (sky above, road below). Road scenes flipped upside down are images the model
  never meets, and cost it on CamVid;
- class-aware sampling (`planned_sampling`): the classes with under a fifth of an even share of the
  training pixels (RARE_SHARE / C; on CamVid pole, sign, fence, pedestrian, bicyclist) become the
  sampled classes, and the note says how to turn it on (`--sample-p 0.33`: one crop in three centred on
  one of them); the plan leaves it off, since on CamVid it lowered mIoU (BENCHMARKS.md, issue 23);
- size, batch size and epochs: fitted to a time budget (`--budget`, by default 20 minutes when the
  epochs are not given): engine/budget.py times the real training step at a few resolutions and
  explains its rules. With the epochs given and no budget: the size above; the batch from a real
  probe of the training step (forward + backward at the planned size) on the training device — on a
  GPU the batch doubles until the peak memory passes 80 % of the free memory or it runs out; on a CPU the
  activation memory saved for backward is measured at batch 1 and 2 and the batch is the largest
  power of two whose step stays within a RAM budget (a quarter of the machine's memory, at most
  8 GiB); either way at most 32 and at most an eighth of the training images (but 2 or more).

Values given explicitly (command-line options, keyword overrides) are kept, and their probes skipped.

    >>> plan = make_plan("data/camvid", encoder="resnet18")  # doctest: +SKIP
    >>> write_plan(plan, "plan.yaml")                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import Config, DataConfig, TrainConfig, load_config
from ..data import SegmentationData, load_data
from ..data.dataset import no_foreground_warning, undeclared_classes_warning
from ..data.overrides import Overrides
from ..errors import SegwiseError, SegwiseWarning
from ..io import atomic_path
from ..losses import LOSSES, build_loss, takes_class_weights, term_weights
from ..models import SegmentationModel, create_model
from ..models.checkpoints import check_channels, load_checkpoint, read_checkpoint
from ..models.encoders import imagenet_weights
from ..models.registry import OWN_ENCODERS, encoder_name, input_statistics
from ..task import Classes, Task
from . import distributed
from .budget import budget_of, parse_budget, plan_budget
from .devices import autocast_dtype, pick_device
from .step import autocast

MAX_SIDE = {"cpu": 512, "cuda": 1024}
PRESENTATIONS = {"cpu": 5_000, "cuda": 20_000}
MIN_EPOCHS, MAX_EPOCHS = 10, 300
MAX_BATCH = 32
GPU_MEMORY_SHARE = 0.8
CPU_BUDGET_BYTES = 8 * 2**30
DECIDED_BY_A_CONFIG = frozenset({"size", "batch_size", "epochs"})  # a given config file already chose these
KEPT_FROM_A_CONFIG = DECIDED_BY_A_CONFIG | {"augment", "sample_p", "sample_classes"}
UPRIGHT_SHARE = 0.75  # of a class's pixels in the top or the bottom half: the data has an up and a down
RARE_SHARE = 0.2  # of an even share (1/C of the pixels): a class below it gets class-aware sampling
SAMPLE_P = 0.33  # nnU-Net's one sample in three forced onto the foreground

Sections = dict[str, dict[str, Any]]  # structured overrides: {"train": {"epochs": 5}, "model": {...}}


@dataclass
class Plan:
    """A filled-in config and the decoded data it was made from (so training need not decode twice)."""

    config: Config
    data: SegmentationData
    notes: list[str]  # one line per decision, written as comments at the top of plan.yaml
    max_side: int | None = None  # the long-side cap the size was chosen under; None: the size was given


def entry_overrides(overrides: Sections | None, fields: dict[str, Any]) -> Sections:
    """What an entry point (train, plan, lr-find) was asked to change, resolved once: the structured
    `overrides` merged with the flat keyword `fields` (`epochs=5`) sorted into their sections. None
    values mean "not given"; a field given both ways takes the keyword's value."""
    merged: Sections = {}
    for part in (overrides or {}, Config.sections_of(**fields)):
        for section, values in part.items():
            merged.setdefault(section, {}).update(values)
    return merged


def given_names(overrides: Sections) -> set[str]:
    """The fields `overrides` set (None values are not given)."""
    return {name for values in overrides.values() for name, value in values.items() if value is not None}


def resolve_config(config: Config | str | Path | None, overrides: Sections) -> tuple[Config, set[str]]:
    """The config of a new run (a Config, a plan YAML or the defaults) updated with `overrides`, and the
    names of the values decided already, which the plan keeps: those given, and with a config the
    size, batch size and epochs it holds."""
    given = given_names(overrides)
    if config is not None:
        given |= KEPT_FROM_A_CONFIG
    if not isinstance(config, Config):
        config = load_config(config)
    return config.updated(overrides), given


def make_plan(
    data: str | Path,
    config: Config | str | Path | None = None,
    *,
    overrides: Sections | None = None,
    probe_device: str | None = None,
    **fields: Any,
) -> Plan:
    """Plan training on `data`: fill every value not given in `config`, `overrides` or `fields`
    (see the module docstring).

    `overrides` are per section (`{"train": {"epochs": 5}}`), `fields` by name (`epochs=5`).
    `probe_device` is where the batch-size probe runs (default: the config's training device).
    """
    config, given = resolve_config(config, entry_overrides(overrides, fields))
    return plan_run(data, config, given, probe_device)


def plan_run(
    data: str | Path,
    config: Config,
    given: set[str],
    probe_device: str | None = None,
    deadline: float | None = None,
    fit_budget: bool = True,
) -> Plan:
    """`make_plan` on a resolved config; `given` names the values to keep (see `resolve_config`).
    `deadline` is the perf_counter time a budget ends (a run's start + its budget; default: now + it);
    without `fit_budget` the plan times nothing (lr-find: the length of a run does not matter)."""
    settings, options = config.train, config.data
    device = torch.device(probe_device or str(pick_device(settings.device)))
    max_side = MAX_SIDE.get(device.type, 1024)
    notes: list[str] = []
    config = resolve_encoder_weights(resolve_init_from(config, given, notes), notes)
    data_set = load_planned_data(data, settings.size, settings.val_fraction, settings.seed, options, max_side)
    _check_init_channels(config, data_set)
    _check_recorded(options, data_set)
    notes.append(_classes_note(data_set.classes))
    frequencies = class_frequencies(data_set)
    notes.append("training pixel share per class: " + ", ".join(f"{f:.4f}" for f in frequencies))
    _warn_about_data(data_set, frequencies, declared=options.classes is not None)
    weights = _planned_weights(config, data_set, notes)
    mean, std = options.mean, options.std
    if mean is None:
        mean, std, source = normalization(config, data_set)
        notes.append(f"normalization: {source}")
    budget = budget_of(config, given) if fit_budget else None
    if budget is not None and not DECIDED_BY_A_CONFIG <= given:
        deadline = deadline if deadline is not None else time.perf_counter() + parse_budget(budget)
        data_set, train, max_side = _fit_budget(
            data, config, data_set, device, given, budget, deadline, notes
        )
    else:
        if settings.size is None:
            height, width = data_set.size
            notes.append(
                f"size {height}×{width}: median aspect ratio and area, long side ≤ {max(height, width)}"
            )
        batch_size, epochs = _planned_length(config, data_set, device, given, notes)
        train = {"size": list(data_set.size), "batch_size": batch_size, "epochs": epochs}
    if "augment" not in given:
        train["augment"] = planned_augment(data_set, notes)
    if not {"sample_p", "sample_classes"} & given:
        train |= planned_sampling(data_set.classes.names, frequencies, notes)
    data_values = {
        "class_weights": weights,
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "classes": list(data_set.classes.names),
        "mode": data_set.classes.mode,
        "layout": data_set.source.layout if data_set.source else options.layout,
    }
    chosen_under = None if settings.size else max_side
    return Plan(config.updated({"train": train, "data": data_values}), data_set, notes, chosen_under)


def plan_once(
    data: str | Path,
    config: Config,
    given: set[str],
    process: distributed.Process,
    probe_device: str | None = None,
    deadline: float | None = None,
    fit_budget: bool = True,
) -> Plan:
    """`plan_run` in a torchrun launch: rank 0 plans (decodes, probes memory, times the budget) and
    the others take its config and read the data it decided on. Planning on every process could
    decide differently (each probe measures its own GPU's free memory) and leave the processes with
    different batch counts, waiting for each other in a collective for ever."""
    if not process.distributed:
        return plan_run(data, config, given, probe_device, deadline, fit_budget)
    plan, failure = None, None
    if process.is_main:
        try:
            plan = plan_run(data, config, given, probe_device, deadline, fit_budget)
        except SegwiseError as error:
            failure = error  # told to the others too: they would wait for a plan for ever
    decided = distributed.broadcast(
        str(failure) if failure else plan and (plan.config, plan.notes, plan.max_side), process
    )
    if failure or isinstance(decided, str):
        raise failure or SegwiseError(decided)
    if plan is not None:
        return plan
    config, notes, max_side = decided
    return Plan(
        config,
        read_decided_data(data, config.train.size, max_side, config.train, config.data),
        notes,
        max_side,
    )


def _fit_budget(
    data: str | Path,
    config: Config,
    data_set: SegmentationData,
    device: torch.device,
    given: set[str],
    budget: str,
    deadline: float,
    notes: list[str],
) -> tuple[SegmentationData, dict[str, Any], int]:
    """Size, batch and epochs fitted to the budget (engine/budget.py); the data read again at the
    chosen size when it is not the one read first. Returns the data, the `train:` values and the cap."""
    settings = config.train
    fitted = plan_budget(
        config,
        data_set,
        planned_model(config, data_set, pretrained=False),  # for timing: shapes matter, not weights
        planned_loss(settings, data_set.classes.task, None),
        device,
        budget,
        deadline,
        settings.epochs if "epochs" in given else None,
        settings.batch_size if "batch_size" in given else None,
        "size" in given,
    )
    notes += fitted.notes
    if tuple(fitted.size) != tuple(data_set.size):
        data_set = load_planned_data(
            data, None, settings.val_fraction, settings.seed, config.data, fitted.max_side
        )
    train = {"size": list(data_set.size), "batch_size": fitted.batch_size, "epochs": fitted.epochs}
    return data_set, train | {"budget": budget}, fitted.max_side


def resolve_init_from(config: Config, given: set[str], notes: list[str]) -> Config:
    """With `init_from`, the checkpoint's architecture, encoder and options (read from its config.json);
    a given one that contradicts them, or given encoder weights, is an error: the checkpoint decides."""
    model = config.model
    if model.init_from is None:
        return config
    checkpoint = read_checkpoint(model.init_from)
    spec = checkpoint.spec
    given_options = model.options if "options" in given else {}
    conflicts = [
        f"{name} {getattr(model, name)!r}"
        for name in ("arch", "encoder")
        if name in given and getattr(model, name) not in (None, spec[name])
    ] + [f"{k}={v!r}" for k, v in given_options.items() if spec["options"].get(k, v) != v]
    if "encoder_weights" in given and model.encoder_weights not in (None, "auto"):
        conflicts.append(f"encoder_weights {model.encoder_weights!r}")
    if conflicts:
        raise SegwiseError(
            f"{model.init_from}: init_from is {checkpoint.layout}, {spec['arch']} on {spec['encoder']}; "
            f"{', '.join(conflicts)} contradict it: drop them (init_from sets the model and its weights)"
        )
    notes.append(f"model: {spec['arch']} on {spec['encoder']}, from {checkpoint.layout} {model.init_from}")
    chosen = {"arch": spec["arch"], "encoder": spec["encoder"], "options": {**spec["options"]}}
    return dataclasses.replace(config, model=dataclasses.replace(model, **chosen, encoder_weights=None))


def _check_init_channels(config: Config, data_set: SegmentationData) -> None:
    """A checkpoint's channel count against the data's, now, before any probe runs."""
    path = config.model.init_from
    if path is not None:
        check_channels(Path(path), read_checkpoint(path), data_set.in_channels)


def resolve_encoder_weights(config: Config, notes: list[str]) -> Config:
    """The encoder weights a run starts from: `auto` becomes `imagenet` when the encoder has published
    weights that can be had (a local cache, or the hub within seconds) and none otherwise, said in a
    note; `imagenet` asked for explicitly must be had, or the plan stops with the fix; a path or none
    stays. The plan records the answer, so the run and `train -c plan.yaml` start from the same."""
    model = config.model
    if model.encoder_weights not in ("auto", "imagenet"):
        return config
    encoder = encoder_name(model.arch, model.encoder)
    if model.arch in OWN_ENCODERS and model.encoder_weights == "auto":
        notes.append(f"encoder weights: none ({model.arch} builds its own {encoder}, no published weights)")
        return dataclasses.replace(config, model=dataclasses.replace(model, encoder_weights=None))
    found = imagenet_weights(encoder)
    if found.available:
        notes.append(f"encoder weights: ImageNet ({found.where})")
        weights = "imagenet"
    elif model.encoder_weights == "imagenet":
        raise SegwiseError(found.reason)
    else:
        notes.append(f"encoder weights: none, from scratch ({found.reason.partition(': ')[2]})")
        weights = None
    return dataclasses.replace(config, model=dataclasses.replace(model, encoder_weights=weights))


def _warn_about_data(data_set: SegmentationData, frequencies: list[float], declared: bool) -> None:
    """Warn (SegwiseWarning) about data that trains but likely not as meant, in `segwise check`'s words:
    no foreground in the training masks; classes that no class-name file (nor the plan) declared."""
    source = data_set.source
    declared = declared or source is None or source.class_names is not None or source.per_class_masks
    found = (
        no_foreground_warning(data_set.classes, frequencies, data_set.root),  # shares: zero or not is enough
        undeclared_classes_warning(data_set.classes, declared, data_set.root),
    )
    for message in found:
        if message is not None:
            warnings.warn(SegwiseWarning(message), stacklevel=3)


def _classes_note(classes: Classes) -> str:
    void = (
        f"; stored value {classes.ignore_value} is void (ignored)" if classes.ignore_value is not None else ""
    )
    return f"{classes.num_classes} classes ({classes.mode}): {', '.join(classes.names)}{void}"


def _planned_weights(config: Config, data_set: SegmentationData, notes: list[str]) -> list[float] | None:
    """The class weights: given, computed from the `weighting`, or none; notes the loss terms that take none."""
    options, task = config.data, data_set.classes.task
    weights = options.class_weights
    if weights is None and options.weighting != "none":
        weights = class_weights(data_set, options.weighting)
        notes.append(f"class weights ({options.weighting}): {', '.join(f'{w:.3f}' for w in weights)}")
    if weights is not None:
        terms = term_weights(config.train.loss)
        unweighted = [n for n in terms if n in LOSSES and not takes_class_weights(n, task.loss_mode)]
        if unweighted:
            notes.append(f"the {', '.join(unweighted)} term is unweighted: it takes no per-label weights")
    return weights


def _planned_length(
    config: Config, data_set: SegmentationData, device: torch.device, given: set[str], notes: list[str]
) -> tuple[int, int]:
    """Batch size (probed) and epochs (from the dataset size) unless given."""
    batch_size, epochs = config.train.batch_size, config.train.epochs
    if "batch_size" not in given:
        batch_size, how = probe_batch_size(config, data_set, device)
        notes.append(f"batch size {batch_size}: {how}")
    if "epochs" not in given:
        epochs = planned_epochs(len(data_set.train_images), device.type)
        notes.append(f"epochs {epochs}: about {PRESENTATIONS.get(device.type, 20_000)} image presentations")
    return batch_size, epochs


def load_planned_data(
    data: str | Path,
    size: list[int] | None,
    val_fraction: float,
    seed: int,
    options: DataConfig,
    max_side: int = MAX_SIDE["cpu"],
) -> SegmentationData:
    """Load `data` the way a plan reads it (layout, COCO categories, mask threshold; without a size, the
    training images' typical size with its long side ≤ `max_side`): planning and `train --resume` both
    read through here, so a resumed run sees the data its plan saw."""
    return load_data(
        data,
        tuple(size) if size else None,
        val_fraction,
        seed,
        layout=options.layout,
        categories=options.categories,
        mask_threshold=options.mask_threshold,
        max_side=max_side,
        overrides=Overrides.of(options),
        held_out=options.held_out,
    )


def read_decided_data(
    data: str | Path, size: list[int], max_side: int | None, settings: TrainConfig, options: DataConfig
) -> SegmentationData:
    """The data of a plan read again (a resumed run, the other processes of a torchrun launch) as the
    plan read it: under the cap its size was chosen under, so the decoded-data cache has it; at the
    plan's size when the size was given, or when the images have changed since."""
    if max_side is not None:
        data_set = load_planned_data(data, None, settings.val_fraction, settings.seed, options, max_side)
        if list(data_set.size) == list(size):
            return data_set
    return load_planned_data(data, size, settings.val_fraction, settings.seed, options)


def planned_model(config: Config, data_set: SegmentationData, pretrained: bool = True) -> SegmentationModel:
    """The fresh model of a planned run: architecture, encoder, weights (unless not `pretrained`) and
    options from the config, classes and input channels from the loaded data."""
    return initial_model(config, data_set, pretrained)[0]


def initial_model(
    config: Config, data_set: SegmentationData, pretrained: bool = True
) -> tuple[SegmentationModel, dict[str, Any] | None]:
    """`planned_model`, and with `init_from` (and `pretrained`) the checkpoint's weights in it (a new head
    for another class count) and the summary of what was loaded; None without."""
    classes, channels = data_set.classes.num_classes, data_set.in_channels
    if pretrained and config.model.init_from is not None:
        return load_checkpoint(config.model.init_from, num_classes=classes, in_channels=channels)
    model = create_model(
        config.model.arch,
        encoder=config.model.encoder,
        num_classes=classes,
        in_channels=channels,
        encoder_weights=config.model.encoder_weights if pretrained else None,
        **config.model.options,
    )
    return model, None


def planned_loss(settings: TrainConfig, task: Task, class_weights: list[float] | None) -> torch.nn.Module:
    """The loss of a planned run: `settings.loss` in the task's loss mode (one sigmoid per label, or a
    softmax over the classes, binary data too: background and foreground are two classes), class
    weights on every term that takes them (see loss_options)."""
    return build_loss(settings.loss, mode=task.loss_mode, **loss_options(settings.loss, class_weights, task))


def write_plan(plan: Plan, path: str | Path) -> Path:
    """plan.yaml: the decisions as comments, then the config `segwise train -c` reads."""
    path = Path(path)
    header = "# segwise plan — edit freely; `segwise train DATA -c plan.yaml` uses it as is.\n"
    header += "".join(f"# {note}\n" for note in plan.notes)
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(asdict(plan.config), sort_keys=False))
    return path


def _check_recorded(options: DataConfig, data_set: SegmentationData) -> None:
    """A plan records the classes and mode it saw; data that has changed since must be re-planned."""
    classes = data_set.classes
    if options.classes is not None and len(options.classes) != classes.num_classes:
        raise SegwiseError(
            f"data.classes: the plan names {len(options.classes)} classes but {data_set.root} has "
            f"{classes.num_classes} ({classes.names}); run `segwise plan` again or fix the list"
        )
    if options.classes is not None:
        classes.names = list(options.classes)  # renaming classes in the plan is allowed
    if options.mode is not None and options.mode != classes.mode:
        raise SegwiseError(
            f"data.mode: the plan says {options.mode} but {data_set.root} is {classes.mode}; "
            "run `segwise plan` again or fix the mode"
        )
    for key in ("mean", "std"):
        value = getattr(options, key)
        if value is not None and len(value) != data_set.in_channels:
            raise SegwiseError(
                f"data.{key}: {len(value)} values for images with {data_set.in_channels} channel(s); "
                "give one per channel or remove the key to compute it"
            )
    if options.class_weights is not None and len(options.class_weights) != classes.num_classes:
        raise SegwiseError(
            f"data.class_weights: {len(options.class_weights)} weights for {classes.num_classes} classes; "
            "give one weight per class"
        )


def class_frequencies(data_set: SegmentationData) -> list[float]:
    """Share of the (non-void) training pixels in each class; per label: share of the elements with it."""
    per_image, image_pixels = data_set.classes.task.pixel_counts(data_set.train_masks)
    return (per_image.sum(0) / np.maximum(1, image_pixels.sum(0))).tolist()


def planned_augment(data_set: SegmentationData, notes: list[str]) -> str:
    """`light` when the training masks have an up and a down, `flips` otherwise (module docstring)."""
    masks = data_set.train_masks
    half = masks.shape[-2] // 2
    task = data_set.classes.task
    top = task.pixel_counts(masks[..., :half, :])[0].sum(0).astype(np.float64)
    bottom = task.pixel_counts(masks[..., masks.shape[-2] - half :, :])[0].sum(0).astype(np.float64)
    total = top + bottom
    large = total >= 0.01 * max(1.0, total.sum())
    upper = np.divide(top, total, out=np.full_like(total, 0.5), where=total > 0)
    lopsided = [c for c in np.flatnonzero(large) if max(upper[c], 1 - upper[c]) >= UPRIGHT_SHARE]
    if not lopsided:
        notes.append(
            "augment flips: no class keeps to the top or the bottom half, so every orientation is fair"
        )
        return "flips"
    c = max(lopsided, key=lambda c: max(upper[c], 1 - upper[c]))  # name the clearest witness
    where = "top" if upper[c] >= 0.5 else "bottom"
    share = max(upper[c], 1 - upper[c])
    notes.append(
        f"augment light: {data_set.classes.names[c]} keeps to the {where} half ({share:.0%} of its pixels), so "
        "the images have an up and a down: horizontal flips only"
    )
    return "light"


def planned_sampling(names: list[str], frequencies: list[float], notes: list[str]) -> dict[str, Any]:
    """The classes class-aware sampling (data/augment.py) would centre crops on: those with training
    pixels under RARE_SHARE of an even share, thin or rare objects random crops seldom centre on. The
    plan names them and leaves sampling off: measured on CamVid at one budget, one crop in three centred
    on them lowered the thin classes' IoU and the mIoU (BENCHMARKS.md), so it is the user's to try."""
    limit = RARE_SHARE / len(names)
    rare = [name for name, share in zip(names, frequencies, strict=True) if 0 < share < limit]
    if not rare:
        notes.append(f"class sampling off: every class has {limit:.1%} of the training pixels or more")
        return {"sample_p": 0.0, "sample_classes": None}
    notes.append(
        f"class sampling off, ready for {', '.join(rare)} (each under {limit:.1%} of the training pixels, a "
        f"fifth of an even share): --sample-p {SAMPLE_P} centres one crop in three on one of them"
    )
    return {"sample_p": 0.0, "sample_classes": rare}


def class_weights(data_set: SegmentationData, weighting: str) -> list[float]:
    """Per-class loss weights from the training masks (see the module docstring); absent classes get 0."""
    per_image, image_pixels = data_set.classes.task.pixel_counts(data_set.train_masks)
    totals = per_image.sum(0).astype(np.float64)
    present = totals > 0
    if weighting == "median_frequency":
        # f_c = pixels of c / pixels of the images where c appears
        frequency = totals / np.maximum(1, (image_pixels * (per_image > 0)).sum(0))
        weights = np.where(present, np.median(frequency[present]) / np.maximum(frequency, 1e-12), 0.0)
        return [round(float(w), 6) for w in weights]
    frequency = totals / np.maximum(1, image_pixels.sum(0))
    raw = 1.0 / np.maximum(frequency, 1e-12) if weighting == "inverse" else 1.0 - frequency
    raw = np.where(present, raw, 0.0)
    return [round(float(w), 6) for w in raw / raw[present].mean()]


def normalization(config: Config, data_set: SegmentationData) -> tuple[list[float], list[float], str]:
    """The statistics pretrained weights were trained with (a weights file's own, else the encoder's
    pretrained config) on RGB input; the data's own otherwise."""
    model = config.model
    if model.encoder_weights is not None and data_set.in_channels == 3:
        found = input_statistics(model.arch, model.encoder, model.encoder_weights)
        if found is not None:
            mean, std = found
            return list(mean), list(std), "the pretrained weights' mean/std"
    mean, std = data_set.mean_std()
    return mean, std, "mean/std of the training images"


def planned_epochs(train_images: int, device_type: str) -> int:
    presentations = PRESENTATIONS.get(device_type, 20_000)
    return int(np.clip(round(presentations / max(1, train_images)), MIN_EPOCHS, MAX_EPOCHS))


def probe_batch_size(config: Config, data_set: SegmentationData, device: torch.device) -> tuple[int, str]:
    """The largest power-of-two batch whose training step fits in memory (see the module docstring)."""
    cap = max(2, min(MAX_BATCH, len(data_set.train_images) // 8))
    model = planned_model(config, data_set, pretrained=False).to(device)  # shapes matter, not weights
    model.train()
    dtype = autocast_dtype(device, config.train.precision)  # probe in the precision training will use
    shape = (data_set.in_channels, *data_set.size)
    if device.type != "cuda":
        return _cpu_batch(model, shape, dtype, device, cap)
    best = _gpu_batch(model, shape, dtype, device, cap)
    del model  # give the probe's memory back before training allocates its own
    torch.cuda.empty_cache()
    if best == 0:
        raise SegwiseError(
            f"a batch of 1 at {shape[1]}×{shape[2]} does not fit in GPU memory; lower --size or pick a smaller model"
        )
    return (
        best,
        f"largest power of two whose step peaks under {GPU_MEMORY_SHARE:.0%} of free GPU memory (cap {cap})",
    )


def _probe_step(model: torch.nn.Module, batch: int, shape, dtype, device: torch.device) -> int:
    """One forward + backward on random images; returns the bytes of activations saved for the backward pass."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.randn(batch, *shape, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        out = model(x)
    out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return saved


def _gpu_batch(model: torch.nn.Module, shape, dtype, device: torch.device, cap: int) -> int:
    """Double the batch until the step's peak memory passes the budget, runs out, or would pass `cap`;
    the last batch that fitted (0 if none)."""
    # a share of the memory free now (another process's, e.g. a second run's, is not ours to take),
    # on top of what this process holds already (the probe's model)
    torch.cuda.empty_cache()
    budget = torch.cuda.memory_allocated(device) + GPU_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
    best, batch = 0, 1
    while batch <= cap:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            _probe_step(model, batch, shape, dtype, device)
        except torch.cuda.OutOfMemoryError:
            break
        if torch.cuda.max_memory_allocated(device) > budget:
            break
        best, batch = batch, batch * 2
    return best


def _cpu_batch(model: torch.nn.Module, shape, dtype, device: torch.device, cap: int) -> tuple[int, str]:
    """Measure the activations at batch 1 and 2; the largest power of two within the RAM budget."""
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    one, two = (_probe_step(model, batch, shape, dtype, device) for batch in (1, 2))
    per_sample, fixed = max(1, two - one), max(0, 2 * one - two)
    budget = min(CPU_BUDGET_BYTES, _ram_bytes() // 4)
    # weights, gradients and two AdamW moments: 4× the parameters; input and output images: small
    fits = max(1, int((budget - 4 * parameters - fixed) // (per_sample * 1.2)))  # 20 % for workspace
    batch = 2 ** int(math.log2(min(fits, cap)))
    return batch, (
        f"activations {per_sample / 2**20:.0f} MiB per image measured on the CPU; largest power of two "
        f"within {budget / 2**30:.1f} GiB RAM (cap {cap})"
    )


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def loss_options(
    spec: str | dict, weights: list[float] | None, task: Task | None = None
) -> dict[str, dict[str, Any]]:
    """build_loss keyword options that give `weights` to every term of the loss that takes class weights
    in the task's loss mode (per label: not the Lovász hinge, which pools all labels; the plan notes it).
    Without a task: a softmax over the classes."""
    if weights is None:
        return {}
    mode = task.loss_mode if task is not None else "multiclass"
    return {
        n: {"class_weights": weights}
        for n in term_weights(spec)
        if n in LOSSES and takes_class_weights(n, mode)
    }
