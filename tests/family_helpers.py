"""What the per-family model tests (tests/test_family_*.py, test_models.py) share: the tiny model of a
family (tests/tiny_models.py) on grey frames, noise videos, a moving-squares toy data set, a short Adam
training loop that learns it, and the runs behind the shape, gradient and activation-checkpointing checks."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from core.config import Config, load_config
from models import ConvGRUCell, ConvLSTMCell
from models.registry import build_model
from tiny_models import model_overrides

CELL_TYPES = {"lstm": ConvLSTMCell, "gru": ConvGRUCell}


def family_model_config(family: str, *overrides: str, channels: int = 1, **settings) -> Config:
    """The config of ``family``'s tiny model with ``channels`` input channels, then ``overrides``
    (``key=value`` strings) and ``settings`` (``model.<family>.<key>=<value>``) on top."""
    return load_config(None, [*model_overrides(family), f"model.in_channels={channels}", *overrides,
                              *(f"model.{family}.{key}={value}" for key, value in settings.items())])


def family_model(family: str, t_in: int = 3, t_out: int = 2, *overrides: str, channels: int = 1, seed: int = 0,
                 **settings) -> torch.nn.Module:
    """``family``'s tiny model (see ``family_model_config``), its weights drawn after ``manual_seed(seed)``:
    the same seed, the same weights."""
    cfg = family_model_config(family, *overrides, channels=channels, **settings)
    torch.manual_seed(seed)
    return build_model(cfg.model, t_in, t_out)


def videos(batch=2, t=3, channels=1, size=16, seed=0) -> torch.Tensor:
    """Uniform noise (B, T, C, H, W) in [0, 1), the same for the same arguments."""
    return torch.rand(batch, t, channels, size, size, generator=torch.Generator().manual_seed(seed))


def moving_squares(count: int = 16, frames: int = 5, *, motion: str, size: int = 16, side: int = 4,
                   seed: int = 0) -> torch.Tensor:
    """(count, frames, 1, size, size): one white ``side`` x ``side`` square per black video, moving at a
    constant velocity drawn from ``seed``.

    motion "step": one pixel a frame up, down, left or right, starting with ``frames - 1`` pixels of room
    on every side, so it never reaches a wall; "bounce": 1 or 2 pixels a frame along each axis, either
    way, bouncing off the walls.
    """
    g = torch.Generator().manual_seed(seed)
    room = size - side  # the largest top-left coordinate that keeps the square whole
    if motion == "step":
        units = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])  # (dy, dx)
        velocity, start = [], []
        for _ in range(count):  # a direction, then a start, video by video
            velocity.append(units[torch.randint(4, (1,), generator=g)].squeeze(0))
            start.append(torch.randint(frames - 1, room - frames + 2, (2,), generator=g))
        velocity, start = torch.stack(velocity), torch.stack(start)  # (N, 2) each, (y, x)
    elif motion == "bounce":
        start = torch.randint(0, room + 1, (count, 2), generator=g)
        speed = torch.randint(1, 3, (count, 2), generator=g)
        velocity = speed * (torch.randint(0, 2, (count, 2), generator=g) * 2 - 1)
    else:
        raise ValueError(f"motion must be 'step' or 'bounce', got {motion!r}")
    pos = start.unsqueeze(1) + velocity.unsqueeze(1) * torch.arange(frames).view(1, -1, 1)  # (N, T, 2) unfolded
    pos = torch.where((pos // room) % 2 == 0, pos % room, room - pos % room)  # after the bounces (none in "step")
    grid = torch.arange(size).view(1, 1, -1)
    rows = (grid >= pos[..., :1]) & (grid < pos[..., :1] + side)  # (N, T, size)
    cols = (grid >= pos[..., 1:]) & (grid < pos[..., 1:] + side)  # (N, T, size)
    return (rows.unsqueeze(-1) & cols.unsqueeze(-2)).float().unsqueeze(2)  # (N, T, 1, size, size)


def both_passes(model: torch.nn.Module, t_in: int, t_out: int, channels: int, size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inference, training pass at step 0) frames for two noise videos of ``t_in`` frames, no gradients."""
    x = videos(t=t_in, channels=channels, size=size)
    with torch.no_grad():
        return model(x), model.training_forward(x, videos(t=t_out, channels=channels, size=size, seed=1), step=0).frames


def with_and_without_checkpointing(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]
                                   ) -> list[tuple[torch.Tensor, list[torch.Tensor], int]]:
    """(loss, gradients, tensor elements autograd saved) of ``loss_of()`` run without activation
    checkpointing and then with it, the RNG seeded alike before each (the same sampling draws)."""
    results = []
    for enabled in (False, True):
        model.set_activation_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(3)
        saved = [0]

        def count(t, saved=saved):
            saved[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            loss = loss_of()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], saved[0]))
    return results


class Learned(NamedTuple):
    """Mean squared errors on the training videos' last frames, by what predicts them."""
    before: float  # the model before training
    after: float  # the model after training
    blank: float  # black frames
    copy_last: float  # the last input frame, repeated


def learn(model: torch.nn.Module, data: torch.Tensor, t_in: int, steps: int, lr: float, *, eval_after: bool = False,
          after_backward: Callable[[int], None] | None = None) -> Learned:
    """``steps`` full-batch Adam steps on the training pass's MSE plus its loss terms, predicting the frames
    of ``data`` (N, T, C, H, W) after the first ``t_in`` (scheduled sampling at global step 0, 1, ...;
    ``after_backward(step)`` runs between each backward and its update), scored by the inference pass
    before and after (in eval mode with ``eval_after``)."""
    inputs, targets = data[:, :t_in], data[:, t_in:]

    def mse() -> float:
        with torch.no_grad():
            return F.mse_loss(model(inputs), targets).item()

    before = mse()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        forecast = model.training_forward(inputs, targets, step)
        loss = F.mse_loss(forecast.frames, targets) + sum(forecast.losses.values())
        optimizer.zero_grad()
        loss.backward()
        if after_backward is not None:
            after_backward(step)
        optimizer.step()
    if eval_after:
        model.eval()
    return Learned(before, mse(), blank=F.mse_loss(torch.zeros_like(targets), targets).item(),
                   copy_last=F.mse_loss(inputs[:, -1:].expand_as(targets), targets).item())


def without_gradient(model: torch.nn.Module) -> list[str]:
    """Names of the parameters the last backward left without a (non-zero) gradient."""
    return [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
