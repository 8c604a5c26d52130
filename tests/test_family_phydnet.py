"""The phydnet family as a user relies on it: shapes, the fixed stride, the moment matrices and their
constraint, scheduled sampling, activation checkpointing, learning, gradients reaching every parameter."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import FramecastError
from family_helpers import both_passes, family_model, family_model_config, learn, moving_squares
from family_helpers import videos, without_gradient
from models.phydnet import kernel_moments, moment_basis, moment_targets
from models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def config(*overrides: str):
    """The tiny phydnet of tests/tiny_models.py on grey frames: encoder 8 channels, PhyCell 9 filters of 3x3
    (one per moment), one 8-channel ConvLSTM layer, true frames fed until step 8."""
    return family_model_config("phydnet", *overrides)


def tiny(t_in: int = 3, t_out: int = 2, *overrides: str, seed: int = 0):
    return family_model("phydnet", t_in, t_out, *overrides, seed=seed)


# -- shapes and the stride -----------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out, size", [(3, 2, 16), (2, 4, 32), (3, 1, 16)])
def test_output_shape(channels, t_in, t_out, size):
    model = tiny(t_in, t_out, f"model.in_channels={channels}")
    out, trained = both_passes(model, t_in, t_out, channels, size)
    assert out.shape == trained.shape == (2, t_out, channels, size, size)
    assert torch.isfinite(out).all()


def test_frame_size_not_divisible_by_the_stride_names_the_setting():
    model = tiny()
    assert model.stride == 4
    with pytest.raises(FramecastError, match=r"18x16.*stride 4.*model\.family=phydnet"):
        model(torch.rand(1, 3, 1, 18, 16))


def test_too_few_physics_filters_for_the_moments_is_a_config_error():
    with pytest.raises(FramecastError, match=r"model\.phydnet\.phycell_channels=8 .*kernel_size\*\*2=9"):
        config("model.phydnet.phycell_channels=8")
    build_model(config("model.phydnet.phycell_channels=8", "model.phydnet.moment_weight=0").model, 3, 2)


def test_summary_says_what_it_is():
    lines = dict(tiny().summary())
    assert lines["family"].startswith("phydnet")
    assert "9 of 9 filters" in lines["moment loss"]
    assert "sum" in lines["merge"]


# -- moment matrices -----------------------------------------------------------------------------

def test_k2m_of_kernels_with_known_moments():
    delta = torch.zeros(3, 3)
    delta[1, 1] = 1.0  # the identity: u itself
    d_dx = torch.zeros(3, 3)
    d_dx[1, 0], d_dx[1, 2] = -0.5, 0.5  # central difference along x (columns)
    d2_dx2 = torch.zeros(3, 3)
    d2_dx2[1] = torch.tensor([1.0, -2.0, 1.0])
    moments = kernel_moments(torch.stack([delta, d_dx, d_dx.T, d2_dx2]))  # (4, 3, 3)
    targets = moment_targets(3)  # (9, 3, 3)
    assert torch.allclose(moments[0], targets[0])  # (p, q) = (0, 0)
    assert torch.allclose(moments[1], targets[1])  # (0, 1): d/dx
    assert torch.allclose(moments[2], targets[3])  # (1, 0): d/dy
    assert torch.allclose(moments[3], targets[2])  # (0, 2): d2/dx2
    # The rows of M are y and its columns x, as conv2d reads the kernel: d/dx of the ramp u = 2x is 2.
    ramp = 2.0 * torch.arange(8.0).expand(8, 8)  # (H, W), u = 2x
    assert torch.allclose(F.conv2d(ramp.view(1, 1, 8, 8), d_dx.view(1, 1, 3, 3)), torch.full((1, 1, 6, 6), 2.0))
    for j in range(9):
        assert targets[j][j // 3, j % 3] == 1 and targets[j].sum() == 1


def test_the_targets_are_reachable_and_then_the_loss_is_zero():
    model = tiny()
    basis_inv = torch.linalg.inv(moment_basis(3))  # (3, 3)
    with torch.no_grad():
        weight = model.phycell[0].physics.weight  # (9, 8, 3, 3)
        weight.copy_((basis_inv @ moment_targets(3) @ basis_inv.T).unsqueeze(1).expand_as(weight))  # M2K
    (moments, targets), = model.constrained_moments()
    assert moments.shape == targets.shape == (9, 8, 3, 3)
    assert (moments - targets).abs().max() < 1e-5
    assert model.moment_loss() < 1e-10


def test_adam_on_the_constraint_alone_makes_the_kernels_finite_difference_operators():
    """Both PhyCell layers' 9 filters x 8 input channels reach their target moments (1e-3 max abs)."""
    model = tiny(3, 2, "model.phydnet.phycell_layers=2")
    steps = 600
    kernels = [layer.physics.weight for layer in model.phycell]
    start_error = max((m - t).abs().max().item() for m, t in model.constrained_moments())
    optimizer = torch.optim.Adam(kernels, lr=0.1, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(steps):
        optimizer.zero_grad()
        model.moment_loss().backward()
        optimizer.step()
        schedule.step()
    pairs = model.constrained_moments()
    assert len(pairs) == 2
    error = max((m - t).abs().max().item() for m, t in pairs)
    assert start_error > 0.5 and error < 1e-3, (start_error, error)


def test_moment_loss_term_is_present_finite_and_scaled_by_its_weight():
    x, y = videos(), videos(t=2, seed=1)
    terms = {}
    for weight in (1.0, 2.5):
        model = tiny(3, 2, f"model.phydnet.moment_weight={weight}")
        term = model.training_forward(x, y, step=0).losses["moment"]
        assert term.dim() == 0 and torch.isfinite(term) and term >= 0
        assert torch.allclose(term, weight * model.moment_loss())
        terms[weight] = term
    assert torch.allclose(terms[2.5], 2.5 * terms[1.0])
    assert tiny(3, 2, "model.phydnet.moment_weight=0").training_forward(x, y, step=0).losses == {}


# -- scheduled sampling --------------------------------------------------------------------------

def test_training_forward_with_sampling_none_is_forward():
    model = tiny(3, 3, "model.phydnet.sampling=none")
    x, y = videos(), videos(t=3, seed=1)
    with torch.no_grad():
        assert torch.equal(model.training_forward(x, y, step=0).frames, model(x))


def test_true_frames_fed_with_probability_one_and_none_after_the_schedule():
    model = tiny(3, 2, "model.phydnet.sampling_start=1", "model.phydnet.sampling_stop_step=100")
    x, y = videos(), videos(t=2, seed=1)
    other = y.clone()
    other[:, 0] = 1 - other[:, 0]  # a different first target, the frame fed to the last step
    with torch.no_grad():
        a = model.training_forward(x, y, step=0).frames
        b = model.training_forward(x, other, step=0).frames
        assert torch.equal(a[:, 0], b[:, 0])  # the first prediction reads only inputs
        assert not torch.allclose(a[:, 1], b[:, 1])  # the second read the true (changed) frame
        assert torch.equal(model.training_forward(x, y, step=100).frames, model(x))


def test_same_step_and_seed_give_the_same_draws():
    model = tiny(3, 4, "model.phydnet.sampling_start=1", "model.phydnet.sampling_stop_step=100")
    x, y = videos(batch=4), videos(batch=4, t=4, seed=1)
    outs = []
    with torch.no_grad():
        for _ in range(2):
            torch.manual_seed(7)
            outs.append(model.training_forward(x, y, step=50).frames)  # probability 1/2
    assert torch.equal(outs[0], outs[1])


def test_activation_checkpointing_gives_the_same_values_and_gradients():
    x, y = videos(), videos(t=2, seed=1)
    results = []
    for enabled in (False, True):
        model = tiny()
        model.set_activation_checkpointing(enabled)
        torch.manual_seed(3)
        forecast = model.training_forward(x, y, step=0)
        loss = F.mse_loss(forecast.frames, y) + forecast.losses["moment"]
        loss.backward()
        results.append((forecast.frames.detach(), [p.grad for p in model.parameters()]))
    assert torch.allclose(results[0][0], results[1][0])
    for plain, recomputed in zip(results[0][1], results[1][1]):
        assert torch.allclose(plain, recomputed, atol=1e-6)


# -- learning ------------------------------------------------------------------------------------

def test_learns_moving_squares_and_every_parameter_gets_a_gradient():
    t_in, t_out = 3, 2
    model = tiny(t_in, t_out, "model.phydnet.sampling_stop_step=20")

    def every_parameter_has_a_gradient(step):
        if step == 0:
            missing = without_gradient(model)
            assert not missing, missing

    mse = learn(model, moving_squares(8, t_in + t_out, motion="bounce"), t_in, steps=60, lr=1e-2,
                after_backward=every_parameter_has_a_gradient)  # 8 videos of 5 frames
    # mse.blank: predicting black frames, what learning only the background gives
    assert mse.after < 0.5 * mse.before and mse.after < 0.6 * mse.blank, mse
