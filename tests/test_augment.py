import dataclasses

import numpy as np
import pytest
import torch

from segwise.constants import IGNORE_INDEX
from segwise.data.augment import PRESETS, Augment, PerSampleBatches, augment_batch
from segwise.errors import SegwiseError

GEOMETRIC = {
    "hflip": Augment(p_hflip=1.0),
    "vflip": Augment(p_vflip=1.0),
    "transpose": Augment(p_transpose=1.0),
    "dihedral": PRESETS["flips"],
    "rotate": Augment(p_affine=1.0, rotate=180),
    "scale": Augment(p_affine=1.0, scale=(0.5, 2.0)),
    "shear": Augment(p_affine=1.0, shear=30),
    "translate": Augment(p_affine=1.0, translate=0.3),
    "crop": Augment(p_crop=1.0, crop_area=(0.1, 0.9), crop_ratio=(0.5, 2.0)),
}
# every preset's geometry without its colour, blur and noise (which would blur the encoded coordinates)
for name in ("light", "default", "heavy"):
    GEOMETRIC[f"{name}-geometry"] = dataclasses.replace(PRESETS[name], p_color=0.0, p_blur=0.0, p_noise=0.0)


def label_of(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """A label that differs between neighbouring pixels in both directions, so any misalignment shows."""
    return (row * 7 + col * 3) % 250


def coordinate_batch(count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channels are each pixel's own (row, col); masks holding label_of(row, col)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([rows, cols, torch.zeros_like(rows)]).float()
    return image.expand(count, -1, -1, -1).clone(), label_of(rows, cols).expand(count, -1, -1).clone()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("size", [(40, 40), (36, 60)], ids=["square", "rectangle"])
@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_mask_stays_aligned_with_image_under_every_geometric_transform(name, size, fast):
    height, width = size
    images, masks = coordinate_batch(8, height, width)
    out_images, out_masks = augment_batch(
        images, masks, GEOMETRIC[name], torch.Generator().manual_seed(3), fast=fast
    )
    assert out_images.shape == images.shape and out_masks.shape == masks.shape

    valid = out_masks != IGNORE_INDEX
    assert valid.float().mean() > 0.3  # most of the output still shows the image
    row, col = out_images[:, 0], out_images[:, 1]  # the source coordinate, read back from the image
    # nearest neighbour rounds the source coordinate; skip exact halfway points where rounding is a coin toss
    decided = ((row.frac() - 0.5).abs() > 1e-3) & ((col.frac() - 0.5).abs() > 1e-3)
    check = valid & decided
    assert check.float().mean() > 0.25
    expected = label_of(row.round().long(), col.round().long())
    assert torch.equal(out_masks[check], expected[check])
    if name != "transpose" or height == width:
        assert not torch.equal(out_masks, masks)  # the transform did move pixels


def test_pixels_from_outside_the_image_are_ignored_in_the_mask_and_filled_in_the_image():
    images, masks = coordinate_batch(4, 32, 48)
    images[:, 2] = 100.0
    recipe = Augment(p_affine=1.0, scale=(0.5, 0.6))  # zooming out shows a frame around every sample
    out_images, out_masks = augment_batch(images, masks, recipe, torch.Generator().manual_seed(0), fill=7.0)
    outside = out_masks == IGNORE_INDEX
    assert outside[:, 0, 0].all() and outside[:, -1, -1].all()
    assert (out_images.permute(1, 0, 2, 3)[:, outside] == 7.0).all()
    assert torch.allclose(out_images[:, 2][~outside], torch.tensor(100.0))


def test_every_sample_draws_its_own_parameters():
    images, masks = coordinate_batch(6, 32, 32)
    out_images, out_masks = augment_batch(images, masks, "heavy", torch.Generator().manual_seed(1))
    flattened = out_masks.flatten(1)
    assert len({tuple(row.tolist()) for row in flattened}) == 6


def test_same_seed_same_batch_and_next_draw_differs():
    images = torch.rand(4, 3, 32, 48) * 255
    masks = torch.randint(0, 5, (4, 32, 48))
    first = augment_batch(images, masks, "default", torch.Generator().manual_seed(5))
    second = augment_batch(images, masks, "default", torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    generator = torch.Generator().manual_seed(5)
    augment_batch(images, masks, "default", generator)
    assert not torch.equal(augment_batch(images, masks, "default", generator)[0], first[0])


def test_rectangles_are_never_transposed():
    images, masks = coordinate_batch(8, 20, 30)
    out_images, _ = augment_batch(images, masks, Augment(p_transpose=1.0), torch.Generator())
    assert torch.equal(out_images, images)


def test_photometric_transforms_keep_the_range_and_leave_masks_alone():
    images = torch.rand(8, 3, 24, 40) * 255
    masks = torch.randint(0, 4, (8, 24, 40))
    recipe = dataclasses.replace(PRESETS["heavy"], p_hflip=0, p_vflip=0, p_transpose=0, p_affine=0, p_crop=0)
    out_images, out_masks = augment_batch(images, masks, recipe, torch.Generator().manual_seed(2))
    assert torch.equal(out_masks, masks)
    assert out_images.min() >= 0 and out_images.max() <= 255
    changed = (out_images - images).abs().flatten(1).amax(1) > 1
    assert changed.sum() >= 6  # heavy changes colour in 90 % of samples


def test_brightness_shifts_the_mean_and_contrast_keeps_it():
    images = torch.full((16, 3, 8, 8), 100.0)
    images[:, :, :4] = 60.0
    masks = torch.zeros(16, 8, 8, dtype=torch.long)
    brighter, _ = augment_batch(images, masks, Augment(p_color=1.0, brightness=0.2), torch.Generator())
    shifts = brighter.mean((1, 2, 3)) - images.mean((1, 2, 3))
    assert shifts.abs().max() <= 0.2 * 255 + 1e-3 and shifts.std() > 1
    contrasted, _ = augment_batch(images, masks, Augment(p_color=1.0, contrast=0.5), torch.Generator())
    assert torch.allclose(contrasted.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=1e-3)


def quarter_levels(shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs on the 0..255 scale, each within a tenth of a quarter grey level of one (the colour
    tables' resolution), so that no rounding is a coin toss; and those quarter levels (0..1020)."""
    random = torch.Generator().manual_seed(seed)
    entries = torch.randint(0, 1021, shape, generator=random)
    offsets = (torch.rand(shape, generator=random) - 0.5) * 0.2
    return ((entries + offsets) / 4).clamp(0, 255), entries


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_hue_and_saturation_keep_gray_pixels_gray(fast):
    gray, entries = quarter_levels((4, 1, 16, 16), seed=1)
    images = gray.expand(-1, 3, -1, -1)
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    recipe = Augment(p_color=1.0, hue=90, saturation=0.8)
    out, _ = augment_batch(images, masks, recipe, torch.Generator(), fast=fast)
    assert torch.equal(out, (entries / 4).expand(-1, 3, -1, -1))  # gray, at the tables' quarter levels


def test_blur_keeps_flat_images_flat_and_smooths_edges():
    images = torch.zeros(4, 1, 16, 16)
    images[..., 8:] = 200.0
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    out, _ = augment_batch(images, masks, Augment(p_blur=1.0, blur_sigma=(1.0, 2.0)), torch.Generator())
    assert torch.allclose(out[..., :2], torch.zeros(1), atol=1e-2)  # far from the edge
    assert (out[..., 7] > 1).all() and (out[..., 8] < 199).all()
    assert torch.allclose(out.sum((-1, -2)), images.sum((-1, -2)), rtol=1e-4)  # blur moves, never adds


def test_blur_equals_a_2d_convolution_with_each_samples_gaussian():
    """The shifted-sum blur against the textbook definition: replicate padding, then one 2-D Gaussian
    kernel per sample (the outer product of the 1-D kernel), as a plain convolution."""
    import math

    import torch.nn.functional as F

    from segwise.data.augment import _gaussian_blur

    images = torch.rand(3, 2, 20, 27) * 255
    sigma = torch.tensor([0.3, 0.8, 1.5], dtype=torch.float64)
    radius = math.ceil(3 * 1.5)
    out = _gaussian_blur(images, sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    for sample in range(3):
        line = torch.exp(-(offsets**2) / (2 * sigma[sample] ** 2))
        kernel = torch.outer(line, line) / line.sum() ** 2
        padded = F.pad(images[sample : sample + 1].double(), (radius,) * 4, mode="replicate")
        weight = kernel.expand(2, 1, -1, -1)
        expected = F.conv2d(padded, weight, groups=2)[0].float()
        assert torch.allclose(out[sample], expected, atol=1e-3), sample


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_gamma_is_the_power_law_of_the_input_rounded_to_a_quarter_grey_level(fast):
    images, entries = quarter_levels((2, 3, 40, 50), seed=0)
    images[0, 0, 0, :2], entries[0, 0, 0, :2] = torch.tensor([0.0, 255.0]), torch.tensor([0, 1020])
    masks = torch.zeros(2, 40, 50, dtype=torch.long)
    recipe = Augment(p_color=1.0, gamma=(0.8, 0.8))
    out, _ = augment_batch(images, masks, recipe, torch.Generator(), fast=fast)
    assert torch.allclose(out, 255 * (entries / 1020) ** 0.8, atol=1e-3)
    exact = 255 * (images / 255) ** 0.8
    assert ((out - exact).abs()[images >= 1] <= 0.3).all()
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, 1] == 255


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_colour_tables_cover_inputs_outside_the_range_and_clamp_them(fast):
    """The tables span what the colour maps reach from the batch's actual values, so a stray input
    (below 0 or above 255) is clamped like any other, not looked up in another sample's table."""
    images, entries = quarter_levels((3, 3, 8, 9), seed=2)
    images[0, 0, 0, :2], entries[0, 0, 0, :2] = torch.tensor([-40.0, 300.0]), torch.tensor([0, 1020])
    masks = torch.zeros(3, 8, 9, dtype=torch.long)
    recipe = Augment(p_color=1.0)  # identity colour
    out, _ = augment_batch(images, masks, recipe, torch.Generator(), fast=fast)
    assert torch.equal(out, entries / 4)


@pytest.mark.parametrize("fast", [True, False], ids=["bank", "fresh"])
def test_noise_has_the_drawn_strength(fast):
    images = torch.full((8, 3, 64, 64), 128.0)
    masks = torch.zeros(8, 64, 64, dtype=torch.long)
    recipe = Augment(p_noise=1.0, noise_std=(0.02, 0.04))
    out, _ = augment_batch(images, masks, recipe, torch.Generator(), fast=fast)
    std = (out - images).flatten(1).std(1)
    assert ((std > 0.02 * 255 * 0.9) & (std < 0.04 * 255 * 1.1)).all()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_samples_without_a_colour_draw_are_normalized_exactly(fast):
    """Only samples with a colour draw go through the quarter-level tables; the others keep their values."""
    from segwise.data.augment import _draw

    images = torch.rand(12, 3, 10, 14) * 255  # not on quarter levels
    masks = torch.zeros(12, 10, 14, dtype=torch.long)
    mean, std = (
        torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1),
        torch.tensor([60.0, 55.0, 50.0]).view(1, 3, 1, 1),
    )
    recipe = Augment(p_color=0.5, brightness=0.2, gamma=(0.8, 1.25))
    out, _ = augment_batch(images, masks, recipe, torch.Generator().manual_seed(6), 0.0, mean, std, fast=fast)
    coloured = _draw(recipe, 12, 3, 10, 14, torch.Generator().manual_seed(6)).coloured
    assert coloured.any() and not coloured.all()
    normalized = (images - mean) / std
    # The fast path leaves these samples' values alone: exact up to the normalization's rounding. The plain
    # pipeline warps every sample, the identity too, and float32 grid_sample moves values by a few 1e-6:
    # still three orders of magnitude below a quarter grey level (0.25 / std ≥ 4e-3), so none is quantised.
    atol = 1e-6 if fast else 1e-5
    assert torch.allclose(out[~coloured], normalized[~coloured], atol=atol)
    assert ((out[coloured] - normalized[coloured]).abs().flatten(1).amax(1) > 0.01).all()


@pytest.mark.parametrize("fast", [True, False], ids=["bank", "fresh"])
def test_noise_differs_between_samples_and_channels_and_is_gaussian(fast):
    """The fast path's noise windows come from one bank of Gaussian values, the plain pipeline draws
    fresh ones: the same distribution, each sample and channel its own noise, in both."""
    images = torch.full((6, 3, 40, 50), 128.0)
    masks = torch.zeros(6, 40, 50, dtype=torch.long)
    recipe = Augment(p_noise=1.0, noise_std=(0.03, 0.03))
    out, _ = augment_batch(images, masks, recipe, torch.Generator().manual_seed(0), fast=fast)
    noise = (out - images).flatten(0, 1) / (0.03 * 255)  # 18 planes of unit noise
    correlations = torch.corrcoef(noise.flatten(1))
    assert (correlations - torch.eye(18)).abs().max() < 0.1  # no two planes share their noise
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    assert abs(float((noise.abs() < 1).float().mean()) - 0.6827) < 0.01  # a normal's share within 1σ
    again, _ = augment_batch(images, masks, recipe, torch.Generator().manual_seed(1), fast=fast)
    assert not torch.equal(again, out)  # another draw, other windows


def test_masks_with_a_plane_per_label_move_with_the_image():
    images, masks = coordinate_batch(4, 32, 32)
    planes = torch.stack([masks % 2, masks % 3], 1)  # N×K×H×W
    _, out_single = augment_batch(images, masks, "heavy", torch.Generator().manual_seed(9))
    _, out_planes = augment_batch(images, planes, "heavy", torch.Generator().manual_seed(9))
    valid = out_single != IGNORE_INDEX
    assert torch.equal(out_planes[:, 0][valid], out_single[valid] % 2)
    assert (out_planes[:, 1][~valid] == IGNORE_INDEX).all()


def test_none_preset_returns_the_batch_untouched_and_unknown_preset_fails():
    images, masks = coordinate_batch(2, 16, 16)
    out = augment_batch(images, masks, "none", torch.Generator())
    assert out[0] is images and out[1] is masks
    with pytest.raises(SegwiseError, match="unknown preset 'strong'.*none \\| flips \\| light"):
        augment_batch(images, masks, "strong", torch.Generator())


def test_config_accepts_exactly_the_presets():
    from segwise.config import AUGMENT_PRESETS, TrainConfig

    assert tuple(PRESETS) == AUGMENT_PRESETS
    assert TrainConfig(augment="heavy").augment == "heavy"
    with pytest.raises(SegwiseError, match="train.augment: 'strong' is not valid; expected none \\| flips"):
        TrainConfig(augment="strong")


def test_training_runs_with_a_preset_and_records_it(shapes_data, tmp_path):
    import segwise

    from .conftest import TINY

    result = segwise.train(
        shapes_data, runs_dir=tmp_path, epochs=2, augment="default", progress=False, **TINY
    )
    assert all(0 < row["train_loss"] < 10 for row in result.history)
    assert (result.run_dir / "config.yaml").read_text().count("augment: default") == 1


def coordinate_arrays(count: int, height: int, width: int):
    """uint8 arrays as the cache holds them: channel 0 = row, 1 = col, 2 = sample index; mask = label_of."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    images = np.stack([np.stack([rows, cols, np.full_like(rows, i)], -1) for i in range(count)])
    masks = np.broadcast_to(
        label_of(torch.from_numpy(rows), torch.from_numpy(cols)).numpy(), (count, height, width)
    )
    return images.astype(np.uint8), masks.astype(np.uint8).copy()


def test_albumentations_compose_runs_per_sample_in_workers_and_keeps_masks_aligned():
    albumentations = pytest.importorskip("albumentations")  # a bench/dev extra
    from segwise.engine.batches import Batches

    images, masks = coordinate_arrays(16, 24, 32)
    batches = Batches(images, masks, 4, [0.0] * 3, [1.0] * 3, torch.device("cpu"))
    flip = PerSampleBatches(
        batches, albumentations.Compose([albumentations.HorizontalFlip(p=0.5)]), workers=2
    )
    seen, patterns = [], []
    for _ in range(3):
        for out_images, out_masks in flip.epoch(torch.Generator().manual_seed(len(seen)), drop_last=True):
            assert out_images.shape == (4, 3, 24, 32) and out_masks.dtype == torch.long
            row, col = out_images[:, 0].long(), out_images[:, 1].long()
            assert torch.equal(out_masks, label_of(row, col))  # the mask moved with the image
            patterns.append(tuple((col[:, 0, 0] == 31).tolist()))
            seen += out_images[:, 2, 0, 0].long().tolist()
    assert sorted(seen) == sorted(list(range(16)) * 3)  # every sample once per epoch
    # forked workers (and epochs) must not replay one random stream: 12 batches show varied flip patterns
    assert len(set(patterns)) >= 6 and 12 <= sum(map(sum, patterns)) <= 36


def test_albumentations_transforms_that_break_batches_fail_in_one_line():
    albumentations = pytest.importorskip("albumentations")  # a bench/dev extra
    from segwise.engine.batches import Batches

    images, masks = coordinate_arrays(4, 24, 32)
    batches = Batches(images, masks, 2, [0.0] * 3, [1.0] * 3, torch.device("cpu"))
    with pytest.raises(SegwiseError, match="remove Normalize"):
        PerSampleBatches(batches, albumentations.Compose([albumentations.Normalize()]), workers=0)
    with pytest.raises(SegwiseError, match=r"A.Resize\(24, 32\)"):
        PerSampleBatches(batches, albumentations.Compose([albumentations.CenterCrop(16, 16)]), workers=0)


def test_training_accepts_an_albumentations_compose(shapes_data, tmp_path):
    albumentations = pytest.importorskip("albumentations")  # a bench/dev extra
    import segwise

    from .conftest import TINY

    transform = albumentations.Compose(
        [albumentations.HorizontalFlip(p=0.5), albumentations.RandomBrightnessContrast(p=0.5)]
    )
    result = segwise.train(
        shapes_data, runs_dir=tmp_path, epochs=1, augment=transform, progress=False, **TINY
    )
    saved = (result.run_dir / "config.yaml").read_text()
    assert "augment: none" in saved and "HorizontalFlip" in saved
    assert 0 < result.history[0]["train_loss"] < 10


def test_show_writes_a_grid_of_augmented_pairs_in_the_class_palette(shapes_data, tmp_path):
    from PIL import Image

    from segwise.data.synthetic import CLASS_NAMES
    from segwise.io import default_palette

    from .conftest import run_cli

    out = tmp_path / "grid.png"
    result = run_cli("show", str(shapes_data), "-o", str(out), "--augment", "heavy", "-n", "6")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    grid = np.asarray(Image.open(out).convert("RGB"))
    # 6 cells of 64×(64+4+64) in round(sqrt(3)) = 2 columns and 3 rows, 4-pixel gaps between them
    assert grid.shape == (3 * 64 + 2 * 4, 2 * 132 + 4, 3)
    masks = np.concatenate(
        [grid[r * 68 : r * 68 + 64, c * 136 + 68 : c * 136 + 132] for r in range(3) for c in range(2)]
    )
    colours = {tuple(colour) for colour in masks.reshape(-1, 3)}
    allowed = {tuple(colour) for colour in default_palette(len(CLASS_NAMES))} | {(128, 128, 128)}
    assert colours <= allowed and len(colours) >= 4  # heavy zooms out and rotates: void appears too
    assert (128, 128, 128) in colours


def test_show_on_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    from .conftest import run_cli

    result = run_cli("show", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "dataset folder not found" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("preset", ["flips", "light", "default", "heavy"])
@pytest.mark.parametrize("size", [(12, 12), (10, 14)])
def test_samples_that_only_flip_are_copied_exactly_as_resampling_would_give(preset, size):
    """Samples whose maps only flip or transpose skip grid_sample, the others are resampled together;
    the batch must equal resampling every sample at once on F.affine_grid's grid (to 1e-3 of a grey
    level: a flip's float32 grid points land within rounding of the pixel centres)."""
    from segwise.data.augment import _draw, _plain_grid, _warp

    height, width = size
    images = torch.rand(32, 3, height, width) * 255
    masks = torch.randint(0, 5, (32, height, width))
    recipe = dataclasses.replace(PRESETS[preset], p_color=0.0, p_blur=0.0, p_noise=0.0)
    fast_images, fast_masks = augment_batch(images, masks, recipe, torch.Generator().manual_seed(3), 7.0)
    matrices = _draw(recipe, 32, 3, height, width, torch.Generator().manual_seed(3)).geometry
    slow_images, slow_labels, inside = _warp(images.clone(), masks, matrices, _plain_grid)
    assert torch.allclose(fast_images, torch.lerp(torch.tensor(7.0), slow_images, inside), atol=1e-3)
    assert torch.equal(fast_masks, slow_labels.long())
    linear = matrices[:, :2, :2]
    moves_pixels = ((linear.abs() == 1) | (linear == 0)).flatten(1).all(1) & (matrices[:, :2, 2] == 0).all(1)
    flips = moves_pixels & ~(linear == torch.eye(2, dtype=linear.dtype)).flatten(1).all(1)
    assert flips.any()  # the draw did flip some samples
    assert moves_pixels.all() if preset == "flips" else not moves_pixels.all()  # and resampled the others


@pytest.mark.parametrize("preset", ["flips", "default", "heavy"])
def test_normalizing_inside_augmentation_equals_normalizing_after_it(preset):
    """augment_batch(..., mean, std) folds the fill and the normalization into one pass; it must give
    (augment_batch(...) − mean) / std for the same draw, fill included."""
    images = torch.rand(8, 3, 24, 40) * 255
    masks = torch.randint(0, 4, (8, 24, 40))
    mean = torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1)
    std = torch.tensor([60.0, 55.0, 50.0]).view(1, 3, 1, 1)
    fill = torch.tensor([7.0, 8.0, 9.0])
    plain, plain_masks = augment_batch(images, masks, preset, torch.Generator().manual_seed(4), fill)
    normalized, normalized_masks = augment_batch(
        images, masks, preset, torch.Generator().manual_seed(4), fill, mean, std
    )
    assert torch.equal(plain_masks, normalized_masks)
    assert torch.allclose(normalized, (plain - mean) / std, atol=1e-4)
    outside = normalized_masks == IGNORE_INDEX
    if preset != "flips":
        assert outside.any()
    expected_fill = ((fill.view(3, 1) - mean.view(3, 1)) / std.view(3, 1)).expand(3, int(outside.sum()))
    assert torch.allclose(normalized.permute(1, 0, 2, 3)[:, outside], expected_fill, atol=1e-5)


def test_none_preset_still_normalizes_when_asked():
    images, masks = coordinate_batch(2, 16, 16)
    mean, std = torch.full((1, 1, 1, 1), 10.0), torch.full((1, 1, 1, 1), 4.0)
    out, out_masks = augment_batch(images, masks, "none", torch.Generator(), 0.0, mean, std)
    assert torch.allclose(out, (images - 10) / 4) and out_masks is masks


def equality_batch(dtype: torch.dtype, planes: bool = False, channels_last: bool = False):
    """Random images (of `dtype`) and masks, the normalization, and a fill per channel."""
    random = torch.Generator().manual_seed(11)
    images = (torch.rand(16, 3, 24, 40, generator=random) * 255).to(dtype)
    if channels_last:  # the layout Batches.prepare gives the trainer
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, 5, (16, 2, 24, 40) if planes else (16, 24, 40), generator=random)
    mean = torch.tensor([120.0, 110.0, 100.0], dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor([60.0, 55.0, 50.0], dtype=dtype).view(1, 3, 1, 1)
    return images, masks, mean, std, torch.tensor([7.0, 8.0, 9.0], dtype=dtype)


def both_paths(images, masks, recipe, seed, *args):
    """augment_batch's fast paths and its plain pipeline on the same draw."""
    fast = augment_batch(images, masks, recipe, torch.Generator().manual_seed(seed), *args)
    plain = augment_batch(images, masks, recipe, torch.Generator().manual_seed(seed), *args, fast=False)
    return fast, plain


@pytest.mark.parametrize("layout", ["nchw", "channels-last", "planes"])
@pytest.mark.parametrize("normalized", [False, True], ids=["0..255", "normalized"])
@pytest.mark.parametrize("preset", ["flips", "light", "default", "heavy"])
def test_fast_paths_equal_the_plain_pipeline(preset, normalized, layout):
    """Flip-only copies, the broadcast grid, the colour tables with the normalization folded in, and
    blur and noise in normalized units against the plain pipeline, every preset (its noise off: the
    fast path's bank windows are other values than fresh draws, compared by distribution above).
    In float64, where the two orders of rounding cannot move a value across a quarter grey level: then
    they agree to float64 rounding (1e-9 of a grey level), the masks exactly."""
    images, masks, mean, std, fill = equality_batch(
        torch.float64, planes=layout == "planes", channels_last=layout == "channels-last"
    )
    recipe = dataclasses.replace(PRESETS[preset], p_noise=0.0)
    args = (fill, mean, std) if normalized else (fill,)
    for seed in range(3):
        (fast, fast_masks), (plain, plain_masks) = both_paths(images, masks, recipe, seed, *args)
        assert torch.equal(fast_masks, plain_masks)
        assert torch.allclose(fast, plain, rtol=0, atol=1e-9)


def test_fast_paths_in_float32_differ_from_the_plain_pipeline_only_by_a_rounding_toss():
    """What training runs, float32: the fast path rounds table positions that carry their table's
    offset and were warped, the plain one the colour-mapped values, so float32 error can put a value
    on the other side of a quarter-level boundary: at most one quarter level (≤ 0.4 grey levels after
    gamma), in a few pixels in a thousand. Everything else agrees to float32 rounding (1e-3 of a grey
    level), the masks exactly."""
    images, masks, _, _, fill = equality_batch(torch.float32)
    recipe = dataclasses.replace(PRESETS["heavy"], p_noise=0.0)
    (fast, fast_masks), (plain, plain_masks) = both_paths(images, masks, recipe, 4, fill)
    assert torch.equal(fast_masks, plain_masks)
    difference = (fast - plain).abs()
    assert difference.max() <= 0.4
    assert (difference > 1e-3).float().mean() < 0.005


@pytest.mark.parametrize("size", [(7, 9), (24, 40), (1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_broadcast_sampling_grid_equals_affine_grid(size, dtype):
    """The fast path's grid against torch's `F.affine_grid`, to float rounding of the same sums."""
    import torch.nn.functional as F

    from segwise.data.augment import _affine_grid

    height, width = size
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = F.affine_grid(theta, [5, 1, height, width], align_corners=False)
    assert torch.allclose(
        _affine_grid(theta, height, width), expected, atol=1e-6 if dtype == torch.float32 else 1e-12
    )
