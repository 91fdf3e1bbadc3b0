"""Test-time augmentation: exact de-augmentation, merging as probabilities, batching by shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segwise.errors import SegwiseError
from segwise.inference import tta
from segwise.inference.tta import VIEWS, predict_tta, views_for

GEOMETRIC = ["hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse"]


def pointwise_model(classes: int = 4) -> nn.Module:
    """A 1×1 convolution: equivariant to every flip, rotation and transpose by construction."""
    torch.manual_seed(0)
    return nn.Conv2d(3, classes, 1).eval()


def shifted_model(classes: int = 4) -> nn.Module:
    """A 3×3 convolution with random weights: NOT equivariant, so a flipped view really differs."""
    torch.manual_seed(1)
    return nn.Conv2d(3, classes, 3, padding=1).eval()


def image(height: int = 12, width: int = 20, count: int = 1) -> torch.Tensor:
    # Random pixels: no symmetry, so a view that is not inverted lands its prediction on other pixels.
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(2)) * 255


@torch.no_grad()
def plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).softmax(1)


@pytest.mark.parametrize("size", [(12, 12), (12, 20)])
@pytest.mark.parametrize("name", GEOMETRIC + ["d4", "flips"])
@torch.no_grad()
def test_geometric_view_merges_back_to_plain_prediction(name, size):
    model, x = pointwise_model(), image(*size)
    views = views_for(name) if name in ("d4", "flips") else [VIEWS[name]]
    for merge in ("mean", "gmean", "max"):
        merged = predict_tta(model, x, views, merge=merge)
        assert merged.shape == (1, 4, *size)
        torch.testing.assert_close(merged, plain(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(12, 12), (12, 20)])
@pytest.mark.parametrize("name", GEOMETRIC)
@torch.no_grad()
def test_skipping_any_inverse_breaks_the_merge(monkeypatch, name, size):
    model, x = pointwise_model(), image(*size)
    monkeypatch.setitem(VIEWS, name, tta.View(name, VIEWS[name].apply, lambda y, size: y))
    try:
        merged = predict_tta(model, x, views_for("d4"))
    except RuntimeError:  # a rotated non-square prediction has the wrong shape: also a failure
        return
    assert (merged - plain(model, x)).abs().max() > 1e-2


@torch.no_grad()
def test_views_of_a_non_equivariant_model_are_inverted_before_averaging():
    model, x = shifted_model(), image(10, 14)
    expected = (
        plain(model, x)
        + plain(model, x.flip(-1)).flip(-1)
        + torch.rot90(plain(model, torch.rot90(x, 1, (-2, -1))), -1, (-2, -1))
    ) / 3
    merged = predict_tta(model, x, [VIEWS["identity"], VIEWS["hflip"], VIEWS["rot90"]])
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_batching_by_shape_and_chunk_size_does_not_change_the_result():
    model, x = shifted_model(), image(10, 14, count=3)
    views = views_for("d4") + views_for("scales")[1:]
    calls = []

    def counting(batch):
        calls.append(batch.shape)
        return model(batch)

    whole = predict_tta(counting, x, views)
    assert len(calls) == 4  # one pass per H×W: 10×14, 14×10, and the two scales
    for budget in (1, 10 * 14 * 2, 10 * 14 * 5):
        calls.clear()
        chunked = predict_tta(counting, x, views, max_batch_pixels=budget)
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
        for shape in calls:  # a pass holds at most the budget, or one image when one is already more
            assert shape[0] == 1 or shape[0] * shape[2] * shape[3] <= budget
    one_by_one = torch.cat([predict_tta(model, x[i : i + 1], views) for i in range(3)])
    torch.testing.assert_close(whole, one_by_one, atol=1e-5, rtol=0)


@torch.no_grad()
def test_scale_views_return_probabilities_at_the_input_size():
    model = pointwise_model()
    constant = torch.full((1, 3, 9, 13), 100.0)  # resizing a constant image loses nothing
    merged = predict_tta(model, constant, views_for("scales"))
    torch.testing.assert_close(merged, plain(model, constant), atol=1e-5, rtol=0)
    merged = predict_tta(model, image(9, 13), views_for("scales"))
    assert merged.shape == (1, 4, 9, 13)
    torch.testing.assert_close(merged.sum(1), torch.ones(1, 9, 13))


def test_geometric_mean_is_finite_and_normalized_when_views_are_certain():
    x = image(6, 8)

    def certain(batch):  # ±1000 logits: softmax gives exact zeros and ones that disagree across views
        logits = torch.zeros(batch.shape[0], 3, *batch.shape[-2:])
        logits[:, 0, :, : batch.shape[-1] // 2] = 1000.0
        logits[:, 1, :, batch.shape[-1] // 2 :] = 1000.0
        return logits

    merged = predict_tta(certain, x, views_for("flips"), merge="gmean")
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged.sum(1), torch.ones(1, 6, 8))
    sigmoid = predict_tta(certain, x, views_for("flips"), merge="gmean", activation="sigmoid")
    assert torch.isfinite(sigmoid).all() and sigmoid.min() >= 0 and sigmoid.max() <= 1


def test_vote_and_max_merges():
    x = image(4, 6)

    def left_is_class_one(batch):  # predicts class 1 on the left half, class 0 on the right
        logits = torch.zeros(batch.shape[0], 2, *batch.shape[-2:])
        logits[:, 1, :, : batch.shape[-1] // 2] = 5.0
        return logits

    views = [VIEWS["identity"], VIEWS["hflip"], VIEWS["vflip"]]  # hflip disagrees with the other two
    vote = predict_tta(left_is_class_one, x, views, merge="vote")
    assert torch.allclose(vote[0, 1, :, :3], torch.tensor(2 / 3))
    assert torch.allclose(vote[0, 1, :, 3:], torch.tensor(1 / 3))
    top = predict_tta(left_is_class_one, x, views, merge="max")
    torch.testing.assert_close(top.sum(1), torch.ones(1, 4, 6))
    sigmoid_vote = predict_tta(left_is_class_one, x, views, merge="vote", activation="sigmoid")
    torch.testing.assert_close(sigmoid_vote * 3, (sigmoid_vote * 3).round())  # counts of 3 views


@torch.no_grad()
def test_pixel_views_change_the_input_but_not_its_geometry():
    model, x = pointwise_model(), image(8, 8)
    for name in ("brighter", "darker", "contrast_up", "contrast_down", "blur"):
        view = VIEWS[name]
        moved = view.apply(x)
        assert moved.shape == x.shape and not torch.allclose(moved, x)
        assert moved.min() >= 0 and moved.max() <= 255
    flat = torch.full((1, 3, 8, 8), 77.0)
    torch.testing.assert_close(VIEWS["blur"].apply(flat), flat)  # reflected borders: no dark rim
    merged = predict_tta(model, x, views_for(["identity", "brighter", "blur"]))
    assert merged.shape == (1, 4, 8, 8)


def test_presets_and_custom_lists():
    assert [v.name for v in views_for("none")] == ["identity"]
    assert len(views_for("d4")) == 8
    assert [v.name for v in views_for("identity,hflip,blur")] == ["identity", "hflip", "blur"]
    assert [v.name for v in views_for("custom:identity,rot90")] == ["identity", "rot90"]
    assert [v.name for v in views_for("transpose")] == ["transpose"]
    assert [v.name for v in views_for(["hflip", "hflip"])] == ["hflip"]
    with pytest.raises(SegwiseError, match="unknown preset"):
        views_for("d8")
    with pytest.raises(SegwiseError, match="valid views"):
        views_for("hflip,spin")
    with pytest.raises(SegwiseError, match="merge"):
        predict_tta(pointwise_model(), image(4, 4), views_for("flips"), merge="median")


@torch.no_grad()
def test_predictor_without_tta_keeps_the_softmax_of_resized_logits():
    from tests.test_large_image import tiny_predictor

    predictor = tiny_predictor(size=(32, 32))
    array = np.random.default_rng(5).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    resized = torch.from_numpy(np.array(Image.fromarray(array).resize((32, 32), Image.BILINEAR)))
    logits = predictor._logits(resized.permute(2, 0, 1)[None].float())
    expected = F.interpolate(logits, size=(45, 70), mode="bilinear", align_corners=False).softmax(1)[0]
    probs = predictor.predict_proba(array)
    assert probs.shape == (3, 45, 70)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)


@torch.no_grad()
def test_predictor_tta_on_a_segwise_model():
    from tests.test_large_image import tiny_predictor

    predictor = tiny_predictor(size=(32, 48))
    array = np.random.default_rng(6).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float()
    flipped = predictor._logits(x.flip(-1)).softmax(1).flip(-1)
    expected = (predictor._logits(x).softmax(1) + flipped)[0] / 2
    probs = predictor.predict_proba(array, tta="identity,hflip")
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    d4 = predictor.predict_proba(array, tta="d4", merge="gmean")
    assert d4.shape == (3, 32, 48) and np.isfinite(d4).all()
    assert not np.allclose(d4, predictor.predict_proba(array), atol=1e-3)  # the views did something
    with pytest.raises(SegwiseError, match="--tta"):
        predictor.predict_proba(array, tta="spin")
