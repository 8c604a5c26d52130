"""The convlstm family as a user relies on it: shapes, the configured cell, scheduled sampling,
activation checkpointing, learning, and gradients reaching every parameter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import FramecastError
from family_helpers import CELL_TYPES, both_passes, family_model, learn, moving_squares, videos
from family_helpers import with_and_without_checkpointing, without_gradient
from models import ConvGRUCell, ConvLSTMCell

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(t_in: int = 3, t_out: int = 2, *overrides: str, seed: int = 0):
    """The tiny convlstm of tests/tiny_models.py (2 layers x 8 channels, kernel 3, true frames fed until
    step 8) on grey frames, patch 2, with the given settings on top."""
    return family_model("convlstm", t_in, t_out, "model.convlstm.patch_size=2", *overrides, seed=seed)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out, patch, size", [(3, 2, 2, 16), (2, 4, 4, 32), (3, 3, 4, 16), (3, 1, 2, 16)])
def test_output_shape(cell, channels, t_in, t_out, patch, size):
    model = tiny(t_in, t_out, f"model.convlstm.cell={cell}", f"model.in_channels={channels}",
                 f"model.convlstm.patch_size={patch}")
    out, trained = both_passes(model, t_in, t_out, channels, size)
    assert out.shape == trained.shape == (2, t_out, channels, size, size)
    assert torch.isfinite(out).all()


def test_frame_size_not_divisible_by_patch_names_the_setting():
    model = tiny(3, 2, "model.convlstm.patch_size=4")
    assert model.stride == 4
    with pytest.raises(FramecastError, match=r"18x16.*model\.convlstm\.patch_size=4"):
        model(torch.rand(1, 3, 1, 18, 16))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_configured_cell_is_the_one_used(cell):
    model = tiny(3, 2, f"model.convlstm.cell={cell}")
    cells = [m for m in model.modules() if isinstance(m, (ConvLSTMCell, ConvGRUCell))]
    assert len(cells) == 2 and all(type(m) is CELL_TYPES[cell] for m in cells)
    labels = dict(model.summary())
    assert {"family", "cell", "layers", "hidden", "kernel", "patch", "sampling"} <= labels.keys()
    assert CELL_TYPES[cell].__name__ in labels["cell"] and labels["layers"] == "2"


@pytest.mark.parametrize("overrides, step", [(["model.convlstm.sampling=none"], 0),
                                             (["model.convlstm.sampling_start=0"], 0),
                                             (["model.convlstm.sampling_stop_step=10"], 10)])
def test_training_forward_without_true_frames_is_forward(overrides, step):
    model = tiny(3, 3, *overrides)
    x, y = videos(t=3), videos(t=3, seed=1)
    rng = torch.get_rng_state()
    assert torch.equal(model.training_forward(x, y, step).frames, model(x))
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn: resume cannot drift


def test_true_frames_fed_at_probability_one_are_teacher_forcing():
    """At probability 1 the second prediction is the one-step forecast after the true first target."""
    model = tiny(3, 2, "model.convlstm.sampling_start=1")
    x, y = videos(t=3), videos(t=2, seed=1)
    out = model.training_forward(x, y, step=0).frames
    changed = y.clone()
    changed[:, 0] = 1 - changed[:, 0]
    other = model.training_forward(x, changed, step=0).frames
    assert torch.equal(out[:, 0], other[:, 0])  # the first prediction sees no target
    assert not torch.allclose(out[:, 1], other[:, 1])  # the second one is fed the true first target
    assert torch.equal(out[:, 0], model(x)[:, 0])
    one_step = tiny(4, 1)
    one_step.load_state_dict(model.state_dict())  # t_in/t_out change no parameter
    torch.testing.assert_close(out[:, 1], one_step(torch.cat([x, y[:, :1]], 1))[:, 0])


def test_sampling_draws_repeat_with_the_seed():
    model = tiny(3, 4, "model.convlstm.sampling_start=1", "model.convlstm.sampling_stop_step=100")
    x, y = videos(batch=4, t=3), videos(batch=4, t=4, seed=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.training_forward(x, y, step=50).frames)  # probability 0.5
    assert torch.equal(*runs)
    draws = {bytes(model.training_forward(x, y, step=50).frames.detach().numpy()) for _ in range(4)}
    assert len(draws) > 1  # other draws, other mixes of true and predicted frames


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_activation_checkpointing_gives_same_loss_and_gradients(cell):
    model = tiny(3, 3, f"model.convlstm.cell={cell}", "model.convlstm.norm_groups=2",
                 "model.convlstm.sampling_stop_step=100")
    x, y = videos(t=3), videos(t=3, seed=1)
    (loss_a, grads_a, stored_a), (loss_b, grads_b, stored_b) = with_and_without_checkpointing(
        model, lambda: F.mse_loss(model.training_forward(x, y, step=50).frames, y))
    assert stored_b < stored_a / 2  # the steps really are recomputed, not stored
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell, groups", [("lstm", 0), ("gru", 0), ("lstm", 4), ("gru", 4)])
def test_gradients_reach_every_parameter(cell, groups):
    model = tiny(3, 2, f"model.convlstm.cell={cell}", f"model.convlstm.norm_groups={groups}")
    x, y = videos(t=3), videos(t=2, seed=1)
    F.mse_loss(model.training_forward(x, y, step=0).frames, y).backward()
    assert not without_gradient(model)


def test_forward_compiles_without_graph_breaks():
    """No host syncs or branches on tensor values: dynamo traces inference as one graph."""
    model = tiny(3, 2)
    x = videos(t=3)
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x))


def test_learns_moving_squares():
    model = tiny(3, 2, "model.convlstm.sampling_stop_step=30")
    mse = learn(model, moving_squares(16, 5, motion="bounce"), t_in=3, steps=40, lr=1e-2)  # 16 videos of 5 frames
    assert mse.after < 0.5 * mse.before
    assert mse.after < mse.blank  # better than predicting an empty frame
    assert mse.after < mse.copy_last  # and than copying the last frame


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_norm_between_layers_is_there_learns_and_reaches_every_parameter(norm):
    model = tiny(3, 2, f"model.convlstm.norm={norm}", "model.convlstm.sampling_stop_step=30")
    [between] = model.between  # 2 layers: one place between them
    kind = {"batch": (torch.nn.BatchNorm2d, None), "group": (torch.nn.GroupNorm, 4), "layer": (torch.nn.GroupNorm, 1)}
    assert (type(between), getattr(between, "num_groups", None)) == kind[norm]
    assert norm in dict(model.summary())["layers"]
    x, y = videos(t=3), videos(t=2, seed=1)
    F.mse_loss(model.training_forward(x, y, step=0).frames, y).backward()
    assert not without_gradient(model)
    model.zero_grad()
    mse = learn(model, moving_squares(16, 5, motion="bounce"), t_in=3, steps=40, lr=1e-2, eval_after=True)
    assert mse.after < 0.5 * mse.before and mse.after < mse.copy_last


def test_norm_settings_that_cannot_work_are_one_line_naming_them():
    with pytest.raises(FramecastError, match=r"model\.convlstm\.norm_between_groups=3 does not divide the 8"):
        tiny(3, 2, "model.convlstm.norm=group", "model.convlstm.norm_between_groups=3")
    with pytest.raises(FramecastError, match=r"activation_checkpointing.*model\.convlstm\.norm=batch"):
        tiny(3, 2, "model.convlstm.norm=batch").set_activation_checkpointing(True)
