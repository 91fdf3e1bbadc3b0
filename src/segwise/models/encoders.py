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
from safetensors.torch import load_file
from torch import nn

from ..errors import SegwiseError

HUB_TIMEOUT_S = 3.0
OUTPUT_STRIDES = (None, 8, 16, 32)


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
        raise SegwiseError(
            f"encoder '{name}': timm has no pretrained weights for it; use encoder_weights=None"
        )
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        raise SegwiseError(
            f"encoder '{name}': cannot download ImageNet weights ({host} unreachable); on a connected machine run "
            f'`python -c "import timm, safetensors.torch as s; '
            f"s.save_file(timm.create_model('{name}', pretrained=True).state_dict(), '{name}.safetensors')\"` "
            f"and pass encoder_weights=PATH/{name}.safetensors"
        ) from None


class Encoder(nn.Module):
    """A timm backbone returning a list of feature maps; `channels` and `reductions` describe them."""

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        weights: str | Path | None = None,
        output_stride: int | None = None,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name.split(".")[0]):
            close = timm.list_models(f"*{name[:5]}*")[:8]
            raise SegwiseError(
                f"unknown encoder '{name}'; timm has e.g. {close or timm.list_models('resnet*')[:8]}"
            )
        options: dict = {"features_only": True, "in_chans": in_channels, "pretrained": weights is not None}
        if weights == "imagenet":
            _check_online(name)
        elif weights is not None:
            # timm adapts the first conv and maps keys onto the feature model; the check is ours.
            options["pretrained_cfg_overlay"] = {"state_dict": _checked_state_dict(Path(weights), name)}
        if output_stride not in OUTPUT_STRIDES:
            raise SegwiseError(
                f"encoder '{name}': output_stride {output_stride} unsupported; choose one of {OUTPUT_STRIDES}"
            )
        if depth is not None:  # only the first `depth` feature levels: timm drops the deeper stages
            levels = len(timm.create_model(name, features_only=True, pretrained=False).feature_info)
            if not 1 <= depth <= levels:
                raise SegwiseError(f"encoder '{name}': depth must be in 1..{levels}, got {depth}")
            options["out_indices"] = tuple(range(depth))
        if output_stride not in (None, 32):  # dilated convolutions instead of the last stride(s)
            options["output_stride"] = output_stride
        try:
            self.model = timm.create_model(name, **options)
        except TypeError as error:
            if "output_stride" not in options:
                raise
            raise SegwiseError(
                f"encoder '{name}' cannot be dilated to output_stride={output_stride} "
                f"({error}); use an encoder that can, e.g. resnet50"
            ) from None
        self.name = name
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        assert self.reductions == sorted(self.reductions), "features must come shallow to deep"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only: no code runs), unwrapped."""
    if not path.is_file():
        raise SegwiseError(f"{path}: encoder weights file not found; pass a .safetensors or .pth state dict")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torn file, pickled code, unknown format
        raise SegwiseError(f"{path}: cannot read weights ({' '.join(str(error).split())[:200]})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegwiseError(f"{path}: not a state dict of tensors; save `model.state_dict()`")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _checked_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Load `path` into the full timm model (3 input channels, as weights are published) and refuse it,
    naming the keys, unless every backbone tensor is there with the right shape; the classifier may differ."""
    full = timm.create_model(name, pretrained=False)
    classifier = full.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    is_head = lambda key: any(key.startswith(c + ".") for c in classifier)  # noqa: E731
    state = {k: v for k, v in read_state_dict(path).items() if not is_head(k)}
    expected = {k: v.shape for k, v in full.state_dict().items() if not is_head(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    problems = [
        f"{label} {len(keys)} key(s), e.g. {keys[:3]}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape for", wrong_shape),
        )
        if keys
    ]
    if problems:
        raise SegwiseError(f"{path}: weights do not fit encoder '{name}': {'; '.join(problems)}")
    full.load_state_dict(state, strict=False)  # classifier stays as built; timm drops it for features
    return full.state_dict()
