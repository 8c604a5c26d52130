"""The one tiny model of each family the tests train: seconds on a CPU, frames of 32x48 (every
family's stride divides both sides)."""
from __future__ import annotations

import yaml

TINY = {
    "encoder_forecaster": {"stem_channels": 8, "hidden_channels": [8, 8], "strides": [1, 2], "kernel_size": 3,
                           "norm_groups": 4},
    "convlstm": {"hidden_channels": [8, 8], "kernel_size": 3, "patch_size": 4, "sampling_stop_step": 8},
    "predrnn": {"hidden_channels": [8, 8], "kernel_size": 3, "patch_size": 4, "reverse_start_step": 4,
                "reverse_stop_step": 8, "reverse_exp_alpha": 2.0, "sampling_stop_step": 8},
    "simvp": {"spatial_channels": 8, "temporal_channels": 16, "spatial_layers": 2, "temporal_layers": 2},
    "unet": {"base_channels": 8, "levels": 2, "norm_groups": 4},
    "phydnet": {"encoder_channels": 8, "phycell_channels": 9, "kernel_size": 3, "convlstm_channels": [8],
                "sampling_stop_step": 8},
    "attention_gru": {"hidden_channels": [8, 8], "patch_size": 2, "norm_groups": 4},
}


def model_section(family: str = "encoder_forecaster") -> dict:
    """The ``model:`` section of a config dict for the tiny model of ``family``."""
    return {"family": family, family: dict(TINY[family])}


def model_overrides(family: str = "encoder_forecaster") -> list[str]:
    """The same as ``key=value`` overrides."""
    return [f"model.family={family}"] + [
        f"model.{family}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
        for key, value in TINY[family].items()
    ]
