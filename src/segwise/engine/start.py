"""How a run starts: the config, data and model of a new run (planned) or of a resumed one (as its run
folder recorded them).

This is the one place where starting fresh and resuming differ. Both give a `Start`; from there a run
builds the same pieces and runs the same loop (trainer.py), a resumed one after restoring its state.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, DataConfig, RunConfig, TrainConfig
from ..constants import CONFIG
from ..data import SegmentationData
from ..errors import SegwiseError
from ..losses import build_loss
from ..models import SegmentationModel
from ..run import build_model
from . import distributed
from .batches import Batches
from .budget import budget_of, parse_budget
from .checkpoint import TrainingState
from .devices import autocast_dtype, keep_freed_memory, pick_device, set_kernel_policy
from .plan import (
    Sections,
    given_names,
    initial_model,
    plan_once,
    planned_loss,
    read_decided_data,
    resolve_config,
)
from .schedules import default_encoder_lr_scale


@dataclass
class Environment:
    """Where this process trains: its place in a torchrun launch, its device, its autocast dtype (None:
    fp32), and whether it prints (rank 0 only)."""

    process: distributed.Process
    device: torch.device
    dtype: torch.dtype | None
    progress: bool

    def say(self, message: str) -> None:
        if self.progress:
            print(message)


def training_environment(settings: TrainConfig, progress: bool) -> Environment:
    """Seed, determinism, process group, device and dtype of a training run; options that cannot work
    here fail now, before any data is read or folder made."""
    if settings.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(settings.seed)
    process, device = distributed.setup(pick_device(settings.device))
    keep_freed_memory(device)  # on a CPU every batch tensor would otherwise be fresh pages
    set_kernel_policy(device, settings.precision, settings.deterministic)
    dtype = autocast_dtype(device, settings.precision)
    if settings.sync_batchnorm and process.distributed and device.type != "cuda":
        raise SegwiseError("train.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; drop it on CPU")
    if settings.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise SegwiseError(
            "train.tensorboard needs the tensorboard package; pip install 'segwise[tensorboard]' or drop --tensorboard"
        )
    build_loss(settings.loss)  # a misspelt loss fails here
    return Environment(process, device, dtype, progress and process.is_main)


@dataclass
class Start:
    """What a run starts from: its settings, its decoded data and how it was read, its model (on the
    device), the normalization, and for a resumed run its folder and last state."""

    settings: TrainConfig
    data_set: SegmentationData
    data_options: DataConfig  # how the data was read and weighted: the plan's data section
    model: SegmentationModel
    mean: list[float]
    std: list[float]
    data_root: Path
    max_side: int | None  # the long-side cap its size was chosen under when the data was read; None: given
    encoder_weights: str | None = None  # where the encoder's starting weights came from (None: random)
    init_from: dict | None = None  # what a whole checkpoint (init_from) gave: checkpoints.load_checkpoint
    run_dir: Path | None = None  # a resumed run's folder; a new run makes one once its pieces are built
    state: TrainingState | None = None  # a resumed run's last.pt

    def loss(self, device: torch.device) -> torch.nn.Module:
        """The planned loss on `device`: its class-weight buffers must live where the logits are."""
        task = self.data_set.classes.task
        return planned_loss(self.settings, task, self.data_options.class_weights).to(device)

    def batches(
        self, split: str, device: torch.device, process: distributed.Process = distributed.SINGLE
    ) -> Batches:
        """The "train" or "val" split's batches, normalized with the run's mean and std."""
        images, masks = getattr(self.data_set, f"{split}_images"), getattr(self.data_set, f"{split}_masks")
        return Batches(images, masks, self.settings.batch_size, self.mean, self.std, device, process)


def _on_device(model: SegmentationModel, settings: TrainConfig, device: torch.device) -> SegmentationModel:
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _loaded_words(loaded: dict) -> str:
    head = "a new head" if loaded["new_head"] else "its head"
    notes = "".join(f"; {note}" for note in loaded["notes"])
    return f"{loaded['layout']} from {loaded['path']}: {loaded['tensors']} tensors, {head}{notes}"


class NewRun:
    """A new run on `data`: the config (a Config, a plan YAML or the defaults) with the overrides, and
    everything it leaves open planned from the data (engine/plan.py)."""

    def __init__(
        self,
        data: str | Path | None,
        config: Config | str | Path | None,
        overrides: Sections,
        started: float | None = None,
        fit_budget: bool = True,
    ) -> None:
        if data is None:
            raise SegwiseError(
                "train: pass DATA to start a run, or resume=RUN (without DATA) to continue one"
            )
        self.data = data
        self.planned = config is None  # no plan given: its decisions are printed as `segwise plan` would
        self.config, self.given = resolve_config(config, overrides)
        self.settings = self.config.train
        self.started = started  # perf_counter time the run began: a budget counts from it
        self.fit_budget = fit_budget

    def start(self, env: Environment) -> Start:
        budget = budget_of(self.config, self.given)
        deadline = self.started + parse_budget(budget) if budget and self.started is not None else None
        plan = plan_once(
            self.data, self.config, self.given, env.process, str(env.device), deadline, self.fit_budget
        )
        for note in plan.notes if self.planned else []:
            env.say(f"plan: {note}")
        settings = plan.config.train
        torch.manual_seed(settings.seed)  # after the batch-size probe, so a probe never changes the run
        model, loaded = initial_model(plan.config, plan.data)
        if loaded is not None:
            env.say(f"init_from: {_loaded_words(loaded)}")
        model = _on_device(model, settings, env.device)
        if settings.encoder_lr_scale is None:  # settled now and recorded, so a resume needs no guessing
            pretrained = plan.config.model.pretrained
            settings = dataclasses.replace(settings, encoder_lr_scale=default_encoder_lr_scale(pretrained))
        options = plan.config.data
        root = Path(self.data).resolve()
        weights = plan.config.model.encoder_weights or plan.config.model.init_from
        return Start(
            settings,
            plan.data,
            options,
            model,
            options.mean,
            options.std,
            root,
            plan.max_side,
            weights,
            loaded,
        )


class ResumedRun:
    """A run folder continued from its last.pt, with its own config and data: nothing may be changed."""

    def __init__(self, run_dir: str | Path, config: Config | str | Path | None, overrides: Sections) -> None:
        run_dir = Path(run_dir)
        given = sorted(given_names(overrides))
        if not (run_dir / CONFIG).is_file():
            raise SegwiseError(
                f"{run_dir / CONFIG}: missing; --resume needs a run folder written by `segwise train`"
            )
        if config is not None or given:
            raise SegwiseError(
                f"{run_dir}: --resume continues a run with its own config and data; drop {given or ['--config']}"
            )
        self.run_dir = run_dir
        self.recorded = RunConfig.load(run_dir / CONFIG)
        self.state = TrainingState.load(run_dir)
        self.settings = self.recorded.train

    def start(self, env: Environment) -> Start:
        recorded = self.recorded
        options = DataConfig(**recorded.data.get("plan", {}))  # how the run read its data
        data_set = self._read_data(options)
        model = _on_device(build_model(recorded.model), self.settings, env.device)
        mean, std, root = recorded.preprocess.mean, recorded.preprocess.std, Path(recorded.data["root"])
        max_side, weights = recorded.data.get("max_side"), recorded.data.get("encoder_weights")
        return Start(
            self.settings,
            data_set,
            options,
            model,
            mean,
            std,
            root,
            max_side,
            weights,
            recorded.data.get("init_from"),
            self.run_dir,
            self.state,
        )

    def _read_data(self, options: DataConfig) -> SegmentationData:
        """The run's data read as the run first read it (plan.read_decided_data)."""
        recorded, size = self.recorded.data, self.recorded.preprocess.input_size
        return read_decided_data(recorded["root"], size, recorded.get("max_side"), self.settings, options)
