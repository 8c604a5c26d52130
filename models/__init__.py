"""Video-prediction model families behind one contract (``models.base``), chosen by ``model.family``.

The names below are imported from their modules on first use (PEP 562), so that importing
``models.families`` (the torch-free settings and declarations a config reads) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FamilyModel": "models.base",
    "Forecast": "models.base",
    "TrainingForward": "models.base",
    "count_parameters": "models.base",
    "CELLS": "models.cells",
    "ConvGRUCell": "models.cells",
    "ConvLSTMCell": "models.cells",
    "ConvRNNCell": "models.cells",
    "EncoderForecaster": "models.encoder_forecaster",
    "total_stride": "models.encoder_forecaster",
    "build_model": "models.registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
