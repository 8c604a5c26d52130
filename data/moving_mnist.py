"""Moving MNIST: digits bouncing on a square canvas, in the reference layout; plus the file readers.

``read_idx_images`` reads any MNIST-format idx file (MNIST, Fashion-MNIST; gzipped or raw), and
``read_toronto`` the standard test file ``mnist_test_seq.npy`` (uint8 (T, N, 64, 64), time first),
memory-mapped so that it can serve as an evaluation split without being loaded.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from core.errors import FramecastError
from core.npyfile import map_npy
from data.generate import PNG_COMPRESS_LEVEL, bounce, check_positive, write_dataset
from data.synthetic import DEFAULT_COUNTS

DIGIT_SIZE = 28
SPEED = (2.0, 4.5)  # pixels per frame (the Toronto set moves about 3.6)
# A pixel belongs to a digit in the mask when the digit's intensity there is at least this.
MASK_THRESHOLD = 64
# idx type codes -> numpy big-endian dtypes (the format's own table).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Any idx file (``.gz`` or raw) as a native-endian numpy array of the shape its header gives."""
    file = Path(path)
    if not file.is_file():
        raise FramecastError(f"{file}: MNIST idx file not found")
    raw = file.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise FramecastError(f"{file}: corrupt gzip data ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise FramecastError(f"{file}: not an MNIST idx file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FramecastError(f"{file}: idx header cut short")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise FramecastError(f"{file}: idx data is {len(raw) - header} bytes, the header {shape} implies {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """An idx images file as uint8 (N, 28, 28)."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise FramecastError(f"{path}: expected uint8 images (N, rows, cols), found {images.dtype} {images.shape}")
    return images


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """An idx labels file as uint8 (N,)."""
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise FramecastError(f"{path}: expected uint8 labels (N,), found {labels.dtype} {labels.shape}")
    return labels


def labels_path_for(images_path: str | os.PathLike) -> Path:
    """The labels file the MNIST naming convention pairs with an images file."""
    images = Path(images_path)
    if "images-idx3" not in images.name:
        raise FramecastError(
            f"{images}: cannot guess its labels file (expected a name with 'images-idx3'); give labels_path"
        )
    return images.with_name(images.name.replace("images-idx3", "labels-idx1"))


def read_toronto(path: str | os.PathLike) -> np.ndarray:
    """The standard Moving MNIST file (T, N, 64, 64) as a memory-mapped uint8 view (N, T, H, W)."""
    file = Path(path)
    data = map_npy(file, "Moving MNIST file")
    if data.ndim != 4 or data.dtype != np.uint8:
        raise FramecastError(f"{file}: expected uint8 (T, N, H, W), found {data.dtype} {data.shape}")
    return data.transpose(1, 0, 2, 3)  # (T, N, H, W) -> (N, T, H, W), still a view of the map


def render_moving_mnist_video(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int,
                              frames: int, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """One video: uint8 RGB frames (T, size, size, 3) (grey replicated) and mask (T, size, size).

    Digits are max-composited; a mask pixel takes the label + 1 of the brightest digit there.
    """
    span = size - DIGIT_SIZE  # top-left corners stay within [0, span]
    picks = rng.integers(0, len(images), size=digits)
    canvas = np.zeros((frames, size, size), dtype=np.uint8)  # (T, S, S)
    mask = np.zeros((frames, size, size), dtype=np.uint8)
    for pick in picks:
        digit = images[pick]  # (28, 28)
        ink = digit >= MASK_THRESHOLD
        y, x = rng.uniform(0, span, size=2)
        direction = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(*SPEED)
        vy, vx = speed * np.sin(direction), speed * np.cos(direction)
        for t in range(frames):
            if t:
                y, vy = bounce(y, vy, 0, span)
                x, vx = bounce(x, vx, 0, span)
            top, left = int(round(y)), int(round(x))
            window = canvas[t, top:top + DIGIT_SIZE, left:left + DIGIT_SIZE]  # (28, 28) view
            wins = ink & (digit >= window)
            np.maximum(window, digit, out=window)
            mask[t, top:top + DIGIT_SIZE, left:left + DIGIT_SIZE][wins] = labels[pick] + 1
    video = np.repeat(canvas[..., None], 3, axis=-1)  # (T, S, S) -> (T, S, S, 3)
    return video, mask


def make_moving_mnist_dataset(out: str | os.PathLike, mnist_path: str | os.PathLike,
                              counts: dict[str, int] | None = None, size: int = 64, frames: int = 22,
                              hidden_frames: int = 11, seed: int = 0, digits: int = 2,
                              labels_path: str | os.PathLike | None = None, workers: int | None = None,
                              overwrite: bool = False, compress_level: int = PNG_COMPRESS_LEVEL) -> Path:
    """Generate Moving MNIST in the reference layout under ``out``; returns ``out``.

    Digits come from the idx images file ``mnist_path``; mask classes (digit label + 1) from
    ``labels_path``, by default the matching ``*labels-idx1*`` file beside it.
    """
    check_positive(size=size, digits=digits)
    if size < DIGIT_SIZE:
        raise FramecastError(f"Moving MNIST canvas size must be at least {DIGIT_SIZE}, got {size}")
    images = read_idx_images(mnist_path)
    if images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
        raise FramecastError(f"{mnist_path}: images are {images.shape[1:]}, expected {DIGIT_SIZE}x{DIGIT_SIZE}")
    labels_file = Path(labels_path) if labels_path is not None else labels_path_for(mnist_path)
    labels = read_idx_labels(labels_file)
    if len(labels) != len(images):
        raise FramecastError(f"{labels_file}: {len(labels)} labels for the {len(images)} images of {mnist_path}")
    render = functools.partial(
        render_moving_mnist_video, images=images, labels=labels, size=size, frames=frames, digits=digits
    )
    return write_dataset(
        out, DEFAULT_COUNTS if counts is None else counts, render, frames=frames, hidden_frames=hidden_frames,
        seed=seed, workers=workers, overwrite=overwrite, compress_level=compress_level, desc="make-data mnist",
    )


def make_toronto_file(out: str | os.PathLike, mnist_path: str | os.PathLike, count: int = 10000,
                      size: int = 64, frames: int = 20, seed: int = 0, digits: int = 2) -> Path:
    """A fixed test set in the layout of the standard ``mnist_test_seq.npy``: uint8 (T, N, S, S).

    Made from ``mnist_path`` (e.g. the t10k images, digits the training videos never saw) with the
    same motion as ``make_moving_mnist_dataset``; video ``i`` comes from the random stream
    ``(seed, i)``, so the file is the same on every machine. Written atomically.
    """
    from core.atomic import atomic_path
    from data.generate import video_rng

    check_positive(count=count, size=size, frames=frames, digits=digits)
    images = read_idx_images(mnist_path)
    labels = np.zeros(len(images), dtype=np.uint8)  # the masks are not kept in this layout
    data = np.empty((frames, count, size, size), dtype=np.uint8)  # (T, N, S, S)
    for i in range(count):
        video, _ = render_moving_mnist_video(video_rng(seed, i), images, labels, size, frames, digits)
        data[:, i] = video[..., 0]  # grey: one channel of the replicated RGB
    with atomic_path(out, suffix=".npy") as tmp:
        np.save(tmp, data)
    return Path(out)
