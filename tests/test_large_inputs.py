"""Images of any size: one pixel limit, checked from the header before decoding, for every format and
command; large images predicted in tiles streamed by rows, in bounded memory, with a progress bar."""

from __future__ import annotations

import io
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segwise.errors import SegwiseError
from segwise.io import image_size, max_pixels, open_image, read_image, read_mask

from .conftest import run_cli, write_pair
from .test_large_image import pixels, tiny_predictor

SRC = Path(__file__).parents[1] / "src"


def header_png(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims width×height: a 1×1 PNG with its IHDR patched."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after the signature, length, type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over the type and the data
    path.write_bytes(bytes(data))
    return path


def header_tiff(path: Path, height: int = 60000, width: int = 60000) -> Path:
    """A TIFF whose header claims height×width×3 uint8 pixels while the file holds under 200 bytes:
    one uncompressed strip, said to start right after the header, of which nothing was written."""
    long, short = 4, 3
    entries = [  # tag, type, value; one value each
        (256, long, width),
        (257, long, height),
        (258, short, 8),  # bits per sample
        (259, short, 1),  # no compression
        (262, short, 2),  # RGB
        (273, long, 200),  # strip offset
        (277, short, 3),  # samples per pixel
        (278, long, height),  # rows per strip: one strip
        (279, long, 2**32 - 1),  # strip byte count: as much as the field holds
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        # The value sits in the entry's 4-byte field; a SHORT fills its first half.
        field = struct.pack("<I", value) if kind == long else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + field
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0))
    return path


def test_the_header_files_claim_what_the_tests_say(tmp_path):
    assert image_size(header_png(tmp_path / "a.png", 12000, 12000)) == (12000, 12000)
    assert image_size(header_tiff(tmp_path / "b.tif")) == (60000, 60000)
    assert (tmp_path / "b.tif").stat().st_size < 1000
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.series[0].shape == (60000, 60000, 3)


def test_a_png_bomb_is_refused_from_its_header_with_the_limit_and_the_flag(tmp_path):
    bomb = header_png(tmp_path / "bomb.png", 60000, 60000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would be an error here
        for read in (read_image, read_mask):
            with pytest.raises(SegwiseError) as caught:
                read(bomb)
            message = str(caught.value)
            assert message.startswith(f"{bomb}: ") and "\n" not in message
            assert "60000×60000" in message and "3,600,000,000 pixels" in message
            assert f"{max_pixels():,}" in message and "--max-pixels" in message


def test_a_tiff_claiming_60000_squared_is_refused_before_any_allocation(tmp_path):
    bomb = header_tiff(tmp_path / "bomb.tif")
    for read in (read_image, read_mask):
        with pytest.raises(SegwiseError, match=r"bomb.tif: .*60000×60000 .*over the limit.*--max-pixels"):
            read(bomb)


def test_a_header_only_png_within_the_limit_fails_at_once(tmp_path):
    truncated = header_png(tmp_path / "truncated.png", 12000, 12000)
    with pytest.raises(SegwiseError, match=r"truncated.png: cannot read image \(image file is truncated"):
        read_image(truncated)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_the_limit_applies_to_every_format_and_follows_the_setting(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"image{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, pixels(30, 40), photometric="rgb")
    else:
        Image.fromarray(pixels(30, 40)).save(path)
    monkeypatch.setenv("SEGWISE_MAX_PIXELS", "1199")
    with pytest.raises(SegwiseError, match=r"40×30 \(1,200 pixels\) is over the limit of 1,199 pixels"):
        read_image(path)
    with pytest.raises(SegwiseError, match="over the limit"):
        read_mask(path)
    monkeypatch.setenv("SEGWISE_MAX_PIXELS", "1200")
    assert read_image(path).shape[:2] == (30, 40)


def test_segwise_limit_replaces_pils_without_changing_it(tmp_path, monkeypatch):
    """PIL would refuse above twice its own limit, whatever --max-pixels says; segwise's limit rules and
    PIL's setting is left as it was for the rest of the process."""
    Image.fromarray(pixels(30, 40)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(tmp_path / "a.png").shape == (30, 40, 3)
    with open_image(tmp_path / "a.png") as image:
        assert image.size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "a.png")


def test_a_bad_limit_setting_is_a_user_error(tmp_path, monkeypatch):
    Image.fromarray(pixels(3, 4)).save(tmp_path / "a.png")
    for value in ("abc", "0", "-5"):
        monkeypatch.setenv("SEGWISE_MAX_PIXELS", value)
        with pytest.raises(SegwiseError, match=f"SEGWISE_MAX_PIXELS={value}: not a pixel count"):
            read_image(tmp_path / "a.png")


# ---- the commands -------------------------------------------------------------------------------------


def bomb_dataset(root: Path) -> Path:
    """Three good pairs, one image a PNG bomb and one a TIFF bomb, each with its mask."""
    for stem in ("a", "b", "c", "png_bomb", "tif_bomb"):
        write_pair(root, stem)
    (root / "images" / "png_bomb.png").unlink()
    header_png(root / "images" / "png_bomb.png", 60000, 60000)
    (root / "images" / "tif_bomb.png").unlink()
    header_tiff(root / "images" / "tif_bomb.tif")
    return root


def one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_check_reports_the_refused_files_as_problems(tmp_path):
    data = bomb_dataset(tmp_path / "data")
    result = run_cli("check", data)
    assert result.returncode == 1, result.stderr  # check's contract: 1 = problems found, report printed
    assert "Traceback" not in result.stderr and result.stderr == ""
    assert "pairs:" in result.stdout and "2 problem(s):" in result.stdout
    problems = [line for line in result.stdout.splitlines() if "over the limit" in line]
    assert len(problems) == 2 and "png_bomb.png" in problems[0] + problems[1]
    assert all("60000×60000" in line and "--max-pixels" in line for line in problems)
    assert all(f"over the limit of {max_pixels():,} pixels" in line for line in problems)
    raised = run_cli("check", data, "--max-pixels", "300000000")  # the flag sets the limit
    assert raised.returncode == 1 and raised.stdout.count("over the limit of 300,000,000 pixels") == 2


def test_train_stops_with_one_line_naming_the_file_and_the_flag(tmp_path):
    data = bomb_dataset(tmp_path / "data")
    result = run_cli("train", data, "--runs-dir", tmp_path / "runs", "--epochs", "1", "--device", "cpu", "-q")
    one_line_error(result, "_bomb.", "60000×60000", "--max-pixels")
    assert not list((tmp_path / "runs").glob("*/model.safetensors"))


def test_predict_and_eval_refuse_bombs_with_one_line(trained_run, shapes_data, tmp_path):
    png = header_png(tmp_path / "png_bomb.png", 60000, 60000)
    tif = header_tiff(tmp_path / "tif_bomb.tif")
    for bomb in (png, tif):
        result = run_cli("predict", trained_run, bomb, "-o", tmp_path / "out", "--device", "cpu")
        one_line_error(result, str(bomb), "60000×60000", "--max-pixels")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    small = tmp_path / "small.png"
    Image.fromarray(pixels(40, 50)).save(small)
    result = run_cli("predict", trained_run, small, "-o", tmp_path / "out", "--max-pixels", "1999")
    one_line_error(result, "small.png", "over the limit of 1,999 pixels", "--max-pixels")
    assert run_cli("predict", trained_run, small, "-o", tmp_path / "ok", "--device", "cpu").returncode == 0

    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    test_image = sorted((data / "test" / "images").iterdir())[0]
    header_png(test_image, 60000, 60000)  # in place of a test image, its mask kept
    result = run_cli("eval", trained_run, data, "--split", "test", "--device", "cpu", "-o", tmp_path / "e")
    one_line_error(result, str(test_image.name), "60000×60000", "--max-pixels")


# ---- streamed prediction --------------------------------------------------------------------------------


def test_a_large_png_is_streamed_into_the_same_mask_as_in_memory(tmp_path, capsys):
    predictor = tiny_predictor(tile=(32, 32), overlap=0.25, tile_batch=3)
    image = pixels(120, 100)
    Image.fromarray(image).save(tmp_path / "big.png")
    target = predictor.predict_large_tiff(tmp_path / "big.png", tmp_path / "out" / "big.tif", progress=True)
    with tifffile.TiffFile(target) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        mask = tif.asarray()
    assert np.array_equal(mask, predictor.predict(image))
    bar = capsys.readouterr().err
    assert "big.png" in bar and "20/20" in bar  # 5 rows × 4 columns of tiles


def test_images_whose_probabilities_are_too_large_to_hold_are_streamed(tmp_path, monkeypatch):
    from segwise.inference import predictor as predictor_module

    predictor = tiny_predictor()
    for name, size in (("small.png", (30, 40)), ("large.jpg", (90, 70))):
        (tmp_path / "in").mkdir(exist_ok=True)
        Image.fromarray(pixels(*size)).save(tmp_path / "in" / name)
    monkeypatch.setattr(predictor_module, "STREAM_BYTES", 60 * 60 * 3 * 4)  # 3 classes over 3600 pixels
    report = predictor.predict_to_folder([tmp_path / "in"], tmp_path / "out")
    assert sorted(p.name for p in report.files) == ["large.tif", "small.png"]
    expected = predictor.predict(tmp_path / "in" / "large.jpg", tile=predictor.auto_tile())
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "large.tif"), expected)


def test_a_streamed_tiff_over_the_limit_or_shorter_than_its_header_is_refused(tmp_path, monkeypatch):
    predictor = tiny_predictor()
    bomb = header_tiff(tmp_path / "bomb.tif")
    with pytest.raises(SegwiseError, match="bomb.tif: .*over the limit"):
        predictor.predict_large_tiff(bomb, tmp_path / "x.tif")
    monkeypatch.setenv("SEGWISE_MAX_PIXELS", str(60000 * 60000))
    with pytest.raises(SegwiseError, match="bomb.tif: cannot read TIFF .*shorter than its header"):
        predictor.predict_large_tiff(bomb, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    import torch
    sys.path.insert(0, {root!r})
    from tests.test_large_image import tiny_predictor

    class Pointwise(torch.nn.Module):
        # The model's own cost is not what is measured: a per-channel scale keeps the test short.
        in_channels, stride = 3, 32

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1))

        def forward(self, x):
            return x * self.scale

    started = time.monotonic()
    predictor = tiny_predictor(classes=3)
    predictor.model = Pointwise().eval()
    report = predictor.predict_to_folder([sys.argv[1]], sys.argv[2], progress=True)
    print([path.name for path in report.files])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic() - started)
    """
)


@pytest.mark.slow
def test_a_12000_squared_png_is_predicted_in_bounded_memory(tmp_path):
    """432 MB of RGB pixels; held whole, three classes' float probabilities would add 1.7 GB and the
    int64 argmax 1.2 GB. Streamed, the peak stays under 3 GiB and the tiles show a progress bar."""
    image = np.zeros((12000, 12000, 3), np.uint8)
    image[2000:5000, 7000:11000] = (200, 40, 40)
    Image.fromarray(image).save(tmp_path / "big.png", compress_level=1)
    del image
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT.format(root=str(Path(__file__).parents[1])))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "big.png"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names, measures = out.stdout.splitlines()[-2:]
    peak_kib, seconds = measures.split()
    print(f"peak RSS {int(peak_kib) / 2**20:.2f} GiB, {float(seconds):.0f} s")  # shown with pytest -s
    assert names == "['big.tif']"
    assert int(peak_kib) < 3 * 2**20, f"peak RSS {int(peak_kib) / 2**20:.2f} GiB"
    assert "big.png" in out.stderr and "256/256" in out.stderr  # the bar: 16 × 16 tiles of 1024²
    with tifffile.TiffFile(tmp_path / "out" / "big.tif") as tif:
        assert tif.series[0].shape == (12000, 12000)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >= int(peak_kib)
