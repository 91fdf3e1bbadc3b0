import pytest
import torch

from segwise.data.dataset import IGNORE_INDEX
from segwise.errors import SegwiseError
from segwise.losses import DiceLoss, build_loss
from segwise.metrics import ConfusionMatrix


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels():
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE_INDEX])
    prediction = torch.tensor([0, 1, 1, 1, 0, 2])
    matrix = ConfusionMatrix(3)
    matrix.update(prediction, target)
    assert matrix.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # IoU: class 0 → 1/(2+1), class 1 → 2/3, class 2 → 0/1
    assert matrix.iou().tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)


def test_mean_iou_skips_classes_absent_from_truth_and_prediction():
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    assert torch.isnan(matrix.iou()[2:]).all()
    assert matrix.mean_iou() == 1.0


def test_streaming_updates_equal_one_update():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (6, 9, 9))
    prediction = torch.randint(0, 5, (6, 9, 9))
    whole, parts = ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(prediction, target)
    for chunk in range(3):
        parts.update(prediction[chunk * 2 : chunk * 2 + 2], target[chunk * 2 : chunk * 2 + 2])
    assert torch.equal(whole.matrix, parts.matrix)
    merged = ConfusionMatrix(5).merge(parts)
    assert torch.equal(merged.matrix, whole.matrix)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_ignores_void():
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    target_with_void = target.clone()
    target_with_void[:, 0] = IGNORE_INDEX
    logits[:, :, 0] = torch.randn(2, 3, 8) * 100  # garbage where the truth is void
    assert DiceLoss()(logits, target_with_void).item() == pytest.approx(0.0, abs=1e-6)


def test_combined_loss_is_the_sum_of_its_terms_and_finite_on_all_void():
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 6))
    combined = build_loss("ce+dice")(logits, target)
    expected = torch.nn.functional.cross_entropy(logits, target) + DiceLoss()(logits, target)
    assert combined.item() == pytest.approx(expected.item())
    void = torch.full((2, 6, 6), IGNORE_INDEX)
    loss = build_loss({"ce": 1.0, "dice": 0.5})(logits, void)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_cross_entropy_matches_torch_with_ignored_pixels_and_class_weights():
    from segwise.losses import CrossEntropyLoss

    logits = torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, :2] = IGNORE_INDEX
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0])
    ours = CrossEntropyLoss(class_weights=weights)(logits, target)
    reference = torch.nn.functional.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(
        SegwiseError, match=r"choose from \['bce', 'ce', 'dice', 'focal', 'jaccard', 'lovasz', 'tversky'\]"
    ):
        build_loss("ce+dcie")
