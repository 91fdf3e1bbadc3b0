"""Uncertainty maps: normalized entropy, spread across views or members, `--format uncertainty`."""

import math

import numpy as np
import pytest
from PIL import Image

import segwise
from segwise.errors import SegwiseError
from segwise.inference.uncertainty import entropy_map, spread_map, to_png16
from tests.conftest import run_cli


def test_entropy_is_zero_when_sure_one_when_uniform_and_normalized_between():
    probabilities = np.zeros((4, 1, 3), np.float32)
    probabilities[:, 0, 0] = [1, 0, 0, 0]  # sure
    probabilities[:, 0, 1] = 0.25  # uniform
    probabilities[:, 0, 2] = [0.5, 0.5, 0, 0]  # two classes tied: log 2 / log 4
    np.testing.assert_allclose(entropy_map(probabilities, per_label=False)[0], [0, 1, 0.5], atol=1e-6)


def test_per_label_entropy_is_the_mean_binary_entropy():
    probabilities = np.array([[[0.5, 0.9]], [[1.0, 0.9]]], np.float32)  # 2 labels × 1 × 2
    binary = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    np.testing.assert_allclose(entropy_map(probabilities, per_label=True)[0], [0.5, binary], atol=1e-6)


def test_spread_is_the_variance_across_maps_scaled_to_one():
    agree = np.full((3, 2, 1, 1), 0.5)
    disagree = np.stack([np.array([[[1.0]], [[0.0]]]), np.array([[[0.0]], [[1.0]]])])  # 2 maps × 2 × 1 × 1
    assert spread_map(agree)[0, 0] == 0
    assert spread_map(disagree)[0, 0] == pytest.approx(1)
    with pytest.raises(SegwiseError, match="at least two"):
        spread_map(agree[:1])


def test_sixteen_bit_levels():
    assert to_png16(np.array([0.0, 0.5, 1.0, 1.5])).tolist() == [0, 32768, 65535, 65535]


def test_predict_writes_a_16_bit_entropy_png_of_the_calibrated_probabilities(
    trained_run, shapes_data, tmp_path
):
    image = sorted((shapes_data / "val" / "images").iterdir())[0]
    result = run_cli("predict", trained_run, image, "-o", tmp_path / "out", "--format", "png,uncertainty")
    assert result.returncode == 0, result.stderr
    written = Image.open(tmp_path / "out" / f"{image.stem}_uncertainty.png")
    values = np.asarray(written)
    assert written.mode.startswith("I") and values.shape == Image.open(image).size[::-1]
    probabilities = segwise.load(trained_run, device="cpu").predict_proba(
        image
    )  # the run's temperature applied
    np.testing.assert_allclose(values, to_png16(entropy_map(probabilities, per_label=False)), atol=2)
    assert 0 < values.mean() < 65535


def test_with_tta_the_map_is_the_spread_across_the_views(trained_run, shapes_data, tmp_path):
    image = sorted((shapes_data / "val" / "images").iterdir())[0]
    args = ("-o", tmp_path / "out", "--format", "uncertainty", "--tta", "flips", "--device", "cpu")
    result = run_cli("predict", trained_run, image, *args)
    assert result.returncode == 0, result.stderr
    values = np.asarray(Image.open(tmp_path / "out" / f"{image.stem}_uncertainty.png"))
    predictor = segwise.load(trained_run, device="cpu")
    views = np.stack([predictor.predict_proba(image, tta=(name,)) for name in ("identity", "hflip", "vflip")])
    np.testing.assert_allclose(values, to_png16(spread_map(views)), atol=2)
    assert values.max() > 0  # a flip changes an untrained model's answer somewhere
