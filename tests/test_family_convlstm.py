"""The convlstm family as a user relies on it: shapes, the configured cell, scheduled sampling,
activation checkpointing, learning, and gradients reaching every parameter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.errors import FramecastError
from models import ConvGRUCell, ConvLSTMCell
from models.registry import build_model

CELL_TYPES = {"lstm": ConvLSTMCell, "gru": ConvGRUCell}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs gain nothing from threads, and on a busy 2-core box OpenMP waits make them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(t_in: int = 3, t_out: int = 2, *overrides: str, seed: int = 0):
    """A 2-layer x 8-channel, kernel 3, patch 2 model of the given family settings."""
    cfg = load_config(None, [
        "model.family=convlstm", "model.in_channels=1", "model.convlstm.hidden_channels=[8,8]",
        "model.convlstm.kernel_size=3", "model.convlstm.patch_size=2", *overrides,
    ])
    torch.manual_seed(seed)
    return build_model(cfg.model, t_in, t_out)


def video(batch=2, t=3, channels=1, size=16, seed=0) -> torch.Tensor:
    return torch.rand(batch, t, channels, size, size, generator=torch.Generator().manual_seed(seed))  # (B, T, C, H, W)


def moving_squares(batch: int, frames: int, size: int = 16, side: int = 4, seed: int = 0) -> torch.Tensor:
    """(B, T, 1, size, size): a bright square per video bouncing at a constant velocity."""
    g = torch.Generator().manual_seed(seed)
    room = size - side
    start = torch.randint(0, room + 1, (batch, 2), generator=g)
    velocity = torch.randint(1, 3, (batch, 2), generator=g) * (torch.randint(0, 2, (batch, 2), generator=g) * 2 - 1)
    out = torch.zeros(batch, frames, 1, size, size)
    for t in range(frames):
        pos = start + velocity * t
        pos = torch.where((pos // room) % 2 == 0, pos % room, room - pos % room)  # bounce off the walls
        for b in range(batch):
            y, x = pos[b].tolist()
            out[b, t, 0, y : y + side, x : x + side] = 1.0
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t_in, t_out, patch, size", [(3, 2, 2, 16), (2, 4, 4, 32), (3, 3, 4, 16), (3, 1, 2, 16)])
def test_output_shape(cell, channels, t_in, t_out, patch, size):
    model = tiny(t_in, t_out, f"model.convlstm.cell={cell}", f"model.in_channels={channels}",
                 f"model.convlstm.patch_size={patch}")
    x = video(t=t_in, channels=channels, size=size)
    with torch.no_grad():
        out = model(x)
        trained = model.training_forward(x, video(t=t_out, channels=channels, size=size, seed=1), step=0).frames
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
    x, y = video(t=3), video(t=3, seed=1)
    rng = torch.get_rng_state()
    assert torch.equal(model.training_forward(x, y, step).frames, model(x))
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn: resume cannot drift


def test_true_frames_fed_at_probability_one_are_teacher_forcing():
    """At probability 1 the second prediction is the one-step forecast after the true first target."""
    model = tiny(3, 2, "model.convlstm.sampling_start=1")
    x, y = video(t=3), video(t=2, seed=1)
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
    x, y = video(batch=4, t=3), video(batch=4, t=4, seed=1)
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
    x, y = video(t=3), video(t=3, seed=1)
    results, stored = [], []
    for enabled in (False, True):
        model.set_activation_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(3)
        saved = [0]

        def count(t, saved=saved):
            saved[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            loss = F.mse_loss(model.training_forward(x, y, step=50).frames, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        stored.append(saved[0])
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert stored[1] < stored[0] / 2  # the steps really are recomputed, not stored
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell, groups", [("lstm", 0), ("gru", 0), ("lstm", 4), ("gru", 4)])
def test_gradients_reach_every_parameter(cell, groups):
    model = tiny(3, 2, f"model.convlstm.cell={cell}", f"model.convlstm.norm_groups={groups}")
    x, y = video(t=3), video(t=2, seed=1)
    F.mse_loss(model.training_forward(x, y, step=0).frames, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_forward_compiles_without_graph_breaks():
    """No host syncs or branches on tensor values: dynamo traces inference as one graph."""
    model = tiny(3, 2)
    x = video(t=3)
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x))


def test_learns_moving_squares():
    model = tiny(3, 2, "model.convlstm.sampling_stop_step=30")
    data = moving_squares(16, 5)  # (16, 5, 1, 16, 16)
    x, y = data[:, :3], data[:, 3:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = F.mse_loss(model(x), y).item()
    for step in range(40):
        optimizer.zero_grad()
        loss = F.mse_loss(model.training_forward(x, y, step).frames, y)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = F.mse_loss(model(x), y).item()
    assert after < 0.5 * before
    assert after < F.mse_loss(torch.zeros_like(y), y).item()  # better than predicting an empty frame
    assert after < F.mse_loss(x[:, -1:].expand_as(y), y).item()  # and than copying the last frame
