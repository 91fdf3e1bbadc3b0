"""Cross-validation: folds drawn from the train split (disjoint, covering it, class presence balanced),
a fold trains on the data without its fold, and `train --folds K` writes the folds parent."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from segwise.crossval import OutOfFold, out_of_fold
from segwise.data import load_data
from segwise.errors import SegwiseError
from segwise.folds import Folds, stratified_folds

from .conftest import TINY, run_cli
from .test_cli import assert_one_line_error


def rare_class_presence(images: int = 30, rare: int = 7) -> np.ndarray:
    """Class 0 everywhere, class 1 in two images of three, class 2 (rare) in `rare` images that sit
    together at the start (a split in order would give them all to the first fold)."""
    presence = np.zeros((images, 3), bool)
    presence[:, 0] = True
    presence[np.arange(images) % 3 != 0, 1] = True
    presence[:rare, 2] = True
    return presence


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_disjoint_cover_the_images_and_share_the_rare_class(k):
    presence = rare_class_presence()
    names = [f"train/{i:02d}.png" for i in range(len(presence))]
    folds = stratified_folds(names, presence, k, seed=0)
    assert len(folds) == k
    everything = [name for fold in folds for name in fold]
    assert sorted(everything) == names and len(set(everything)) == len(names)  # disjoint, covering
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(presence.shape[1]):  # every class, the rare one above all: its share ±1 per fold
        holding = {names[i] for i in np.flatnonzero(presence[:, c])}
        counts = [len(holding & set(fold)) for fold in folds]
        assert max(counts) - min(counts) <= 1, (c, counts)


def test_folds_follow_the_seed():
    presence = rare_class_presence()
    names = [f"{i:02d}" for i in range(len(presence))]
    assert stratified_folds(names, presence, 3, 0) == stratified_folds(names, presence, 3, 0)
    assert stratified_folds(names, presence, 3, 0) != stratified_folds(names, presence, 3, 1)


@pytest.mark.parametrize("k", [1, 31])
def test_a_fold_count_out_of_range_is_refused(k):
    presence = rare_class_presence()
    with pytest.raises(SegwiseError, match=f"--folds {k}: needs 2 to 30 folds"):
        stratified_folds([str(i) for i in range(30)], presence, k, 0)


def test_held_out_images_are_the_validation_set_and_the_val_split_stays_out(shapes_data):
    held = ["train/images/train_0003.png", "train/images/train_0010.png"]
    data = load_data(shapes_data, held_out=held)
    val = sorted(p[0].relative_to(shapes_data).as_posix() for p in data.val_pairs)
    train = {p[0].relative_to(shapes_data).as_posix() for p in data.train_pairs}
    assert val == held and len(data.val_images) == 2
    assert len(train) == 14 and not train & set(held)
    assert all(name.startswith("train/") for name in train)  # the data's own val/ split is not trained on
    assert data.held_out  # so a run writes RUN/val.txt naming them


def test_held_out_names_that_are_not_training_images_are_refused(shapes_data):
    with pytest.raises(
        SegwiseError, match=r"data.held_out: 1 of the 2 images .* \(first: val/images/val_0000.png\)"
    ):
        load_data(shapes_data, held_out=["train/images/train_0003.png", "val/images/val_0000.png"])


def test_a_malformed_folds_file_is_one_clear_error(tmp_path):
    (tmp_path / "folds.json").write_text(json.dumps({"k": 2, "seed": 0, "data": "/d", "folds": [["a"]]}))
    with pytest.raises(SegwiseError, match="folds.json: expected"):
        Folds.read(tmp_path)


@pytest.fixture(scope="module")
def folds_parent(shapes_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cv-runs")
    flags = ["--encoder", TINY["encoder"], "--batch-size", "4", "--epochs", "1", "--seed", "3"]
    result = run_cli("train", shapes_data, "--folds", "2", "--name", "cv", "--runs-dir", runs, "-q", *flags)
    assert result.returncode == 0, result.stderr
    assert "cross-validation: 2 of 2 folds" in result.stdout
    return runs / "cv"


@pytest.mark.slow
def test_train_folds_writes_the_folds_their_runs_and_the_summary(folds_parent, shapes_data):
    drawn = Folds.read(folds_parent)
    assert (drawn.k, drawn.seed) == (2, 3)
    train_split = sorted(
        p.relative_to(shapes_data).as_posix() for p in (shapes_data / "train/images").iterdir()
    )
    assert sorted(drawn.folds[0] + drawn.folds[1]) == train_split and not set(drawn.folds[0]) & set(
        drawn.folds[1]
    )
    for index, fold in enumerate(drawn.folds):
        run = folds_parent / f"fold_{index}"
        assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
        assert (run / "val.txt").read_text().split() == fold  # validated on exactly its fold
        with open(run / "oof/index.csv") as handle:
            assert [row["image"] for row in csv.DictReader(handle)] == fold
    summary = json.loads((folds_parent / "cv_summary.json").read_text())
    assert summary["done"] == [0, 1]
    values = [summary["per_fold"][f"fold_{i}"]["overall.mean_iou"] for i in range(2)]
    assert summary["mean"]["overall.mean_iou"] == pytest.approx(np.mean(values), abs=1e-6)
    assert summary["std"]["overall.mean_iou"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert "per_class.disc.iou" in summary["mean"]
    header = (folds_parent / "cv_summary.csv").read_text().splitlines()[0]
    assert header == "metric,fold_0,fold_1,mean,std,pooled"


@pytest.mark.slow
def test_out_of_fold_predictions_read_back_and_pool_into_the_summary(folds_parent, shapes_data):
    drawn = Folds.read(folds_parent)
    found = list(out_of_fold(folds_parent))
    assert [item.image for item in found] == drawn.folds[0] + drawn.folds[1]
    first: OutOfFold = found[0]
    assert first.probabilities.dtype == np.float32 and first.probabilities.shape == (5, 64, 64)
    assert np.allclose(first.probabilities.sum(0), 1, atol=5 * 5 / 255)  # softmax, quantised to 1/255
    assert first.truth.shape == (64, 64) and first.confusion.shape == (5, 5)
    assert first.confusion.sum() == (first.truth != 255).sum()
    pooled = sum(item.confusion for item in found)
    per_fold = [
        np.array(
            json.loads((folds_parent / f"fold_{i}/oof/metrics.json").read_text())["confusion_matrix"][
                "counts"
            ]
        )
        for i in range(2)
    ]
    assert (pooled == per_fold[0] + per_fold[1]).all()
    summary = json.loads((folds_parent / "cv_summary.json").read_text())
    iou = np.diag(pooled) / (pooled.sum(0) + pooled.sum(1) - np.diag(pooled))
    assert summary["pooled"]["overall.mean_iou"] == pytest.approx(np.nanmean(iou), abs=1e-6)


@pytest.mark.slow
def test_an_index_that_points_outside_its_folder_is_refused(folds_parent, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(folds_parent, copy)
    (copy / "fold_0/oof/index.csv").write_text("file,image\n../../fold_1/oof/00000.npz,x.png\n")
    with pytest.raises(SegwiseError, match="is not `NNNNN.npz,image`"):
        list(out_of_fold(copy))


@pytest.mark.slow
def test_one_fold_joins_an_existing_folds_folder_and_refuses_a_trained_one(folds_parent, shapes_data):
    runs, name = folds_parent.parent, folds_parent.name
    again = run_cli("train", shapes_data, "--folds", "2", "--fold", "1", "--name", name, "--runs-dir", runs)
    assert_one_line_error(again, "fold 1 exists", f"--resume {folds_parent / 'fold_1'}")
    other = run_cli("train", shapes_data, "--folds", "3", "--fold", "0", "--name", name, "--runs-dir", runs)
    assert_one_line_error(other, "holds 2 folds", "pass another --name")


def test_fold_without_folds_is_refused(shapes_data, tmp_path):
    result = run_cli("train", shapes_data, "--fold", "1", "--runs-dir", tmp_path)
    assert_one_line_error(result, "--fold I picks one of --folds K")


@pytest.mark.slow
def test_a_resumed_fold_writes_its_out_of_fold_predictions(folds_parent, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(folds_parent, copy)
    shutil.rmtree(copy / "fold_1/oof")
    (copy / "cv_summary.json").unlink()
    result = run_cli("train", "--resume", copy / "fold_1", "-q")
    assert result.returncode == 0, result.stderr
    assert (copy / "fold_1/oof/metrics.json").is_file()
    assert json.loads((copy / "cv_summary.json").read_text())["done"] == [0, 1]
