"""Helpers for the `segwise serve` tests: images as upload bytes."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width×height gray pixels: a decompression bomb's shape
    (its data is one row; a reader that trusted the header would allocate all of it first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    data = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def decoded(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))
