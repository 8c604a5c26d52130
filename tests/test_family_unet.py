"""UNet behaviours users rely on: shapes, the stride error, copy-last at the start with ``residual``,
learning a moving square, gradients everywhere."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.errors import FramecastError
from family_helpers import family_model, learn, moving_squares, videos, without_gradient
from models.registry import build_model
from models.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def unet(t_in: int = 3, t_out: int = 2, *, channels: int = 1, seed: int = 0, **settings) -> UNet:
    """The tiny UNet of tests/tiny_models.py (base 8 channels, 2 levels, 4 norm groups)."""
    model = family_model("unet", t_in, t_out, channels=channels, seed=seed, **settings)
    assert isinstance(model, UNet)
    return model


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out", [(3, 2), (2, 4)])
@pytest.mark.parametrize("residual", [False, True])
def test_output_shape(channels, t_in, t_out, residual):
    model = unet(t_in, t_out, channels=channels, residual=residual)
    out = model(videos(t=t_in, channels=channels, size=32))
    assert out.shape == (2, t_out, channels, 32, 32)
    assert torch.isfinite(out).all()


def test_stride_is_two_to_the_levels_and_a_bad_frame_size_names_the_setting():
    assert [unet(levels=n).stride for n in (1, 2, 3)] == [2, 4, 8]
    with pytest.raises(FramecastError, match=r"18x16.*stride 4.*model\.unet\.levels=2"):
        unet()(torch.rand(1, 3, 1, 18, 16))


def test_norm_groups_must_divide_base_channels():
    with pytest.raises(FramecastError, match=r"model\.unet\.norm_groups=3"):
        unet(norm_groups=3)
    unet(norm_groups=0)(videos())  # no GroupNorm at all: convs carry biases


@pytest.mark.parametrize("channels", [1, 3])
def test_untrained_residual_model_is_exactly_copy_last(channels):
    x = videos(t=3, channels=channels)
    out = unet(3, 2, channels=channels, residual=True)(x)
    assert torch.equal(out, x[:, -1:].expand_as(out))
    assert out.min() >= 0 and out.max() <= 1  # in the frames' range, as copy-last is
    # Without ``residual`` the head is initialised as usual: not copy-last.
    assert not torch.equal(unet(3, 2, channels=channels)(x)[:, :1], x[:, -1:])


@pytest.mark.parametrize("residual", [False, True])
def test_a_few_dozen_adam_steps_learn_a_moving_square(residual):
    mse = learn(unet(3, 2, residual=residual), moving_squares(16, 5, motion="step"), t_in=3, steps=40,
                lr=3e-3)  # 16 videos of 5 frames
    assert mse.after < 0.6 * mse.before and mse.after < 0.6 * mse.copy_last, mse


@pytest.mark.parametrize("residual", [False, True])
def test_gradients_reach_every_parameter(residual):
    model = unet(3, 2, residual=residual)
    if residual:  # the zero head blocks every gradient behind it until it has been trained once
        torch.nn.init.normal_(model.head.weight, std=0.1)
    F.mse_loss(model(videos()), videos(t=2, seed=1)).backward()
    assert not without_gradient(model)


def test_summary_names_levels_channels_and_output():
    lines = dict(unet(3, 2, residual=True).summary())
    assert lines["family"].startswith("unet")
    assert "stride 4" in lines["levels"]
    assert lines["channels"].startswith("8 -> 16 -> 32")
    assert lines["output"] == "change from the last frame"


def test_builds_on_the_meta_device():
    """The benchmarks count FLOPs on the meta device: the default UNet must build and run there."""
    cfg = load_config(None, ["model.family=unet"])
    with torch.device("meta"):
        model = build_model(cfg.model, 2, 3)
        assert model(torch.empty(1, 2, 3, 64, 64)).shape == (1, 3, 3, 64, 64)
