"""``model.family`` -> the model: the class each family's declaration names (core/families.py), built
from the config in one place, so training and loading a checkpoint build the same thing."""
from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import FramecastError
from core.families import families, get
from models.base import FamilyModel

if TYPE_CHECKING:
    from core.config import ModelConfig


def build_model(model_cfg: ModelConfig, t_in: int, t_out: int) -> FamilyModel:
    family = get(model_cfg.family)
    if family is None:
        raise FramecastError(f"model.family={model_cfg.family!r} is not one of "
                             f"{', '.join(f.name for f in families())}")
    return family.model_class()(model_cfg, t_in, t_out)
