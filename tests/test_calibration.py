"""Temperature scaling, ECE and the reliability diagram (calibration.py, evaluate.py, the trainer)."""

import json
import shutil

import numpy as np
import pytest
import torch

import segwise
from segwise.calibration import (
    Calibration,
    PixelSample,
    Reliability,
    fit_temperature,
    with_temperature,
)
from segwise.constants import CALIBRATION_JSON, IGNORE_INDEX
from segwise.errors import SegwiseError
from segwise.io import read_image
from segwise.task import Task
from tests.conftest import run_cli


def calibrated_pixels(task: Task, count: int = 40_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits K×1×P and labels drawn from their own probabilities: a perfectly calibrated model."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(task.num_classes, 1, count, generator=generator, dtype=torch.float64) * 2
    if task.per_label:
        labels = (
            torch.rand(logits.shape, generator=generator, dtype=torch.float64) < torch.sigmoid(logits)
        ).long()
    else:
        labels = torch.multinomial(torch.softmax(logits[:, 0], 0).T, 1, generator=generator).T
    return logits, labels


@pytest.mark.parametrize("mode, classes", [("multiclass", 5), ("binary", 2), ("multilabel", 3)])
def test_fitted_temperature_undoes_over_confidence_and_lowers_ece(mode, classes):
    task = Task(mode, classes)
    logits, labels = calibrated_pixels(task)
    sample = PixelSample(task, per_image=10**9)
    sample.add(logits * 5, labels)  # over-confident: five times the calibrated logits
    found = fit_temperature(sample, "val")
    assert found.temperature == pytest.approx(5, rel=0.1)
    assert found.ece_after < found.ece_before / 2 and found.ece_after < 0.02
    assert found.nll_after < found.nll_before
    assert found.pixels == labels.shape[-1] and found.split == "val"


def test_a_calibrated_model_keeps_a_temperature_near_one():
    task = Task("multiclass", 4)
    logits, labels = calibrated_pixels(task, seed=3)
    sample = PixelSample(task, per_image=10**9)
    sample.add(logits, labels)
    assert fit_temperature(sample, "val").temperature == pytest.approx(1, abs=0.05)


def test_pixel_sample_leaves_out_void_and_keeps_at_most_per_image():
    task = Task("multiclass", 3)
    truth = torch.full((10, 10), IGNORE_INDEX)
    truth[:2] = 1  # 20 valid pixels
    sample = PixelSample(task, per_image=15)
    sample.add(torch.randn(3, 10, 10), truth)
    logits, labels = sample.tensors()
    assert logits.shape == (15, 3) and (labels == 1).all()
    with pytest.raises(SegwiseError, match="no valid pixels"):
        PixelSample(task, per_image=5).tensors()


def test_ece_of_a_known_case():
    task = Task("multiclass", 2)
    reliability = Reliability(task)
    # four pixels at confidence 0.9 of which two are right (|0.5 − 0.9| = 0.4), four at 0.6 all right
    probabilities = np.array([[0.9] * 4 + [0.6] * 4, [0.1] * 4 + [0.4] * 4])[:, None, :]
    truth = np.array([[0, 0, 1, 1, 0, 0, 0, 0]])
    reliability.add(probabilities, truth)
    assert reliability.ece() == pytest.approx((4 * 0.4 + 4 * 0.4) / 8)
    reliability.add(probabilities, np.full((1, 8), IGNORE_INDEX))  # void counts for nothing
    assert reliability.count.sum() == 8


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_temperature_on_probabilities_equals_temperature_on_logits(activation):
    logits = torch.randn(4, 6, 7, dtype=torch.float64) * 3
    scale = torch.sigmoid if activation == "sigmoid" else (lambda z: torch.softmax(z, 0))
    probabilities = scale(logits).float().numpy()
    np.testing.assert_allclose(
        with_temperature(probabilities, 2.5, activation), scale(logits / 2.5), atol=1e-5
    )
    assert with_temperature(probabilities, None, activation) is probabilities


def calibrated_copy(run, tmp_path, temperature: float):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    Calibration(temperature, 0.2, 0.05, 1.0, 0.8, "val", 100).save(copy)
    return copy


def test_training_fits_a_temperature_and_masks_do_not_depend_on_it(trained_run, shapes_data, tmp_path):
    stored = json.loads((trained_run / CALIBRATION_JSON).read_text())
    assert stored["split"] == "val (training size)" and stored["pixels"] > 0
    assert 0.05 <= stored["temperature"] <= 20 and stored["nll_after"] <= stored["nll_before"]

    image = sorted((shapes_data / "val" / "images").iterdir())[0]
    copy = calibrated_copy(trained_run, tmp_path, 4.0)
    hot, plain = segwise.load(copy, device="cpu"), segwise.load(trained_run, device="cpu")
    plain.calibration = None  # the model's own probabilities
    raw = plain.predict_proba(image)
    np.testing.assert_allclose(hot.predict_proba(image), with_temperature(raw, 4.0, "softmax"), atol=1e-5)
    np.testing.assert_array_equal(hot.predict_proba(image, calibrated=False), raw)
    assert np.array_equal(hot.predict(image), plain.predict(image))
    # a threshold (unsure pixels → background) that the tempered probabilities would cross elsewhere
    threshold = float(np.median(raw.max(0)))
    assert (with_temperature(raw, 4.0, "softmax").max(0) > threshold).sum() != (raw.max(0) > threshold).sum()
    for predictor, out in ((hot, tmp_path / "hot"), (plain, tmp_path / "plain")):
        predictor.predict_to_folder([image], out, formats="png,npy", threshold=threshold)
    hot_png, plain_png = (
        np.asarray(read_image(f / f"{image.stem}.png")) for f in (tmp_path / "hot", tmp_path / "plain")
    )
    assert np.array_equal(hot_png, plain_png)
    hot_npy = np.load(tmp_path / "hot" / f"{image.stem}_proba.npy")
    assert not np.allclose(hot_npy, np.load(tmp_path / "plain" / f"{image.stem}_proba.npy"), atol=1e-2)


def test_eval_calibrate_writes_the_temperature_ece_and_a_reliability_diagram(
    trained_run, shapes_data, tmp_path
):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    (copy / CALIBRATION_JSON).unlink()
    result = run_cli("eval", copy, shapes_data, "--calibrate", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert (
        "calibration error (ECE)" in result.stdout and f"saved to {copy / CALIBRATION_JSON}" in result.stdout
    )
    fitted = json.loads((copy / CALIBRATION_JSON).read_text())
    assert fitted["split"] == "val"
    metrics = json.loads((copy / "eval" / "val" / "metrics.json").read_text())
    assert 0 <= metrics["overall"]["ece"] <= 1 and metrics["overall"]["ece_calibrated"] is not None
    assert metrics["calibration"]["temperature"] == fitted["temperature"]
    assert len(metrics["calibration"]["bins"]) == 15
    assert (copy / "eval" / "val" / "reliability.png").stat().st_size > 1000
    assert "reliability diagram" in (copy / "report.html").read_text()


@pytest.mark.parametrize(
    "content, problem",
    [("{not json", "not a calibration file"), (json.dumps({"temperature": 1e6}), "not a calibration file")],
)
def test_a_broken_calibration_file_is_one_line_naming_it(trained_run, tmp_path, content, problem):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    (copy / CALIBRATION_JSON).write_text(content)
    with pytest.raises(SegwiseError, match=problem) as caught:
        segwise.load(copy, device="cpu")
    assert str(copy / CALIBRATION_JSON) in str(caught.value)


def test_a_temperature_out_of_range_is_refused(trained_run, tmp_path):
    copy = calibrated_copy(trained_run, tmp_path, 1.0)
    values = json.loads((copy / CALIBRATION_JSON).read_text()) | {"temperature": 1e6}
    (copy / CALIBRATION_JSON).write_text(json.dumps(values))
    result = run_cli("predict", copy, "x.png", "-o", tmp_path / "out")
    assert result.returncode == 2 and "temperature 1000000.0 is outside" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
