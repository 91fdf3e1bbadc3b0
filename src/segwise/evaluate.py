"""Evaluating a trained run on image/mask pairs, at each image's own resolution."""

from __future__ import annotations

from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from .data.dataset import ClassInfo, read_pair
from .data.formats import Pair
from .inference import Predictor
from .metrics import ConfusionMatrix


def evaluate_pairs(predictor: Predictor, pairs: list[Pair], progress: bool = False) -> ConfusionMatrix:
    """Predict every image and count it against its mask (mapped with the run's own classes)."""
    classes = ClassInfo(**asdict(predictor.config.classes))
    matrix = ConfusionMatrix(classes.num_classes)
    for image_path, mask_path in tqdm(pairs, desc="evaluating", disable=not progress, leave=False):
        image, mask = read_pair(image_path, mask_path)
        truth = classes.to_indices(mask, mask_path)
        matrix.update(torch.from_numpy(predictor.predict(image)), torch.from_numpy(truth))
    return matrix
