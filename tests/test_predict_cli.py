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
from segwise.inference import Predictor, postprocess, predict_folder
from segwise.inference.threshold import saved_threshold
from segwise.inference.writers import output_names
from segwise.io import read_image, read_mask
from segwise.task import Task

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
    written = predictor.predict_to_folder([tmp_path / "in.png"], tmp_path / "out", formats=formats).files
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
    predictor.predict_to_folder([tmp_path], tmp_path / "out", formats=["overlay", "rgba"])
    for stem in ("gray", "alpha"):
        assert read_image(tmp_path / "out" / f"{stem}_overlay.png").shape == (37, 53, 3)
        assert read_image(tmp_path / "out" / f"{stem}_rgba.png").shape == (37, 53, 4)


def test_exif_orientation_is_applied(predictor, tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 50 wide, 30 high; shown rotated by 90°: 30 wide, 50 high
    Image.fromarray(array).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    predictor.predict_to_folder([tmp_path / "phone.jpg"], tmp_path / "out", formats=["png", "overlay"])
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
    predictor.predict_to_folder([tmp_path / "a", tmp_path / "b" / "deep", tmp_path / "c"], tmp_path / "out")
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
        predictor.predict_to_folder([tmp_path], tmp_path)
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
    predictor.predict_to_folder([tmp_path / "in"], tmp_path / "one", formats=["npy"])
    predictor.predict_to_folder([tmp_path / "in"], tmp_path / "three", formats=["npy"], batch_size=3)
    for path in images:
        name = f"{path.stem}_proba.npy"
        np.testing.assert_allclose(
            np.load(tmp_path / "one" / name), np.load(tmp_path / "three" / name), atol=1e-3
        )


def test_shards_are_disjoint_and_complete(predictor, tmp_path):
    for i in range(5):
        noise_image(tmp_path / "in" / f"{i}.png", seed=i)
    shards = [
        predictor.predict_to_folder([tmp_path / "in"], tmp_path / "out", shard=(rank, 2)).files
        for rank in (0, 1)
    ]
    names = [sorted(p.name for p in shard) for shard in shards]
    assert names == [["0.png", "2.png", "4.png"], ["1.png", "3.png"]]


def test_saved_threshold_only_for_binary_runs(tmp_path):
    binary = Task("binary", 2)
    assert saved_threshold(tmp_path, binary) is None
    (tmp_path / "threshold.json").write_text('{"threshold": 0.3, "dice": 0.9, "split": "val"}')
    assert saved_threshold(tmp_path, binary) == 0.3
    assert saved_threshold(tmp_path, Task("multiclass", 3)) is None


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
    expected = postprocess.Steps(predictor.task, min_size=3, fill_holes=True, largest=True)(probabilities)
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


def test_cli_error_is_one_line(trained_run, tmp_path):
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


# --- the library behind `segwise predict`: Predictor.predict_to_folder and inference.predict_folder ----------


def binary_run(root: Path, foreground_logit: float = 0.4, threshold: float | None = None) -> Path:
    """A run folder as training writes it (binary, 32×32 input), whose model gives every pixel the same
    foreground probability sigmoid(`foreground_logit`), optionally with a saved threshold.json."""
    import torch

    from segwise.config import PreprocessConfig, RunConfig, TrainConfig
    from segwise.models import create_model
    from segwise.run import save_weights
    from segwise.task import Classes

    from .conftest import TINY

    run = root / "binary_run"
    run.mkdir(parents=True)
    model = create_model("unet", TINY["encoder"], 2, 3, **TINY["options"])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, foreground_logit]))
    classes = Classes(["background", "cell"], [0, 255])
    RunConfig(model.config, classes, PreprocessConfig([32, 32], [0.5] * 3, [0.25] * 3), TrainConfig()).save(
        run / "config.yaml"
    )
    save_weights(model, run / "model.safetensors")
    if threshold is not None:
        (run / "threshold.json").write_text(json.dumps({"threshold": threshold, "dice": 0.9, "split": "val"}))
    return run


def test_predict_to_folder_takes_the_runs_saved_threshold_unless_given(tmp_path):
    run = binary_run(tmp_path, foreground_logit=0.4, threshold=0.7)  # P(cell) = 0.599 everywhere
    image = noise_image(tmp_path / "in" / "a.png")
    predictor = segwise.load(run, device="cpu")
    saved = predictor.predict_to_folder([image], tmp_path / "saved")
    assert (saved.threshold, saved.threshold_file) == (0.7, run / "threshold.json")
    assert saved.files == [tmp_path / "saved" / "a.png"] and saved.total == 1
    assert not read_mask(tmp_path / "saved" / "a.png").any()  # 0.599 ≤ 0.7: background
    given = predictor.predict_to_folder([image], tmp_path / "given", threshold=0.5)
    assert (given.threshold, given.threshold_file) == (0.5, None)
    assert read_mask(tmp_path / "given" / "a.png").all()
    # A predictor built without a run folder has no saved threshold to find: the argmax decides.
    unsaved = Predictor(predictor.model, predictor.config, "cpu").predict_to_folder(
        [image], tmp_path / "none"
    )
    assert (unsaved.threshold, unsaved.threshold_file) == (None, None)
    assert read_mask(tmp_path / "none" / "a.png").all()


def test_predict_folder_is_the_whole_command_in_process(tmp_path, monkeypatch):
    run = binary_run(tmp_path, foreground_logit=0.4, threshold=0.7)
    image = noise_image(tmp_path / "in" / "a.png")
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    report = predict_folder(run, [tmp_path / "in"], tmp_path / "out", device="cpu", formats="png,npy")
    assert sorted(p.name for p in report.files) == ["a.png", "a_proba.npy"] and report.total == 2
    assert (report.threshold, report.threshold_file) == (0.7, run / "threshold.json")
    assert not read_mask(tmp_path / "out" / "a.png").any()
    flipped = predict_folder(run, [image], tmp_path / "low", device="cpu", threshold=0.5, tta="flips")
    assert flipped.threshold_file is None and read_mask(tmp_path / "low" / "a.png").all()
    # The formats are checked before anything loads: a typo names itself, not the missing run.
    with pytest.raises(SegwiseError, match="gif"):
        predict_folder(tmp_path / "no_such_run", [image], tmp_path / "x", formats="png,gif")
    with pytest.raises(SegwiseError, match="backend 'tensorrt'"):
        predict_folder(run, [image], tmp_path / "x", backend="tensorrt")
    assert not (tmp_path / "x").exists()


def test_huge_tiffs_go_to_the_region_reader_and_shards_split_both_kinds(predictor, tmp_path, monkeypatch):
    import tifffile

    for i in range(3):
        noise_image(tmp_path / "in" / f"small{i}.png", seed=i)
    slides = [tmp_path / "in" / f"slide{i}.tif" for i in range(2)]
    rng = np.random.default_rng(9)
    for slide in slides:
        tifffile.imwrite(slide, rng.integers(0, 256, (90, 70, 3), np.uint8), photometric="rgb", tile=(32, 32))
    # The slides (90×70) are above the tiling limit, the PNGs (37×53) below it.
    huge = segwise.load(predictor.run_dir, device="cpu", auto_tile_pixels=60 * 60)
    shards = [huge.predict_to_folder([tmp_path / "in"], tmp_path / "out", shard=(rank, 2)) for rank in (0, 1)]
    names = [sorted(p.name for p in shard.files) for shard in shards]
    assert names == [["slide0.tif", "small0.png", "small2.png"], ["slide1.tif", "small1.png"]]
    assert [shard.total for shard in shards] == [3, 2]  # no process group: each counts its own
    for slide in slides:  # read by region, written as a tiled TIFF in the palette, tiled as in memory
        with tifffile.TiffFile(tmp_path / "out" / slide.name) as tif:
            assert tif.pages[0].is_tiled and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
            assert np.array_equal(tif.asarray(), huge.predict(slide))
    # Without a shard, the process's torchrun rank and world size choose the share.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    mine = huge.predict_to_folder([tmp_path / "in"], tmp_path / "rank1")
    assert sorted(p.name for p in mine.files) == names[1]
