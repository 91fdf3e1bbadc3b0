"""Export a segmentation model to ONNX or TorchScript, and check the export against PyTorch.

Both formats take any batch size and any H×W: the input is named `image` (N×C×H×W float32, normalized
as in training) and the output `logits` (N×K×H×W, same H×W). Exports are written atomically.

>>> model = segwise.create_model("unet", encoder="resnet18", num_classes=3)
>>> path = export_onnx(model, "model.onnx")                  # doctest: +SKIP
>>> check_parity(model, path, sizes=[(250, 333), (512, 384)])  # max abs difference   # doctest: +SKIP
3.1e-06

ONNX export uses torch's `torch.export`-based exporter (the default since torch 2.9; the TorchScript-based
one is deprecated), which needs the packages `onnx` and `onnxscript`; `check_parity` on an .onnx file
runs it in `onnxruntime`. All three come with `pip install segwise[onnx]`.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SegwiseError
from ..io import atomic_path

INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_SAMPLE_SIZE = (96, 128)
DEFAULT_PARITY_SIZES = ((64, 96), (80, 72))  # neither divisible by 32: padding must stay dynamic


def _require(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SegwiseError(
            f"{purpose} needs the package '{module}', which is not installed; "
            "run `pip install 'segwise[onnx]'` (installs onnx, onnxscript and onnxruntime)"
        ) from None


def _channels(model: nn.Module, in_channels: int | None) -> int:
    channels = in_channels if in_channels is not None else getattr(model, "in_channels", None)
    if not isinstance(channels, int) or channels < 1:
        raise SegwiseError(f"export: pass in_channels=N (a positive int) for this model, got {channels}")
    return channels


def _sample(model: nn.Module, channels: int, size: Sequence[int], batch: int) -> torch.Tensor:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)  # the same inputs on every call: reproducible parity
    return torch.randn(batch, channels, *size, generator=generator).to(device)


@contextmanager
def _eval_mode(model: nn.Module):
    """Exports and references use inference behaviour (BatchNorm statistics, no dropout); the caller's
    training/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    in_channels: int | None = None,
    sample_size: tuple[int, int] = DEFAULT_SAMPLE_SIZE,
    opset: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` as ONNX with dynamic batch, height and width; returns the path written.

    `in_channels` defaults to `model.in_channels`; `sample_size` is the H×W traced, at least the model's
    `min_trace_side` (any size works at run time); `opset` defaults to torch's recommended opset; `metadata` (e.g. class names, mean/std as JSON
    strings) is stored in the model's `metadata_props`. Verify the file with `check_parity`.
    """
    for module in ("onnx", "onnxscript"):
        _require(module, "ONNX export")
    from torch.export import Dim

    path = Path(path)
    # Batch 2, not 1: torch.export specializes a dimension whose example size is 1; for the same reason
    # no map inside the model may be 1×1 in the example (`min_trace_side`).
    least = getattr(model, "min_trace_side", 1)
    sample_size = tuple(max(side, least) for side in sample_size)
    sample = _sample(model, _channels(model, in_channels), sample_size, batch=2)
    dynamic = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
    with _eval_mode(model), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter's progress chatter, not problems of the user's
        try:
            program = torch.onnx.export(
                model,
                (sample,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dynamic,),
                opset_version=opset,
                verbose=False,
            )
        except Exception as error:
            reason = " ".join(str(error).split())[:300]
            raise SegwiseError(
                f"{path}: this model cannot be exported to ONNX ({type(error).__name__}: {reason}); "
                "try export_torchscript, or another encoder"
            ) from error
    if metadata:
        for key, value in metadata.items():
            program.model.metadata_props[str(key)] = str(value)
    with atomic_path(path) as tmp:
        # One self-contained file (no side file of external weights, which would carry the temporary
        # name); protobuf limits it to 2 GB, far above any model of this zoo.
        program.save(tmp, external_data=False)
    return path


@contextmanager
def _quiet_exporter():
    """The exporter logs each stage at INFO/WARNING ("Obtain model graph ... ✅"); keep stdout for results."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    in_channels: int | None = None,
    sample_size: tuple[int, int] = DEFAULT_SAMPLE_SIZE,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` as TorchScript (`torch.jit.trace`), loadable with `torch.jit.load` without segwise.

    Tracing records the size arithmetic (padding to the model's stride, cropping back), so the file runs
    at any batch size and H×W; `check_parity` verifies that at several sizes. `metadata` goes into the
    archive's extra files (`torch.jit.load(path, _extra_files={key: ""})` reads it back).
    """
    path = Path(path)
    sample = _sample(model, _channels(model, in_channels), sample_size, batch=2)
    with _eval_mode(model), torch.no_grad(), _quiet_torchscript():
        traced = torch.jit.trace(model, sample, check_trace=False)
    with atomic_path(path) as tmp, _quiet_torchscript():
        torch.jit.save(traced, str(tmp), _extra_files={str(k): str(v) for k, v in (metadata or {}).items()})
    return path


@contextmanager
def _quiet_torchscript():
    """The tracer warns about the input-shape check in forward (it holds for every input), and torch
    marks TorchScript deprecated (FutureWarning) while it still works; neither is the user's problem."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _onnx_runner(path: Path):
    ort = _require("onnxruntime", "checking an ONNX export")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise SegwiseError(
            f"{path}: onnxruntime cannot load it ({' '.join(str(error).split())[:200]})"
        ) from None
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(np.asarray(session.run(None, {name: x.cpu().numpy()})[0]))


def _torchscript_runner(path: Path):
    try:
        with _quiet_torchscript():
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:
        raise SegwiseError(f"{path}: not a TorchScript file ({' '.join(str(error).split())[:200]})") from None

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.cpu())

    return run


def check_parity(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = DEFAULT_PARITY_SIZES,
    atol: float = 1e-4,
    *,
    in_channels: int | None = None,
    batch: int = 2,
) -> float:
    """Largest absolute difference between `model`'s logits and the exported file's (an .onnx file runs
    in onnxruntime on the CPU, anything else is loaded as TorchScript), over random inputs at each H×W of
    `sizes`; raises SegwiseError if it exceeds `atol` or an output has the wrong shape."""
    path = Path(path)
    if not path.is_file():
        raise SegwiseError(f"{path}: exported model not found; export it first")
    run = _onnx_runner(path) if path.suffix.lower() == ".onnx" else _torchscript_runner(path)
    channels = _channels(model, in_channels)
    worst = 0.0
    with _eval_mode(model), torch.no_grad():
        for height, width in sizes:
            x = _sample(model, channels, (height, width), batch)
            expected = model(x).float().cpu()
            try:
                got = run(x).float()
            except Exception as error:
                raise SegwiseError(
                    f"{path}: the exported model fails on input {tuple(x.shape)} "
                    f"({' '.join(str(error).split())[:200]}); re-export it"
                ) from None
            if got.shape != expected.shape:
                raise SegwiseError(
                    f"{path}: exported model gives logits {tuple(got.shape)} for input {tuple(x.shape)}, "
                    f"PyTorch {tuple(expected.shape)}; its sizes are not dynamic, re-export it"
                )
            difference = (got - expected).abs().max().item()
            if not difference <= atol:  # also catches NaN
                raise SegwiseError(
                    f"{path}: exported model differs from PyTorch by {difference:.3g} (max abs) at "
                    f"{height}×{width}, over atol={atol:g}; re-export it, e.g. with another opset"
                )
            worst = max(worst, difference)
    return worst
