"""Prediction for multilabel runs: sigmoid probabilities, C×H×W masks, one PNG folder per label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

import segwise
from segwise.cli import main
from segwise.config import PreprocessConfig, RunConfig, TrainConfig
from segwise.data.dataset import load_data, resize_image
from segwise.errors import SegwiseError
from segwise.inference import postprocess
from segwise.inference.predictor import InferenceOptions, Predictor
from segwise.inference.threshold import saved_threshold
from segwise.io import colorize, default_palette, read_image, read_mask
from segwise.models import create_model
from segwise.run import save_weights
from segwise.task import Classes

from .conftest import TINY

NAMES = ["road", "car", "sky"]
SIZE = (32, 32)  # the training size the images are resized to


class PixelLabels(torch.nn.Module):
    """Logit of label c = 4 × normalized channel c: label c is present exactly where channel c ≥ 128,
    so every prediction path has a known answer (mean 0.5 and std 0.25 normalize 127.5 to 0)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.in_channels = self.num_classes = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * x


def multilabel_config(names: list[str], model: dict | None = None) -> RunConfig:
    return RunConfig(
        model=model or {},
        classes=Classes(names, list(range(len(names))), default_palette(len(names) + 1)[1:], multilabel=True),
        preprocess=PreprocessConfig(list(SIZE), [0.5] * 3, [0.25] * 3),
        train=TrainConfig(),
    )


def pixel_predictor(names=NAMES, **options) -> Predictor:
    return Predictor(PixelLabels(len(names)), multilabel_config(names), "cpu", InferenceOptions(**options))


def exact_probabilities(image: np.ndarray) -> np.ndarray:
    """What PixelLabels' sigmoids give for an image fed at its own size."""
    return 1 / (1 + np.exp(-4 * (image.astype(np.float64) - 127.5) / 63.75)).transpose(2, 0, 1)


def blocks(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Overlapping labels: road on the left, car in the top band, sky in a square; noise inside levels."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 100, (height, width, 3), dtype=np.uint8)
    image[:, : width // 2, 0] += 150
    image[: height // 3, :, 1] += 150
    image[height // 4 : height // 2, width // 3 : width // 2 + 5, 2] += 150
    return image


@pytest.mark.parametrize(
    "size, options",
    [
        (SIZE, {}),  # the training size: no resize
        (SIZE, {"tta": "d4", "merge": "gmean"}),  # views merged as sigmoids
        ((40, 56), {"tile": (16, 16)}),  # native resolution, tiles stitched
        ((40, 56), {"tile": (16, 16), "tta": "flips", "merge": "vote"}),
    ],
)
def test_probabilities_are_independent_sigmoids_on_every_path(size, options):
    image = blocks(*size)
    probabilities = pixel_predictor(**options).predict_proba(image)
    if options.get("merge") == "vote":  # the share of views with the label: all or none here
        np.testing.assert_array_equal(probabilities, image.transpose(2, 0, 1) >= 128)
    else:
        np.testing.assert_allclose(probabilities, exact_probabilities(image), atol=1e-5)
    assert not np.allclose(probabilities.sum(0), 1)  # not a softmax over labels


def test_a_resized_image_comes_back_at_its_size_as_the_sigmoid_of_resized_logits():
    predictor = pixel_predictor()
    image = blocks(45, 70)
    probabilities = predictor.predict_proba(image)
    assert probabilities.shape == (3, 45, 70)
    resized = torch.from_numpy(resize_image(image, SIZE)).permute(2, 0, 1)[None].float()
    logits = 4 * (resized - 127.5) / 63.75
    expected = F.interpolate(logits, size=(45, 70), mode="bilinear", align_corners=False).sigmoid()[0]
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)

    mask = predictor.predict(image)
    assert mask.dtype == bool and mask.shape == (3, 45, 70)
    assert (mask == (probabilities > 0.5)).all()
    assert mask[:, 5, 5].tolist() == [True, True, False]  # road and car at once: labels overlap
    batch = predictor.predict_proba_batch([image, blocks(*SIZE, seed=1)])
    np.testing.assert_array_equal(batch[0], probabilities)
    assert batch[1].shape == (3, *SIZE)


def test_every_format_writes_the_multilabel_prediction(tmp_path):
    predictor = pixel_predictor()
    image = blocks(30, 40)
    Image.fromarray(image).save(tmp_path / "in.png")
    formats = ["png", "overlay", "rgba", "npy", "tiff", "json"]
    written = predictor.predict_to_folder(
        [tmp_path / "in.png"], tmp_path / "out", formats=formats, crop=True
    ).files
    out = tmp_path / "out"
    expected_files = [f"{name}/in.png" for name in NAMES]
    expected_files += [
        "in_overlay.png",
        "in_rgba.png",
        "in_proba.npy",
        "in_proba.tif",
        "in.json",
        "in_crop.png",
    ]
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(expected_files)

    probabilities = predictor.predict_proba(image)
    mask = postprocess.Steps(predictor.task)(probabilities)
    assert all(plane.any() and not plane.all() for plane in mask), "every label should be partly present"
    for name, plane in zip(NAMES, mask, strict=True):
        png = Image.open(out / name / "in.png")
        assert png.mode == "L" and png.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(png), plane * 255, err_msg=name)

    found = mask.any(0)
    overlay = read_image(out / "in_overlay.png")
    assert (overlay[~found] == image[~found]).all()
    colours = colorize(mask, predictor.palette).astype(np.float32)
    np.testing.assert_allclose(overlay[found], (image[found] + colours[found]) / 2, atol=1)
    rgba = read_image(out / "in_rgba.png")
    assert (rgba[..., :3] == image).all() and ((rgba[..., 3] == 255) == found).all()

    saved = np.load(out / "in_proba.npy")
    assert saved.shape == (3, 30, 40)
    np.testing.assert_allclose(saved, probabilities, atol=1e-3)
    np.testing.assert_allclose(tifffile.imread(out / "in_proba.tif"), probabilities, atol=1e-6)
    with tifffile.TiffFile(out / "in_proba.tif") as tiff:  # three planes are not an RGB image
        assert len(tiff.pages) == 3 and tiff.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK

    objects = json.loads((out / "in.json").read_text())["objects"]
    for index, name in enumerate(NAMES):
        mine = [o for o in objects if o["class_index"] == index]
        assert {o["class_name"] for o in mine} == {name}
        assert sum(o["area"] for o in mine) == mask[index].sum()
    assert [o["id"] for o in objects] == list(range(1, len(objects) + 1))

    rows, cols = np.flatnonzero(found.any(1)), np.flatnonzero(found.any(0))
    crop = read_image(out / "in_crop.png")
    assert crop.shape == (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, 3)


def test_postprocessing_flags_clean_each_label(tmp_path):
    predictor = pixel_predictor()
    image = np.zeros((SIZE[0], SIZE[1], 3), np.uint8)
    image[2:12, 2:12] = 200  # every label: a square with a hole, and a speck that only road has
    image[5:7, 5:7] = 0
    image[20, 20, 0] = 200
    Image.fromarray(image).save(tmp_path / "in.png")
    predictor.predict_to_folder([tmp_path / "in.png"], tmp_path / "out", min_size=2, fill_holes=True)
    square = np.zeros(SIZE, np.uint8)
    square[2:12, 2:12] = 255
    for name in NAMES:
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / name / "in.png"), square, err_msg=name)


def test_png_output_is_multilabel_training_data(tmp_path):
    predictor = pixel_predictor()
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for seed in range(4):
        Image.fromarray(blocks(*SIZE, seed=seed)).save(data / "images" / f"im{seed}.png")
    predictor.predict_to_folder([data / "images"], data / "masks")
    (data / "classes.txt").write_text("\n".join(NAMES) + "\n")
    loaded = load_data(data, val_fraction=0.25, use_cache=False)
    assert loaded.mode == "multilabel" and loaded.classes.names == NAMES
    for images, masks in ((loaded.train_images, loaded.train_masks), (loaded.val_images, loaded.val_masks)):
        for image, mask in zip(images, masks, strict=True):
            np.testing.assert_array_equal(mask, predictor.predict(image))


def test_a_label_that_cannot_name_a_folder_fails_before_writing(tmp_path):
    Image.fromarray(blocks(*SIZE)).save(tmp_path / "in.png")
    predictor = pixel_predictor(["road", "a/b", "sky"])
    with pytest.raises(SegwiseError, match="label 'a/b'.*cannot name an output folder; rename it"):
        predictor.predict_to_folder([tmp_path / "in.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    predictor.predict_to_folder([tmp_path / "in.png"], tmp_path / "out", formats=["npy"])  # no folders


def test_two_labels_are_not_a_binary_run(tmp_path):
    (tmp_path / "threshold.json").write_text('{"threshold": 0.3, "dice": 0.9, "split": "val"}')
    assert saved_threshold(tmp_path, pixel_predictor(["road", "car"]).task) is None


def test_large_tiff_writes_one_channel_per_label(tmp_path):
    image = blocks(300, 520)
    tifffile.imwrite(tmp_path / "big.tif", image)
    predictor = pixel_predictor()
    target = predictor.predict_large_tiff(
        tmp_path / "big.tif", tmp_path / "big_mask.tif", InferenceOptions(tile=64)
    )
    mask = read_mask(target)  # as training reads a multi-channel TIFF mask
    assert mask.shape == (300, 520, 3)
    np.testing.assert_array_equal(mask, np.where(image >= 128, 255, 0))


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> Path:
    """A run folder as training writes it, with a model whose head says: road everywhere, car nowhere."""
    run = tmp_path_factory.mktemp("run")
    model = create_model("unet", TINY["encoder"], 2, 3, **TINY["options"])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([4.0, -4.0]))  # sigmoid: 0.982 and 0.018
    multilabel_config(["road", "car"], model.config).save(run / "config.yaml")
    save_weights(model, run / "model.safetensors")
    (run / "threshold.json").write_text('{"threshold": 0.01, "dice": 0.9, "split": "val"}')  # binary only
    return run


def test_cli_predict_writes_label_folders(multilabel_run, tmp_path, capsys):
    Image.fromarray(blocks(37, 53)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(["predict", str(multilabel_run), str(tmp_path / "a.png"), "-o", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and "wrote 2 file(s)" in printed and "threshold" not in printed
    assert (read_mask(out / "road" / "a.png") == 255).all() and read_mask(out / "road" / "a.png").shape == (
        37,
        53,
    )
    assert not read_mask(out / "car" / "a.png").any()
    assert segwise.load(multilabel_run, device="cpu").predict(tmp_path / "a.png")[:, 0, 0].tolist() == [
        True,
        False,
    ]

    code = main(
        ["predict", str(multilabel_run), str(tmp_path / "a.png"), "-o", str(out), "--threshold", "0.99"]
        + ["--overwrite"]  # the masks of the first prediction are there
    )
    assert code == 0 and not read_mask(out / "road" / "a.png").any()  # 0.982 ≤ 0.99: no label left
