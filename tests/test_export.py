"""ONNX and TorchScript export: dynamic batch/H/W, parity with PyTorch, clear errors."""

import sys

import pytest
import torch

import segwise
from segwise.errors import SegwiseError
from segwise.inference.export import check_parity, export_onnx, export_torchscript
from tests.test_architectures import BIG, SKIP_BIG, every_architecture, tiny

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZES = [(64, 96), (80, 72)]  # not divisible by 32: the padding must stay dynamic in the exported graph
# Tiny decoders keep exports fast; every other option is the architecture's default.
SMALL = {
    "unet": {"decoder_channels": [16, 16, 8, 8, 8]},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "deeplabv3": {"decoder_channels": 16},
    "deeplabv3plus": {"decoder_channels": 16},
    "fcn": {"decoder_channels": 16},
    "pspnet": {"decoder_channels": 16},
    "unetplusplus": {"decoder_channels": [16, 16, 8, 8, 8]},
    "manet": {"decoder_channels": [16, 16, 8, 8, 8], "decoder_pab_channels": 8},
    "pan": {"decoder_channels": 16},
}


def small(arch: str) -> torch.nn.Module:
    return tiny(arch, num_classes=3, **SMALL.get(arch, {}))


# The exporter takes ~5-10 s of CPU per architecture: unet runs by default, the others as `slow`.
def _onnx_param(arch: str):
    if arch == "unet":
        return arch
    return pytest.param(arch, marks=[pytest.mark.slow, *([SKIP_BIG] if arch in BIG else [])])


@pytest.mark.parametrize("arch", [_onnx_param(a) for a in segwise.list_models()])
def test_onnx_export_matches_pytorch_at_two_sizes(arch, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = small(arch).train()
    path = export_onnx(model, tmp_path / f"{arch}.onnx", metadata={"classes": '["bg", "cell", "edge"]'})
    assert model.training  # exported in eval mode, the caller's mode restored
    assert check_parity(model, path, sizes=SIZES, atol=1e-4) <= 1e-4
    assert check_parity(model, path, sizes=[(33, 45)], batch=1) <= 1e-4  # dynamic batch, tiny odd size
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["classes"] == '["bg", "cell", "edge"]'
    assert list(tmp_path.iterdir()) == [path]  # one self-contained file, no temporary left


@pytest.mark.parametrize("arch", every_architecture())
def test_torchscript_export_runs_at_any_size(arch, tmp_path):
    model = small(arch)
    path = export_torchscript(model, tmp_path / f"{arch}.pt")
    assert check_parity(model, path, sizes=[*SIZES, (33, 45)], atol=1e-5) <= 1e-5
    assert check_parity(model, path, sizes=[(50, 50)], batch=1) <= 1e-5


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_keeps_the_training_mode_and_carries_metadata(tmp_path):
    model = small("unet").train()
    path = export_torchscript(model, tmp_path / "m.pt", metadata={"classes": '["bg", "cell", "edge"]'})
    assert model.training
    files = {"classes": ""}
    torch.jit.load(path, _extra_files=files)
    assert files["classes"] == b'["bg", "cell", "edge"]'
    assert list(tmp_path.iterdir()) == [path]


def test_parity_check_fails_when_the_export_differs(tmp_path):
    model = small("fcn")
    path = export_torchscript(model, tmp_path / "fcn.pt")
    with torch.no_grad():
        model.head.bias.add_(0.01)  # the model moved on after the export
    with pytest.raises(
        SegwiseError, match=r"fcn.pt: exported model differs from PyTorch by 0.01 .*atol=0.0001"
    ):
        check_parity(model, path)
    assert check_parity(model, path, atol=0.02) == pytest.approx(0.01, abs=1e-5)
    with pytest.raises(SegwiseError, match="missing.onnx: exported model not found"):
        check_parity(model, tmp_path / "missing.onnx")


def test_missing_onnx_packages_say_how_to_install_them(tmp_path, monkeypatch):
    model = small("fcn")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(SegwiseError, match=r"ONNX export needs the package 'onnxscript'.*segwise\[onnx\]"):
        export_onnx(model, tmp_path / "m.onnx")
    (tmp_path / "m.onnx").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SegwiseError, match=r"needs the package 'onnxruntime'"):
        check_parity(model, tmp_path / "m.onnx")


class DataDependent(torch.nn.Module):
    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else -self.conv(x)  # control flow on values: not exportable


def test_a_model_that_cannot_be_exported_leaves_the_old_file_alone(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(SegwiseError, match="m.onnx: this model cannot be exported to ONNX"):
        export_onnx(DataDependent(), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
