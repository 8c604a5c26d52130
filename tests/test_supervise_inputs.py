"""train.supervise_inputs: the frame-by-frame families also score the next-frame predictions they make
while reading their inputs (as OpenSTL trains them); the forecast itself is unchanged, the loss
weights every next-frame prediction alike, and a run resumes exactly."""
from __future__ import annotations

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.config import TrainConfig
from core.errors import FramecastError
from core.precision import Precision
from models.base import TrainingForward
from family_helpers import family_model, videos
from stages.train import run
from training.step import frame_loss, train_step
from train_helpers import losses, run_killed_after, state_digest, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

ROLLOUT = ("convlstm", "predrnn", "phydnet")
T_IN, T_OUT, SIZE = 4, 3, 16
NO_SAMPLING = {"sampling": "none"}  # no random draws: the training pass is the inference one


@pytest.mark.parametrize("family", ROLLOUT)
def test_input_phase_predictions_are_each_frame_predicted_from_the_frames_before_it(family):
    model = family_model(family, T_IN, T_OUT, **NO_SAMPLING)
    model.set_input_supervision(True)
    x, targets = videos(t=T_IN, size=SIZE), videos(t=T_OUT, size=SIZE, seed=1)
    with torch.no_grad():
        forecast = model.training_forward(x, targets, step=0)
        assert forecast.inputs.shape == (2, T_IN - 1, 1, SIZE, SIZE)
        assert torch.allclose(forecast.frames, model(x), atol=1e-6)  # the forecast itself is unchanged
        for k in range(1, T_IN):  # a model reading only frames 0..k-1 predicts frame k as the same weights do
            shorter = family_model(family, k, 1, **NO_SAMPLING)
            shorter.load_state_dict(model.state_dict())
            assert torch.allclose(forecast.inputs[:, k - 1], shorter(x[:, :k])[:, 0], atol=1e-6), k
    model.set_input_supervision(False)
    assert model.training_forward(x, targets, step=0).inputs is None


def test_the_loss_weights_every_next_frame_prediction_alike():
    model = family_model("convlstm", T_IN, T_OUT, **NO_SAMPLING)
    model.set_input_supervision(True)
    video = (videos(t=T_IN + T_OUT, size=SIZE) * 255).to(torch.uint8)  # (B, T, C, H, W) as 0..255
    batch = video.permute(0, 1, 3, 4, 2).contiguous()  # uint8 (B, T, H, W, C), as the loader gives it
    frames = video.float() / 255
    with torch.no_grad():
        forecast = model.training_forward(frames[:, :T_IN], frames[:, T_IN:], step=0)
    every = frame_loss("mse", torch.cat([forecast.inputs, forecast.frames], 1), frames[:, 1:])
    outputs_only = frame_loss("mse", forecast.frames, frames[:, T_IN:])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    main, _ = train_step(TrainingForward(model), optimizer, batch, step=0, t_in=T_IN, in_channels=1,
                         precision=Precision.for_run(TrainConfig(amp="off"), torch.device("cpu")),
                         loss="mse", grad_clip=0.0)
    assert torch.allclose(main, every, rtol=1e-5) and not torch.allclose(main, outputs_only, rtol=1e-3)


@pytest.mark.parametrize("family", ["unet", "simvp", "encoder_forecaster"])
def test_families_without_input_predictions_refuse_naming_the_setting(family):
    with pytest.raises(FramecastError, match=rf"train\.supervise_inputs .*model\.family={family}"):
        family_model(family).set_input_supervision(True)


def test_supervised_inputs_resume_exactly(data_root, tmp_path):
    extra = ("train.epochs=2", "train.supervise_inputs=true")
    reference = tiny_config(data_root, tmp_path, "reference", *extra, family="predrnn")
    run(reference)
    cfg = tiny_config(data_root, tmp_path, "resumed", *extra, family="predrnn")
    run_killed_after(cfg, epoch=1)
    assert run(cfg)["resumed_from"]["epoch"] == 1
    assert losses(cfg.run_dir) == losses(reference.run_dir)
    ours, theirs = load_checkpoint(cfg.run_dir / "last.pt"), load_checkpoint(reference.run_dir / "last.pt")
    assert state_digest(ours["model"]) == state_digest(theirs["model"])
