"""The "shapes" data set: coloured circles, squares and triangles bouncing over a textured background.

The embedded default data for the README demo and the tests, in the reference layout. Objects move
several pixels a frame, bounce off the walls, spin, pulse in size and occlude each other, so copying
the last input frame is a poor forecast while the motion stays learnable (constant velocity).
Every pixel is drawn with numpy on coordinate grids; no per-pixel Python loops.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from core.errors import FramecastError
from data.generate import PNG_COMPRESS_LEVEL, bounce, check_positive, write_dataset

SHAPES = ("circle", "square", "triangle")
# Object colours (RGB in [0, 1]); the objects of one video all have different colours.
PALETTE = np.array(
    [
        [0.95, 0.15, 0.15], [0.15, 0.85, 0.20], [0.20, 0.35, 0.95], [0.95, 0.90, 0.15],
        [0.90, 0.20, 0.90], [0.15, 0.90, 0.90], [1.00, 0.55, 0.05], [0.97, 0.97, 0.97],
    ],
    dtype=np.float32,
)
# Mask classes: 0 background, then one class per (shape, colour) pair: 1 + shape * len(PALETTE) + colour.
NUM_CLASSES = 1 + len(SHAPES) * len(PALETTE)
DEFAULT_COUNTS = {"train": 64, "val": 16, "unlabeled": 64, "hidden": 16}

# Scene statistics, as fractions of the shorter frame side (and radians, frames).
OBJECTS_PER_VIDEO = (2, 4)  # inclusive range
RADIUS = (0.09, 0.17)  # circumradius of an object
SPEED = (0.025, 0.055)  # pixels per frame / shorter side
SPIN = 0.15  # max rotation, radians per frame
PULSE = 0.15  # relative size oscillation amplitude
PULSE_RATE = (0.15, 0.45)  # radians per frame
SHADE = 0.35  # objects darken by this much from centre to rim (a cue for their extent)
MIN_SIDE = 16  # smaller frames cannot hold the objects


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int = 6) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bilinearly to (H, W), in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    ys = np.linspace(0, cells, height, dtype=np.float32)
    xs = np.linspace(0, cells, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    fy = (ys - y0)[:, None]  # (H, 1)
    fx = (xs - x0)[None, :]  # (1, W)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx  # (H, W)
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static, seeded texture: two-colour oblique stripes modulated by smooth noise. (H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.15, 0.4) * side
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period) + phase)
    low, high = rng.uniform(0.1, 0.45, size=(2, 3)).astype(np.float32)
    noise = _smooth_noise(rng, height, width)
    texture = low + (high - low) * stripes[..., None]  # (H, W, 3)
    return np.rint(np.clip(texture * (0.7 + 0.6 * noise[..., None]), 0, 1) * 255).astype(np.uint8)


def render_shapes_video(rng: np.random.Generator, height: int, width: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """One video: uint8 frames (T, H, W, 3) and uint8 class mask (T, H, W); later objects occlude earlier."""
    side = min(height, width)
    background = _background(rng, height, width)  # (H, W, 3)
    count = int(rng.integers(OBJECTS_PER_VIDEO[0], OBJECTS_PER_VIDEO[1] + 1))
    shapes = rng.integers(0, len(SHAPES), size=count)
    colours = rng.choice(len(PALETTE), size=count, replace=False)
    objects = []
    for shape, colour in zip(shapes, colours):
        radius = rng.uniform(*RADIUS) * side
        reach = radius * (1 + PULSE)  # the farthest any pixel of the object gets from its centre
        direction = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(*SPEED) * side
        objects.append(
            dict(
                shape=int(shape), colour=PALETTE[colour], label=1 + int(shape) * len(PALETTE) + int(colour),
                radius=radius, reach=reach,
                y=rng.uniform(reach, height - reach), x=rng.uniform(reach, width - reach),
                vy=speed * np.sin(direction), vx=speed * np.cos(direction),
                angle=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-SPIN, SPIN),
                pulse_rate=rng.uniform(*PULSE_RATE), pulse_phase=rng.uniform(0, 2 * np.pi),
            )
        )
    video = np.empty((frames, height, width, 3), dtype=np.uint8)  # (T, H, W, 3)
    mask = np.zeros((frames, height, width), dtype=np.uint8)  # (T, H, W)
    for t in range(frames):
        video[t] = background
        for obj in objects:
            if t:
                obj["y"], obj["vy"] = bounce(obj["y"], obj["vy"], obj["reach"], height - obj["reach"])
                obj["x"], obj["vx"] = bounce(obj["x"], obj["vx"], obj["reach"], width - obj["reach"])
                obj["angle"] += obj["spin"]
            radius = obj["radius"] * (1 + PULSE * np.sin(obj["pulse_rate"] * t + obj["pulse_phase"]))
            _draw(video[t], mask[t], obj, radius)
    return video, mask


def _draw(frame: np.ndarray, mask: np.ndarray, obj: dict, radius: float) -> None:
    """Paint one object into ``frame`` uint8 (H, W, 3) and ``mask`` (H, W), only inside its bounding box."""
    height, width = mask.shape
    y0, y1 = max(int(obj["y"] - radius) - 1, 0), min(int(obj["y"] + radius) + 2, height)
    x0, x1 = max(int(obj["x"] - radius) - 1, 0), min(int(obj["x"] + radius) + 2, width)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - obj["y"]  # (h, 1) pixel centres
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - obj["x"]  # (1, w)
    angle = obj["angle"]
    shape = SHAPES[obj["shape"]]
    if shape == "circle":
        extent = np.sqrt(dx * dx + dy * dy) / radius  # (h, w): 1 on the outline
    elif shape == "square":
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = dy * np.cos(angle) - dx * np.sin(angle)
        extent = np.maximum(np.abs(u), np.abs(v)) * (np.sqrt(2) / radius)  # corners on the circumcircle
    else:
        # Equilateral triangle with circumradius ``radius``: inside all three edges, each at distance
        # radius / 2 from the centre along its outward normal.
        normals = angle + np.pi / 3 + 2 * np.pi / 3 * np.arange(3)
        extent = np.max(
            [dx * np.cos(a) + dy * np.sin(a) for a in normals], axis=0
        ) * (2 / radius)
    inside = extent <= 1  # (h, w)
    shade = 1 - SHADE * np.clip(np.sqrt(dx * dx + dy * dy) / radius, 0, 1)  # (h, w)
    patch = frame[y0:y1, x0:x1]
    patch[inside] = np.rint(obj["colour"] * shade[inside][:, None] * 255)  # (pixels, 3)
    mask[y0:y1, x0:x1][inside] = obj["label"]


def make_shapes_dataset(out: str | os.PathLike, counts: dict[str, int] | None = None, height: int = 160,
                        width: int = 240, frames: int = 22, hidden_frames: int = 11, seed: int = 0,
                        workers: int | None = None, overwrite: bool = False,
                        compress_level: int = PNG_COMPRESS_LEVEL) -> Path:
    """Generate the shapes data set in the reference layout under ``out``; returns ``out``.

    ``counts`` maps split -> number of videos (default ``DEFAULT_COUNTS``); ``workers`` PNG-writing
    processes (default: one per CPU). The result depends on ``seed`` only, not on ``workers``.
    """
    check_positive(height=height, width=width)
    if min(height, width) < MIN_SIDE:
        raise FramecastError(f"shapes frames must be at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    render = functools.partial(render_shapes_video, height=height, width=width, frames=frames)
    return write_dataset(
        out, DEFAULT_COUNTS if counts is None else counts, render, frames=frames, hidden_frames=hidden_frames,
        seed=seed, workers=workers, overwrite=overwrite, compress_level=compress_level, desc="make-data shapes",
    )
