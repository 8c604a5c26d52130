"""Attention-GRU behaviours users rely on: shapes, the stride error, copy-last at the start, attention
weights that are distributions over the input steps, the fixed blur, learning a moving square,
gradients everywhere, activation checkpointing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.errors import FramecastError
from family_helpers import family_model, learn, moving_squares, videos, without_gradient
from models.attention_gru import AttentionGRU, BlurUpsample
from models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def attention_gru(t_in: int = 3, t_out: int = 2, *, channels: int = 1, seed: int = 0, **settings) -> AttentionGRU:
    """The tiny attention-GRU of tests/tiny_models.py (hidden [8,8], patch 2, 4 norm groups)."""
    model = family_model("attention_gru", t_in, t_out, channels=channels, seed=seed, **settings)
    assert isinstance(model, AttentionGRU)
    return model


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out", [(3, 2), (2, 4)])
@pytest.mark.parametrize("hidden", ["[8,8]", "[8,8,8]"])
def test_output_shape(channels, t_in, t_out, hidden):
    model = attention_gru(t_in, t_out, channels=channels, hidden_channels=hidden, residual=False)
    out = model(videos(t=t_in, channels=channels, size=32))
    assert out.shape == (2, t_out, channels, 32, 32)
    assert torch.isfinite(out).all()


def test_stride_is_patch_times_two_per_extra_level_and_a_bad_frame_size_names_the_settings():
    assert attention_gru().stride == 4
    assert attention_gru(hidden_channels="[8,8,8]", patch_size=1).stride == 4
    assert attention_gru(hidden_channels="[8]", patch_size=4).stride == 4
    with pytest.raises(FramecastError, match=r"18x16.*stride 4.*model\.attention_gru\.patch_size=2.*hidden_channels"):
        attention_gru()(torch.rand(1, 3, 1, 18, 16))


def test_norm_groups_must_divide_gate_channels():
    with pytest.raises(FramecastError, match=r"model\.attention_gru\.norm_groups=16"):
        attention_gru(norm_groups=16)  # the candidate gate has 8 channels
    attention_gru(norm_groups=0)(videos())  # no GroupNorm: the cells' convs carry the biases


@pytest.mark.parametrize("channels", [1, 3])
def test_untrained_residual_model_is_exactly_copy_last(channels):
    x = videos(t=3, channels=channels)
    model = attention_gru(3, 2, channels=channels)  # residual is the default
    assert model.cfg.residual
    out = model(x)
    assert torch.equal(out, x[:, -1:].expand_as(out))
    assert out.min() >= 0 and out.max() <= 1  # in the frames' range, as copy-last is


def test_attention_weights_are_distributions_over_every_input_step():
    model = attention_gru(4, 3, hidden_channels="[8,8,8]", patch_size=1)
    weights = model.attention_weights(videos(t=4))
    assert [tuple(w.shape) for w in weights] == [(2, 3, 4, 16, 16), (2, 3, 4, 8, 8), (2, 3, 4, 4, 4)]
    for w in weights:
        assert (w > 0).all()  # a softmax: every input step gets some weight at every pixel
        torch.testing.assert_close(w.sum(dim=2), torch.ones_like(w[:, :, 0]))


def test_changing_an_early_input_frame_changes_every_output_frame():
    model = attention_gru(3, 2, residual=False)
    x = videos(t=3)
    changed = x.clone()
    changed[:, 0] = torch.rand_like(x[:, 0])
    with torch.no_grad():
        difference = (model(changed) - model(x)).abs().amax(dim=(0, 2, 3, 4))  # (t_out,)
    assert (difference > 1e-4).all(), difference


def test_blur_is_a_fixed_normalised_binomial_buffer():
    model = attention_gru(hidden_channels="[8,8,8]", patch_size=1)
    parameters = {id(p) for p in model.parameters()}
    blurs = [m.blur for m in model.modules() if isinstance(m, BlurUpsample)]
    assert len(blurs) == 2  # between each pair of decoder levels
    binomial = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    for blur in blurs:
        assert id(blur) not in parameters and not blur.requires_grad
        assert blur.shape == (8, 1, 3, 3)
        assert torch.equal(blur, binomial.expand_as(blur))
    assert not any("blur" in name for name in model.state_dict())  # a constant, not checkpointed state
    # A constant map stays constant to the edges (replicated borders: the filter sums to 1).
    up = next(m for m in model.modules() if isinstance(m, BlurUpsample))
    torch.nn.init.zeros_(up.conv.weight)
    torch.nn.init.constant_(up.conv.bias, 0.5)
    torch.testing.assert_close(up(torch.rand(1, 8, 4, 4)), torch.full((1, 8, 8, 8), 0.5))


def test_blur_stays_fixed_through_training():
    model = attention_gru(residual=False)
    before = [m.blur.clone() for m in model.modules() if isinstance(m, BlurUpsample)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = F.mse_loss(model(videos()), videos(t=2, seed=1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = [m.blur for m in model.modules() if isinstance(m, BlurUpsample)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("residual", [False, True])
def test_a_few_dozen_adam_steps_learn_a_moving_square(residual):
    mse = learn(attention_gru(3, 2, residual=residual), moving_squares(16, 5, motion="step"), t_in=3, steps=40,
                lr=3e-3)  # 16 videos of 5 frames
    assert mse.after < 0.6 * mse.before and mse.after < 0.8 * mse.copy_last, mse


@pytest.mark.parametrize("residual", [False, True])
def test_gradients_reach_every_parameter(residual):
    model = attention_gru(3, 2, hidden_channels="[8,8,8]", patch_size=1, residual=residual)
    if residual:  # the zero head blocks every gradient behind it until it has been trained once
        torch.nn.init.normal_(model.head.weight, std=0.1)
    F.mse_loss(model(videos()), videos(t=2, seed=1)).backward()
    assert not without_gradient(model)


def test_activation_checkpointing_gives_the_same_output_and_gradients():
    plain = attention_gru(3, 2, residual=False)
    recomputed = attention_gru(3, 2, residual=False)  # same seed: same weights
    recomputed.set_activation_checkpointing(True)
    x, y = videos(), videos(t=2, seed=1)
    outputs = []
    for model in (plain, recomputed):
        out = model(x)
        F.mse_loss(out, y).backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0])
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_summary_names_levels_attention_and_upsampling():
    lines = dict(attention_gru(3, 2).summary())
    assert lines["family"].startswith("attention_gru")
    assert "hidden [8, 8]" in lines["levels"] and "stride 4" in lines["levels"]
    assert "3 encoder steps" in lines["attention"]
    assert "[1,2,1]x[1,2,1]/16" in lines["upsampling"]
    assert lines["output"] == "change from the last frame"


def test_builds_on_the_meta_device():
    """The benchmarks count FLOPs on the meta device: the default model must build and run there."""
    cfg = load_config(None, ["model.family=attention_gru"])
    with torch.device("meta"):
        model = build_model(cfg.model, 2, 3)
        assert model(torch.empty(1, 2, 3, 64, 64)).shape == (1, 3, 3, 64, 64)
