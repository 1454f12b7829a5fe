"""A fast lossless PNG writer for rendered images (templates at ShapeNet scale: millions of files).

PNG (ISO/IEC 15948) is a signature, an IHDR chunk (size, bit depth, colour type), the image in IDAT chunks
(scanlines, each led by a filter-type byte, deflated in one zlib stream) and an IEND chunk; each chunk
carries a CRC-32. `encode_png` writes exactly that, with every scanline unfiltered (type 0) and the
stream deflated by ISA-L (`isal`, level 1) when it is installed, else by the standard zlib at level 1.
Rendered views are mostly flat background with a flat-shaded object, which deflate compresses well
without filtering: measured on 640x480 template views (benchmarks/RESULTS.md, "Template generation at
scale"), this is 10-20x faster than Pillow's or OpenCV's PNG writers (adaptive per-row filters, zlib)
and the files are smaller. Decoders (Pillow, OpenCV, libpng) read them as any PNG; pixels are stored
exactly (8-bit grey/RGB/RGBA, 16-bit grey as big-endian, as the format wants).

`png_rows` and `png_from_rows` let a caller build the scanline buffer itself (the template writer fills
only the object's bounding box of a zeroed buffer, `vpog.data.templates.encode_view`).
"""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np

logger = logging.getLogger(__name__)

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 1  # deflate level: measured as the best speed/size trade-off for rendered views (isal 0-3, zlib 1-9)
COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)

try:  # ISA-L's deflate: same format as zlib's, several times faster (releases the GIL like zlib)
    from isal import isal_zlib as _deflate_module

    BACKEND = "isal"
except ImportError:  # pragma: no cover - depends on the installation
    _deflate_module = zlib
    BACKEND = "zlib"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _layout(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int, int, int]:
    """(height, width, channels, bytes per sample) of an encodable array; ValueError otherwise."""
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG arrays must be uint8 or uint16, got {dtype}")
    if len(shape) == 2:
        h, w, c = shape[0], shape[1], 1
    elif len(shape) == 3 and shape[2] in (1, 3, 4):
        h, w, c = shape
    else:
        raise ValueError(f"PNG arrays must be [H, W] or [H, W, 1|3|4], got shape {tuple(shape)}")
    if dtype == np.uint16 and c != 1:
        raise ValueError(f"16-bit PNG arrays must be single-channel [H, W], got shape {tuple(shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"PNG arrays must have at least one pixel, got shape {tuple(shape)}")
    return h, w, c, np.dtype(dtype).itemsize


def png_rows(height: int, width: int, channels: int, dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """A zeroed scanline buffer and the pixel view into it: (raw uint8 [H, 1 + row bytes], pixels).

    `pixels` is [H, W] (channels 1) or [H, W, C] of `dtype` (uint16 big-endian, PNG's byte order); what
    is written into it is what `png_from_rows(raw, ...)` encodes. Every filter byte is 0 (None)."""
    _, _, _, size = _layout((height, width) if channels == 1 else (height, width, channels), np.dtype(dtype))
    raw = np.zeros((height, 1 + width * channels * size), dtype=np.uint8)
    body = raw[:, 1:]
    if size == 2:
        return raw, body.view(">u2")
    return raw, body if channels == 1 else body.reshape(height, width, channels)


def png_from_rows(raw: np.ndarray, width: int, channels: int, bit_depth: int = 8) -> bytes:
    """PNG bytes of a scanline buffer from `png_rows` (filter bytes 0, samples in PNG byte order)."""
    height = raw.shape[0]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, COLOR_TYPES[channels], 0, 0, 0)
    data = _deflate_module.compress(raw, LEVEL)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of `array`: uint8 [H, W] (grey), [H, W, 3] (RGB), [H, W, 4] (RGBA), or uint16
    [H, W] (16-bit grey). ValueError names any other dtype or shape."""
    array = np.asarray(array)
    h, w, c, size = _layout(array.shape, array.dtype)
    raw, pixels = png_rows(h, w, c, array.dtype)
    pixels[...] = array.reshape(pixels.shape)
    return png_from_rows(raw, w, c, 8 * size)
