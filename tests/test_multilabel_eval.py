"""Evaluating multilabel runs (one 0/1 mask per class): metrics, boundary scores, figures, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segwise.constants import IGNORE_INDEX
from segwise.errors import SegwiseError
from segwise.evaluate import Sample, evaluate_split, metrics_dict, write_evaluation
from segwise.metrics import BoundaryScores, MultilabelConfusionMatrix
from segwise.report.figures import error_map, plot_worst
from segwise.task import Classes

NAMES = ["road", "car"]
PALETTE = [[200, 0, 0], [0, 0, 200]]


def _masks(*planes) -> torch.Tensor:
    """Label planes (lists of rows) → one image, 1×C×H×W."""
    return torch.tensor([planes])


# ---------------------------------------------------------------- metrics_dict and per-image stats
def test_metrics_dict_on_a_hand_computed_multilabel_matrix():
    # road: TP 1 (0,0), FN 1 (0,1), FP 1 (0,2), TN 3.  car: TP 2, FN 1 (1,2), FP 0, TN 3.
    target = _masks([[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 1]])
    prediction = _masks([[1, 0, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0]])
    matrix = MultilabelConfusionMatrix(2, per_image=True)
    matrix.update(prediction, target)
    metrics = metrics_dict(matrix, NAMES, images=1)

    assert metrics["pixels"] == 6  # each pixel once, not once per label
    road, car = metrics["per_class"]["road"], metrics["per_class"]["car"]
    assert (road["support"], road["predicted"], car["support"], car["predicted"]) == (2, 2, 3, 2)
    assert road["iou"] == pytest.approx(1 / 3) and car["iou"] == pytest.approx(2 / 3)
    assert road["dice"] == pytest.approx(1 / 2) and car["dice"] == pytest.approx(4 / 5)
    assert road["precision"] == pytest.approx(1 / 2) and car["precision"] == pytest.approx(1.0)
    assert road["recall"] == pytest.approx(1 / 2) and car["recall"] == pytest.approx(2 / 3)
    assert road["accuracy"] == pytest.approx(4 / 6) and car["accuracy"] == pytest.approx(5 / 6)
    assert metrics["overall"]["mean_iou"] == pytest.approx(1 / 2)
    assert metrics["overall"]["pixel_accuracy"] == pytest.approx(9 / 12)  # over label decisions
    assert metrics["confusion_matrix"]["labels"] == NAMES
    assert metrics["confusion_matrix"]["counts"] == [[[3, 1], [1, 1]], [[3, 0], [1, 2]]]
    json.dumps(metrics, allow_nan=False)  # metrics.json must stay valid JSON


def test_per_image_stats_count_each_pixel_once_and_leave_void_out():
    matrix = MultilabelConfusionMatrix(3, per_image=True)
    first = torch.zeros(1, 3, 4, 5, dtype=torch.long)
    first[0, 1, :, :2] = 1
    matrix.update(first, first)  # 20 pixels, all right
    second = torch.ones(1, 3, 6, 5, dtype=torch.long)
    second[0, :, :2] = IGNORE_INDEX  # augmentation padding: every label void on two rows
    guess = torch.ones_like(second)
    guess[0, 0] = 0  # label 0 wrong on each of the 20 counted pixels
    matrix.update(guess, second)

    rows = matrix.per_image_stats()
    assert [row["pixels"] for row in rows] == [20, 20]
    assert rows[0]["pixel_accuracy"] == 1.0
    assert rows[1]["pixel_accuracy"] == pytest.approx(40 / 60)
    assert rows[1]["iou"] == [0.0, 1.0, 1.0]
    assert matrix.pixels() == 40


# ---------------------------------------------------------------- boundary scores
def _square(left: int, size: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[2:6, left : left + 4] = 1
    return mask


def test_multilabel_boundary_scores_by_hand_on_overlapping_labels():
    # Label 0 is the shifted-squares case of test_metrics (tolerance 1: IoU 1/5, BF 2/3); label 1
    # overlaps it and is predicted exactly; label 2 appears nowhere. Overlap is what multiclass
    # index masks cannot express, so this only passes if each label is scored on its own plane.
    target = torch.stack([_square(2), _square(2), torch.zeros(8, 8, dtype=torch.long)])[None]
    prediction = torch.stack([_square(4), _square(2), torch.zeros(8, 8, dtype=torch.long)])[None]
    target[0, 1, :, :4] = IGNORE_INDEX  # void for label 1 only: its left edge is no contour
    scores = BoundaryScores(3, tolerance=1, multilabel=True)
    scores.update(prediction, target)
    assert scores.iou()[0].item() == pytest.approx(1 / 5)
    assert scores.f1()[0].item() == pytest.approx(2 / 3)
    assert scores.iou()[1].item() == 1.0 and scores.f1()[1].item() == 1.0
    assert scores.iou()[2].isnan() and scores.f1()[2].isnan()


def test_multilabel_boundary_scores_equal_one_binary_problem_per_label():
    rng = np.random.default_rng(3)
    target = torch.zeros(2, 3, 24, 24, dtype=torch.long)
    prediction = torch.zeros_like(target)
    for masks in (target, prediction):
        for image in range(2):
            for label in range(3):
                top, left = rng.integers(0, 14, 2)
                height, width = rng.integers(4, 10, 2)
                masks[image, label, top : top + height, left : left + width] = 1
    target[1, :, :, -3:] = IGNORE_INDEX
    target[0, 2, :5] = IGNORE_INDEX

    scores = BoundaryScores(3, tolerance=2, multilabel=True)
    scores.update(prediction, target)
    for label in range(3):  # oracle: label vs not-label as a 2-class index mask, class 1 = the label
        single = BoundaryScores(2, tolerance=2)
        single.update(prediction[:, label], target[:, label])
        for reduction in ("dataset", "image"):
            assert scores.iou(reduction)[label].item() == pytest.approx(single.iou(reduction)[1].item())
            assert scores.f1(reduction)[label].item() == pytest.approx(single.f1(reduction)[1].item())


def test_multilabel_boundary_scores_refuse_index_masks():
    scores = BoundaryScores(2, multilabel=True)
    target = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    with pytest.raises(SegwiseError, match="differs from target"):
        scores.update(torch.zeros(1, 8, 8, dtype=torch.long), target)  # an argmax, not label planes


# ---------------------------------------------------------------- figures
def test_error_map_marks_a_pixel_wrong_if_any_label_is():
    truth = np.array([[[1, 0, 1, IGNORE_INDEX]], [[0, 0, 1, IGNORE_INDEX]]], np.uint8)  # C=2, 1×4
    prediction = np.array([[[1, 0, 1, 1]], [[0, 1, 0, 1]]], np.uint8)
    colours = error_map(truth, prediction, IGNORE_INDEX)
    assert colours.shape == (1, 4, 3)
    assert colours[0].tolist() == [[255, 255, 255], [220, 30, 30], [220, 30, 30], [128, 128, 128]]


def test_plot_worst_draws_multilabel_samples(tmp_path):
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"s{i}",
            0.25 * i,
            rng.integers(0, 255, (16, 20, 3), dtype=np.uint8),
            rng.integers(0, 2, (2, 16, 20)).astype(np.uint8),
            rng.integers(0, 2, (2, 16, 20)).astype(np.uint8),
        )
        for i in range(2)
    ]
    plot_worst(samples, PALETTE, IGNORE_INDEX, tmp_path / "worst.png")
    with Image.open(tmp_path / "worst.png") as image:
        assert image.size == (1200, 600)  # 12×(3 per sample) inches at 100 dpi
        assert len(image.getcolors(1 << 20)) > 10  # not blank: the panels were drawn


# ---------------------------------------------------------------- evaluate_split and its files
class _StubPredictor:
    """Given probabilities per image (as a sigmoid model would give them), looked up by pixel content."""

    def __init__(self, probabilities: dict[bytes, np.ndarray]) -> None:
        classes = Classes(NAMES, [0, 1], PALETTE, multilabel=True)
        self.config = SimpleNamespace(classes=classes)
        self.probabilities = probabilities
        self.calibration = None  # no temperature

    def predict_proba(self, image: np.ndarray, calibrated: bool = True) -> np.ndarray:
        return self.probabilities[image.tobytes()]


def _dataset(root: Path) -> tuple[list[tuple[Path, Path]], dict, _StubPredictor]:
    """Three images of different sizes with 2-channel TIFF masks, {stem: (truth, probabilities)}
    and a stub predictor giving those probabilities."""
    import tifffile

    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs, expected, probabilities = [], {}, {}
    for stem, (height, width) in (("a", (12, 16)), ("b", (20, 10)), ("c", (16, 16))):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        truth = np.zeros((2, height, width), np.uint8)
        truth[0, : height // 2] = 1
        truth[1, :, width // 3 :] = 1  # overlaps label 0
        proba = np.clip(truth * 0.6 + rng.uniform(0, 0.5, truth.shape), 0, 1).astype(np.float32)
        proba[0, -1, :3] = 0.5  # exactly at the threshold: not predicted
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        tifffile.imwrite(root / "masks" / f"{stem}.tif", truth.transpose(1, 2, 0), photometric="minisblack")
        pairs.append((root / "images" / f"{stem}.png", root / "masks" / f"{stem}.tif"))
        expected[stem], probabilities[image.tobytes()] = (truth, proba), proba
    return pairs, expected, _StubPredictor(probabilities)


def test_evaluate_split_scores_each_label_at_half_probability(tmp_path):
    pairs, data, predictor = _dataset(tmp_path / "data")
    evaluation = evaluate_split(predictor, pairs, worst_k=2)
    out = tmp_path / "eval"
    metrics = write_evaluation(evaluation, predictor, out)

    # Independent counts: a label is predicted where its probability is above 0.5.
    tp, fp, fn, image_miou = np.zeros(2), np.zeros(2), np.zeros(2), {}
    for stem, (truth, proba) in data.items():
        predicted, present = proba > 0.5, truth == 1
        image_tp = (predicted & present).sum((1, 2))
        image_fp = (predicted & ~present).sum((1, 2))
        image_fn = (~predicted & present).sum((1, 2))
        tp, fp, fn = tp + image_tp, fp + image_fp, fn + image_fn
        image_miou[stem] = np.mean(image_tp / (image_tp + image_fp + image_fn))
    assert metrics["pixels"] == 12 * 16 + 20 * 10 + 16 * 16 and metrics["images"] == 3
    for index, name in enumerate(NAMES):
        scores = metrics["per_class"][name]
        assert scores["iou"] == pytest.approx(tp[index] / (tp[index] + fp[index] + fn[index]), abs=1e-12)
        assert scores["support"] == tp[index] + fn[index]
        assert scores["predicted"] == tp[index] + fp[index]
        assert scores["boundary_iou"] is not None and scores["boundary_f1"] is not None
    assert "best_threshold" not in metrics  # two labels are not a binary run
    assert [s.name for s in evaluation.worst] == sorted(image_miou, key=image_miou.get)[:2]
    assert evaluation.worst[0].truth.shape == evaluation.worst[0].prediction.shape

    assert json.loads((out / "metrics.json").read_text()) == metrics
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["pixels"]) for row in rows] == [192, 200, 256]
    assert [float(row["mean_iou"]) for row in rows] == pytest.approx(list(image_miou.values()), abs=1e-6)
    for name in ("confusion.png", "iou_per_class.png", "worst.png"):
        assert (out / name).stat().st_size > 0, name
