"""Metrics: hand-made cases, oracle tests against scikit-learn and torchmetrics, properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segwise.constants import IGNORE_INDEX
from segwise.errors import SegwiseError
from segwise.metrics import BoundaryScores, ConfusionMatrix, MultilabelConfusionMatrix

C = 5


def _pair(seed: int = 0, images: int = 4, size: int = 12):
    """Random prediction/target with class 4 absent from both, class 3 absent from truth, ignored rows."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (images, size, size), generator=generator)
    prediction = torch.randint(0, 4, (images, size, size), generator=generator)
    target[:, :2] = IGNORE_INDEX
    target[0] = torch.where(target[0] == 1, 0, target[0])  # class 1 absent from image 0's truth
    return prediction, target


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels():
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE_INDEX])
    prediction = torch.tensor([0, 1, 1, 1, 0, 2])
    matrix = ConfusionMatrix(3)
    matrix.update(prediction, target)
    assert matrix.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # IoU: class 0 → 1/(2+1), class 1 → 2/3, class 2 → 0/1
    assert matrix.iou().tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)
    # precision: 1/2, 2/3, 0/0 → NaN; recall: 1/2, 2/2, 0/1
    assert matrix.precision()[:2].tolist() == pytest.approx([1 / 2, 2 / 3]) and matrix.precision()[2].isnan()
    assert matrix.recall().tolist() == pytest.approx([1 / 2, 1.0, 0.0])
    # one-vs-rest accuracy of class 2: TN = 4, TP = 0 out of 5 counted pixels
    assert matrix.accuracy()[2].item() == pytest.approx(4 / 5)
    # fwIoU: supports 2, 2, 1 of 5 → (2/5)(1/3) + (2/5)(2/3) + (1/5)·0
    assert matrix.frequency_weighted_iou() == pytest.approx(2 / 5)


def test_mean_iou_skips_classes_absent_from_truth_and_prediction():
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    assert torch.isnan(matrix.iou()[2:]).all()
    assert matrix.mean_iou() == 1.0


def test_image_wise_reduction_averages_each_images_score():
    # image 0: perfect on class 0 only; image 1: class 1 half right.
    target = torch.tensor([[[0, 0]], [[1, 1]]])
    prediction = torch.tensor([[[0, 0]], [[1, 0]]])
    matrix = ConfusionMatrix(2, per_image=True)
    matrix.update(prediction, target)
    # image 0: IoU (1, NaN) → mIoU 1; image 1: IoU (0, 1/2) → mIoU 1/4; image-wise mIoU 5/8
    assert matrix.mean_iou("image") == pytest.approx(5 / 8)
    assert matrix.iou("image").tolist() == pytest.approx([0.5, 0.5])
    # dataset: class 0 TP 2, FP 1 → 2/3; class 1 TP 1, FN 1 → 1/2
    assert matrix.iou().tolist() == pytest.approx([2 / 3, 1 / 2])
    rows = matrix.per_image_stats()
    assert rows[0] == {"pixels": 2, "pixel_accuracy": 1.0, "mean_iou": 1.0, "iou": [1.0, None]}
    assert matrix.image_mean_iou(0) == 1.0 and matrix.image_mean_iou(-1) == pytest.approx(1 / 4)
    assert rows[1]["pixel_accuracy"] == 0.5
    with pytest.raises(SegwiseError, match="per_image=True"):
        ConfusionMatrix(2).iou("image")


def test_streaming_updates_equal_one_update_and_merge():
    prediction, target = _pair()
    whole, parts = ConfusionMatrix(C, per_image=True), ConfusionMatrix(C, per_image=True)
    whole.update(prediction, target)
    for chunk in range(2):
        parts.update(prediction[chunk * 2 : chunk * 2 + 2], target[chunk * 2 : chunk * 2 + 2])
    assert torch.equal(whole.matrix, parts.matrix)
    merged = ConfusionMatrix(C, per_image=True).merge(parts)
    assert torch.equal(merged.matrix, whole.matrix) and torch.equal(
        merged.image_matrices, whole.image_matrices
    )
    merged.all_reduce()  # a no-op outside torch.distributed
    assert torch.equal(merged.matrix, whole.matrix)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 6), max_size=4),
    multilabel=st.booleans(),
)
def test_streaming_over_any_batch_split_equals_all_at_once(seed, cuts, multilabel):
    generator = torch.Generator().manual_seed(seed)
    if multilabel:
        target = torch.randint(0, 3, (6, 3, 5, 5), generator=generator)  # 2 → ignore below
        target[target == 2] = IGNORE_INDEX
        prediction = torch.randint(0, 2, (6, 3, 5, 5), generator=generator)
        make = lambda: MultilabelConfusionMatrix(3, per_image=True)  # noqa: E731
    else:
        target = torch.randint(0, C + 1, (6, 5, 5), generator=generator)
        target[target == C] = IGNORE_INDEX
        prediction = torch.randint(0, C, (6, 5, 5), generator=generator)
        make = lambda: ConfusionMatrix(C, per_image=True)  # noqa: E731
    whole, streamed = make(), make()
    whole.update(prediction, target)
    bounds = [0, *sorted(cuts), 6]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop > start:
            streamed.update(prediction[start:stop], target[start:stop])
    assert torch.equal(whole.matrix, streamed.matrix)
    assert torch.equal(whole.image_matrices, streamed.image_matrices)
    assert whole.mean_iou("image") == pytest.approx(streamed.mean_iou("image"), nan_ok=True)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), tolerance=st.integers(1, 3))
def test_a_perfect_prediction_scores_one(seed, tolerance):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (2, 10, 10), generator=generator)
    prediction = target.clone()
    target[:, 0] = IGNORE_INDEX
    matrix, boundary = ConfusionMatrix(3, per_image=True), BoundaryScores(3, tolerance)
    matrix.update(prediction, target)
    boundary.update(prediction, target)
    assert matrix.mean_iou() == 1.0 and matrix.mean_iou("image") == 1.0 and matrix.pixel_accuracy() == 1.0
    assert float(matrix.dice().nanmean()) == 1.0 and matrix.frequency_weighted_iou() == 1.0
    assert float(boundary.iou().nanmean()) == 1.0 and float(boundary.f1().nanmean()) == 1.0


# ---------------------------------------------------------------- binary and multilabel forms
def test_multilabel_matrix_counts_each_label_and_skips_ignored_elements():
    target = torch.tensor([[[1, 0, IGNORE_INDEX], [0, 0, 1]]])  # 1 image, 2 labels, 3 pixels
    prediction = torch.tensor([[[1, 1, 1], [0, 1, 1]]])
    matrix = MultilabelConfusionMatrix(2)
    matrix.update(prediction, target)
    assert matrix.matrix.tolist() == [[[0, 1], [0, 1]], [[1, 1], [0, 1]]]
    assert matrix.iou().tolist() == pytest.approx([1 / 2, 1 / 2])
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)


# ---------------------------------------------------------------- boundary metrics by hand
def _square(left: int) -> torch.Tensor:
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 2:6, left : left + 4] = 1
    return mask


def test_boundary_iou_and_f1_on_shifted_squares():
    # Truth: 4×4 square rows 2–5, cols 2–5; prediction: the same square two columns right (cols 4–7).
    # Tolerance 1: each band is the square minus its 2×2 core (12 pixels). Shared: rows 2 and 5, cols
    # 4–5 → 4 pixels; union 12 + 12 − 4 = 20 → boundary IoU 1/5. Contours (1 pixel) are the same bands;
    # the truth contour's column 2 (4 pixels) is 2 away from any predicted contour pixel and the
    # prediction's column 7 likewise: precision = recall = 8/12 → BF = 2/3.
    scores = BoundaryScores(2, tolerance=1)
    scores.update(_square(4), _square(2))
    assert scores.iou()[1].item() == pytest.approx(1 / 5)
    assert scores.f1()[1].item() == pytest.approx(2 / 3)
    # Tolerance 2 reaches column 2 from column 4: every contour pixel is matched.
    loose = BoundaryScores(2, tolerance=2)
    loose.update(_square(4), _square(2))
    assert loose.f1()[1].item() == pytest.approx(1.0)
    assert loose.f1("image")[1].item() == pytest.approx(1.0)


def test_boundary_scores_skip_ignored_pixels_and_missing_classes():
    target, prediction = _square(2), _square(2)
    scores = BoundaryScores(3, tolerance=1)
    target[0, :, :4] = IGNORE_INDEX  # the left half of the square's boundary no longer counts
    scores.update(prediction, target)
    assert scores.iou()[1].item() == 1.0
    assert scores.iou()[2].isnan() and scores.f1()[2].isnan()  # class 2 never appears
    empty = BoundaryScores(2, tolerance=1)
    empty.update(torch.zeros(1, 8, 8, dtype=torch.long), _square(2))  # the square is missed entirely
    assert empty.f1()[1].item() == 0.0 and empty.iou()[1].item() == 0.0


# ---------------------------------------------------------------- scikit-learn oracle
sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed")


def _present(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return np.isin(np.arange(C), np.union1d(truth, predicted))


def _sklearn_scores(truth: np.ndarray, predicted: np.ndarray):
    """Per-class IoU and F1 from sklearn, NaN where a class is in neither (sklearn says 0 there)."""
    labels = list(range(C))
    iou = sklearn_metrics.jaccard_score(truth, predicted, labels=labels, average=None, zero_division=0)
    f1 = sklearn_metrics.f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    absent = ~_present(truth, predicted)
    return np.where(absent, np.nan, iou), np.where(absent, np.nan, f1)


def test_dataset_level_scores_match_sklearn():
    prediction, target = _pair()
    matrix = ConfusionMatrix(C)
    matrix.update(prediction, target)
    keep = target != IGNORE_INDEX
    truth, predicted = target[keep].numpy(), prediction[keep].numpy()
    expected = sklearn_metrics.confusion_matrix(truth, predicted, labels=list(range(C)))
    np.testing.assert_array_equal(matrix.matrix.numpy(), expected)
    iou, f1 = _sklearn_scores(truth, predicted)
    np.testing.assert_allclose(matrix.iou().numpy(), iou, atol=1e-6)
    np.testing.assert_allclose(matrix.dice().numpy(), f1, atol=1e-6)
    # sklearn's "macro" over the classes present equals our NaN-mean.
    present = list(np.flatnonzero(_present(truth, predicted)))
    macro = sklearn_metrics.jaccard_score(truth, predicted, labels=present, average="macro")
    assert matrix.mean_iou() == pytest.approx(macro, abs=1e-6)
    assert matrix.pixel_accuracy() == pytest.approx(
        sklearn_metrics.accuracy_score(truth, predicted), abs=1e-6
    )


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # class 4 is absent everywhere: NaN
def test_image_wise_scores_match_sklearn_per_image():
    prediction, target = _pair()
    matrix = ConfusionMatrix(C, per_image=True)
    matrix.update(prediction, target)
    ious, f1s, means = [], [], []
    for image in range(len(target)):
        keep = target[image] != IGNORE_INDEX
        iou, f1 = _sklearn_scores(target[image][keep].numpy(), prediction[image][keep].numpy())
        ious.append(iou), f1s.append(f1), means.append(np.nanmean(iou))
    np.testing.assert_allclose(matrix.iou("image").numpy(), np.nanmean(ious, axis=0), atol=1e-6)
    np.testing.assert_allclose(matrix.dice("image").numpy(), np.nanmean(f1s, axis=0), atol=1e-6)
    assert matrix.mean_iou("image") == pytest.approx(np.mean(means), abs=1e-6)


# ---------------------------------------------------------------- torchmetrics oracle
classification = pytest.importorskip("torchmetrics.classification", reason="torchmetrics not installed")


def test_dataset_level_scores_match_torchmetrics():
    # torchmetrics scores a class absent from truth and prediction as 0 (zero_division) and leaves it out
    # of "macro"; we score it NaN. Compare per-class values where defined, and the macro means.
    prediction, target = _pair()
    matrix = ConfusionMatrix(C)
    matrix.update(prediction, target)
    defined = ~matrix.iou().isnan()
    common = {"num_classes": C, "ignore_index": IGNORE_INDEX}
    pairs = [
        (classification.MulticlassJaccardIndex, matrix.iou()),
        (classification.MulticlassF1Score, matrix.dice()),
        (classification.MulticlassPrecision, matrix.precision()),
        (classification.MulticlassRecall, matrix.recall()),
    ]
    for metric, ours in pairs:
        expected = metric(average="none", **common)(prediction, target).double()
        mask = defined & ~ours.isnan()
        torch.testing.assert_close(ours[mask], expected[mask], atol=1e-6, rtol=0)
    expected = classification.MulticlassJaccardIndex(average="macro", **common)(prediction, target)
    assert matrix.mean_iou() == pytest.approx(expected.item(), abs=1e-6)
    expected = classification.MulticlassConfusionMatrix(**common)(prediction, target)
    assert torch.equal(matrix.matrix, expected)
    expected = classification.MulticlassAccuracy(average="micro", **common)(prediction, target)
    assert matrix.pixel_accuracy() == pytest.approx(expected.item(), abs=1e-6)


def test_image_wise_scores_match_torchmetrics_samplewise():
    prediction, target = _pair()
    matrix = ConfusionMatrix(C, per_image=True)
    matrix.update(prediction, target)
    per_image = classification.MulticlassF1Score(
        num_classes=C, ignore_index=IGNORE_INDEX, average="none", multidim_average="samplewise"
    )(prediction.flatten(1), target.flatten(1)).double()
    ours = matrix.counts("image").dice()
    defined = ~ours.isnan()
    torch.testing.assert_close(ours[defined], per_image[defined], atol=1e-6, rtol=0)
    expected = torch.where(defined, per_image, torch.nan).nanmean(0)
    torch.testing.assert_close(matrix.dice("image"), expected, atol=1e-6, rtol=0, equal_nan=True)


def test_binary_and_multilabel_forms_match_torchmetrics():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 8, 8, generator=generator)
    target = torch.randint(0, 2, (3, 4, 8, 8), generator=generator)
    target[:, :, :2] = IGNORE_INDEX
    multilabel = MultilabelConfusionMatrix(4)
    multilabel.update(logits > 0, target)
    expected = classification.MultilabelJaccardIndex(num_labels=4, average="none", ignore_index=IGNORE_INDEX)(
        logits.sigmoid(), target
    )
    torch.testing.assert_close(multilabel.iou(), expected.double(), atol=1e-6, rtol=0)
    expected = classification.MultilabelF1Score(num_labels=4, average="none", ignore_index=IGNORE_INDEX)(
        logits.sigmoid(), target
    )
    torch.testing.assert_close(multilabel.dice(), expected.double(), atol=1e-6, rtol=0)
    binary = ConfusionMatrix(2)
    binary.update((logits[:, 0] > 0).long(), target[:, 0])
    expected = classification.BinaryJaccardIndex(ignore_index=IGNORE_INDEX)(
        logits[:, 0].sigmoid(), target[:, 0]
    )
    assert binary.iou()[1].item() == pytest.approx(expected.item(), abs=1e-6)
