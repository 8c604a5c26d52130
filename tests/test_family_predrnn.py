"""The predrnn family (PredRNN-V2) as a user relies on it: shapes, inference seeing only its inputs,
scheduled-sampling draws that repeat with (step, seed), the decoupling loss, activation
checkpointing, learning, and gradients reaching every parameter."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from core.errors import FramecastError
from family_helpers import both_passes, family_model, learn, moving_squares, videos
from family_helpers import with_and_without_checkpointing
from models.predrnn import PredRNN, SpatioTemporalLSTMCell

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(t_in: int = 3, t_out: int = 2, *overrides: str, seed: int = 0) -> PredRNN:
    """The tiny predrnn of tests/tiny_models.py (2 layers x 8 channels, kernel 3; reverse sampling from
    step 4 to 8) on grey frames, patch 2, with the given settings on top."""
    return family_model("predrnn", t_in, t_out, "model.predrnn.patch_size=2", *overrides, seed=seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out, patch, size", [(3, 2, 2, 16), (2, 4, 4, 32), (4, 1, 2, 16)])
def test_output_shape(channels, t_in, t_out, patch, size):
    model = tiny(t_in, t_out, f"model.in_channels={channels}", f"model.predrnn.patch_size={patch}")
    out, trained = both_passes(model, t_in, t_out, channels, size)
    assert out.shape == trained.shape == (2, t_out, channels, size, size)
    assert torch.isfinite(out).all() and torch.isfinite(trained).all()


def test_frame_size_not_divisible_by_patch_names_the_setting():
    model = tiny(3, 2, "model.predrnn.patch_size=4")
    assert model.stride == 4
    with pytest.raises(FramecastError, match=r"18x16.*model\.predrnn\.patch_size=4"):
        model(torch.rand(1, 3, 1, 18, 16))


def test_layers_of_different_widths_are_refused_naming_the_setting():
    with pytest.raises(FramecastError, match=r"model\.predrnn\.hidden_channels.*\[8, 16\]"):
        tiny(3, 2, "model.predrnn.hidden_channels=[8,16]")


def test_summary_says_what_the_model_is():
    model = tiny(3, 2, "model.predrnn.decouple_weight=0.25", "model.predrnn.sampling=linear")
    assert sum(isinstance(m, SpatioTemporalLSTMCell) for m in model.modules()) == 2
    labels = dict(model.summary())
    assert labels["family"].startswith("predrnn")
    assert "[8, 8]" in labels["layers"] and "kernel 3" in labels["layers"] and "patch 2" in labels["layers"]
    assert labels["sampling"].startswith("linear") and labels["decouple weight"] == "0.25"


def test_memory_zigzags_up_the_layers_then_from_the_top_to_the_bottom():
    """PredRNN's spatiotemporal memory: layer l reads layer l-1's m at the same step, and the bottom
    layer reads the top layer's m of the step before (zeros at the first step)."""
    model = tiny(2, 2, "model.predrnn.hidden_channels=[8,8,8]")
    calls = []  # (layer, m read, m written) in call order
    for layer, cell in enumerate(model.cells):
        cell.register_forward_hook(lambda _, args, out, layer=layer: calls.append((layer, args[3], out[2])))
    with torch.no_grad():
        model(videos(t=2))
    assert [layer for layer, _, _ in calls] == [0, 1, 2] * model.steps
    assert calls[0][1] is None  # the first step starts from a zero memory
    for (_, _, written), (_, read, _) in itertools.pairwise(calls):
        assert read is written


@pytest.mark.parametrize("layer_norm", [True, False])
def test_zero_initial_state_is_the_same_as_zero_maps(layer_norm):
    """The first step skips the convs of the zero state: that must be exactly running them on zeros."""
    cell = SpatioTemporalLSTMCell(4, 8, 3, layer_norm)
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_()  # non-trivial norm shifts and biases
        x_gates = cell.conv_x(torch.rand(2, 4, 6, 6))  # (B, 7*hidden, H, W)
        zeros = torch.zeros(2, 8, 6, 6)
        for got, expected in zip(cell(x_gates, None, None, None), cell(x_gates, zeros, zeros, zeros)):
            torch.testing.assert_close(got, expected)


def test_runs_under_bfloat16_autocast():
    model = tiny(3, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forecast = model.training_forward(videos(t=3), videos(t=2, seed=1), step=0)
    (forecast.frames.float().mean() + forecast.losses["decouple"]).backward()
    assert torch.isfinite(forecast.frames.float()).all() and torch.isfinite(forecast.losses["decouple"])


@pytest.mark.parametrize("overrides, step", [
    (["model.predrnn.sampling=none"], 0),
    (["model.predrnn.sampling=linear", "model.predrnn.sampling_stop_step=10"], 10),
    (["model.predrnn.reverse_start_step=5", "model.predrnn.reverse_stop_step=10"], 10),  # end of the reverse schedule
])
def test_training_forward_without_true_targets_is_forward(overrides, step):
    """When no target can be fed, the training pass is inference: same frames, no RNG drawn."""
    model = tiny(3, 3, *overrides)
    x, y = videos(t=3), videos(t=3, seed=1)
    inference = model(x)
    rng = torch.get_rng_state()
    forecast = model.training_forward(x, y, step)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn: resume cannot drift
    torch.testing.assert_close(forecast.frames, inference, rtol=0, atol=1e-6)
    assert torch.equal(model(x), inference)  # what the training pass saw left inference unchanged


def test_targets_fed_at_probability_one_are_teacher_forcing():
    """Linear sampling at step 0 (probability 1): the prediction after a target is fed the target."""
    model = tiny(3, 3, "model.predrnn.sampling=linear", "model.predrnn.sampling_start=1")
    x, y = videos(t=3), videos(t=3, seed=1)
    out = model.training_forward(x, y, step=0).frames
    changed = y.clone()
    changed[:, 0] = 1 - changed[:, 0]
    other = model.training_forward(x, changed, step=0).frames
    torch.testing.assert_close(out[:, 0], model(x)[:, 0], rtol=0, atol=1e-6)  # the first sees no target
    assert torch.equal(out[:, 0], other[:, 0])
    assert not torch.allclose(out[:, 1], other[:, 1])  # the second one is fed the true first target
    last = y.clone()
    last[:, -1] = 0
    assert torch.equal(model.training_forward(x, last, step=0).frames, out)  # the last target is never fed
    one_step = tiny(4, 1)
    one_step.load_state_dict(model.state_dict())  # t_in/t_out change no parameter
    torch.testing.assert_close(out[:, 1], one_step(torch.cat([x, y[:, :1]], 1))[:, 0], rtol=0, atol=1e-6)


def test_targets_fed_at_probability_zero_change_nothing():
    model = tiny(3, 3, "model.predrnn.sampling=linear", "model.predrnn.sampling_start=0")
    x = videos(t=3)
    outs = [model.training_forward(x, videos(t=3, seed=seed), step=0).frames for seed in (1, 2)]
    assert torch.equal(*outs)


@pytest.mark.parametrize("sampling, step", [("reverse", 0), ("reverse", 150), ("linear", 50)])
def test_sampling_draws_depend_only_on_step_and_seed(sampling, step):
    """Reverse sampling draws both on the input steps and the predicted ones; linear on the latter."""
    model = tiny(3, 3, f"model.predrnn.sampling={sampling}", "model.predrnn.sampling_stop_step=100",
                 "model.predrnn.reverse_start_step=100", "model.predrnn.reverse_stop_step=200",
                 "model.predrnn.reverse_exp_alpha=50")
    x, y = videos(batch=4, t=3), videos(batch=4, t=3, seed=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.training_forward(x, y, step).frames)
    assert torch.equal(*runs)
    draws = {bytes(model.training_forward(x, y, step).frames.detach().numpy()) for _ in range(6)}
    assert len(draws) > 1  # other draws, other mixes of true and predicted frames


def test_reverse_sampling_feeds_own_predictions_on_the_input_steps():
    """Before reverse_start_step an input frame is replaced by the prediction half of the time:
    with targets that cannot be fed (t_out=1), the output still varies with the draws."""
    model = tiny(3, 1)  # default sampling: reverse, step 0 < reverse_start_step
    x, y = videos(batch=4, t=3), videos(batch=4, t=1, seed=1)
    with torch.no_grad():
        draws = {bytes(model.training_forward(x, y, step=0).frames.numpy()) for _ in range(6)}
        assert len(draws) > 1


def test_decouple_loss_is_present_bounded_and_scaled():
    x, y = videos(t=3), videos(t=2, seed=1)
    losses, frames = {}, {}
    for weight in (0.1, 0.3, 0.0):
        model = tiny(3, 2, f"model.predrnn.decouple_weight={weight}")  # same seed: same weights
        torch.manual_seed(5)  # same draws
        frames[weight], losses[weight], _ = model.training_forward(x, y, step=0)
    assert losses[0.0] == {}
    small, large = losses[0.1]["decouple"], losses[0.3]["decouple"]
    assert small.dim() == 0 and torch.isfinite(small) and 0 <= small <= 0.1  # weight x mean |cos|
    torch.testing.assert_close(large, 3 * small)
    assert torch.equal(frames[0.0], frames[0.1])  # a loss term only: the predictions are the same


@pytest.mark.parametrize("layer_norm, weight", [(True, 0.1), (False, 0.1), (True, 0.0)])
def test_gradients_reach_every_parameter(layer_norm, weight):
    """Also without the decoupling loss: no parameter left without a gradient (DDP would stop)."""
    model = tiny(3, 2, f"model.predrnn.layer_norm={str(layer_norm).lower()}",
                 f"model.predrnn.decouple_weight={weight}")
    x, y = videos(t=3), videos(t=2, seed=1)
    forecast = model.training_forward(x, y, step=0)
    (F.mse_loss(forecast.frames, y) + sum(forecast.losses.values())).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_same_loss_and_gradients():
    model = tiny(3, 3)
    x, y = videos(t=3), videos(t=3, seed=1)

    def loss_of():
        forecast = model.training_forward(x, y, step=0)  # the same reverse-sampling draws both times
        return F.mse_loss(forecast.frames, y) + forecast.losses["decouple"]

    (loss_a, grads_a, stored_a), (loss_b, grads_b, stored_b) = with_and_without_checkpointing(model, loss_of)
    assert stored_b < stored_a / 2  # the steps really are recomputed, not stored
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def test_forward_and_training_pass_trace_without_graph_breaks():
    """No host syncs or branches on tensor values: dynamo traces both passes as one graph each."""
    model = tiny(3, 2)
    x, y = videos(t=3), videos(t=2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), model(x))
        compiled = torch.compile(model.training_forward, backend="eager", fullgraph=True)
        torch.manual_seed(1)
        got = compiled(x, y, 0)
        torch.manual_seed(1)
        expected = model.training_forward(x, y, 0)
    torch.testing.assert_close(got.frames, expected.frames)
    torch.testing.assert_close(got.losses["decouple"], expected.losses["decouple"])


def test_learns_moving_squares():
    model = tiny(3, 2, "model.predrnn.reverse_start_step=1", "model.predrnn.reverse_stop_step=30",
                 "model.predrnn.reverse_exp_alpha=5")
    mse = learn(model, moving_squares(16, 5, motion="bounce"), t_in=3, steps=40, lr=1e-2)  # 16 videos of 5 frames
    assert mse.after < 0.5 * mse.before
    assert mse.after < mse.blank  # better than predicting an empty frame
    assert mse.after < mse.copy_last  # and than copying the last frame
