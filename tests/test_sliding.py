"""Sliding-window prediction: tile placement, weights, stitching without seams, MONAI as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segwise.errors import SegwiseError
from segwise.inference.sliding import parse_tile, predict_sliding, sliding_rows, tile_starts, tile_weight


def conv_net(layers: int = 2, classes: int = 4) -> nn.Module:
    """Fully convolutional, translation-equivariant; receptive field radius = layers pixels."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    channels = 3
    for index in range(layers):
        out = classes if index == layers - 1 else 8
        blocks += [nn.Conv2d(channels, out, 3, padding=1)] + ([nn.ReLU()] if index < layers - 1 else [])
        channels = out
    return nn.Sequential(*blocks).eval()


def probabilities(model: nn.Module):
    return lambda tiles: model(tiles / 255).softmax(1)


def image(height: int, width: int) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(3)) * 255


@torch.no_grad()
@pytest.mark.parametrize("tile", [(40, 56), (64, 64)])
def test_a_tile_covering_the_image_equals_whole_image_prediction(tile):
    model, x = conv_net(), image(40, 56)
    whole = probabilities(model)(x[None])[0]
    for weighting in ("gaussian", "constant"):
        stitched = predict_sliding(probabilities(model), x, tile, overlap=0.25, weighting=weighting)
        torch.testing.assert_close(stitched, whole, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_stitching_is_exact_for_a_pointwise_model(batch_size):
    model, x = conv_net(layers=1), image(70, 90)
    model[0] = nn.Conv2d(3, 4, 1)  # receptive field of one pixel: every tile agrees with the whole image
    whole = probabilities(model)(x[None])[0]
    stitched = predict_sliding(probabilities(model), x, (32, 24), overlap=0.5, batch_size=batch_size)
    torch.testing.assert_close(stitched, whole, atol=1e-5, rtol=0)


@torch.no_grad()
def test_overlapping_gaussian_tiles_show_no_seams_on_a_convolutional_model():
    model, x = conv_net(layers=2), image(96, 120)
    whole = probabilities(model)(x[None])[0]
    # Away from the image border: there every covering tile has its own border too, so all weights are
    # equally small and the zero-padded context of a tile edge counts as much as the real one.
    inner = (slice(None), slice(8, -8), slice(8, -8))
    gaussian = predict_sliding(probabilities(model), x, (48, 48), overlap=0.5, weighting="gaussian")
    constant = predict_sliding(probabilities(model), x, (48, 48), overlap=0.5, weighting="constant")
    gaussian_error = (gaussian - whole)[inner].abs().max()
    constant_error = (constant - whole)[inner].abs().max()
    assert gaussian_error < 2e-3, gaussian_error  # a tile's own border weighs ~1e-3 against ~1
    assert gaussian_error < constant_error / 10  # the weighting, not luck, removes the seams
    torch.testing.assert_close(gaussian.sum(0), torch.ones(96, 120))


@torch.no_grad()
def test_rows_come_out_in_order_once_each_with_a_bounded_band():
    model, x = conv_net(), image(200, 40)
    shapes = []

    def predict(tiles):
        shapes.append(tiles.shape)
        return probabilities(model)(tiles)

    rows = sliding_rows(
        predict,
        lambda top, bottom, left, right: x[:, top:bottom, left:right],
        (200, 40),
        (32, 32),
        0.25,
        "gaussian",
        2,
    )
    parts = [(start, probs.clone()) for start, probs in rows]  # yielded rows are views of the band
    starts = [start for start, _ in parts]
    assert starts[0] == 0 and starts == sorted(starts)
    assert sum(probs.shape[1] for _, probs in parts) == 200
    assert max(probs.shape[1] for _, probs in parts) <= 32  # never more than a band of finished rows
    assert all(shape[0] <= 2 for shape in shapes)
    whole = predict_sliding(probabilities(model), x, (32, 32), 0.25, batch_size=7)
    torch.testing.assert_close(torch.cat([p for _, p in parts], 1), whole, atol=1e-6, rtol=0)


def test_tile_placement_and_weights_match_monai():
    monai_utils = pytest.importorskip("monai.data.utils")
    for length, tile, overlap in [
        (100, 32, 0.25),
        (64, 64, 0.5),
        (1000, 256, 0.5),
        (33, 16, 0.0),
        (50, 8, 0.9),
    ]:
        slices = monai_utils.dense_patch_slices((length,), (tile,), (max(1, int(tile * (1 - overlap))),))
        assert tile_starts(length, tile, overlap) == [s[0].start for s in slices]
    for size in [(32, 32), (24, 40)]:
        expected = monai_utils.compute_importance_map(size, mode="gaussian", sigma_scale=0.125)
        torch.testing.assert_close(tile_weight(*size), expected.cpu(), atol=1e-6, rtol=0)


@torch.no_grad()
def test_same_result_as_monai_sliding_window_inference():
    inferers = pytest.importorskip("monai.inferers")
    model, x = conv_net(), image(90, 70)
    ours = predict_sliding(probabilities(model), x, (32, 48), overlap=0.25, batch_size=4)
    theirs = inferers.sliding_window_inference(
        x[None], (32, 48), 4, probabilities(model), overlap=0.25, mode="gaussian", sigma_scale=0.125
    )[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_tile_and_overlap_arguments():
    assert parse_tile("512") == (512, 512)
    assert parse_tile("256x384") == (256, 384)
    assert parse_tile(64) == (64, 64)
    for bad in ("big", "4", "1x2x3"):
        with pytest.raises(SegwiseError, match="--tile"):
            parse_tile(bad)
    with pytest.raises(SegwiseError, match="--overlap"):
        predict_sliding(lambda t: t, image(8, 8), (8, 8), overlap=1.0)
    with pytest.raises(SegwiseError, match="weighting"):
        tile_weight(8, 8, "triangle")


@torch.no_grad()
def test_predictor_tiles_at_native_resolution_and_switches_tiling_on_for_huge_images():
    from tests.test_large_image import tiny_predictor

    predictor = tiny_predictor(size=(48, 64))
    array = np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    whole = predictor.predict_proba(array)  # the training size: no resize
    np.testing.assert_allclose(predictor.predict_proba(array, tile="64x80"), whole, atol=1e-5)
    big = np.random.default_rng(8).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    tiled = predictor.predict_proba(big, tile=(48, 64))
    assert tiled.shape == (3, 100, 90)
    np.testing.assert_allclose(tiled.sum(0), 1, atol=1e-5)
    assert predictor.auto_tile() == (1024, 1024)  # not the training size: fewer, larger forward passes
    automatic = predictor.predict_proba(big, auto_tile_pixels=50 * 50)  # native resolution, one tile here
    np.testing.assert_allclose(automatic, predictor.predict_proba(big, tile=1024), atol=1e-6)
    assert not np.allclose(automatic, tiled, atol=1e-3)
    assert not np.allclose(predictor.predict_proba(big), tiled, atol=1e-3)  # below the limit: resized
    with_tta = predictor.predict_proba(big, tile=(48, 64), tta="flips")
    assert with_tta.shape == (3, 100, 90)
    with pytest.raises(SegwiseError, match="--tile"):
        predictor.predict_proba(big, tile="huge")
