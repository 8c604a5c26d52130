"""The three routes to a future mask, and the copy-last and oracle baselines, behind one call.

Frames (B, t_in, C, H, W) in [0, 1] in, class ids (B, t_out, H, W) out:
- ``frames``: the forecaster predicts the future frames, the segmenter segments them;
- ``joint``: the same with a forecaster fine-tuned with the segmenter's loss (train.task=joint);
- ``masks``: the segmenter segments the input frames, a forecaster of one-hot class maps
  (train.task=masks) rolls them forward, the most likely class wins per pixel;
- ``copy_last``: the segmented last input frame, for every future frame (the baseline to beat);
- the oracle (``MaskRoutes.oracle``, needs the true future frames): the segmented true frames, the
  segmenter's own ceiling.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from core.config import Config
from core.distributed import pick_device
from core.errors import FramecastError
from core.outputs import route_forecaster_path, segmenter_path
from core.precision import Precision
from models.loading import load_model, load_segmenter
from training.segmentation import segment

ROUTES = ("frames", "masks", "joint", "copy_last")


class MaskRoute:
    """One route's models on the device, from ``cfg`` (``segment.*``, the run's folders)."""

    def __init__(self, cfg: Config, route: str, device: torch.device | None = None):
        if route not in ROUTES:
            raise FramecastError(f"segment.route={route!r}: expected one of {', '.join(ROUTES)}")
        self.route = route
        device = device or pick_device(cfg.run.device)
        self.precision = Precision.for_run(cfg.train, device)
        self.segmenter_path = segmenter_path(cfg)
        self.segmenter, seg_cfg, _ = load_segmenter(_existing(self.segmenter_path, "segmenter", "segment"), device)
        self.num_classes = seg_cfg.data.num_classes
        self.in_channels = self.segmenter.in_channels
        self.forecaster = None
        self.forecaster_path: Path | None = None
        self.t_in, self.t_out = cfg.data.t_in, cfg.data.t_out
        if route != "copy_last":
            self.forecaster_path = route_forecaster_path(cfg, route)
            task = {"frames": "forecast", "joint": "joint", "masks": "masks"}[route]
            self.forecaster, saved, _ = load_model(_existing(self.forecaster_path, f"{route} route's forecaster", task),
                                                   device)
            self.t_in, self.t_out = self.forecaster.t_in, self.forecaster.t_out
            want = self.num_classes if route == "masks" else self.in_channels
            if self.forecaster.in_channels != want:
                what = "class maps of the segmenter's classes" if route == "masks" else "frames the segmenter reads"
                raise FramecastError(f"{self.forecaster_path}: its model reads {self.forecaster.in_channels} "
                                     f"channels, the {route} route needs {want} ({what}, {self.segmenter_path})")

    @property
    def stride(self) -> int:
        return max(self.segmenter.stride, self.forecaster.stride if self.forecaster is not None else 1)

    def describe(self) -> dict:
        return {"route": self.route, "segmenter": str(self.segmenter_path),
                "forecaster": str(self.forecaster_path) if self.forecaster_path else None}

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """float (B, t_in, C, H, W) in [0, 1] -> class ids int64 (B, t_out, H, W)."""
        if self.route == "copy_last":
            last = segment(self.segmenter, inputs[:, -1:], self.precision)  # (B, 1, H, W)
            return last.expand(-1, self.t_out, -1, -1)
        if self.route == "masks":
            seen = segment(self.segmenter, inputs, self.precision)  # (B, t_in, H, W)
            maps = F.one_hot(seen, self.num_classes).permute(0, 1, 4, 2, 3).float()  # (B, t_in, K, H, W)
            with self.precision.autocast():
                future = self.forecaster(maps)  # (B, t_out, K, H, W)
            return future.argmax(2)
        with self.precision.autocast():
            frames = self.forecaster(inputs).float()  # (B, t_out, C, H, W)
        return segment(self.segmenter, frames, self.precision)

    @torch.inference_mode()
    def oracle(self, targets: torch.Tensor) -> torch.Tensor:
        """The true future frames segmented: float (B, t_out, C, H, W) -> class ids (B, t_out, H, W)."""
        return segment(self.segmenter, targets, self.precision)


def _existing(path: Path, what: str, task: str) -> Path:
    if not path.is_file():
        raise FramecastError(f"{path}: {what} checkpoint not found (train it with train.task={task}, or name it "
                             f"in the segment section)")
    return path
