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

from core.config import MASK_ROUTES, Config
from core.distributed import pick_device
from core.errors import FramecastError
from core.outputs import ROUTE_TASKS, route_forecaster_path, segmenter_path
from core.precision import Precision
from data.datasets import to_model_input
from models.loading import load_model, load_segmenter
from training.segmentation import MaskScore, segment

ROUTES = (*MASK_ROUTES, "copy_last")


class MaskRoute:
    """One route's models on the device, from ``cfg`` (``segment.*``, the run's folders)."""

    def __init__(self, cfg: Config, route: str, device: torch.device | None = None, segmenter=None):
        """``segmenter``: the run's segmenter as ``load_segmenter`` returns it, loaded onto ``device``
        already (routes scored side by side share one); loaded here when not given."""
        if route not in ROUTES:
            raise FramecastError(f"segment.route={route!r}: expected one of {', '.join(ROUTES)}")
        self.route = route
        device = device or pick_device(cfg.run.device)
        self.precision = Precision.for_run(cfg.train, device)
        self.segmenter_path = segmenter_path(cfg)
        self.segmenter, seg_cfg, _ = segmenter or load_segmenter(
            _existing(self.segmenter_path, "segmenter", "segment"), device)
        self.num_classes = seg_cfg.data.num_classes
        self.in_channels = self.segmenter.in_channels
        self.forecaster = None
        self.forecaster_path: Path | None = None
        self.t_in, self.t_out = cfg.data.t_in, cfg.data.t_out
        self.decode = cfg.segment.decode
        if route != "copy_last":
            self.forecaster_path = route_forecaster_path(cfg, route)
            task = ROUTE_TASKS[route]
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
                future = self.forecaster(maps).float()  # (B, t_out, K, H, W)
            return decode_maps(future, self.decode)
        with self.precision.autocast():
            frames = self.forecaster(inputs).float()  # (B, t_out, C, H, W)
        return segment(self.segmenter, frames, self.precision)

    @torch.inference_mode()
    def oracle(self, targets: torch.Tensor) -> torch.Tensor:
        """The true future frames segmented: float (B, t_out, C, H, W) -> class ids (B, t_out, H, W)."""
        return segment(self.segmenter, targets, self.precision)


def decode_maps(maps: torch.Tensor, how: str) -> torch.Tensor:
    """Forecast class maps float (B, T, K, H, W) -> class ids (B, T, H, W) (``segment.decode``).

    ``argmax``: the likeliest class. ``foreground``: background (class 0) only where its map is at
    least the objects' maps together (clipped to [0, 1]), else the likeliest object class.
    """
    if how == "argmax":
        return maps.argmax(2)
    maps = maps.clamp(0, 1)
    objects = maps[:, :, 1:]
    likeliest = objects.argmax(2) + 1  # (B, T, H, W)
    return torch.where(objects.sum(2) > maps[:, :, 0], likeliest, torch.zeros_like(likeliest))


def _existing(path: Path, what: str, task: str) -> Path:
    if not path.is_file():
        raise FramecastError(f"{path}: {what} checkpoint not found (train it with train.task={task}, or name it "
                             f"in the segment section)")
    return path


# What the mask report calls each scored thing, in its order: the routes asked for, then the two baselines.
COPY_LAST, ORACLE = "copy_last", "oracle"


def target_lead(cfg: Config, t_out: int) -> int:
    """The lead time (1-based) of the frame whose mask is the answer: ``segment.lead_time``, default the last."""
    lead = cfg.segment.lead_time or t_out
    if lead > t_out:
        raise FramecastError(f"segment.lead_time={lead}: the forecast holds {t_out} future frames (data.t_out)")
    return lead


@torch.no_grad()
def score_routes(cfg: Config, routes: list[str], loader, samples: int = 0) -> dict:
    """Jaccard (torchmetrics, pooled over every video's masks) per lead time and of the target frame
    (``segment.lead_time``, default the last), with per-class IoU of the target frame, for each of
    ``routes``, copy-last (the segmented last input frame) and the oracle (the segmented true future
    frames). ``loader`` yields (frames, masks) batches of windows of t_in + t_out frames.

    Returns the report, plus under ``"_samples"`` the first ``samples`` videos' last input frames and
    target-frame masks (true and each scored one) for the strip.
    """
    device = pick_device(cfg.run.device)
    segmenter = load_segmenter(_existing(segmenter_path(cfg), "segmenter", "segment"), device)  # one for all
    scored = {name: MaskRoute(cfg, name, device, segmenter) for name in dict.fromkeys([*routes, COPY_LAST])}
    baseline = scored[COPY_LAST]
    t_in, t_out = baseline.t_in, baseline.t_out
    for name, route in scored.items():
        if (route.t_in, route.t_out) != (t_in, t_out):
            raise FramecastError(f"{route.forecaster_path}: takes {route.t_in} frames to {route.t_out}, the "
                                 f"config says data.t_in={t_in}, data.t_out={t_out}")
    lead = target_lead(cfg, t_out)
    num_classes = baseline.num_classes
    device = baseline.precision.device
    names = [*scored, ORACLE]
    per_lead = {name: [MaskScore(num_classes, device) for _ in range(t_out)] for name in names}
    kept: dict[str, list] = {name: [] for name in ["_inputs", "_truth", *names]}
    held = 0
    for video, masks in loader:
        frames = to_model_input(video, device, False, baseline.in_channels)  # (B, T, C, H, W)
        inputs, truth_frames = frames[:, :t_in], frames[:, t_in:]
        truth = masks[:, t_in:t_in + t_out].to(device).long()  # (B, t_out, H, W)
        outputs = {name: route(inputs) for name, route in scored.items()}
        outputs[ORACLE] = baseline.oracle(truth_frames)
        for name, predicted in outputs.items():
            for k in range(t_out):
                per_lead[name][k].update(predicted[:, k], truth[:, k])
        if held < samples:
            take = samples - held
            kept["_inputs"].append((inputs[:take, -1].clamp(0, 1) * 255).round().byte().cpu())
            kept["_truth"].append(truth[:take, lead - 1].byte().cpu())
            for name, predicted in outputs.items():
                kept[name].append(predicted[:take, lead - 1].byte().cpu())
            held += len(kept["_inputs"][-1])
    results = {}
    for name in names:
        lead_scores = [score.compute() for score in per_lead[name]]
        results[name] = {"per_lead_time": [s["jaccard"] for s in lead_scores],
                         "target": lead_scores[lead - 1]["jaccard"],
                         "per_class_iou_target": lead_scores[lead - 1]["per_class_iou"]}
    copy = results[COPY_LAST]["target"]
    report = {
        "routes": names,
        "target_frame": t_in + lead - 1,
        "frames": list(range(t_in, t_in + t_out)),
        "num_classes": num_classes,
        "definition": "torchmetrics JaccardIndex(task='multiclass', num_classes=data.num_classes) over every "
                      "video's mask of the frame at once (classes absent from both prediction and truth "
                      "left out of the mean); per_class_iou_target null where a class is absent from both",
        "checkpoints": {name: route.describe() for name, route in scored.items()},
        "scores": results,
        "vs_copy_last": {name: (results[name]["target"] / copy - 1 if copy else None) for name in names},
    }
    if held:
        channels = kept["_inputs"][0].shape[1]
        last = torch.cat(kept["_inputs"])  # (S, C, H, W)
        last = (last if channels == 3 else last.expand(-1, 3, -1, -1)).permute(0, 2, 3, 1).numpy()
        report["_samples"] = {"last_inputs": last, "truth": torch.cat(kept["_truth"]).numpy(),
                              "routes": {name: torch.cat(kept[name]).numpy() for name in names}}
    return report
