"""Training: the plan, the loop and its step, schedules, checkpoints, torchrun data parallelism, the LR
finder, devices, and the figures a run writes."""

from .lr_find import find_lr
from .trainer import TrainResult, train

__all__ = ["TrainResult", "find_lr", "train"]
