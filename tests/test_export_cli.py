"""`segwise export` and the onnxruntime backend of `segwise predict`."""

import contextlib
import io
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import segwise
from segwise.cli import main
from segwise.inference.backends import load_onnx
from segwise.io import read_mask

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def one_line_error(capsys, code: int) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory):
    """A copy of the shared run (exports write into the run folder) exported with the CLI's main()."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, run)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # in process: an interpreter start costs ~10 s here
        assert main(["export", str(run), "--format", "onnx"]) == 0
    return run, stdout.getvalue()


def test_export_writes_model_onnx_and_prints_parity_at_two_sizes(exported_run):
    run, stdout = exported_run
    assert (run / "model.onnx").is_file()
    differences = re.findall(r"([0-9.e+-]+) at (\d+)×(\d+)", stdout)
    assert len(differences) == 2 and len({(h, w) for _, h, w in differences}) == 2
    assert all(float(d) <= 1e-4 for d, _, _ in differences)


def test_onnxruntime_backend_writes_the_same_masks(exported_run, shapes_data, tmp_path, capsys):
    run, _ = exported_run
    images = tmp_path / "in"
    images.mkdir()
    for path in sorted((shapes_data / "val" / "images").glob("*.png"))[:3]:
        shutil.copy(path, images)
    crop = np.asarray(Image.open(images / "val_0000.png"))[3:50, 7:61]  # 47×54: an odd size
    Image.fromarray(crop).save(images / "odd.png")
    for backend in ("torch", "onnxruntime"):
        code = main(
            ["predict", str(run), str(images), "-o", str(tmp_path / backend), "--format", "png,npy"]
            + ["--backend", backend, "--batch-size", "2", "--device", "cpu"]
        )
        assert code == 0
    for path in sorted(images.iterdir()):
        torch_mask = read_mask(tmp_path / "torch" / f"{path.stem}.png")
        assert (read_mask(tmp_path / "onnxruntime" / f"{path.stem}.png") == torch_mask).all()
        np.testing.assert_allclose(
            np.load(tmp_path / "onnxruntime" / f"{path.stem}_proba.npy").astype(np.float32),
            np.load(tmp_path / "torch" / f"{path.stem}_proba.npy").astype(np.float32),
            atol=1e-3,  # float16 files; the probabilities themselves agree to ~1e-6
        )


def test_onnx_predictor_matches_torch_probabilities(exported_run):
    run, _ = exported_run
    image = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    expected = segwise.load(run, device="cpu").predict_proba(image)
    np.testing.assert_allclose(load_onnx(run, device="cpu").predict_proba(image), expected, atol=1e-5)


def test_onnx_file_flag_implies_the_backend(exported_run, tmp_path, capsys):
    run, _ = exported_run
    moved = tmp_path / "elsewhere.onnx"
    shutil.copy(run / "model.onnx", moved)
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "a.png")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare)  # the config alone: no weights, no model.onnx
    assert (
        main(["predict", str(bare), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--onnx", str(moved)])
        == 0
    )
    assert read_mask(tmp_path / "o" / "a.png").shape == (32, 40)
    capsys.readouterr()
    code = main(
        ["predict", str(bare), str(tmp_path / "a.png"), "-o", str(tmp_path / "p"), "--backend", "onnxruntime"]
    )
    error = one_line_error(capsys, code)
    assert "model.onnx" in error and "segwise export" in error


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_torchscript(exported_run, tmp_path, capsys):
    run, _ = exported_run
    target = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "-o", str(target)]) == 0
    assert "parity with PyTorch" in capsys.readouterr().out
    scripted = torch.jit.load(str(target))
    model, _ = segwise.run.load_model(run)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-4, rtol=0)


def test_export_rejects_a_mismatched_file_name(exported_run, tmp_path, capsys):
    run, _ = exported_run
    code = main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "model.pt")])
    assert "model.onnx" in one_line_error(capsys, code)
    assert not (tmp_path / "model.pt").exists()


def test_missing_onnxruntime_names_the_extra(exported_run, tmp_path, capsys, monkeypatch):
    run, _ = exported_run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(
        ["predict", str(run), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--backend", "onnxruntime"]
    )
    assert "pip install 'segwise[onnx]'" in one_line_error(capsys, code)


def test_export_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "example:" in capsys.readouterr().out


def test_a_model_that_cannot_be_exported_is_named_by_the_file_asked_for(
    exported_run, tmp_path, capsys, monkeypatch
):
    from segwise.errors import SegwiseError
    from segwise.inference import export

    def refuse(model, path, **options):
        raise SegwiseError(f"{path}: this model cannot be exported to ONNX (a shape it cannot bound)")

    monkeypatch.setattr(export, "export_onnx", refuse)
    run, _ = exported_run
    code = main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "mine.onnx")])
    line = one_line_error(capsys, code)
    assert f"{tmp_path / 'mine.onnx'}: this model cannot" in line and ".tmp" not in line
    assert list(tmp_path.iterdir()) == []
