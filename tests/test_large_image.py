"""Large images: lazy region reads, tiled TIFF output, memory that does not grow with the image."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segwise.config import PreprocessConfig, RunConfig, TrainConfig
from segwise.errors import SegwiseError
from segwise.inference.large import open_regions
from segwise.inference.predictor import InferenceOptions, Predictor
from segwise.io import default_palette, image_size
from segwise.models import create_model
from segwise.task import Classes

from .conftest import TINY

SRC = Path(__file__).parents[1] / "src"


def tiny_predictor(classes: int = 3, in_channels: int = 3, size=(32, 32), **options) -> Predictor:
    """An untrained TINY U-Net with its preprocessing: enough to compare prediction paths."""
    torch.manual_seed(0)
    model = create_model("unet", TINY["encoder"], classes, in_channels, **TINY["options"])
    config = RunConfig(
        model=model.config,
        classes=Classes([f"c{i}" for i in range(classes)], list(range(classes)), default_palette(classes)),
        preprocess=PreprocessConfig(list(size), [0.5] * in_channels, [0.25] * in_channels),
        train=TrainConfig(),
    )
    return Predictor(model, config, "cpu", InferenceOptions(**options))


def pixels(height: int, width: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["tiled-zlib", "contiguous"])
def test_regions_are_read_lazily_and_exactly(tmp_path, layout):
    image = pixels(150, 230)
    path = tmp_path / "image.tif"
    if layout == "contiguous":
        tifffile.imwrite(path, image, photometric="rgb")
    else:
        tifffile.imwrite(path, image, photometric="rgb", tile=(64, 64), compression="zlib")
    assert image_size(path) == (150, 230)
    (height, width), read = open_regions(path, 3)
    assert (height, width) == (150, 230)
    region = read(10, 90, 30, 200)
    assert region.dtype == torch.uint8 and region.shape == (3, 80, 170)
    assert np.array_equal(region.permute(1, 2, 0).numpy(), image[10:90, 30:200])
    _, read_gray = open_regions(path, 1)  # channels adapt as for ordinary images
    assert read_gray(0, 5, 0, 5).shape == (1, 5, 5)


def test_large_tiff_mask_equals_in_memory_tiled_prediction(tmp_path):
    predictor = tiny_predictor(tile=(48, 64), overlap=0.25, tile_batch=3)
    image = pixels(200, 180)
    source = tmp_path / "big.tif"
    tifffile.imwrite(source, image, photometric="rgb", tile=(32, 32), compression="zlib")
    target = predictor.predict_large_tiff(source, tmp_path / "out" / "big_mask.tif")
    with tifffile.TiffFile(target) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.photometric == tifffile.PHOTOMETRIC.PALETTE
        mask = page.asarray()
    assert mask.shape == (200, 180) and mask.dtype == np.uint8
    expected = predictor.predict(image)  # the same tiles, the image in memory
    assert np.array_equal(mask, expected)
    assert list(tmp_path.joinpath("out").iterdir()) == [target]  # no temporary file left behind


def test_large_tiff_with_tta_and_gray_input(tmp_path):
    predictor = tiny_predictor(tile=(40, 40), tta="flips")
    gray = pixels(90, 70, 1)[..., 0]
    source = tmp_path / "gray.tif"
    tifffile.imwrite(source, gray, tile=(16, 16))
    mask = tifffile.imread(predictor.predict_large_tiff(source, tmp_path / "gray_mask.tif"))
    assert np.array_equal(mask, predictor.predict(np.repeat(gray[..., None], 3, -1)))


def test_unreadable_or_unsupported_tiff_is_a_user_error(tmp_path):
    predictor = tiny_predictor()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    with pytest.raises(SegwiseError, match="broken.tif: cannot read TIFF"):
        predictor.predict_large_tiff(broken, tmp_path / "x.tif")
    wide = tmp_path / "sixteen.tif"
    tifffile.imwrite(wide, np.zeros((20, 20), np.uint16))
    with pytest.raises(SegwiseError, match="sixteen.tif: .*8-bit"):
        predictor.predict_large_tiff(wide, tmp_path / "y.tif")


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, tifffile
    sys.path.insert(0, {root!r})
    from tests.test_large_image import tiny_predictor

    def peak_kib():
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

    predictor = tiny_predictor(classes=8, tile=(64, 64), overlap=0.25)
    for height in (256, 2048):  # the same width, 8× the rows
        def tiles():  # the source is written tile by tile, never whole
            rng = np.random.default_rng(0)
            for _ in range(height // 256 * 2):
                yield rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        source = f"{{sys.argv[1]}}/in{{height}}.tif"
        tifffile.imwrite(source, tiles(), shape=(height, 512, 3), dtype=np.uint8, tile=(256, 256),
                         photometric="rgb", compression="zlib")
        predictor.predict_large_tiff(source, f"{{sys.argv[1]}}/out{{height}}.tif")
        print(peak_kib())
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_peak_memory_does_not_grow_with_image_height(tmp_path):
    """Memory is set by the width and the tile: 8× the rows at the same width cost no more peak RSS."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT.format(root=str(Path(__file__).parents[1])))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    short, tall = (int(line) / 1024 for line in out.stdout.split())
    # Held whole, the 2048-row image would need 2048 × 512 × (3 bytes + 9 float32 accumulators) ≈ 38 MiB
    # more than the 256-row one; streamed, its peak is the short image's peak.
    assert tall - short < 8, (short, tall)
    assert tifffile.imread(tmp_path / "out2048.tif").shape == (2048, 512)


def test_cli_predict_with_tta_tiles_and_a_large_tiff(trained_run, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from segwise.inference import load
    from segwise.inference import predictor as predictor_module

    from .conftest import run_cli

    predictor = load(trained_run, device="cpu", tta="flips", tile=48, overlap=0.5)
    # Probabilities of over 10000 pixels count as too large to hold: the slide is streamed, the PNG not.
    monkeypatch.setattr(predictor_module, "STREAM_BYTES", 10000 * predictor.config.classes.num_classes * 4)

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(pixels(70, 90)).save(inputs / "small.png")
    tifffile.imwrite(inputs / "slide.tif", pixels(150, 130), photometric="rgb", tile=(32, 32))
    out = tmp_path / "out"
    result = run_cli(
        "predict", str(trained_run), str(inputs), "-o", str(out),
        "--tta", "flips", "--tile", "48", "--overlap", "0.5", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 2 file(s)" in result.stdout
    small = np.asarray(Image.open(out / "small.png"))
    assert np.array_equal(small, predictor.predict(inputs / "small.png"))
    slide = tifffile.imread(out / "slide.tif")  # streamed: read by region, tiled TIFF out
    assert np.array_equal(slide, predictor.predict(inputs / "slide.tif"))

    from segwise.cli import main

    for flag, value in (("--tile", "x"), ("--tta", "spin"), ("--overlap", "1.5")):
        assert (
            main(["predict", str(trained_run), str(inputs / "small.png"), "-o", str(out), flag, value]) == 2
        )
        assert flag in capsys.readouterr().err
