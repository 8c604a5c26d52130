"""Video-prediction model families behind one contract (``models.base``), chosen by ``model.family``."""
from __future__ import annotations

from models.base import FamilyModel, Forecast, TrainingForward, count_parameters
from models.cells import CELLS, ConvGRUCell, ConvLSTMCell, ConvRNNCell
from models.encoder_forecaster import EncoderForecaster, total_stride
from models.registry import FAMILIES, build_model

__all__ = [
    "CELLS",
    "FAMILIES",
    "ConvGRUCell",
    "ConvLSTMCell",
    "ConvRNNCell",
    "EncoderForecaster",
    "FamilyModel",
    "Forecast",
    "TrainingForward",
    "build_model",
    "count_parameters",
    "total_stride",
]
