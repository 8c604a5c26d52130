"""Video-prediction models: ConvLSTM/ConvGRU encoder-forecasters built from ``core.config.ModelConfig``."""
from __future__ import annotations

from torch import nn

from core.config import ModelConfig
from models.cells import CELLS, ConvGRUCell, ConvLSTMCell, ConvRNNCell
from models.encoder_forecaster import EncoderForecaster, total_stride

__all__ = [
    "CELLS",
    "ConvGRUCell",
    "ConvLSTMCell",
    "ConvRNNCell",
    "EncoderForecaster",
    "build_model",
    "count_parameters",
    "total_stride",
]


def build_model(model_cfg: ModelConfig, t_in: int, t_out: int) -> nn.Module:
    """The one place a model is made from config, so training and ``load_model`` build the same thing."""
    return EncoderForecaster(model_cfg, t_in, t_out)


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters (a torch.compile wrapper counts as its model)."""
    return sum(p.numel() for p in model.parameters())
