"""Inference: predicting masks for new images with a trained run."""

from .predictor import Predictor, load

__all__ = ["Predictor", "load"]
