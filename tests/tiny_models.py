"""The tiny model of each family the tests train: the family table's own (core/families.py, ``tiny``),
seconds on a CPU, frames of 32x48 (every family's stride divides both sides)."""
from __future__ import annotations

import yaml

from core.families import families

TINY = {family.name: dict(family.tiny) for family in families()}


def model_section(family: str = "encoder_forecaster") -> dict:
    """The ``model:`` section of a config dict for the tiny model of ``family``."""
    return {"family": family, family: dict(TINY[family])}


def model_overrides(family: str = "encoder_forecaster") -> list[str]:
    """The same as ``key=value`` overrides."""
    return [f"model.family={family}"] + [
        f"model.{family}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
        for key, value in TINY[family].items()
    ]
