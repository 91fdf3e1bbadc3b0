"""The base model every architecture shares: pad → encoder → decoder → head → crop.

Padding lives here, once: any H×W is padded up to a multiple of the model's stride, and the logits are
cropped back, so no architecture ever asks for "input divisible by 32".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..pretrained import save_pretrained
from ..task import Classes
from .encoders import Encoder


class SegmentationModel(nn.Module):
    """Encoder features → decoder → 1×1/3×3 head; `config` rebuilds the model via `create_model`."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, head: nn.Module, config: dict) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.config = config
        self.stride = max(encoder.reductions)
        self.in_channels = config["in_channels"]
        self.num_classes = config["num_classes"]
        # how the logits are upsampled to the input: smp's heads for some architectures use
        # align_corners=True, and a decoder that reproduces smp's logits says so
        self.align_corners = getattr(decoder, "align_corners", False)
        # The smallest H and W to trace the model at (ONNX export) for a graph that holds at every size: a
        # decoder whose own maps shrink below the stride says how large its deepest map must be.
        self.min_trace_side = self.stride * getattr(decoder, "min_deepest_side", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input N×{self.in_channels}×H×W, got {tuple(x.shape)}; "
                f"this model was built with in_channels={self.in_channels}"
            )
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        top, left = pad_h // 2, pad_w // 2
        # Unconditional (a zero pad is a cheap copy): a branch on the size would be frozen into traced and
        # exported graphs at the example input's size, and other sizes would then fail.
        x = F.pad(x, (left, pad_w - left, top, pad_h - top))
        logits = self.head(self.decoder(self.encoder(x)))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(
                logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
        return logits[..., top : top + height, left : left + width]

    def save_pretrained(
        self,
        folder: str | Path,
        classes: Classes | Sequence[str] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Path:
        """Write this model as a folder `segwise.load(folder)` predicts with: config.json, model.safetensors
        and a README.md model card, the layout model hubs expect (see `segwise.pretrained`).

        >>> model.save_pretrained("cells-model", classes=["background", "cell"],  # doctest: +SKIP
        ...                       preprocessing={"input_size": [256, 256]}, metrics={"val_miou": 0.91})
        >>> mask = segwise.load("cells-model").predict("new.png")   # doctest: +SKIP

        `classes`: one name per output (default class_0, … or background/foreground); `preprocessing`:
        what the training loop fed the model, `input_size` [H, W] (default 512×512) and per input channel
        `mean` and `std` on the 0..1 scale (default ImageNet's for RGB). A folder holding anything but an
        earlier save is refused.
        """
        return save_pretrained(self, folder, classes, preprocessing, metrics)

    def parameter_groups(self, encoder_lr: float, decoder_lr: float) -> list[dict]:
        """Optimizer parameter groups for discriminative learning rates: the encoder's parameters at
        `encoder_lr`, the decoder's and head's at `decoder_lr`; every parameter in exactly one group.

        >>> optimizer = torch.optim.AdamW(model.parameter_groups(encoder_lr=1e-4, decoder_lr=1e-3))
        >>> [group["name"] for group in optimizer.param_groups]
        ['encoder', 'decoder']

        Frozen encoder parameters stay in their group (the optimizer skips them while they have no
        gradient), so `unfreeze_encoder()` later needs no new optimizer. A scheduler scales both rates.
        """
        encoder = list(self.encoder.parameters())
        seen = {id(p) for p in encoder}
        decoder = [p for p in self.parameters() if id(p) not in seen]
        return [
            {"params": encoder, "lr": encoder_lr, "name": "encoder"},
            {"params": decoder, "lr": decoder_lr, "name": "decoder"},
        ]

    def freeze_encoder(self) -> None:
        """Stop training the encoder; its norm layers stay in eval mode so their statistics hold."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self._encoder_frozen = True

    def unfreeze_encoder(self) -> None:
        self.encoder.requires_grad_(True)
        self._encoder_frozen = False
        self.encoder.train(self.training)

    def keep_encoder_norm_statistics(self, keep: bool = True) -> None:
        """While training, the encoder's batch-norm layers use and keep their running statistics
        (a pretrained encoder's, from batches far larger than a small training batch) instead of
        the batch's own; their scales and shifts still learn."""
        self._encoder_norms_kept = keep
        self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if getattr(self, "_encoder_frozen", False):
            self.encoder.eval()
        elif mode and getattr(self, "_encoder_norms_kept", False):
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
