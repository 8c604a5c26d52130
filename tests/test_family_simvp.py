"""SimVP behaviours users rely on: shapes for every frame-count case, the stride error, TAU's
divergence term, learning a moving square, gradients everywhere, deterministic inference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import FramecastError
from family_helpers import family_model, learn, moving_squares, videos, without_gradient
from models.simvp import SimVP, differential_divergence

pytestmark = pytest.mark.usefixtures("one_thread")


def simvp(t_in: int = 3, t_out: int = 3, *, translator: str = "gsta", channels: int = 1, seed: int = 0,
          **settings) -> SimVP:
    """The tiny SimVP of tests/tiny_models.py (spatial 8, temporal 16, 2 layers each), translator MLPs 2x wide."""
    model = family_model("simvp", t_in, t_out, "model.simvp.mlp_ratio=2", f"model.simvp.translator={translator}",
                         channels=channels, seed=seed, **settings)
    assert isinstance(model, SimVP)
    return model


@pytest.mark.parametrize("translator", ["gsta", "tau"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out", [(3, 3), (4, 2), (2, 5)])  # one pass, cut, autoregressive
def test_output_shape(translator, channels, t_in, t_out):
    model = simvp(t_in, t_out, translator=translator, channels=channels)
    out = model(videos(t=t_in, channels=channels))
    assert out.shape == (2, t_out, channels, 16, 16)
    assert torch.isfinite(out).all()


def test_fewer_frames_are_the_first_of_one_pass_and_more_are_rolled_out():
    """t_out < t_in keeps the first t_out of a pass; t_out > t_in feeds each pass the previous one's frames."""
    x = videos(t=2)
    one = simvp(2, 2).eval()
    cut = simvp(2, 1).eval()
    rolled = simvp(2, 5).eval()
    cut.load_state_dict(one.state_dict())
    rolled.load_state_dict(one.state_dict())
    with torch.no_grad():
        first = one(x)  # (B, 2, C, H, W)
        second = one(first)
        third = one(second)
        torch.testing.assert_close(cut(x), first[:, :1])
        torch.testing.assert_close(rolled(x), torch.cat([first, second, third[:, :1]], dim=1))


def test_stride_follows_spatial_layers():
    assert [simvp(spatial_layers=n).stride for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 4, 4]


def test_frame_size_not_divisible_by_stride_names_the_setting():
    model = simvp(spatial_layers=4)  # strides [1, 2, 1, 2]: 4
    with pytest.raises(FramecastError, match=r"18x16.*stride 4.*model\.simvp\.spatial_layers=4"):
        model(torch.rand(1, 3, 1, 18, 16))


def test_odd_spatial_channels_is_a_user_error():
    with pytest.raises(FramecastError, match=r"model\.simvp\.spatial_channels=7"):
        simvp(spatial_channels=7)


def test_divergence_term_for_tau_is_finite_nonnegative_and_scaled_by_its_weight():
    x, targets = videos(t=3), videos(t=4, seed=1)
    light = simvp(3, 4, translator="tau", divergence_weight=0.1, seed=3)
    heavy = simvp(3, 4, translator="tau", divergence_weight=0.3, seed=3)  # same weights
    small = light.training_forward(x, targets, step=0).losses
    large = heavy.training_forward(x, targets, step=0).losses
    assert set(small) == {"divergence"}
    assert torch.isfinite(small["divergence"]) and small["divergence"] > 0
    torch.testing.assert_close(large["divergence"], 3 * small["divergence"])


@pytest.mark.parametrize("translator, weight", [("gsta", 0.1), ("tau", 0.0)])
def test_divergence_term_is_absent_for_gsta_or_weight_zero(translator, weight):
    forecast = simvp(3, 4, translator=translator, divergence_weight=weight).training_forward(
        videos(t=3), videos(t=4, seed=1), step=0)
    assert forecast.losses == {}
    assert forecast.frames.shape == (2, 4, 1, 16, 16)


def test_divergence_is_zero_when_prediction_is_the_target():
    model = simvp(3, 4, translator="tau").eval()  # eval: BatchNorm's running stats, so two passes agree
    x = videos(t=3)
    with torch.no_grad():
        targets = model(x)
    assert model.training_forward(x, targets, step=0).losses["divergence"].abs() < 1e-6
    # And it grows when the motion lands in other frames than the truth's.
    truth = videos(t=5, seed=2)
    assert differential_divergence(truth, truth) == 0
    assert differential_divergence(truth.flip(1), truth) > 0


@pytest.mark.parametrize("translator", ["gsta", "tau"])
def test_a_few_dozen_adam_steps_learn_a_moving_square(translator):
    mse = learn(simvp(3, 3, translator=translator), moving_squares(16, 6, motion="step"), t_in=3, steps=40,
                lr=3e-3, eval_after=True)  # 16 videos of 6 frames
    # mse.blank: predicting empty frames (here also what copy-last scores)
    assert mse.after < 0.4 * mse.before and mse.after < mse.blank, mse


@pytest.mark.parametrize("translator", ["gsta", "tau"])
def test_gradients_reach_every_parameter(translator):
    model = simvp(2, 5, translator=translator, temporal_layers=3)  # widths change twice; 3 passes
    forecast = model.training_forward(videos(t=2), videos(t=5, seed=1), step=0)
    (F.mse_loss(forecast.frames, videos(t=5, seed=1)) + sum(forecast.losses.values())).backward()
    assert not without_gradient(model)


@pytest.mark.parametrize("translator", ["gsta", "tau"])
def test_eval_output_is_deterministic(translator):
    model = simvp(3, 4, translator=translator, drop_path=0.5)
    x = videos(t=3)
    model.train()
    model(x)  # move BatchNorm's running stats away from their start
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_summary_names_translator_widths_and_layers():
    lines = dict(simvp(3, 5, translator="tau").summary())
    assert lines["family"].startswith("simvp")
    assert "tau, 2 blocks" in lines["translator"]
    assert "spatial 8, stacked 24, temporal 16" == lines["widths"]
    assert "2 layers each" in lines["encoder/decoder"] and "stride 2" in lines["encoder/decoder"]
    assert "2 autoregressive passes" in lines["rollout"]
    assert "weight 0.1" in lines["divergence loss"]


@pytest.mark.parametrize("translator", ["gsta", "tau"])
def test_published_init_draws_the_reference_code_s_distributions(translator):
    """model.simvp.init=published: encoder/decoder convs ~ std 0.02, translator convs He fan-out,
    zero biases; a residual model still starts at copy-last."""
    model = simvp(translator=translator, init="published", spatial_channels=32, temporal_channels=64)
    default = simvp(translator=translator, spatial_channels=32, temporal_channels=64)
    for block in (*model.encoder.blocks, *model.decoder.blocks):
        assert abs(block.conv.weight.std().item() - 0.02) < 0.003 and not block.conv.bias.any()
    meta = next(iter(model.translator.blocks.children()))
    depthwise = meta.attention.core.convs[0]  # fan-out k*k*out/groups = 5*5*1
    assert abs(depthwise.weight.std().item() - (2 / 25) ** 0.5) < 0.03 and not depthwise.bias.any()
    up = meta.mlp.up  # 1x1: fan-out = out channels
    assert abs(up.weight.std().item() - (2 / up.out_channels) ** 0.5) < 0.1 * (2 / up.out_channels) ** 0.5
    assert model.encoder.blocks[0].conv.weight.std() < 0.5 * default.encoder.blocks[0].conv.weight.std()
    x = videos(t=3)
    residual = simvp(init="published", residual=True)
    assert torch.equal(residual(x), x[:, -1:].expand(-1, 3, -1, -1, -1))
