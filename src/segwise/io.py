"""Reading and writing images and masks.

Images come back as uint8 arrays H×W×C with EXIF orientation applied; masks as integer arrays H×W
(index or gray values), H×W×3 (colour-coded) or H×W×C (multi-channel TIFF, one channel per class).
TIFFs are read with tifffile, so 16-bit and multi-channel files (microscopy, remote sensing) work.

Images with more than 8 bits (16-bit integers, floats) become uint8 by one documented rule, applied per
image so that training and prediction agree without any stored statistics: the 0.5th..99.5th
percentile of the image's pixels (all channels together) is stretched to 0..255. 16-bit microscopy
often fills only 12 bits or less, so dividing by 65535 would leave it nearly black; cellpose and
similar tools normalise each image by percentiles for the same reason. A constant image is divided by
its type's maximum instead. Every write goes to a temporary name first and is renamed into place, so an interrupted
run never leaves a half-written file where a good one was.

Every image is checked against one pixel limit (`max_pixels`) from its header, before any pixel is
decoded, whatever its format: a few bytes can claim 60000×60000 pixels and cost gigabytes and minutes
to decode (a decompression bomb). The limit is SEGWISE_MAX_PIXELS, which the commands' --max-pixels
sets, else 16384² pixels. PIL's own check is switched off while segwise opens a file, since it would
contradict this one: it warns above 89 M pixels, refuses above 179 M whatever --max-pixels says, and
skips TIFFs (read here with tifffile).
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV
from .errors import PixelLimitError, SegwiseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


TIFF_SUFFIXES = (".tif", ".tiff")


def max_pixels() -> int:
    """The most pixels segwise reads from one image: SEGWISE_MAX_PIXELS (--max-pixels), else the default."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise SegwiseError(
            f"{MAX_PIXELS_ENV}={text}: not a pixel count; set a positive integer, e.g. {DEFAULT_MAX_PIXELS}"
        )
    return int(text)


def check_pixels(path: Path, height: int, width: int, pixels: int | None = None, what: str = "image") -> None:
    """Refuse an image whose header claims more than `max_pixels` pixels (`pixels`: H×W unless a TIFF
    stack holds more planes)."""
    pixels = height * width if pixels is None else pixels
    limit = max_pixels()
    if pixels > limit:
        raise PixelLimitError(
            f"{path}: {what} of {width}×{height} ({pixels:,} pixels) is over the limit of {limit:,} pixels; "
            f"if the file is trusted, raise the limit with --max-pixels N (or {MAX_PIXELS_ENV}=N)"
        )


_PIL_LIMIT = threading.Lock()  # PIL's limit is a module global: one thread at a time swaps it


def _header(path: Path, what: str) -> Image.Image:
    """The file opened lazily by PIL (only the header is read), without PIL's own size check."""
    if not path.is_file():
        raise SegwiseError(f"{path}: {what} not found; check the path")
    return _pil_header(path, path, what)


def _pil_header(source: Path | BinaryIO, name: Path | str, what: str) -> Image.Image:
    try:
        with _PIL_LIMIT:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        # PIL names the file it was given, an object's repr when that is a buffer
        reason = "not an image format PIL reads" if isinstance(error, UnidentifiedImageError) else error
        raise SegwiseError(f"{name}: cannot read {what} ({reason}); replace or remove the file") from None


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """A PIL image with only its header read, refused (SegwiseError) if it claims more than `max_pixels`.
    Decoding starts when its pixels are asked for; use it as a context manager to close the file."""
    path = Path(path)
    image = _header(path, what)
    try:
        check_pixels(path, image.height, image.width, what=what)
    except SegwiseError:
        image.close()
        raise
    return image


def _tiff_header(path: Path, what: str) -> tuple[int, int, int]:
    """Height, width and pixel count (H×W times any stack planes; samples and channels not counted) of
    a TIFF's first series, from its header."""
    import tifffile

    if not path.is_file():
        raise SegwiseError(f"{path}: {what} not found; check the path")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
        height, width = shape[axes.index("Y")], shape[axes.index("X")]
    except Exception as error:  # tifffile raises many types for damaged files
        raise SegwiseError(f"{path}: cannot read {what} ({error}); replace or remove the file") from None
    return height, width, math.prod(n for axis, n in zip(axes, shape, strict=True) if axis not in "SC")


def image_size(path: str | Path) -> tuple[int, int]:
    """Height and width of an image from its header, no pixels decoded (the limit is not checked)."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _tiff_header(path, "image")[:2]
    with _header(path, "image") as image:
        return image.height, image.width


def _open(path: Path, what: str) -> Image.Image:
    return _decoded(open_image(path, what), path, what)


def _decoded(image: Image.Image, name: Path | str, what: str) -> Image.Image:
    """The image's pixels decoded, EXIF orientation applied."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:  # e.g. a truncated file, after its header
        image.close()
        raise SegwiseError(f"{name}: cannot read {what} ({error}); replace or remove the file") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: a copy would double a large image's memory
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        pass
    return image


def _read_tiff(path: Path, what: str) -> np.ndarray:
    """A TIFF as H×W or H×W×C (planar C×H×W files are moved to channels-last)."""
    import tifffile

    height, width, pixels = _tiff_header(path, what)
    check_pixels(path, height, width, pixels, what)
    try:
        array = tifffile.imread(path)  # the first series: planar channels come back as C×H×W
    except Exception as error:  # tifffile raises many types for damaged files
        raise SegwiseError(f"{path}: cannot read {what} ({error}); replace or remove the file") from None
    if array.size == 0:
        raise SegwiseError(f"{path}: cannot read {what} (no pixel data); replace or remove the file")
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 16 < array.shape[2]:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3):
        raise SegwiseError(f"{path}: {what} has shape {array.shape}; expected H×W or H×W×C")
    return array


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixels of any depth → uint8: 8-bit as is, deeper ones by the percentile rule in the module docstring."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:  # a constant image: no contrast to stretch
        peak = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else max(1.0, high)
        return np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip((values - low) / (high - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 H×W×C (C = 1 gray, 3 RGB, 4 RGBA, or a TIFF's own channel count)."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = to_uint8(_read_tiff(path, "image"))
        return array[..., None] if array.ndim == 2 else array
    return _pixels(_open(path, "image"))


def read_image_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """`read_image` for an image held in memory (an upload), under the same pixel limit, checked from
    the header before any pixel is decoded; `name` is what errors call it. TIFFs are read by PIL here."""
    image = _pil_header(io.BytesIO(data), name, "image")
    try:
        check_pixels(Path(name), image.height, image.width)
    except SegwiseError:
        image.close()
        raise
    return _pixels(_decoded(image, name, "image"))


def _pixels(image: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8 H×W×C: 1 gray, 3 RGB or 4 RGBA channels."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_uint8(np.asarray(image))[..., None]
    if image.mode == "L":
        return np.array(image, dtype=np.uint8)[..., None]
    if image.mode == "LA":
        return np.array(image.convert("L"), dtype=np.uint8)[..., None]
    if image.mode == "RGBA":
        return np.array(image, dtype=np.uint8)
    if image.mode == "PA":
        return np.array(image.convert("RGBA"), dtype=np.uint8)
    return np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask's stored values: H×W (palette indices for mode P), H×W×3 colours for RGB(A) masks,
    H×W×C for multi-channel TIFFs. Colours are decoded later, with the dataset's colour table."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _read_tiff(path, "mask")
        if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
            raise SegwiseError(f"{path}: mask holds fractional values; save masks as integer index images")
        if array.min() < 0 or array.max() > 65535:
            raise SegwiseError(
                f"{path}: mask values outside 0..65535; save masks as 8- or 16-bit index images"
            )
        return array.astype(np.uint8 if array.max() <= 255 else np.uint16)
    image = _open(path, "mask")
    if image.mode in ("P", "L", "1"):
        return np.asarray(image if image.mode != "1" else image.convert("L"), dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise SegwiseError(
                f"{path}: mask values outside 0..65535; save masks as 8- or 16-bit index images"
            )
        return array.astype(np.uint16)
    if image.mode == "LA":
        return np.asarray(image)[..., 0].astype(np.uint8)
    if image.mode in ("RGB", "RGBA", "PA"):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    raise SegwiseError(f"{path}: unsupported mask mode {image.mode}; save masks as 8-bit index PNGs")


_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


# A temporary file's name: `.<target name>.<pid>-<random>.tmp<target suffix>`, beside its target. The
# process id lets a later command tell debris (its writer is gone, e.g. killed) from a file another live
# process is still writing, so that sweeping never races a concurrent run.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[a-z0-9_]+\.tmp(\.[^.]*)?$")


def make_folder(folder: str | Path) -> Path:
    """`folder` and its parents, made when missing; a path that is a file, or a place the process may not
    write to, is one SegwiseError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SegwiseError(f"{folder}: is a file, not a folder; choose a folder for the output") from None
    except OSError as error:
        if _disk_full(error, folder.parent):
            raise disk_full_error(folder) from None
        raise SegwiseError(
            f"{folder}: cannot make the folder ({error.strerror or error}); choose a place you may write to"
        ) from None
    return folder


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. A full disk
    ends as one SegwiseError naming the file and the free space; the old `path`, if any, stays as it was."""
    path = Path(path)
    make_folder(path.parent)
    try:
        handle, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp" + path.suffix, dir=path.parent
        )
    except OSError as error:
        if _disk_full(error, path.parent):
            raise disk_full_error(path) from None
        raise SegwiseError(
            f"{path}: cannot write it ({error.strerror or error}); check that you may write to "
            f"{path.parent}, or choose another place"
        ) from None
    os.close(handle)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files; a run folder should be readable like any other
        os.replace(tmp, path)
    except Exception as error:
        if _disk_full(error, path.parent):
            raise disk_full_error(path, tmp) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space. Writers say so their own way: an OSError (ENOSPC,
    EDQUOT), somewhere in the chain of a wrapping error (torch raises a RuntimeError while handling the
    OSError of the file it writes to), or only in the message (safetensors' SafetensorError, from Rust).
    A writer that keeps nothing of the cause is judged by the disk: not a byte left."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain is short; the bound guards against a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        if any(os.strerror(code) in str(seen) for code in _DISK_FULL):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return not isinstance(error, SegwiseError) and shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def disk_full_error(path: Path, tmp: Path | None = None) -> SegwiseError:
    """One line for a write that found the disk full: the free space, roughly what the file needs
    (what was written before the disk filled, or the size of the file it replaces), and that the old
    file is intact (atomic_path never replaced it)."""
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
    written = tmp.stat().st_size if tmp is not None and tmp.is_file() else 0
    previous = path.stat().st_size if path.is_file() else 0
    needed = f"; the file needs about {_size(max(written, previous))}" if max(written, previous) else ""
    kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was written"
    return SegwiseError(
        f"{path}: out of disk space ({_size(free)} free{needed}); {kept}. "
        "Free some space and run the command again"
    )


def _size(count: float) -> str:
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("KB", "MB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} GB"


def is_temporary(path: Path) -> bool:
    """Whether `path` is named like one of `atomic_path`'s temporary files."""
    return _TEMPORARY.match(Path(path).name) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_temporaries(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Delete what interrupted writes left in `folder`: files named by `atomic_path` whose writing
    process is gone. Nothing else is touched. Returns the deleted paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    removed = []
    for path in found:
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not path.is_symlink() and not _alive(int(match["pid"])):
            try:
                path.unlink(missing_ok=True)
            except OSError:  # a folder not ours to change (a shared, read-only run): leave it
                continue
            removed.append(path)
    return removed


def write_index_png(path: str | Path, mask: np.ndarray, palette: list[list[int]]) -> None:
    """Write class indices as a palettised PNG (mode P) so viewers show the class colours."""
    if mask.max(initial=0) > 255:
        raise ValueError("index PNGs hold at most 256 classes")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [channel for colour in palette for channel in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 H×W or H×W×C array (format from the suffix)."""
    image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))


def default_palette(num_classes: int) -> list[list[int]]:
    """Black/white for two classes, otherwise the Pascal VOC colour map (class 0 black)."""
    if num_classes == 2:
        return [[0, 0, 0], [255, 255, 255]]
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.append([r, g, b])
    return palette


def colorize(mask: np.ndarray, palette: list[list[int]], ignore_index: int | None = None) -> np.ndarray:
    """Class indices H×W → RGB uint8 using `palette`; ignored pixels grey. A label stack C×H×W (1 where
    a label is present) draws each pixel in the mean colour of its labels, black where it has none,
    grey where every plane is `ignore_index`."""
    if mask.ndim == 3:  # told apart by shape: a label stack has a plane per label, an index mask none
        return _label_colours(mask, palette, ignore_index)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = (128, 128, 128)
    return table[mask.astype(np.int64).clip(0, 255)]


def _label_colours(planes: np.ndarray, palette: list[list[int]], ignore_index: int | None) -> np.ndarray:
    present = (planes == 1).astype(np.float32)
    colours = np.asarray(palette, dtype=np.float32)[: len(planes)]
    total = np.einsum("chw,ck->hwk", present, colours)
    rgb = np.rint(total / np.maximum(present.sum(0), 1)[..., None]).astype(np.uint8)
    if ignore_index is not None:
        rgb[(planes == ignore_index).all(0)] = (128, 128, 128)
    return rgb
