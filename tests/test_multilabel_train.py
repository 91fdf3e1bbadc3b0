"""Training on multilabel data (one binary mask per class, labels may overlap): one sigmoid per label."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segwise
from segwise.config import RunConfig
from segwise.data import load_data
from segwise.data.augment import PerSampleBatches
from segwise.engine.batches import Batches, resize_batch

from .conftest import TINY, run_cli

LABELS = ["blue", "red"]  # sorted, as the layout names them from masks/<label>/ folders


def write_multilabel_data(root: Path, count: int, size: int = 48) -> Path:
    """images/x.png and masks/<label>/x.png (0/255): a red rectangle and a blue one on a dark, noisy
    background; where they overlap the pixel is magenta and has both labels."""
    rng = np.random.default_rng(0)
    for index in range(count):
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        planes = np.zeros((2, size, size), np.uint8)
        for plane, channel in ((0, 2), (1, 0)):  # blue → channel 2, red → channel 0
            top, left = rng.integers(0, size // 2, 2)
            height, width = rng.integers(size // 4, size // 2, 2)
            planes[plane, top : top + height, left : left + width] = 1
            image[..., channel][planes[plane] == 1] = 230
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"s{index:02d}.png")
        for name, plane in zip(LABELS, planes, strict=True):
            (root / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(plane * 255).save(root / "masks" / name / f"s{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory) -> Path:
    return write_multilabel_data(tmp_path_factory.mktemp("multilabel"), count=16)


@pytest.fixture(scope="module")
def multilabel_run(multilabel_data, tmp_path_factory):
    return segwise.train(
        multilabel_data,
        runs_dir=tmp_path_factory.mktemp("runs"),
        progress=False,
        epochs=12,
        lr=0.01,
        augment="light",
        val_samples=2,
        **TINY,
    )


def test_training_learns_overlapping_labels(multilabel_run):
    result = multilabel_run
    saved = RunConfig.load(result.run_dir / "config.yaml")
    assert saved.classes.multilabel and saved.classes.names == LABELS
    assert saved.model["num_classes"] == 2  # one output per label, no background channel
    # the labels are colours, so a few epochs learn them; one softmax over the two could not give
    # the magenta overlap both
    assert result.best_miou > 0.6, result.best_miou
    panels = sorted((result.run_dir / "val_samples").glob("*.png"))
    assert len(panels) == 2 and np.asarray(Image.open(panels[0])).shape[-1] == 3


def test_progressive_resizing_resizes_every_label_plane():
    images = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 2, 16, 16, dtype=torch.long)
    masks[:, 0, :8] = 1
    masks[:, 1, :, :8] = 1
    small_images, small_masks = resize_batch(images, masks, 0.5)
    assert small_images.shape == (2, 3, 8, 8) and small_masks.shape == (2, 2, 8, 8)
    assert torch.equal(small_masks[0, 0, :4], torch.ones(4, 8, dtype=torch.long))
    assert torch.equal(small_masks[0, 1, :, 4:], torch.zeros(8, 4, dtype=torch.long))


def test_an_albumentations_compose_gets_and_returns_label_planes_last(multilabel_data):
    albumentations = pytest.importorskip("albumentations")
    data = load_data(multilabel_data, val_fraction=0.25)
    batches = Batches(data.train_images, data.train_masks, 4, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    flip = albumentations.Compose([albumentations.HorizontalFlip(p=1.0)])
    per_sample = PerSampleBatches(batches, flip, workers=0)
    images, masks = next(per_sample.epoch(torch.Generator().manual_seed(0), drop_last=True))
    assert masks.shape == (4, 2, *data.size) and images.shape == (4, 3, *data.size)
    # every sample flipped, its label planes with it: red planes stay where the image is red
    red = images[:, 0] > 200
    assert torch.equal(masks[:, 1].bool(), red)


def test_lr_auto_finds_a_rate_with_the_multilabel_loss(multilabel_data, tmp_path):
    result = segwise.train(
        multilabel_data, runs_dir=tmp_path / "runs", progress=False, epochs=1, lr="auto", **TINY
    )
    found = RunConfig.load(result.run_dir / "config.yaml").train.lr
    assert isinstance(found, float) and 1e-6 < found < 10


def test_lr_find_runs_on_multilabel_data(multilabel_data, tmp_path):
    from segwise.engine.lr_find import find_lr

    finding = find_lr(multilabel_data, output=tmp_path / "lr.png", steps=20, **TINY)
    assert 0 < finding.suggestion < 10 and len(finding.losses) == 20


def test_eval_and_predict_a_multilabel_run_end_to_end(multilabel_run, multilabel_data, tmp_path):
    """train → `segwise eval` (scored per label) → `segwise predict` (one mask per label, in the
    masks/<label>/ layout, so the predictions load back as multilabel training data)."""
    run = multilabel_run.run_dir
    result = run_cli("eval", str(run), str(multilabel_data), "--split", "all")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "eval" / "all" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == LABELS
    assert metrics["overall"]["mean_iou"] > 0.6, metrics["overall"]
    assert (run / "eval" / "all" / "confusion.png").stat().st_size > 0

    out = tmp_path / "predicted"
    result = run_cli("predict", str(run), str(multilabel_data / "images"), "-o", str(out / "masks"))
    assert result.returncode == 0, result.stderr
    for label in LABELS:
        files = sorted((out / "masks" / label).glob("*.png"))
        assert len(files) == 16 and set(np.unique(np.asarray(Image.open(files[0])))) <= {0, 255}
    (out / "images").symlink_to(multilabel_data / "images")
    again = load_data(out, val_fraction=0.25)
    assert again.mode == "multilabel" and again.classes.names == LABELS
    # the predicted planes agree with the truth on most pixels (the labels are colours)
    truth = load_data(multilabel_data, val_fraction=0.25)
    agreement = (again.train_masks == truth.train_masks).mean()
    assert agreement > 0.9, agreement


def test_show_draws_multilabel_masks_in_label_colours(multilabel_data, tmp_path):
    out = tmp_path / "grid.png"
    result = run_cli("show", str(multilabel_data), "-o", str(out), "--augment", "heavy", "-n", "4")
    assert result.returncode == 0, result.stderr
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape[0] > 48 and grid.shape[1] > 2 * 48
    colours = {tuple(colour) for colour in grid.reshape(-1, 3)}
    assert (128, 128, 128) in colours  # heavy zooms out: void where every label plane is void
