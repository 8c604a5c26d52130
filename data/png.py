"""Read video frames from PNG files: header checks from the IHDR chunk, pixels from libspng.

Decoding PNGs is what bounds packing a split. libspng (the ``pyspng`` wheel) decodes frames faster
than Pillow (benchmarks/RESULTS.md), so it is used where its wheel is installed (Linux x86_64, see
requirements.txt), Pillow elsewhere; both give identical pixels.
The header is parsed here rather than by either library so that every problem a user's file can
have is reported the same way, as one line naming the file.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.errors import FramecastError

try:
    import pyspng
except ImportError:  # no wheel for this platform: Pillow decodes instead
    pyspng = None

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Signature (8) + IHDR length and type (8) + IHDR data (13): all the header parse needs.
HEADER_BYTES = 29
# Pillow mode names for the PNG colour types, as users see them in image tools.
_COLOUR_TYPES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
# Leading bytes of the image formats a wrong file is most likely to be.
_OTHER_FORMATS = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
# What Pillow raises for data that does not decode (truncated, bad zlib stream ...).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error)


@dataclass(frozen=True)
class PngHeader:
    height: int
    width: int
    mode: str  # "RGB" for the 8-bit RGB frames framecast reads; "RGB;16", "L", "RGBA" ... otherwise


def parse_header(data: bytes, path: str | os.PathLike) -> PngHeader:
    """The size and colour mode of PNG ``data`` (read from ``path``) from its IHDR chunk."""
    if not data.startswith(SIGNATURE):
        other = next((name for magic, name in _OTHER_FORMATS.items() if data.startswith(magic)), None)
        if other:
            raise FramecastError(f"{path}: not a PNG file ({other} data)")
        raise FramecastError(f"{path}: not a readable PNG (empty, or not image data)")
    if len(data) < HEADER_BYTES or data[12:16] != b"IHDR":
        raise FramecastError(f"{path}: not a readable PNG (no IHDR header)")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    mode = _COLOUR_TYPES.get(colour_type, f"colour type {colour_type}")
    if bit_depth != 8:
        mode = f"{mode};{bit_depth}"
    if width == 0 or height == 0 or width * height > Image.MAX_IMAGE_PIXELS:
        raise FramecastError(f"{path}: not a readable PNG (header says {height}x{width} pixels)")
    return PngHeader(height, width, mode)


def read_header(path: str | os.PathLike) -> PngHeader:
    with _opened(path) as handle:
        return parse_header(handle.read(HEADER_BYTES), path)


def read_bytes(path: str | os.PathLike) -> bytes:
    with _opened(path) as handle:
        return handle.read()


def _opened(path: str | os.PathLike):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FramecastError(f"{path}: frame missing") from None
    except OSError as exc:
        raise FramecastError(f"{path}: cannot be read ({exc.strerror})") from None


def decode_rgb(data: bytes, header: PngHeader, path: str | os.PathLike) -> np.ndarray:
    """Pixels of an 8-bit RGB PNG as uint8 (H, W, 3); a stream that does not decode names ``path``."""
    try:
        if pyspng is not None:
            pixels = pyspng.load(data, format="RGB")
        else:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                image.load()
                pixels = np.asarray(image)
    except (RuntimeError, *_PILLOW_ERRORS) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0].removeprefix("pyspng: ") if text else type(exc).__name__
        raise FramecastError(f"{path}: PNG does not decode ({reason})") from None
    if pixels.shape != (header.height, header.width, 3):  # (H, W, 3)
        raise FramecastError(f"{path}: PNG decodes to {pixels.shape}, not its header's {header.height}x{header.width}")
    return pixels


def decoder_name() -> str:
    return "libspng" if pyspng is not None else "pillow"

