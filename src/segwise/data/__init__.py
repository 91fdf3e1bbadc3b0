"""Data: finding image/mask pairs, discovering classes, caching decoded samples, augmenting batches."""

from .dataset import SegmentationData, load_data
from .formats import find_pairs

__all__ = ["SegmentationData", "find_pairs", "load_data"]
