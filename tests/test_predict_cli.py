"""Prediction outputs: formats, sizes, EXIF, names, batching, post-processing flags, torchrun shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import segwise
from segwise.cli import main
from segwise.errors import SegwiseError
from segwise.inference import postprocess
from segwise.inference.writers import output_names, predict_to_folder, saved_threshold
from segwise.io import read_image, read_mask

from .conftest import run_cli
from .test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def predictor(trained_run):
    return segwise.load(trained_run, device="cpu")


def noise_image(path: Path, size=(37, 53), seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    array = rng.integers(0, 255, (*size, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
    return path


def test_every_format_at_the_input_size(predictor, shapes_data, tmp_path):
    source = shapes_data / "test" / "images" / "test_0000.png"
    image = np.asarray(Image.open(source).convert("RGB"))[5:46, 3:60]  # 41×57, shapes in it
    Image.fromarray(image).save(tmp_path / "in.png")
    formats = ["png", "overlay", "rgba", "npy", "tiff", "json"]
    written = predict_to_folder(predictor, [tmp_path / "in.png"], tmp_path / "out", formats=formats)
    out = tmp_path / "out"
    assert sorted(p.name for p in written) == sorted(
        ["in.png", "in_overlay.png", "in_rgba.png", "in_proba.npy", "in_proba.tif", "in.json"]
    )
    probabilities = np.load(out / "in_proba.npy")
    assert probabilities.dtype == np.float16 and probabilities.shape == (5, 41, 57)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1, atol=5e-3)
    exact = predictor.predict_proba(image)
    np.testing.assert_allclose(tifffile.imread(out / "in_proba.tif"), exact, atol=1e-6)
    mask = read_mask(out / "in.png")
    assert Image.open(out / "in.png").mode == "P"
    assert (mask == exact.argmax(0)).all()
    assert mask.any(), "the fixture image should contain a predicted shape"

    overlay = read_image(out / "in_overlay.png")
    assert overlay.shape == (41, 57, 3)
    background = mask == 0
    assert (overlay[background] == image[background]).all()
    colours = np.asarray(predictor.palette)[mask[~background]]
    np.testing.assert_allclose(overlay[~background], (image[~background] + colours) / 2, atol=1)

    rgba = read_image(out / "in_rgba.png")
    assert rgba.shape == (41, 57, 4)
    assert (rgba[..., :3] == image).all()
    assert ((rgba[..., 3] == 255) == (mask > 0)).all() and set(np.unique(rgba[..., 3])) <= {0, 255}

    record = json.loads((out / "in.json").read_text())
    assert (record["width"], record["height"]) == (57, 41)
    expected = [c.to_dict() for c in postprocess.components(mask, exact, predictor.class_names)]
    assert len(record["objects"]) == len(expected) > 0
    for got, want in zip(record["objects"], expected, strict=True):
        assert {k: v for k, v in got.items() if k != "score"} == {
            k: v for k, v in want.items() if k != "score"
        }
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert sum(o["area"] for o in record["objects"]) == int((mask > 0).sum())


def test_gray_and_rgba_inputs_give_rgb_overlays(predictor, tmp_path):
    noise_image(tmp_path / "gray.png", mode="L")
    noise_image(tmp_path / "alpha.png", mode="RGBA")
    predict_to_folder(predictor, [tmp_path], tmp_path / "out", formats=["overlay", "rgba"])
    for stem in ("gray", "alpha"):
        assert read_image(tmp_path / "out" / f"{stem}_overlay.png").shape == (37, 53, 3)
        assert read_image(tmp_path / "out" / f"{stem}_rgba.png").shape == (37, 53, 4)


def test_exif_orientation_is_applied(predictor, tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 50 wide, 30 high; shown rotated by 90°: 30 wide, 50 high
    Image.fromarray(array).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    predict_to_folder(predictor, [tmp_path / "phone.jpg"], tmp_path / "out", formats=["png", "overlay"])
    shown = read_image(tmp_path / "phone.jpg")
    assert shown.shape[:2] == (50, 30)
    mask = read_mask(tmp_path / "out" / "phone.png")
    assert mask.shape == (50, 30)
    assert (mask == predictor.predict(shown)).all()
    assert read_image(tmp_path / "out" / "phone_overlay.png").shape == (50, 30, 3)


def test_same_stem_from_two_folders_and_twins_in_one(predictor, tmp_path):
    inputs = [
        noise_image(tmp_path / "a" / "x.png", seed=1),
        noise_image(tmp_path / "b" / "deep" / "x.png", seed=2),
        noise_image(tmp_path / "c" / "y.png", seed=3),
        noise_image(tmp_path / "c" / "y.bmp", seed=3),
    ]
    assert output_names(inputs) == ["a/x", "b/deep/x", "y_png", "y_bmp"]
    predict_to_folder(predictor, [tmp_path / "a", tmp_path / "b" / "deep", tmp_path / "c"], tmp_path / "out")
    got = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert got == ["a/x.png", "b/deep/x.png", "y_bmp.png", "y_png.png"]
    # Different images under one stem get their own masks, not one written over the other.
    assert (read_mask(tmp_path / "out/a/x.png") == predictor.predict(inputs[0])).all()
    assert (read_mask(tmp_path / "out/b/deep/x.png") == predictor.predict(inputs[1])).all()


def test_never_overwrites_an_input(predictor, tmp_path):
    noise_image(tmp_path / "a.png")
    noise_image(tmp_path / "b.png", seed=5)
    before = (tmp_path / "b.png").read_bytes()
    with pytest.raises(SegwiseError, match="would overwrite the input"):
        predict_to_folder(predictor, [tmp_path], tmp_path)
    assert (tmp_path / "b.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_batches_equal_single_images(predictor, tmp_path):
    images = [
        noise_image(tmp_path / "in" / f"{i}.png", size=size, seed=i)
        for i, size in enumerate([(37, 53), (64, 64), (20, 90), (37, 53)])
    ]
    together = predictor.predict_proba_batch(images)
    for path, probabilities in zip(images, together, strict=True):
        np.testing.assert_allclose(probabilities, predictor.predict_proba(path), atol=1e-5)
    predict_to_folder(predictor, [tmp_path / "in"], tmp_path / "one", formats=["npy"])
    predict_to_folder(predictor, [tmp_path / "in"], tmp_path / "three", formats=["npy"], batch_size=3)
    for path in images:
        name = f"{path.stem}_proba.npy"
        np.testing.assert_allclose(
            np.load(tmp_path / "one" / name), np.load(tmp_path / "three" / name), atol=1e-3
        )


def test_shards_are_disjoint_and_complete(predictor, tmp_path):
    for i in range(5):
        noise_image(tmp_path / "in" / f"{i}.png", seed=i)
    shards = [
        predict_to_folder(predictor, [tmp_path / "in"], tmp_path / "out", shard=(rank, 2)) for rank in (0, 1)
    ]
    names = [sorted(p.name for p in shard) for shard in shards]
    assert names == [["0.png", "2.png", "4.png"], ["1.png", "3.png"]]


def test_saved_threshold_only_for_binary_runs(tmp_path):
    class Binary:
        class_names = ["background", "cell"]
        multilabel = False

    assert saved_threshold(tmp_path, Binary()) is None
    (tmp_path / "threshold.json").write_text('{"threshold": 0.3, "dice": 0.9, "split": "val"}')
    assert saved_threshold(tmp_path, Binary()) == 0.3
    Binary.class_names = ["a", "b", "c"]
    assert saved_threshold(tmp_path, Binary()) is None


def test_cli_formats_postprocessing_and_crop(trained_run, shapes_data, tmp_path):
    image = shapes_data / "test" / "images" / "test_0001.png"
    result = run_cli(
        "predict",
        str(trained_run),
        str(image),
        "-o",
        str(tmp_path / "out"),
        "--format",
        "png,json",
        "--largest",
        "--fill-holes",
        "--min-size",
        "3",
        "--crop",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 file(s)" in result.stdout
    predictor = segwise.load(trained_run, device="cpu")
    probabilities = predictor.predict_proba(image)
    expected = postprocess.Steps(min_size=3, fill_holes=True, largest=True)(probabilities)
    assert (read_mask(tmp_path / "out" / "test_0001.png") == expected).all()
    objects = json.loads((tmp_path / "out" / "test_0001.json").read_text())["objects"]
    assert len({o["class_index"] for o in objects}) == len(objects)  # one object per class
    crop = read_image(tmp_path / "out" / "test_0001_crop.png")
    assert (crop == postprocess.crop_object(read_image(image), expected)).all()


def test_cli_threshold_one_leaves_only_background(trained_run, tmp_path, capsys):
    noise_image(tmp_path / "a.png")
    code = main(
        ["predict", str(trained_run), str(tmp_path / "a.png"), "-o", str(tmp_path / "t"), "--threshold", "1"]
    )
    assert code == 0 and "wrote 1 file(s)" in capsys.readouterr().out
    assert not read_mask(tmp_path / "t" / "a.png").any()
    assert segwise.load(trained_run, device="cpu").predict(tmp_path / "a.png").any()  # else T=1 shows nothing


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--format", "png,jpeg"], ["jpeg", "png, overlay, rgba, npy, tiff, json"]),
        (["--batch-size", "0"], ["batch size 0", "≥ 1"]),
        (["--threshold", "1.5"], ["threshold 1.5", "between 0 and 1"]),
        (["--min-size", "0"], ["min_size 0", "≥ 1"]),
        (["--device", "nonsense"], ["nonsense", "auto, cpu, cuda"]),
    ],
)
def test_cli_bad_flags_fail_in_one_line(trained_run, tmp_path, capsys, flags, fragments):
    # In process (main() is what the subprocess runs) to spare an interpreter start per case.
    noise_image(tmp_path / "a.png")
    code = main(["predict", str(trained_run), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), *flags])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_error_from_a_subprocess_is_one_line(trained_run, tmp_path):
    noise_image(tmp_path / "a.png")
    assert_one_line_error(
        run_cli("predict", str(trained_run), str(tmp_path / "a.png"), "-o", str(tmp_path), "--format", "gif"),
        "gif",
        "comma-separated",
    )


@pytest.mark.slow  # two interpreters plus torchrun's agent: ~40 s on a busy 2-core machine
def test_torchrun_two_processes_match_one(trained_run, tmp_path):
    for i in range(5):
        noise_image(tmp_path / "in" / f"img{i}.png", size=(24 + i, 40), seed=i)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    common = ["predict", str(trained_run), str(tmp_path / "in"), "--format", "png,npy", "--device", "cpu"]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "segwise",
        ]
        + common
        + ["-o", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("wrote 10 file(s)") == 1  # one summary, from rank 0, counting both ranks
    one = run_cli(*common, "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 10
    for i in range(5):
        assert (
            read_mask(tmp_path / "two" / f"img{i}.png") == read_mask(tmp_path / "one" / f"img{i}.png")
        ).all()
        # Same images, same model; the two runs use different thread counts (and, with bf16 autocast,
        # different oneDNN blockings), so a float16 probability may land one rounding step apart.
        np.testing.assert_allclose(
            np.load(tmp_path / "two" / f"img{i}_proba.npy"),
            np.load(tmp_path / "one" / f"img{i}_proba.npy"),
            atol=1e-3,
        )
