"""UNet behaviours users rely on: shapes, the stride error, copy-last at the start with ``residual``,
learning a moving square, gradients everywhere."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.errors import FramecastError
from models.registry import build_model
from models.unet import UNet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs gain nothing from threads, and on a busy 2-core box OpenMP waits make them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ["model.family=unet", "model.unet.base_channels=8", "model.unet.levels=2", "model.unet.norm_groups=4"]


def unet(t_in: int = 3, t_out: int = 2, *, channels: int = 1, seed: int = 0, **settings) -> UNet:
    overrides = [*TINY, f"model.in_channels={channels}", *(f"model.unet.{key}={value}" for key, value in settings.items())]
    cfg = load_config(None, overrides)
    torch.manual_seed(seed)
    model = build_model(cfg.model, t_in, t_out)
    assert isinstance(model, UNet)
    return model


def videos(batch=2, t=3, channels=1, size=16, seed=0) -> torch.Tensor:
    return torch.rand(batch, t, channels, size, size, generator=torch.Generator().manual_seed(seed))  # (B, T, C, H, W)


def moving_squares(count=16, frames=5, size=16, side=4, seed=0) -> torch.Tensor:
    """One white square per video moving one pixel a frame up, down, left or right, never leaving the frame."""
    g = torch.Generator().manual_seed(seed)
    video = torch.zeros(count, frames, 1, size, size)  # (N, T, 1, H, W)
    steps = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    for n in range(count):
        dy, dx = steps[torch.randint(4, (1,), generator=g)].squeeze(0).tolist()
        # Starts with frames - 1 pixels of room on every side, so the square stays whole.
        y0, x0 = torch.randint(frames - 1, size - side - frames + 2, (2,), generator=g).tolist()
        for t in range(frames):
            y, x = y0 + dy * t, x0 + dx * t
            video[n, t, 0, y:y + side, x:x + side] = 1.0
    return video


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
    data = moving_squares()  # (16, 5, 1, 16, 16)
    inputs, targets = data[:, :3], data[:, 3:]
    model = unet(3, 2, residual=residual)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = F.mse_loss(model(inputs), targets).item()
    for step in range(40):
        loss = F.mse_loss(model.training_forward(inputs, targets, step).frames, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = F.mse_loss(model(inputs), targets).item()
    copy_last = F.mse_loss(inputs[:, -1:].expand_as(targets), targets).item()
    assert after < 0.6 * before and after < 0.6 * copy_last, (before, after, copy_last)


@pytest.mark.parametrize("residual", [False, True])
def test_gradients_reach_every_parameter(residual):
    model = unet(3, 2, residual=residual)
    if residual:  # the zero head blocks every gradient behind it until it has been trained once
        torch.nn.init.normal_(model.head.weight, std=0.1)
    F.mse_loss(model(videos()), videos(t=2, seed=1)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


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
