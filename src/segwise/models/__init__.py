"""Segmentation architectures on timm encoders."""

from .base import SegmentationModel
from .registry import create_model, list_models

__all__ = ["SegmentationModel", "create_model", "list_models"]
