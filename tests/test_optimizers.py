"""``train.optimizer``: each optimiser the seeds trained with is built from its settings and lowers the
loss of a short run; settings that cannot work are one clear line."""
from __future__ import annotations

import pytest
import torch

from core.config import load_config
from core.errors import FramecastError
from core.precision import Precision
from family_helpers import moving_squares
from models.base import TrainingForward
from models.registry import build_model
from tiny_models import model_overrides
from training.step import build_optimizer, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

# Learning rates each optimiser learns the toy data with in 60 steps (Adadelta's steps are scaled by lr).
RATES = {"adam": 3e-2, "adamw": 3e-2, "rmsprop": 3e-3, "adadelta": 3.0, "sgd": 1.0}
KINDS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
         "adadelta": torch.optim.Adadelta, "sgd": torch.optim.SGD}


def config(*extra: str):
    return load_config(None, [*model_overrides("convlstm"), "model.convlstm.patch_size=2", "model.in_channels=1",
                              "model.convlstm.sampling=none", *extra])


@pytest.mark.parametrize("name", sorted(RATES))
def test_each_optimiser_lowers_the_loss_of_a_short_run(name):
    extra = {"sgd": ["train.momentum=0.9", "train.nesterov=true"], "rmsprop": ["train.momentum=0.9"]}.get(name, [])
    cfg = config(f"train.optimizer={name}", f"train.lr={RATES[name]}", *extra)
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 2)
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))
    assert type(optimizer) is KINDS[name]
    if extra:
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults.get("nesterov", False) == (name == "sgd")
    videos = moving_squares(16, 5, motion="bounce")  # (N, T, 1, H, W) in {0, 1}
    batch = (videos * 255).to(torch.uint8).permute(0, 1, 3, 4, 2)  # as the loader gives it: (N, T, H, W, C)
    forward, cpu = TrainingForward(model), Precision(torch.device("cpu"), None, False)
    losses = [train_step(forward, optimizer, batch, step=step, t_in=3, in_channels=1, precision=cpu, loss="mse",
                         grad_clip=1.0)[0].item() for step in range(60)]
    blank = videos[:, 3:].square().mean().item()  # the loss of predicting black frames
    late = sum(losses[-5:]) / 5
    assert late < 0.7 * losses[0] and late < 0.93 * blank, (losses[-5:], blank)


@pytest.mark.parametrize("setting, fragment", [
    ("train.rho=1", r"train\.rho must be in \(0, 1\)"),
    ("train.momentum=-0.1", r"train\.momentum must be in \[0, 1\)"),
    ("train.nesterov=true", r"train\.nesterov needs train\.optimizer=sgd and train\.momentum > 0"),
    ("train.optimizer=lbfgs", r"train\.optimizer: 'lbfgs' is not one of"),
])
def test_optimiser_settings_that_cannot_work_are_one_line(setting, fragment):
    with pytest.raises(FramecastError, match=fragment):
        config(setting)
