"""Ensembles: several runs (or a folds parent) predicting as one, their probabilities averaged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

import segwise
from segwise.errors import SegwiseError
from segwise.folds import Folds
from segwise.inference import Ensemble

from .conftest import run_cli
from .test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def image(shapes_data) -> np.ndarray:
    from segwise.io import read_image

    return read_image(shapes_data / "val/images/val_0000.png")


def test_an_ensemble_of_copies_of_one_run_is_that_run(trained_run, image):
    single = segwise.load(trained_run, device="cpu")
    ensemble = segwise.load([trained_run] * 3, device="cpu")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    expected = single.predict_proba(image)
    np.testing.assert_allclose(ensemble.predict_proba(image), expected, atol=1e-6, rtol=0)
    batch = ensemble.predict_proba_batch([image, image[:40]])
    np.testing.assert_allclose(batch[0], expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(batch[1], single.predict_proba(image[:40]), atol=1e-6, rtol=0)
    pair = segwise.load([trained_run] * 2, device="cpu")
    tiled = {"tile": 48, "overlap": 0.25}  # every member tiled alike: the tiles' average is the run's
    np.testing.assert_allclose(
        pair.predict_proba(image, **tiled), single.predict_proba(image, **tiled), atol=1e-6, rtol=0
    )


def test_the_members_probabilities_are_exposed_stacked(trained_run, image):
    ensemble = segwise.load([trained_run, trained_run], device="cpu")
    stacked = ensemble.member_probabilities(image)
    assert stacked.shape == (2, 5, *image.shape[:2])
    np.testing.assert_allclose(stacked.mean(0), ensemble.predict_proba(image), atol=1e-6, rtol=0)


def test_the_average_is_of_the_members_own_predictions(trained_run, tmp_path, image):
    """A member with other preprocessing predicts with its own: the mean of the two, not of one twice."""
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["preprocess"]["input_size"] = [32, 32]
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    a, b = segwise.load(trained_run, device="cpu"), segwise.load(other, device="cpu")
    expected = (a.predict_proba(image) + b.predict_proba(image)) / 2
    assert not np.allclose(a.predict_proba(image), b.predict_proba(image), atol=1e-3)
    np.testing.assert_allclose(segwise.load([trained_run, other]).predict_proba(image), expected, atol=1e-6)


def test_runs_with_other_classes_are_refused_naming_both(trained_run, tmp_path):
    other = tmp_path / "renamed"
    shutil.copytree(trained_run, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["classes"]["names"][1] = "circle"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SegwiseError, match=f"{other}: its classes .*circle.* differ from {trained_run}'s"):
        segwise.load([trained_run, other])


def test_a_folds_parent_loads_its_folds_and_names_a_missing_one(trained_run, tmp_path, image):
    parent = tmp_path / "cv"
    for index in range(2):
        shutil.copytree(trained_run, parent / f"fold_{index}")
    Folds(2, 0, "/data", [["a.png"], ["b.png"]]).write(parent)
    ensemble = segwise.load(parent, device="cpu")
    assert isinstance(ensemble, Ensemble) and ensemble.run_dir == parent and len(ensemble.members) == 2
    np.testing.assert_allclose(
        ensemble.predict_proba(image), segwise.load(trained_run).predict_proba(image), atol=1e-6, rtol=0
    )
    (parent / "fold_1/model.safetensors").unlink()
    with pytest.raises(
        SegwiseError,
        match="fold 1 of .* is not trained; train it with `segwise train /data --folds 2 --fold 1",
    ):
        segwise.load(parent)


@pytest.fixture(scope="module")
def runs_copy(trained_run, tmp_path_factory):
    copy = tmp_path_factory.mktemp("ensemble-runs") / "tiny"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("last.pt", "eval", "report.html"))
    return copy


def test_eval_of_an_ensemble_needs_an_output_folder(runs_copy, shapes_data):
    result = run_cli("eval", runs_copy, shapes_data, "--ensemble", runs_copy)
    assert_one_line_error(result, "an ensemble of several runs has no run folder", "pass -o FOLDER")


def test_eval_and_predict_of_copies_match_the_single_run(runs_copy, shapes_data, tmp_path):
    single = run_cli("eval", runs_copy, shapes_data, "--split", "test", "-o", tmp_path / "one")
    both = run_cli(
        "eval", runs_copy, shapes_data, "--split", "test", "--ensemble", runs_copy, "-o", tmp_path / "two"
    )
    assert single.returncode == 0 and both.returncode == 0, both.stderr
    assert "ensemble of 2 runs" in both.stdout and "ensemble" not in single.stdout
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert two["confusion_matrix"] == one["confusion_matrix"]
    image = shapes_data / "test/images/test_0000.png"
    result = run_cli(
        "predict", runs_copy, image, "--ensemble", runs_copy, "-o", tmp_path / "p", "--format", "npy"
    )
    assert result.returncode == 0, result.stderr
    expected = segwise.load(runs_copy, device="cpu").predict_proba(image)
    written = np.load(tmp_path / "p/test_0000_proba.npy")  # stored as float16: its resolution, not 1e-6
    np.testing.assert_allclose(written, expected.astype(written.dtype), atol=1e-6, rtol=0)


def test_onnx_backend_is_refused_for_an_ensemble(runs_copy, shapes_data, tmp_path):
    result = run_cli(
        "predict",
        runs_copy,
        shapes_data / "val/images",
        "-o",
        tmp_path / "o",
        "--ensemble",
        runs_copy,
        "--backend",
        "onnxruntime",
    )
    assert_one_line_error(result, "drop it for an ensemble")


def test_an_ensembles_uncertainty_is_the_spread_of_its_members(runs_copy, shapes_data, tmp_path):
    image = shapes_data / "test/images/test_0000.png"
    for name, extra in (("one", []), ("two", ["--ensemble", runs_copy])):
        result = run_cli(
            "predict", runs_copy, image, *extra, "-o", tmp_path / name, "--format", "uncertainty"
        )
        assert result.returncode == 0, result.stderr
    single, pair = (
        np.asarray(Image.open(tmp_path / name / "test_0000_uncertainty.png")) for name in ("one", "two")
    )
    assert single.max() > 0  # one run: the entropy of its probabilities
    assert pair.max() == 0  # two identical members: they never disagree
