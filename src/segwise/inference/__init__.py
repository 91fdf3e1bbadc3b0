"""Inference: predicting masks for new images with a trained run."""

from .ensemble import Ensemble, load
from .folder import predict_folder
from .predictor import PredictionReport, Predictor

__all__ = ["Ensemble", "PredictionReport", "Predictor", "load", "predict_folder"]
