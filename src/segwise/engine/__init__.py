"""Training: the loop, devices and precision."""

from .trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
