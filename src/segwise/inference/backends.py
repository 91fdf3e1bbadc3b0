"""Running an exported ONNX model with onnxruntime behind the same Predictor.

`OnnxRuntimeModel` keeps the SegmentationModel's contract (normalized N×C×H×W float in, logits out,
an `in_channels` attribute), so the Predictor's preprocessing, batching, resizing back and everything
after it are the very code the PyTorch backend runs: only the forward pass differs.

    >>> predictor = load_onnx("runs/cells")          # runs/cells/model.onnx  # doctest: +SKIP
    >>> mask = predictor.predict("new.png")                                  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import EXPORT_FORMATS, RunConfig
from ..constants import CONFIG
from ..engine.devices import pick_device
from ..errors import SegwiseError
from .predictor import InferenceOptions, Predictor

ONNX_FILE = "model.onnx"  # where `segwise export RUN --format onnx` writes by default
INSTALL_HINT = "pip install 'segwise[onnx]'"


def import_onnxruntime():
    """The onnxruntime module, or a one-line error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise SegwiseError(f"the onnxruntime backend needs onnxruntime; {INSTALL_HINT}") from None
    return onnxruntime


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX segmentation model as a torch module: tensor in, tensor out, on the input's device."""

    def __init__(self, path: str | Path, in_channels: int, num_classes: int, device: torch.device) -> None:
        super().__init__()
        ort = import_onnxruntime()
        path = Path(path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise SegwiseError(
                f"{path}: not a loadable ONNX model ({' '.join(str(error).split())[:200]}); "
                "export it again with `segwise export RUN --format onnx`"
            ) from None
        self.provider = self.session.get_providers()[0]  # onnxruntime falls back to the CPU silently
        fallback = (
            " (its CUDA provider could not start: check CUDA and cuDNN)"
            if providers[0] != self.provider
            else ""
        )
        print(f"segwise: onnxruntime runs {path.name} on {self.provider}{fallback}", file=sys.stderr)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        declared = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        if len(inputs) != 1 or (isinstance(declared, int) and declared != num_classes):
            raise SegwiseError(
                f"{path}: expects {len(inputs)} input(s) and gives {declared} classes where the run has 1 "
                f"input and {num_classes} classes; pass the ONNX file exported from this run"
            )
        self.input_name = inputs[0].name
        self.in_channels = in_channels
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits, *_) = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})
        return torch.from_numpy(logits).to(x.device)


def load_onnx(
    run_dir: str | Path, onnx_file: str | Path | None = None, device: str = "auto", **options
) -> Predictor:
    """A Predictor running `onnx_file` (default RUN/model.onnx) with the run's preprocessing and classes."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise SegwiseError(
            f"{run_dir}: run folder not found or without {CONFIG}; pass a folder written by `segwise train`"
        )
    config = RunConfig.load(run_dir / CONFIG)
    path = Path(onnx_file) if onnx_file is not None else run_dir / ONNX_FILE
    if not path.is_file():
        raise SegwiseError(
            f"{path}: ONNX model not found; write it with `segwise export {run_dir} --format onnx` "
            "or pass --onnx FILE"
        )
    model = OnnxRuntimeModel(
        path, config.model.get("in_channels", 3), len(config.classes.names), pick_device(device)
    )
    return Predictor(model, config, device, InferenceOptions(**options), run_dir)


# Where each format goes by default; pretrained is a folder (config.json, model.safetensors, README.md).
EXPORT_FILES = dict(zip(EXPORT_FORMATS, (ONNX_FILE, "model.torchscript.pt", "pretrained"), strict=True))


def export_run(
    run_dir: str | Path, format: str = "onnx", output: str | Path | None = None, atol: float = 1e-4
) -> tuple[Path, list[tuple[tuple[int, int], float]]]:
    """Export a run's model (dynamic H×W) and check it against PyTorch at two sizes before it lands.

    The sizes are the run's input size (what the Predictor feeds) and an odd one beside it (a size no
    stride divides, so the padding must stay dynamic). Returns the path and the max abs difference of
    the logits at each size; a file over `atol` is never written. The preprocessing travels in the
    file's metadata (class names, mean, std, input size as JSON strings). Format "pretrained" writes the
    run as a save_pretrained folder (the PyTorch model itself: no parity to check, no differences).
    """
    import json

    from ..io import atomic_path
    from ..run import load_model
    from .export import check_parity, export_onnx, export_torchscript

    if format not in EXPORT_FILES:
        raise SegwiseError(f"export format '{format}' not known; choose {' or '.join(EXPORT_FORMATS)}")
    path = Path(output) if output is not None else Path(run_dir) / EXPORT_FILES[format]
    if format == "pretrained":
        from .predictor import load

        return load(run_dir, device="cpu").save_pretrained(path), []
    model, config = load_model(run_dir)
    if (path.suffix.lower() == ".onnx") != (format == "onnx"):
        raise SegwiseError(
            f"{path}: {format} exports need {'an' if format == 'onnx' else 'a non-'}.onnx file name; "
            f"e.g. {path.with_suffix('.onnx' if format == 'onnx' else '.pt')}"
        )
    height, width = config.preprocess.input_size
    sizes = [(height, width), (height + 13, width + 7)]
    metadata = {
        "segwise_classes": json.dumps(config.classes.names),
        "segwise_palette": json.dumps(config.classes.palette),
        "segwise_mean": json.dumps(config.preprocess.mean),
        "segwise_std": json.dumps(config.preprocess.std),
        "segwise_input_size": json.dumps(config.preprocess.input_size),
    }
    write = export_onnx if format == "onnx" else export_torchscript
    with atomic_path(path) as tmp:
        try:
            write(model, tmp, sample_size=(height, width), metadata=metadata)
            differences = [(size, check_parity(model, tmp, sizes=[size], atol=atol)) for size in sizes]
        except SegwiseError as error:  # the user asked for `path`; the temporary name means nothing to them
            raise SegwiseError(str(error).replace(str(tmp), str(path))) from None
    return path, differences
