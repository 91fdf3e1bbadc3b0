"""Inference: predicting masks for new images with a trained run."""

from .folder import predict_folder
from .predictor import PredictionReport, Predictor, load

__all__ = ["PredictionReport", "Predictor", "load", "predict_folder"]
