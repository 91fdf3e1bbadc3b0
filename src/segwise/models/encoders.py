"""Encoders: any timm model that supports `features_only`, plus weight loading.

This is the one place that loads encoder weights (random, ImageNet from timm, or a local file) and adapts
the first convolution to the input channel count (timm does that: 1 channel sums the RGB filters, more
than 3 repeats and rescales them).

ImageNet weights (`weights="imagenet"`) come from the local caches first, with no network: huggingface_hub's
cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) and torch hub's checkpoints folder
(TORCH_HOME/hub/checkpoints), where timm keeps what it downloads. Only when neither holds them, and
HF_HUB_OFFLINE is not set, timm downloads them, after a reachability check of at most `HUB_TIMEOUT_S`.

A local file (`weights=PATH`) may come from timm, torchvision or segmentation_models_pytorch: keys are
matched by name after peeling wrapper prefixes (`module.`, `model.`, `encoder.`, `backbone.`, ...) and
dropping classifier heads; `mapping="in_order"` pairs the tensors in order instead, shape by shape, for a
checkpoint of the same architecture under other names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..errors import SegwiseError

HUB_TIMEOUT_S = 5.0
OUTPUT_STRIDES = (None, 8, 16, 32)
MAPPINGS = ("by_name", "in_order")
# Prefixes that training wrappers put before a backbone's own names: DDP, torch.compile, Lightning and
# most trainers, smp's and mmseg's segmentation models.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "encoder.", "backbone.")
# Top-level classifier modules of other libraries (torchvision: fc, classifier; pretrainedmodels:
# last_linear): dropped when the timm model has no such key.
FOREIGN_HEADS = ("fc", "classifier", "head", "last_linear", "AuxLogits", "aux_logits")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean environment variable


@dataclass(frozen=True)
class ImagenetWeights:
    """Where `weights="imagenet"` would come from: `where` is "cache PATH" or "hub HOST"; when not
    `available`, `reason` says why and how to fix it, on one line."""

    available: bool
    where: str = ""
    reason: str = ""
    file: str | None = None  # the cached file, read with no network


def _pretrained_cfg(name: str):
    """timm's pretrained config for `name` (with or without a tag), None for an unknown model or tag."""
    if not timm.is_model(name.split(".")[0]):
        return None
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know
        return None


def has_published_weights(name: str) -> bool:
    """Whether timm publishes pretrained weights for `name` (its config has a hub id or a URL)."""
    config = _pretrained_cfg(name)
    return config is not None and bool(config.hf_hub_id or config.url)


def _hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (its own constant is fixed at import)."""
    home = os.getenv("HF_HOME") or os.path.join(
        os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    hub = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def _hf_filenames(config) -> list[str]:
    """The files timm's `load_state_dict_from_hf` asks the hub for, the safetensors alternative first."""
    filename = config.hf_hub_filename or "pytorch_model.bin"
    if filename == "pytorch_model.bin":
        return ["model.safetensors", filename]
    if filename.endswith(".bin"):
        return [filename[: -len(".bin")] + ".safetensors", filename]
    return [filename]


def cached_weights_file(name: str) -> Path | None:
    """timm's default pretrained file for `name` if a local cache holds it; never touches the network."""
    config = _pretrained_cfg(name)
    if config is None:
        return None
    if config.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache  # a dependency of timm's

        repo, _, revision = config.hf_hub_id.partition("@")  # timm's `id@revision`
        for filename in _hf_filenames(config):
            found = try_to_load_from_cache(
                repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None
            )
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if config.url:  # where timm's URL download (torch.hub) puts it; TORCH_HOME is read at each call
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(config.url).path).name
        if path.is_file():
            return path
    return None


def _weights_host(name: str) -> str | None:
    """The host timm would download `name`'s default pretrained weights from."""
    config = _pretrained_cfg(name)
    if config is None:
        return None
    if config.hf_hub_id:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname
    return urlparse(config.url).hostname if config.url else None


def _reachable(host: str, timeout_s: float) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout_s`, name lookup included (the socket
    timeout does not bound getaddrinfo, so the attempt runs in a thread we stop waiting for)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _download_fix(name: str) -> str:
    return (
        f"on a connected machine run "
        f'`python -c "import timm, safetensors.torch as s; '
        f"s.save_file(timm.create_model('{name}', pretrained=True).state_dict(), '{name}.safetensors')\"` "
        f"and pass encoder_weights=PATH/{name}.safetensors"
    )


def imagenet_weights(name: str, timeout_s: float = HUB_TIMEOUT_S) -> ImagenetWeights:
    """Where `name`'s ImageNet weights would come from: a local cache (no network), else timm's hub if
    HF_HUB_OFFLINE is not set and the host answers within `timeout_s`. Reads only; downloads nothing."""
    if not has_published_weights(name):
        reason = f"encoder '{name}': timm has no pretrained weights for it; use encoder_weights=None"
        return ImagenetWeights(False, reason=reason)
    cached = cached_weights_file(name)
    if cached is not None:
        return ImagenetWeights(True, f"cache {cached}", file=str(cached))
    host = _weights_host(name)
    # huggingface_hub's own switches: with either set, its downloads refuse, so the hub is not asked
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.getenv(v, "").upper() in _TRUE]
    if offline:
        problem = f"not in the local cache and {offline[0]} is set"
    elif _reachable(host, timeout_s):
        return ImagenetWeights(True, f"hub {host}")
    else:
        problem = f"not in the local cache and {host} is unreachable"
    return ImagenetWeights(
        False, reason=f"encoder '{name}': cannot load ImageNet weights ({problem}); {_download_fix(name)}"
    )


def imagenet_options(name: str) -> dict:
    """`timm.create_model` options that load `name`'s ImageNet weights: the cached file's state dict
    (timm's own filter still maps it), or none (timm downloads); SegwiseError with the fix otherwise."""
    found = imagenet_weights(name)
    if not found.available:
        raise SegwiseError(found.reason)
    if found.file is None:
        return {}
    if _pretrained_cfg(name).custom_load:  # a format only the model's own loader reads (e.g. .npz)
        return {"pretrained_cfg_overlay": {"file": found.file}}
    return {"pretrained_cfg_overlay": {"state_dict": read_state_dict(Path(found.file))}}


def encoder_preprocessing(name: str, weights: str | Path | None) -> tuple[list[float], list[float]] | None:
    """Mean and std (0..1 pixel scale) of the input `weights` were trained on: a .safetensors file's own
    `mean`/`std` metadata, else timm's pretrained config of `name`; None without weights or when neither
    says. A config whose `input_range` is not 0..1 is rescaled, so the statistics always apply to 0..1."""
    if weights is None:
        return None
    if weights != "imagenet" and Path(weights).suffix == ".safetensors":
        recorded = _recorded_statistics(Path(weights))
        if recorded is not None:
            return recorded
    config = _pretrained_cfg(name)
    if config is None or not config.mean or not config.std:
        return None
    low, high = getattr(config, "input_range", None) or (0.0, 1.0)  # no timm config sets it today
    return [(m - low) / (high - low) for m in config.mean], [s / (high - low) for s in config.std]


def _recorded_statistics(path: Path) -> tuple[list[float], list[float]] | None:
    """`mean` and `std` from a safetensors file's metadata (JSON lists or comma-separated numbers)."""
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # missing or torn file: the same words as read_state_dict
        raise SegwiseError(f"{path}: cannot read weights ({' '.join(str(error).split())[:200]})") from None
    if "mean" not in metadata or "std" not in metadata:
        return None
    values = []
    for key in ("mean", "std"):
        text = metadata[key].strip()
        try:
            numbers = json.loads(text) if text.startswith("[") else [float(x) for x in text.split(",")]
        except ValueError:
            numbers = None
        if not isinstance(numbers, list) or not numbers or not all(_is_number(x) for x in numbers):
            raise SegwiseError(
                f"{path}: metadata {key}={text!r} is not a list of numbers; write e.g. [0.5, 0.5, 0.5] or remove it"
            )
        values.append([float(x) for x in numbers])
    return values[0], values[1]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _DroppedKeys(logging.Filter):
    """timm warns about every key of the full model a features_only model does not load (the classifier,
    EfficientNet's conv_head): expected, so kept off the user's terminal; real mismatches are ours to name."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected keys")


@contextlib.contextmanager
def _quiet_dropped_keys():
    logger = logging.getLogger("timm.models._builder")
    quiet = _DroppedKeys()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class Encoder(nn.Module):
    """A timm backbone returning a list of feature maps; `channels` and `reductions` describe them.

    `weights`: None (random), "imagenet" (local cache, else timm's hub) or a state dict file of timm,
    torchvision or segmentation_models_pytorch; `mapping` "in_order" pairs a file's tensors in order.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        weights: str | Path | None = None,
        output_stride: int | None = None,
        depth: int | None = None,
        mapping: str = "by_name",
    ) -> None:
        super().__init__()
        check_encoder_name(name)
        if output_stride not in OUTPUT_STRIDES:
            raise SegwiseError(
                f"encoder '{name}': output_stride {output_stride} unsupported; choose one of {OUTPUT_STRIDES}"
            )
        options: dict = {"features_only": True, "in_chans": in_channels, "pretrained": weights is not None}
        options.update(weight_options(name, weights, mapping))
        if getattr(_pretrained_cfg(name), "fixed_input_size", False):  # Swin, ViTs: 224×224 unless asked
            options["dynamic_img_size"] = True  # attention masks / position embedding made for each size
        if depth is not None:  # only the first `depth` feature levels: timm drops the deeper stages
            levels = len(timm.create_model(name, features_only=True, pretrained=False).feature_info)
            if not 1 <= depth <= levels:
                raise SegwiseError(f"encoder '{name}': depth must be in 1..{levels}, got {depth}")
            options["out_indices"] = tuple(range(depth))
        if output_stride not in (None, 32):  # dilated convolutions instead of the last stride(s)
            options["output_stride"] = output_stride
        try:
            self.model = create_timm_encoder(name, options)
        except TypeError as error:
            if "dynamic_img_size" not in str(error):
                raise
            # no such option (refused before anything is built): many of these models (Twins, XCiT,
            # MViTv2, TinyViT) take any size anyway
            del options["dynamic_img_size"]
            self.model = create_timm_encoder(name, options)
        self.name = name
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        assert self.reductions == sorted(self.reductions), "features must come shallow to deep"
        if len(self.reductions) > 1 and len(set(self.reductions)) == 1:  # a plain ViT: no pyramid
            raise SegwiseError(
                f"encoder '{name}' is a single-scale ViT (every feature at stride {self.reductions[0]}), "
                "which this architecture cannot use; use arch dpt, or a hierarchical encoder such as "
                "convnext_tiny or swin_tiny_patch4_window7_224"
            )
        # Some timm models (Swin, MambaOut) give N×H×W×C features; every decoder takes N×C×H×W.
        self.channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features


def check_encoder_name(name: str) -> None:
    """SegwiseError, with names that timm has, unless timm knows `name` (with or without a weights tag)."""
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name[:5]}*")[:8]
        raise SegwiseError(
            f"unknown encoder '{name}'; timm has e.g. {close or timm.list_models('resnet*')[:8]}"
        )


def weight_options(name: str, weights: str | Path | None, mapping: str) -> dict:
    """The `timm.create_model` options that put `weights` into the encoder (none for random weights)."""
    if mapping not in MAPPINGS:
        raise SegwiseError(f"encoder '{name}': weights mapping '{mapping}' unknown; choose one of {MAPPINGS}")
    if weights is None:  # random weights: nothing to map (a planned model is also built this way to probe)
        return {}
    if mapping != "by_name" and weights == "imagenet":
        raise SegwiseError(
            f"encoder '{name}': mapping '{mapping}' applies to encoder_weights=PATH, not to imagenet; "
            "drop encoder_weights_mapping"
        )
    if weights == "imagenet":
        return imagenet_options(name)
    # timm adapts the first conv and maps keys onto the feature model; the check is ours.
    return {"pretrained_cfg_overlay": {"state_dict": _checked_state_dict(Path(weights), name, mapping)}}


def create_timm_encoder(name: str, options: dict) -> nn.Module:
    """`timm.create_model(name, **options)`, with one-line errors for what the model cannot do."""
    try:
        with _quiet_dropped_keys():
            return timm.create_model(name, **options)
    except TypeError as error:
        if "dynamic_img_size" in str(error) or "output_stride" not in options:
            raise  # the caller knows what a model without dynamic sizes means to it
        raise SegwiseError(
            f"encoder '{name}' cannot be dilated to output_stride={options['output_stride']} "
            f"({error}); use an encoder that can, e.g. resnet50"
        ) from None
    except OSError as error:  # only a hub download does I/O here: cached and local files are read already
        raise SegwiseError(
            f"encoder '{name}': ImageNet weights did not download ({' '.join(str(error).split())[:200]}); "
            f"{_download_fix(name)}"
        ) from None


def key_problems(missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> list[str]:
    """How a state dict fails to fit a model, a phrase per kind of mismatch with the first few keys (the
    words every weights loader's one-line error uses)."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("wrong shape for", wrong_shape))
    return [f"{label} {len(keys)} key(s), e.g. {keys[:3]}" for label, keys in kinds if keys]


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


def _feature_keys(full: nn.Module) -> set[str]:
    """The keys of the full timm model that its features_only model loads: those of the modules up to the
    deepest feature module, in registration order (the forward order of timm's CNNs); all of them when
    that module is not found by name."""
    keys = list(full.state_dict())
    deepest = full.feature_info[-1]["module"] if getattr(full, "feature_info", None) else None
    names = [module_name for module_name, _ in full.named_modules()]
    if deepest not in names:
        return set(keys)
    end = names.index(deepest) + 1
    while end < len(names) and names[end].startswith(deepest + "."):
        end += 1
    inside = set(names[:end])
    return {key for key in keys if key.rpartition(".")[0] in inside}


def _unwrapped(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Peel wrapper prefixes while that makes more keys fit the encoder; keys outside the prefix go (the
    decoder and head of a whole segmentation model's checkpoint)."""
    # two at once too: no single one of smp's `encoder.model.` (its "tu-" timm encoders) fits any key
    prefixes = WRAPPER_PREFIXES + tuple(
        outer + inner for outer in WRAPPER_PREFIXES for inner in WRAPPER_PREFIXES
    )
    while True:
        best, fits = None, len(state.keys() & expected)
        for prefix in prefixes:
            inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if len(inner.keys() & expected) > fits:
                best, fits = inner, len(inner.keys() & expected)
        if best is None:
            return state
        state = best


def _checked_state_dict(path: Path, name: str, mapping: str = "by_name") -> dict[str, torch.Tensor]:
    """`path`'s tensors under the full timm model's names (3 input channels, as weights are published),
    only those its features_only model loads; refused, naming the keys, unless every one of those is there
    with the right shape. Classifier heads, timm's or another library's, may differ or be absent."""
    full = timm.create_model(name, pretrained=False)
    classifier = full.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    is_head = lambda key: any(key.startswith(c + ".") for c in classifier)  # noqa: E731
    own = {k: v.shape for k, v in full.state_dict().items()}
    expected = {k: shape for k, shape in own.items() if not is_head(k)}
    needed = {k for k in _feature_keys(full) if k in expected}
    state = read_state_dict(path)
    if mapping == "in_order":
        state = _in_order(state, own, expected, needed, path, name)
    state = _unwrapped(state, set(expected))
    foreign_head = lambda key: key not in own and key.split(".")[0] in FOREIGN_HEADS  # noqa: E731
    state = {k: v for k, v in state.items() if not is_head(k) and not foreign_head(k)}
    # BatchNorm's step counter is not a weight (older torchvision files lack it): never required.
    missing = sorted(k for k in needed - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    problems = key_problems(missing, unexpected, wrong_shape)
    if problems:
        renamed = missing and unexpected and mapping == "by_name"
        hint = "; if it is the same architecture under other names, pass encoder_weights_mapping=in_order"
        raise SegwiseError(
            f"{path}: weights do not fit encoder '{name}': {'; '.join(problems)}{hint if renamed else ''}"
        )
    full.load_state_dict(state, strict=False)  # what the file lacks (counters, unused layers) stays as built
    return {k: v for k, v in full.state_dict().items() if k in needed}


def _in_order(state, own, expected, needed, path: Path, name: str) -> dict[str, torch.Tensor]:
    """`state`'s tensors renamed, in order, to the timm model's keys (BatchNorm counters aside on both
    sides): the whole model's, without the classifier, or the features' only, whichever count matches;
    every pair must have the same shape."""
    if path.suffix == ".safetensors":
        raise SegwiseError(
            f"{path}: mapping in_order needs the tensors in their saved order, which .safetensors does not "
            "keep (it sorts the names); save the state dict with torch.save as .pth, or match the names"
        )
    counter = lambda key: key.endswith("num_batches_tracked")  # noqa: E731
    # a counter is a 0-d integer tensor, whatever name the file gives it
    source = [(k, v) for k, v in state.items() if v.ndim or v.is_floating_point()]
    targets = [
        [k for k in own if not counter(k)],
        [k for k in own if k in expected and not counter(k)],
        [k for k in own if k in needed and not counter(k)],
    ]
    target = next((t for t in targets if len(t) == len(source)), None)
    if target is None:
        raise SegwiseError(
            f"{path}: mapping in_order needs as many tensors as encoder '{name}' has "
            f"({' or '.join(str(n) for n in sorted({len(t) for t in targets}, reverse=True))}, BatchNorm counters aside), got {len(source)}; "
            "it applies to the same architecture only"
        )
    for i, ((key, value), own_key) in enumerate(zip(source, target, strict=True)):
        if value.shape != own[own_key]:
            raise SegwiseError(
                f"{path}: mapping in_order stops at tensor {i}: '{key}' {list(value.shape)} vs '{own_key}' "
                f"{list(own[own_key])} of encoder '{name}'; it applies to the same architecture only"
            )
    return {own_key: value for (_, value), own_key in zip(source, target, strict=True)}
