"""Encoders: any timm model that supports `features_only`, plus weight loading.

This is the one place that loads encoder weights (random, ImageNet from timm's hub, or a local file)
and adapts the first convolution to the input channel count (timm does that: 1 channel sums the RGB
filters, more than 3 repeats and rescales them).
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from ..errors import SegwiseError

HUB_TIMEOUT_S = 3.0


def _weights_host(name: str) -> str | None:
    """The host timm would download `name`'s default pretrained weights from."""
    config = timm.models.get_pretrained_cfg(name.split(".")[0]) if timm.is_model(name.split(".")[0]) else None
    if config is None:
        return None
    if getattr(config, "hf_hub_id", None):
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname
    return urlparse(config.url).hostname if getattr(config, "url", None) else None


def _check_online(name: str) -> None:
    """Fail within seconds, with the fix, when the weights host is unreachable (no retry loop)."""
    host = _weights_host(name)
    if host is None:
        raise SegwiseError(f"encoder '{name}': timm has no pretrained weights for it; use encoder_weights=None")
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        raise SegwiseError(
            f"encoder '{name}': cannot download ImageNet weights ({host} unreachable); on a connected machine run "
            f"`python -c \"import timm, safetensors.torch as s; "
            f"s.save_file(timm.create_model('{name}', pretrained=True).state_dict(), '{name}.safetensors')\"` "
            f"and pass encoder_weights=PATH/{name}.safetensors"
        ) from None


class Encoder(nn.Module):
    """A timm backbone returning a list of feature maps; `channels` and `reductions` describe them."""

    def __init__(self, name: str, in_channels: int = 3, weights: str | Path | None = None) -> None:
        super().__init__()
        if not timm.is_model(name.split(".")[0]):
            close = timm.list_models(f"*{name[:5]}*")[:8]
            raise SegwiseError(f"unknown encoder '{name}'; timm has e.g. {close or timm.list_models('resnet*')[:8]}")
        options: dict = {"features_only": True, "in_chans": in_channels, "pretrained": weights is not None}
        if weights == "imagenet":
            _check_online(name)
        elif weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise SegwiseError(f"{path}: encoder weights file not found; pass a .safetensors or .pth state dict")
            options["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": 0}
        try:
            self.model = timm.create_model(name, **options)
        except RuntimeError as error:
            if weights is None or weights == "imagenet":
                raise
            raise SegwiseError(f"{weights}: weights do not fit encoder '{name}': {_summarise(error)}") from None
        self.name = name
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        assert self.reductions == sorted(self.reductions), "features must come shallow to deep"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x)


def _summarise(error: Exception) -> str:
    """One line out of torch's multi-line load_state_dict error: which keys are missing or unexpected."""
    text = " ".join(str(error).split())
    return text[:400] + ("…" if len(text) > 400 else "")
