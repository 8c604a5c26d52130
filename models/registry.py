"""``model.family`` -> the model: the class each family's declaration names (core/families.py), built
from the config in one place, so training and loading a checkpoint build the same thing."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from core.errors import FramecastError
from core.families import families, get
from models.base import FamilyModel

if TYPE_CHECKING:
    from core.config import Config, ModelConfig


def build_model(model_cfg: ModelConfig, t_in: int, t_out: int) -> FamilyModel:
    family = get(model_cfg.family)
    if family is None:
        raise FramecastError(f"model.family={model_cfg.family!r} is not one of "
                             f"{', '.join(f.name for f in families())}")
    return family.model_class()(model_cfg, t_in, t_out)


def task_model_config(cfg: Config) -> ModelConfig:
    """The model section a run's forecaster is built from: as written, except that a masks run
    (train.task=masks) reads data.num_classes channels, one-hot class maps, whatever model.in_channels says."""
    if cfg.train.task == "masks":
        return dataclasses.replace(cfg.model, in_channels=cfg.data.num_classes)
    return cfg.model


def build_forecaster(cfg: Config) -> FamilyModel:
    """The forecaster of ``cfg``'s run (frames, or for train.task=masks class maps)."""
    return build_model(task_model_config(cfg), cfg.data.t_in, cfg.data.t_out)
