"""The segment stage: the class masks of a split's future frames, by ``segment.route``, as one .npy.

    python main.py segment --config configs/demo.yaml --route frames --split hidden

Each video's last ``t_in`` frames go through the route (training/routes.py) to class masks of the
``t_out`` frames that follow; the hand-off keeps the frame ``segment.lead_time`` says (default the
last: frame 22 of the reference layout) as uint8 (N, H, W), or with ``segment.all_frames`` every
future frame, (N, T, H, W). The index beside it is the frame predictions' (data/predictions.py):
``videos`` (one row each, numeric order), ``frames`` (the frame numbers held), ``inputs``, plus
``kind: masks``, the route and its checkpoints. Streamed batch by batch; written under a temporary
name and renamed.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from core.config import Config, config_to_dict
from core.errors import FramecastError
from core.outputs import masks_path
from data.datasets import VideoWindowDataset, check_channels, make_loader, to_model_input
from data.predictions import MASKS_KIND, npy_rows, write_index
from data.sources import open_split
from training.routes import MaskRoute, target_lead


def future_choice(cfg: Config, t_out: int) -> slice:
    """The future frames (0-based, of the t_out predicted) the hand-off keeps."""
    if cfg.segment.all_frames:
        return slice(0, t_out)
    lead = target_lead(cfg, t_out)
    return slice(lead - 1, lead)


def run(cfg: Config) -> Path:
    """Write the masks of ``predict.split``'s future by ``segment.route``; returns the .npy."""
    route = MaskRoute(cfg, cfg.segment.route)
    split = cfg.predict.split
    source = open_split(cfg.data, split)
    if source.num_frames < route.t_in:
        raise FramecastError(f"{source.describe()}: videos have {source.num_frames} frames, the route needs its "
                             f"last t_in={route.t_in}")
    dataset = VideoWindowDataset(source, route.t_in, 0, from_end=True)  # each video's last t_in frames
    check_channels(dataset, route.in_channels)
    height, width, _ = dataset.frame_shape
    if height % route.stride or width % route.stride:
        raise FramecastError(f"{source.describe()}: frames of {height}x{width}, not divisible by the route's "
                             f"models' stride {route.stride}")
    keep = future_choice(cfg, route.t_out)
    kept = len(range(route.t_out)[keep])
    shape = (len(dataset), kept, height, width) if cfg.segment.all_frames else (len(dataset), height, width)
    out = masks_path(cfg)
    device = route.precision.device
    loader = make_loader(dataset, cfg.predict.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                         prefetch_factor=cfg.data.prefetch_factor, pin_memory=False, drop_last=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with npy_rows(out, shape) as handle:
        for batch in tqdm(loader, desc=f"segment {out.name}", unit="batch", disable=None):
            inputs = to_model_input(batch, device, False, route.in_channels)  # (B, t_in, C, H, W)
            masks = route(inputs)[:, keep]  # (B, kept, H, W)
            if not cfg.segment.all_frames:
                masks = masks[:, 0]
            handle.write(masks.to("cpu").numpy().astype("uint8").tobytes())
    loader.end_workers()
    frames = source.num_frames
    index = {
        "kind": MASKS_KIND,
        "videos": list(dataset.sources[0].names),
        "frames": [frames + k for k in range(route.t_out)[keep]],  # frame numbers after each video's last
        "inputs": list(range(frames - route.t_in, frames)),
        "split": split,
        "source": source.describe(),
        "num_classes": route.num_classes,
        **route.describe(),
        "config": config_to_dict(cfg),
    }
    write_index(out, index, shape)
    return out
