"""`segwise.load(run_dir).predict(image)`: masks for new images of any size.

Each image goes through the preprocessing the model was trained with (channels, resize to the training
resolution, normalization); the logits are resized back to the image's own size before the argmax,
so the mask always matches the input pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import RunConfig
from ..data.dataset import match_channels, resize_image
from ..engine.devices import pick_device
from ..io import read_image
from ..models import SegmentationModel
from ..run import load_model

ImageLike = str | Path | np.ndarray | Image.Image


class Predictor:
    """A trained model with its preprocessing and class names.

    `model` is a SegmentationModel or any module with the same contract (normalized N×C×H×W in, logits
    out, an `in_channels` attribute), such as the onnxruntime backend (`inference.backends`).
    """

    def __init__(
        self, model: SegmentationModel | torch.nn.Module, config: RunConfig, device: str = "auto"
    ) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.class_names = config.classes.names
        self.palette = config.classes.palette
        self._mean = torch.tensor(config.preprocess.mean, device=self.device).view(1, -1, 1, 1) * 255
        self._std = torch.tensor(config.preprocess.std, device=self.device).view(1, -1, 1, 1) * 255

    def _as_array(self, image: ImageLike) -> np.ndarray:
        if isinstance(image, (str, Path)):
            array = read_image(image)
        elif isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB", "RGBA") else image)
        else:
            array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        if array.dtype != np.uint8 or array.ndim != 3:
            raise ValueError(
                f"expected a uint8 H×W or H×W×C image, got {array.dtype} with shape {array.shape}"
            )
        source = Path(image) if isinstance(image, (str, Path)) else Path("<array>")
        return match_channels(array, self.model.in_channels, source)

    def _model_input(self, array: np.ndarray) -> torch.Tensor:
        """1×C×h×w normalized input for an H×W×C uint8 image."""
        resized = resize_image(array, tuple(self.config.preprocess.input_size))  # exactly as in training
        x = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        return (x - self._mean) / self._std

    def _probabilities(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """1×C×h×w logits → C×H×W probabilities at the image's size."""
        logits = logits.float()
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.softmax(1)[0].cpu().numpy()

    @torch.no_grad()
    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """Class probabilities C×H×W (float32) at the image's own size."""
        array = self._as_array(image)
        return self._probabilities(self.model(self._model_input(array)), array.shape[:2])

    @torch.no_grad()
    def predict_proba_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """`[predict_proba(image) for image in images]`, inputs of the same model size in one forward pass."""
        arrays = [self._as_array(image) for image in images]
        inputs = [self._model_input(array) for array in arrays]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(index)
        results: list[np.ndarray] = [np.empty(0)] * len(arrays)
        for indices in groups.values():
            logits = self.model(torch.cat([inputs[i] for i in indices]))
            for row, i in enumerate(indices):
                results[i] = self._probabilities(logits[row : row + 1], arrays[i].shape[:2])
        return results

    def predict(self, image: ImageLike) -> np.ndarray:
        """Class indices H×W (int64) at the image's own size."""
        return self.predict_proba(image).argmax(0)


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """Load a trained run for prediction.

    >>> predictor = segwise.load("runs/cells")   # doctest: +SKIP
    >>> mask = predictor.predict("new.png")      # H×W class indices
    """
    model, config = load_model(run_dir)
    return Predictor(model, config, device)
