"""Class-aware sampling: crops centred on chosen classes with a set probability (data/augment.py)."""

import dataclasses
import math
import warnings

import pytest
import torch

from segwise.constants import IGNORE_INDEX
from segwise.data.augment import PRESETS, Augment, ClassSampling, augment_batch, class_targets
from segwise.engine.plan import planned_sampling
from segwise.errors import SegwiseError

HEIGHT = WIDTH = 64
RARE = 2  # the class of a small blob near the centre; 1 fills the rest, 0 never appears
# a fixed quarter-area square window: centring it on the blob never needs moving back inside
CROP = Augment(p_crop=1.0, crop_area=(0.25, 0.25), crop_ratio=(1.0, 1.0))


def blob_batch(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.ones(count, HEIGHT, WIDTH, dtype=torch.long)
    masks[:, 30:36, 26:32] = RARE  # 36 pixels of 4096
    masks[: count // 4, 0, 0] = IGNORE_INDEX  # void does not count as a class
    images = masks[:, None].float().expand(-1, 3, -1, -1).clone()
    return images, masks


def centre_hits(p: float, draws: int = 2000, seed: int = 0, preset=CROP) -> float:
    """The share of augmented samples whose output centre pixel shows the rare class."""
    images, masks = blob_batch(draws)
    sampling = ClassSampling(p, (0.0, 0.0, 1.0))
    _, out = augment_batch(images, masks, preset, torch.Generator().manual_seed(seed), sampling=sampling)
    return float((out[:, HEIGHT // 2, WIDTH // 2] == RARE).double().mean())


@pytest.mark.parametrize("p", [0.33, 0.7])
def test_sampling_centres_crops_on_the_class_with_the_set_probability(p):
    base = centre_hits(0.0, seed=1)  # the ordinary crops' chance to centre on the blob
    assert 0 < base < 0.1
    expected = p + (1 - p) * base
    sigma = math.sqrt(expected * (1 - expected) / 2000) + math.sqrt(base * (1 - base) / 2000)
    assert abs(centre_hits(p) - expected) < 3 * sigma


def test_off_switch_gives_the_old_draws_exactly():
    images, masks = blob_batch(16)
    preset = PRESETS["default"]
    old = augment_batch(images, masks, preset, torch.Generator().manual_seed(5))
    off = augment_batch(
        images, masks, preset, torch.Generator().manual_seed(5), sampling=ClassSampling(0.0, (1.0, 1.0, 1.0))
    )
    assert torch.equal(old[0], off[0]) and torch.equal(old[1], off[1])
    assert ClassSampling.of(0.0, ["b"], ["a", "b"]) is None


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_a_preset_without_a_crop_gets_one_and_fast_equals_plain(fast):
    images, masks = blob_batch(64)
    sampling = ClassSampling(1.0, (0.0, 0.0, 1.0))
    _, out = augment_batch(
        images, masks, PRESETS["none"], torch.Generator().manual_seed(2), sampling=sampling, fast=fast
    )
    assert (out == RARE).any(dim=(1, 2)).all()  # centred, or moved back inside with the blob in view
    # the zoom: a window of 0.25..1 of the image, so the blob looks larger than in the source
    assert (out == RARE).sum(dim=(1, 2)).double().mean() > 36 * 1.5
    _, light = augment_batch(
        images, masks, PRESETS["light"], torch.Generator().manual_seed(2), sampling=sampling, fast=fast
    )
    assert (light == RARE).any(dim=(1, 2)).all()  # rotation may move the exact centre, not lose the blob


def test_fast_and_plain_pipelines_agree_with_sampling():
    images, masks = blob_batch(12)
    sampling = ClassSampling(0.5, (0.0, 1.0, 1.0))
    # the geometry of the heaviest preset (colour, blur and noise have their own equality tests)
    preset = dataclasses.replace(PRESETS["heavy"], p_color=0.0, p_blur=0.0, p_noise=0.0)
    fast = augment_batch(images, masks, preset, torch.Generator().manual_seed(4), sampling=sampling)
    plain = augment_batch(
        images, masks, preset, torch.Generator().manual_seed(4), sampling=sampling, fast=False
    )
    assert torch.equal(fast[1], plain[1])
    torch.testing.assert_close(fast[0], plain[0], atol=1e-3, rtol=0)


def test_crops_near_the_edge_move_back_inside_and_keep_the_pixel():
    masks = torch.ones(200, HEIGHT, WIDTH, dtype=torch.long)
    masks[:, 0, WIDTH - 1] = RARE  # one pixel in the corner
    images = masks[:, None].float().expand(-1, 3, -1, -1).clone()
    sampling = ClassSampling(1.0, (0.0, 0.0, 1.0))
    _, out = augment_batch(images, masks, CROP, torch.Generator().manual_seed(0), sampling=sampling)
    assert (out != IGNORE_INDEX).all()  # no fill: the window stayed inside the image
    assert (out == RARE).any(dim=(1, 2)).all()


def test_samples_without_the_classes_keep_the_ordinary_draw_and_ratios_choose_the_class():
    masks = torch.ones(4000, 8, 8, dtype=torch.long)
    masks[:, 0, 0], masks[:, 7, 7] = 2, 3
    masks[2000:] = 1  # half the samples hold neither chosen class
    targets = class_targets(masks, ClassSampling(1.0, (0.0, 0.0, 3.0, 1.0)), torch.Generator().manual_seed(0))
    assert targets[2000:].isnan().all()
    at_class_2 = (targets[:2000] == torch.tensor([0.5 - 4, 0.5 - 4], dtype=torch.float64)).all(1)
    assert abs(float(at_class_2.double().mean()) - 0.75) < 3 * math.sqrt(0.75 * 0.25 / 2000)


def test_per_label_masks_are_sampled_by_their_planes():
    masks = torch.zeros(50, 2, 8, 8, dtype=torch.long)
    masks[:, 1, 3, 5] = 1
    targets = class_targets(masks, ClassSampling(1.0, (0.0, 1.0)), torch.Generator().manual_seed(0))
    assert (targets == torch.tensor([5.5 - 4, 3.5 - 4], dtype=torch.float64)).all()


def test_unknown_sample_classes_fail_in_one_line():
    with pytest.raises(SegwiseError, match="train.sample_classes.*'pole'"):
        ClassSampling.of(0.33, ["pole"], ["sky", "road"])
    assert ClassSampling.of(0.33, ["road"], ["sky", "road"]) == ClassSampling(0.33, (0.0, 1.0))
    assert ClassSampling.of(0.5, None, ["sky", "road"]) == ClassSampling(0.5, (1.0, 1.0))


def test_plan_names_the_rare_classes_and_says_how_to_sample_them():
    notes = []
    names = ["sky", "road", "pole", "sign"]
    planned = planned_sampling(names, [0.5, 0.47, 0.02, 0.01], notes)
    assert planned == {"sample_p": 0.0, "sample_classes": ["pole", "sign"]}  # under 0.2/4 = 5 %
    assert "ready for pole, sign (each under 5.0%" in notes[0] and "--sample-p 0.33" in notes[0]
    notes = []
    assert planned_sampling(["a", "b"], [0.6, 0.4], notes)["sample_p"] == 0.0
    assert "off" in notes[0]


def test_training_records_sampling_and_a_user_transform_turns_it_off(shapes_data, tmp_path):
    import segwise

    common = dict(runs_dir=tmp_path, epochs=1, batch_size=4, size=[32, 32], encoder_weights="none")
    result = segwise.train(shapes_data, name="on", sample_p=0.5, sample_classes=None, **common)
    config = segwise.load(result.run_dir).config
    assert config.train.sample_p == 0.5

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segwise.train(
            shapes_data,
            name="t",
            sample_p=0.5,
            augment=lambda image, mask: {"image": image, "mask": mask},
            **common,
        )
    assert any("does not apply to a user's augment transform" in str(w.message) for w in caught)
