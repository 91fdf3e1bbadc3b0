"""Issue 22's acceptance for the architectures it added: each is listed, trains an epoch on the demo
data, predicts at an odd size with that size back, and exports from its run to ONNX (dynamic H×W, parity
≤ 1e-4 at two sizes); one goes through everything else a run does.

Already covered for every registered architecture, so not repeated here: the model's forward and
backward at 250×333 and its saved config (test_architectures.py), ONNX and TorchScript export of the
model at two sizes (test_export.py, on test_resnet; segformer on mit_b0 in test_arch_segformer.py).
What only this file does: the whole path through a run folder (training, `segwise.load`, the run's own
export at its input size, the onnxruntime predictor) per architecture, and resume, lr-find, TTA, tiles,
eval and report on a new architecture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import segwise
import segwise.engine.plan as plan
from segwise.inference.backends import export_run, load_onnx
from segwise.report.html import write_report

from .conftest import TINY, run_cli

# (architecture, its encoder and small options). torchvision's ResNet-50/101 models are left out: a CPU
# takes too long for CI (their wrapper is the MobileNetV3 models', tested here).
NEW_ARCHITECTURES = [
    ("segformer", {"encoder": "mit_b0", "options": {"decoder_segmentation_channels": 32}}),
    ("upernet", {"encoder": "test_resnet", "options": {"decoder_channels": 32}}),
    (
        "manet",
        {
            "encoder": "test_resnet",
            "options": {"decoder_channels": [16, 16, 8, 8, 8], "decoder_pab_channels": 8},
        },
    ),
    ("pan", {"encoder": "test_resnet", "options": {"decoder_channels": 16}}),
    (
        "dpt",
        {
            "encoder": "test_vit",
            "options": {"decoder_intermediate_channels": [8, 16, 32, 32], "decoder_fusion_channels": 16},
        },
    ),
    ("fcn8s", {"encoder": "test_resnet", "options": {"decoder_channels": 16}}),
    ("fcn16s", {"encoder": "test_resnet", "options": {"decoder_channels": 16}}),
    ("fcn32s", {"encoder": "test_resnet", "options": {"decoder_channels": 16}}),
    ("lraspp_mobilenet_v3_large", {}),
    ("deeplabv3_mobilenet_v3_large", {}),
]
ODD = (250, 333)


def odd_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (*ODD, 3), dtype=np.uint8)


def test_list_models_shows_the_new_architectures():
    result = run_cli("list-models")
    assert result.returncode == 0, result.stderr
    assert {arch for arch, _ in NEW_ARCHITECTURES} <= set(result.stdout.split())


@pytest.mark.slow  # a training epoch and an ONNX export each, ~10-40 s on 2 cores
@pytest.mark.parametrize("arch, model", NEW_ARCHITECTURES, ids=[arch for arch, _ in NEW_ARCHITECTURES])
def test_trains_an_epoch_predicts_at_an_odd_size_and_exports_from_its_run(arch, model, shapes_data, tmp_path):
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path,
        name=arch,
        epochs=1,
        progress=False,
        arch=arch,
        batch_size=TINY["batch_size"],
        precision="fp32",
        **model,
    )
    assert len(result.history) == 1
    predictor = segwise.load(result.run_dir, device="cpu")
    assert predictor.model.config["arch"] == arch
    mask = predictor.predict(odd_image())
    assert mask.shape == ODD

    # The run's own export: traced at its input size, checked there and at an odd size beside it.
    path, differences = export_run(result.run_dir, "onnx")
    height, width = predictor.config.preprocess.input_size
    assert [size for size, _ in differences] == [(height, width), (height + 13, width + 7)]
    assert all(difference <= 1e-4 for _, difference in differences)
    onnx_mask = load_onnx(result.run_dir, path, device="cpu").predict(odd_image())
    assert onnx_mask.shape == ODD
    assert np.mean(onnx_mask == mask) > 0.999  # logits within 1e-4: only exact ties may flip


class Crash(Exception):
    """The stand-in for a killed training process."""


def crashing_loss_at(step: int):
    """plan.build_loss whose loss raises Crash at training step `step` (validation passes untouched)."""
    build_loss, calls = plan.build_loss, [0]

    class Crashing(torch.nn.Module):
        def __init__(self, loss) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, logits, masks):
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] == step:
                    raise Crash
            return self.loss(logits, masks)

    return lambda spec, **options: Crashing(build_loss(spec, **options))


@pytest.mark.slow  # one small architecture through lr-find, train, crash, resume, predict, eval, report
def test_a_new_architecture_goes_through_lr_find_resume_tta_tiles_eval_and_report(
    shapes_data, tmp_path, monkeypatch
):
    arch, model = "pan", dict(NEW_ARCHITECTURES)["pan"]
    config = tmp_path / "plan.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": arch, **model}}))
    found = run_cli(
        "lr-find",
        shapes_data,
        "-c",
        config,
        "--steps",
        "10",
        "--precision",
        "fp32",
        "-o",
        tmp_path / "lr.png",
    )
    assert found.returncode == 0, found.stderr
    assert "suggested lr" in found.stdout

    # 16 images, batch 4: step 6 is in the second epoch; last.pt holds the first.
    monkeypatch.setattr(plan, "build_loss", crashing_loss_at(6))
    with pytest.raises(Crash):
        segwise.train(
            shapes_data,
            runs_dir=tmp_path,
            name=arch,
            epochs=2,
            progress=False,
            config=config,
            batch_size=4,
            precision="fp32",
        )
    monkeypatch.undo()
    run = tmp_path / arch
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run_cli("train", "--resume", run, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2

    predictor = segwise.load(run, device="cpu")
    assert predictor.predict(odd_image(), tta="flips").shape == ODD
    tiled = predictor.predict_proba(odd_image(), tile=96, overlap=0.25)
    assert tiled.shape == (5, *ODD) and np.allclose(tiled.sum(0), 1, atol=1e-4)

    evaluated = run_cli("eval", run, shapes_data, "--split", "val", "--worst", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    assert (run / "eval" / "val" / "metrics.json").is_file()
    assert "pan" in write_report(run).read_text()
