"""Tiny data sets and checkpoints for the predict / convert / evaluate tests (no training needed)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoint import BEST_NAME, save_checkpoint
from core.config import Config, ModelConfig, config_from_dict, config_to_dict
from data.synthetic import make_shapes_dataset
from models import build_model
from tiny_models import model_section

T_IN, T_OUT = 4, 4
HEIGHT, WIDTH = 32, 48
# 3 val videos then 8 hidden ones: hidden are video_3 .. video_10, crossing 9 -> 10 where string
# order and numeric order differ.
COUNTS = {"val": 3, "hidden": 8}


def tiny_model_config() -> ModelConfig:
    return config_from_dict({"model": model_section("encoder_forecaster")}).model


def make_data(root: Path, frames: int = 8) -> Path:
    return make_shapes_dataset(root, counts=COUNTS, height=HEIGHT, width=WIDTH, frames=frames,
                               hidden_frames=T_IN, seed=0, workers=1)


def make_config(tmp: Path, data_root: Path, **predict) -> Config:
    cfg = Config()
    cfg.run.out_dir, cfg.run.name, cfg.run.device = str(tmp / "runs"), "tiny", "cpu"
    cfg.data.root, cfg.data.num_workers, cfg.data.t_in, cfg.data.t_out = str(data_root), 0, T_IN, T_OUT
    cfg.model = tiny_model_config()
    cfg.predict = dataclasses.replace(cfg.predict, batch_size=5, **predict)
    return cfg


def make_checkpoint(cfg: Config, path: Path | None = None, bias: tuple[float, float, float] | None = None,
                    t_in: int = T_IN, seed: int = 0) -> Path:
    """A checkpoint of an untrained tiny model; with ``bias`` the model outputs that constant colour
    (head weights zeroed), which is how tests get outputs outside [0, 1]."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, t_in=t_in, t_out=T_OUT))
    model = build_model(cfg.model, t_in, T_OUT)
    if bias is not None:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor(bias))
    path = path or cfg.run_dir / BEST_NAME
    save_checkpoint({
        "model": model.state_dict(), "config": config_to_dict(cfg),
        "progress": {"epoch": 3, "step": 30, "best_val_loss": 0.05, "val_loss": 0.05},
    }, path)
    return path


def read_first_frames(video_dir: Path, count: int) -> np.ndarray:
    """uint8 (count, H, W, 3), read with PIL directly (independent of data/)."""
    return np.stack([np.asarray(Image.open(video_dir / f"image_{k}.png").convert("RGB")) for k in range(count)])


# Fixtures for the modules that import them: a module-wide data set, and a fresh run folder with
# an untrained checkpoint for each test.
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture
def cfg(tmp_path: Path, data_root: Path) -> Config:
    cfg = make_config(tmp_path, data_root)
    make_checkpoint(cfg)
    return cfg
