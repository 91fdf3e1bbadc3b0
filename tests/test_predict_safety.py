"""`segwise predict` is safe with the files around it: it never writes over an input, replaces an existing
file or mixes its masks into a dataset's folder unless told to (--overwrite), predicts every readable
input when some are not, and clears what killed runs left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

import segwise
from segwise.errors import SegwiseError
from segwise.inference import predict_folder
from segwise.io import read_mask

from .conftest import run_cli, write_pair
from .test_cli import assert_one_line_error
from .test_predict_cli import binary_run, noise_image


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder whose model predicts in milliseconds (see `binary_run`)."""
    return binary_run(tmp_path_factory.mktemp("safety"))


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too), by relative path, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def predict(run: Path, *args) -> subprocess.CompletedProcess:
    return run_cli("predict", run, *args, "--device", "cpu")


def ground_truth(root: Path, count: int = 5) -> Path:
    """root/images and root/masks: `count` image/mask pairs under the same stems."""
    for i in range(count):
        write_pair(root, f"img{i}")
    return root


# --- inputs are never outputs; nothing existing is replaced unless asked ------------------------------------


def test_predict_into_ground_truth_masks_is_refused_and_every_mask_kept(run, tmp_path):
    gt = ground_truth(tmp_path / "gt")
    before = contents(gt)
    result = predict(run, gt / "images", "-o", gt / "masks")
    assert_one_line_error(result, str(gt / "masks"), "5 existing file(s)", "img0.png", "--overwrite")
    assert contents(gt) == before  # byte for byte, and nothing added


def test_a_dataset_folder_is_refused_even_where_no_name_collides(run, tmp_path):
    gt = ground_truth(tmp_path / "gt")
    new = noise_image(tmp_path / "new" / "fresh.png")
    before = contents(gt)
    masks_before = contents(gt / "masks")
    # masks/ holds the ground truth of other images: fresh.png would join them as if it were one
    assert_one_line_error(predict(run, new, "-o", gt / "masks"), "masks", "img0.png", "--overwrite")
    # a folder holding the inputs is an images folder, whatever its name
    photos = tmp_path / "photos"
    noise_image(photos / "a.jpg")
    assert_one_line_error(predict(run, photos, "-o", photos), "photos", "a.jpg", "--overwrite")
    assert contents(gt) == before and sorted(p.name for p in photos.iterdir()) == ["a.jpg"]
    # asked for, it writes there
    assert predict(run, new, "-o", gt / "masks", "--overwrite").returncode == 0
    after = contents(gt / "masks")
    assert after.pop("fresh.png") and after == masks_before


def test_existing_outputs_are_replaced_only_with_overwrite(run, tmp_path):
    for i in range(5):
        noise_image(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "out"
    assert predict(run, tmp_path / "in", "-o", out, "--format", "png,json").returncode == 0
    (out / "3.png").write_bytes(b"edited by hand")
    before = contents(out)
    again = predict(run, tmp_path / "in", "-o", out, "--format", "png,json")
    assert_one_line_error(again, "10 existing file(s)", "0.json", "and 7 more", "--overwrite", "-o")
    assert contents(out) == before
    forced = predict(run, tmp_path / "in", "-o", out, "--format", "png,json", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert "wrote 10 file(s)" in forced.stdout
    assert read_mask(out / "3.png").shape == (37, 53)  # the hand edit is replaced by a mask again


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(run, tmp_path):
    noise_image(tmp_path / "a.png")
    noise_image(tmp_path / "b.png", seed=5)
    before = contents(tmp_path)
    result = predict(run, tmp_path, "-o", tmp_path, "--overwrite")
    assert_one_line_error(result, "would overwrite the input", "another output folder")
    assert contents(tmp_path) == before


def test_a_huge_tiff_never_overwrites_its_input_either(run, tmp_path):
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.full((90, 70, 3), 7, np.uint8), photometric="rgb", tile=(32, 32))
    before = slide.read_bytes()
    huge = segwise.load(run, device="cpu", auto_tile_pixels=60 * 60)  # read by region, written as <stem>.tif
    with pytest.raises(SegwiseError, match="would overwrite the input"):
        huge.predict_to_folder([slide], tmp_path, overwrite=True)
    assert slide.read_bytes() == before


def test_the_python_api_refuses_alike_and_takes_overwrite(run, tmp_path):
    image = noise_image(tmp_path / "in" / "a.png")
    predictor = segwise.load(run, device="cpu")
    predictor.predict_to_folder([image], tmp_path / "out")
    (tmp_path / "out" / "a.png").write_bytes(b"mine")
    with pytest.raises(SegwiseError, match="1 existing file"):
        predictor.predict_to_folder([image], tmp_path / "out")
    with pytest.raises(SegwiseError, match="1 existing file"):
        predict_folder(run, [image], tmp_path / "out", device="cpu")
    assert (tmp_path / "out" / "a.png").read_bytes() == b"mine"
    report = predict_folder(run, [image], tmp_path / "out", device="cpu", overwrite=True)
    assert report.files == [tmp_path / "out" / "a.png"] and read_mask(report.files[0]).shape == (37, 53)


def test_all_processes_refuse_together_where_one_would_replace_a_file(tmp_path):
    from segwise.inference.writers import claim_folder, plan_outputs
    from segwise.task import Classes

    images = [noise_image(tmp_path / "in" / f"{i}.png", seed=i) for i in range(4)]
    plan = plan_outputs(
        images, [], tmp_path / "out", ["png"], False, Classes(["background", "cell"], [0, 255])
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "1.png").write_bytes(b"kept")  # in the share of rank 1 of 2
    claim_folder(plan, False, rank=0, world_size=2)  # rank 0 alone: its share (0.png, 2.png) is free
    others = [tmp_path / "out" / "1.png"]  # what rank 1 reports through the gather
    with pytest.raises(SegwiseError, match=r"1 existing file\(s\): 1\.png"):
        claim_folder(plan, False, rank=0, world_size=2, gather=lambda mine: mine + others)
    claim_folder(plan, True, rank=1, world_size=2, gather=lambda mine: mine)


# --- one unreadable input does not stop the others ----------------------------------------------------------


@pytest.mark.parametrize("batch_size", ["1", "2"])
def test_an_unreadable_image_is_skipped_and_named_at_the_end(run, tmp_path, batch_size):
    for name in ("a", "c", "d"):
        noise_image(tmp_path / "in" / f"{name}.png")
    (tmp_path / "in" / "b.png").write_text("not a picture")
    out = tmp_path / "out"
    result = predict(run, tmp_path / "in", "-o", out, "--batch-size", batch_size)
    assert_one_line_error(result, "not predicted", "b.png", "cannot read image", "replace or remove")
    assert "wrote 3 file(s)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "d.png"]


def test_the_report_lists_every_skipped_input(run, tmp_path):
    noise_image(tmp_path / "in" / "good.png")
    noise_image(tmp_path / "in" / "gray.png", mode="L")  # one channel: repeated for the RGB model
    tifffile.imwrite(tmp_path / "in" / "five.tif", np.zeros((20, 30, 5), np.uint8), planarconfig="contig")
    for name in ("bad1.png", "bad2.jpg", "bad3.tif"):
        (tmp_path / "in" / name).write_bytes(b"\x89PNG broken")
    report = segwise.load(run, device="cpu").predict_to_folder([tmp_path / "in"], tmp_path / "out")
    assert sorted(p.name for p in report.files) == ["good.png", "gray.png"]
    reasons = {path.name: reason for path, reason in report.skipped}
    assert list(reasons) == ["bad1.png", "bad2.jpg", "bad3.tif", "five.tif"]
    assert all("cannot read image" in reasons[name] for name in ("bad1.png", "bad2.jpg", "bad3.tif"))
    assert "5 channels where 3 are expected" in reasons["five.tif"]
    result = predict(run, tmp_path / "in", "-o", tmp_path / "cli")
    assert_one_line_error(result, "4 inputs not predicted", "bad1.png", "bad2.jpg", "bad3.tif", "and 1 more")


# --- no debris -------------------------------------------------------------------------------------------


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(run, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    out = tmp_path / "out"
    dead = [out / f".a.png.{gone.pid}-x1y2.tmp.png", out / "cell" / f".b.tif.{gone.pid}-k9.tmp.tif"]
    live = out / f".c.png.{os.getpid()}-z3.tmp.png"
    for path in [*dead, live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    noise_image(tmp_path / "in" / "a.png")
    result = predict(run, tmp_path / "in", "-o", out)
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in dead)
    assert live.read_bytes() == b"half written"
    assert (out / "a.png").is_file()


def test_an_output_that_is_a_file_or_under_one_is_one_line(run, tmp_path):
    ground_truth(tmp_path / "in", count=1)
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    refused = predict(run, tmp_path / "in" / "images", "-o", blocker)
    assert_one_line_error(refused, "taken: is a file, not a folder")
    under = predict(run, tmp_path / "in" / "images", "-o", blocker / "sub")
    assert_one_line_error(under, "cannot make the folder")
    assert blocker.read_text() == "a file, not a folder"
