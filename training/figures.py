"""Pictures of videos: the sample strip (input / truth / prediction rows) and the animated GIF, drawn
by evaluate and by training's TensorBoard samples alike."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.atomic import atomic_path

GUTTER_PX = 96  # label column of the strip
GAP_PX = 2  # between frames
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


class _Canvas:
    """A white RGB image with frames pasted in and labels written, saved atomically."""

    def __init__(self, width: int, height: int):
        self.image = Image.new("RGB", (width, height), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def paste(self, frame: np.ndarray, x: int, y: int) -> None:
        self.image.paste(Image.fromarray(frame), (x, y))

    def text(self, x: int, y: int, text: str) -> None:
        self.draw.text((x, y), text, fill=TEXT)

    def save_to(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.image.save(tmp, format="PNG")


def sample_strip(inputs: np.ndarray, truth: np.ndarray, prediction: np.ndarray, names: list[str],
                 t_in: int) -> _Canvas:
    """Rows input / truth / prediction per sample video; uint8 (S, T, H, W, C) arrays in."""
    _, _, h, w, _ = inputs.shape
    columns = max(inputs.shape[1], truth.shape[1])
    row_h = h + GAP_PX
    canvas = _Canvas(GUTTER_PX + columns * (w + GAP_PX), len(names) * 3 * row_h)
    t_out = truth.shape[1]
    for s, name in enumerate(names):
        rows = ((f"input 0-{t_in - 1}", inputs[s]), (f"truth {t_in}-{t_in + t_out - 1}", truth[s]),
                (f"prediction {t_in}-{t_in + t_out - 1}", prediction[s]))
        for r, (label, frames) in enumerate(rows):
            y = (3 * s + r) * row_h
            canvas.text(4, y + 4, name)
            canvas.text(4, y + 18, label)
            for c, frame in enumerate(frames):  # frame: (H, W, C)
                canvas.paste(frame, GUTTER_PX + c * (w + GAP_PX), y)
    return canvas


def write_gif(inputs: np.ndarray, truth: np.ndarray, prediction: np.ndarray, names: list[str], t_in: int,
              path: Path, frame_ms: int) -> None:
    """Animated GIF: per sample video a row [truth | prediction]; the input frames play first on both sides."""
    _, _, h, w, _ = inputs.shape
    header = 28  # two text lines
    images = []
    for t in range(inputs.shape[1] + truth.shape[1]):
        canvas = _Canvas(2 * w + GAP_PX, header + len(names) * (h + GAP_PX))
        is_input = t < t_in
        canvas.text(2, 2, f"frame {t}")
        canvas.text(2, 14, "input" if is_input else "truth | pred")
        for s in range(len(names)):
            left = inputs[s, t] if is_input else truth[s, t - t_in]  # (H, W, C)
            right = inputs[s, t] if is_input else prediction[s, t - t_in]
            y = header + s * (h + GAP_PX)
            canvas.paste(left, 0, y)
            canvas.paste(right, w + GAP_PX, y)
        images.append(canvas.image)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def mask_strip(last_inputs: np.ndarray, truth: np.ndarray, routes: dict[str, np.ndarray], names: list[str],
               num_classes: int, frame: int) -> _Canvas:
    """Per sample video a row: the last input frame (uint8 (S, H, W, 3)), the true mask of ``frame``
    and each route's mask of it (class ids uint8 (S, H, W)), in the same class colours."""
    from data.palette import colour_masks

    s_count, h, w, _ = last_inputs.shape
    columns = [("last input", None), (f"true mask {frame}", truth), *routes.items()]
    header = 28
    canvas = _Canvas(GUTTER_PX + len(columns) * (w + GAP_PX), header + s_count * (h + GAP_PX))
    for c, (label, _) in enumerate(columns):
        canvas.text(GUTTER_PX + c * (w + GAP_PX) + 2, 4 + 12 * (c % 2), label)
    for s, name in enumerate(names):
        y = header + s * (h + GAP_PX)
        canvas.text(4, y + 4, name)
        for c, (_, masks) in enumerate(columns):
            picture = last_inputs[s] if masks is None else colour_masks(masks[s], num_classes)
            canvas.paste(np.ascontiguousarray(picture), GUTTER_PX + c * (w + GAP_PX), y)
    return canvas
