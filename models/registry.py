"""``model.family`` -> the class that builds it: adding a family is its module and one line here."""
from __future__ import annotations

import dataclasses

from core.config import FAMILY_NAMES, Config, ModelConfig
from core.errors import FramecastError
from models.attention_gru import AttentionGRU
from models.base import FamilyModel
from models.convlstm import ConvLSTMStack
from models.encoder_forecaster import EncoderForecaster
from models.phydnet import PhyDNet
from models.predrnn import PredRNN
from models.simvp import SimVP
from models.unet import UNet

FAMILIES: dict[str, type[FamilyModel]] = {
    EncoderForecaster.family: EncoderForecaster,
    PredRNN.family: PredRNN,
    SimVP.family: SimVP,
    UNet.family: UNet,
    ConvLSTMStack.family: ConvLSTMStack,
    AttentionGRU.family: AttentionGRU,
    PhyDNet.family: PhyDNet,
}


def build_model(model_cfg: ModelConfig, t_in: int, t_out: int) -> FamilyModel:
    """The one place a model is made from config, so training and ``load_model`` build the same thing."""
    family = FAMILIES.get(model_cfg.family)
    if family is None:
        raise FramecastError(
            f"model.family={model_cfg.family!r} is not one of {', '.join(FAMILIES)}"
            + (" (known to the config but not built by this framecast)" if model_cfg.family in FAMILY_NAMES else "")
        )
    return family(model_cfg, t_in, t_out)


def task_model_config(cfg: Config) -> ModelConfig:
    """The model section a run's forecaster is built from: as written, except that a masks run
    (train.task=masks) reads data.num_classes channels, one-hot class maps, whatever model.in_channels says."""
    if cfg.train.task == "masks":
        return dataclasses.replace(cfg.model, in_channels=cfg.data.num_classes)
    return cfg.model


def build_forecaster(cfg: Config) -> FamilyModel:
    """The forecaster of ``cfg``'s run (frames, or for train.task=masks class maps)."""
    return build_model(task_model_config(cfg), cfg.data.t_in, cfg.data.t_out)
