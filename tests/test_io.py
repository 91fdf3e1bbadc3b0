import numpy as np
import pytest
from PIL import Image

from segwise.errors import SegwiseError
from segwise.io import atomic_path, default_palette, read_image, read_mask, write_index_png


def test_read_image_gives_hwc_uint8_for_gray_rgb_and_rgba(tmp_path):
    for mode, channels in (("L", 1), ("RGB", 3), ("RGBA", 4)):
        Image.new(mode, (7, 5)).save(tmp_path / f"{mode}.png")
        image = read_image(tmp_path / f"{mode}.png")
        assert image.shape == (5, 7, channels) and image.dtype == np.uint8


def test_read_image_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (30, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (30, 20, 3)


def test_read_image_scales_16_bit_to_8_bit(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "deep.png").max() == 255


def test_read_mask_returns_palette_indices_not_colours(tmp_path):
    mask = Image.fromarray(np.array([[0, 3], [2, 1]], np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    mask.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 3], [2, 1]]


def test_read_mask_keeps_colours_of_colour_coded_masks(tmp_path):
    Image.fromarray(np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").tolist() == [[[255, 0, 0], [0, 0, 0]]]


def test_read_image_reads_16_bit_multichannel_tiff_channels_last(tmp_path):
    import tifffile

    planar = np.zeros((5, 20, 30), np.uint16)  # C×H×W, as microscopy and remote-sensing files often are
    planar[2] = 4095  # a 12-bit camera: full scale is 4095, not 65535
    tifffile.imwrite(tmp_path / "stack.tif", planar)
    image = read_image(tmp_path / "stack.tif")
    assert image.shape == (20, 30, 5) and image.dtype == np.uint8
    assert image[..., 2].min() == 255 and image[..., 0].max() == 0  # percentile stretch, not /65535


def test_16_bit_images_are_stretched_by_percentiles_per_image(tmp_path):
    ramp = (np.arange(100 * 100, dtype=np.uint16) % 1000).reshape(100, 100)  # a 10-bit ramp
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    image = read_image(tmp_path / "ramp.png")[..., 0]
    assert image.max() == 255 and image.min() == 0
    assert np.all(np.diff(image[0].astype(int)) >= 0)  # order of intensities kept


def test_read_mask_reads_16_bit_and_multichannel_tiff(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "index.tif", np.array([[0, 300], [2, 1]], np.uint16))
    assert read_mask(tmp_path / "index.tif").tolist() == [[0, 300], [2, 1]]
    tifffile.imwrite(tmp_path / "multi.tif", np.zeros((4, 6, 2), np.uint8), photometric="minisblack")
    assert read_mask(tmp_path / "multi.tif").shape == (4, 6, 2)


def test_bmp_and_grayscale_jpeg_read(tmp_path):
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "a.bmp")
    Image.new("L", (6, 4), 77).save(tmp_path / "b.jpg")
    assert read_image(tmp_path / "a.bmp")[0, 0].tolist() == [10, 20, 30]
    assert read_image(tmp_path / "b.jpg").shape == (4, 6, 1)


def test_unreadable_tiff_is_a_clear_error(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SegwiseError, match=r"bad\.tif: cannot read image"):
        read_image(tmp_path / "bad.tif")


def test_unreadable_file_is_a_clear_error_naming_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(SegwiseError, match="broken.png: cannot read image"):
        read_image(tmp_path / "broken.png")


def test_write_index_png_round_trips_indices_and_palette(tmp_path):
    mask = np.array([[0, 1], [4, 2]])
    write_index_png(tmp_path / "m.png", mask, default_palette(5))
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P"
    assert np.array(image).tolist() == mask.tolist()
    assert image.getpalette()[3 * 4 : 3 * 5] == default_palette(5)[4]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    with atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_colorize_draws_a_multilabel_stack_in_the_mean_colour_of_each_pixels_labels():
    from segwise.io import colorize

    planes = np.zeros((2, 2, 3), np.uint8)
    planes[0, 0, 0] = planes[1, 0, 0] = 1  # both labels
    planes[1, 0, 1] = 1  # the second only
    planes[:, 1, 2] = 255  # void in every plane
    planes[0, 1, 1] = 255  # void in one plane only: not grey
    rgb = colorize(planes, [[255, 0, 0], [0, 0, 255]], 255)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [128, 0, 128] and rgb[0, 1].tolist() == [0, 0, 255]
    assert rgb[0, 2].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [0, 0, 0]
    assert rgb[1, 2].tolist() == [128, 128, 128] and rgb[1, 1].tolist() == [0, 0, 0]
