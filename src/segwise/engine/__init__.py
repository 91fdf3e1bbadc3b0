"""Training: the loop, schedules, checkpoints, torchrun data parallelism, the LR finder, devices."""

from .lr_find import find_lr
from .trainer import TrainResult, train

__all__ = ["TrainResult", "find_lr", "train"]
