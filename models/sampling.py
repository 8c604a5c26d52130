"""Scheduled-sampling probabilities as pure functions of the global step.

A recurrent family rolled out frame by frame is trained on a mix of true frames and its own
predictions; these functions say how likely the true frame is at a given step. Being functions of
the step alone (the nanoGPT ``get_lr`` idea), a resumed run draws from the same probabilities as an
uninterrupted one, and the draws themselves come from torch's generator, whose state is in the
checkpoint.
"""
from __future__ import annotations

import math

import torch

from models.base import draw_true_tokens
from models.families import Sampling


# The decaying schedules of the true-frame probability (Bengio et al. 2015's three shapes), each
# from ``start`` at step 0 to exactly 0 at ``stop_step``.
DECAYING_SCHEDULES = ("linear", "exponential", "sigmoid")


def linear_true_frame_probability(step: int, start: float, stop_step: int) -> float:
    """Scheduled sampling (Bengio et al. 2015, as OpenSTL): ``start`` at step 0, falling linearly to 0
    at ``stop_step``, 0 after."""
    return max(0.0, start * (1.0 - step / stop_step))


def true_frame_probability(schedule: str, step: int, start: float, stop_step: int, steepness: float) -> float:
    """The chance of feeding the true frame at global ``step`` under ``schedule``.

    With x = step / stop_step: linear ``start * (1 - x)``; exponential ``start * e^(-k x)``; sigmoid
    (Bengio's inverse sigmoid) ``start * 1 / (1 + e^(k (x - 1/2)))``, k = ``steepness``. The last two
    are shifted and scaled so that every schedule is exactly ``start`` at step 0 and exactly 0 from
    ``stop_step`` on: a run past the schedule trains as it will predict. "none": always 0.
    """
    if schedule == "none" or step >= stop_step:
        return 0.0
    x = max(0.0, step / stop_step)
    if schedule == "linear":
        return linear_true_frame_probability(step, start, stop_step)
    if schedule == "exponential":
        shape = lambda u: math.exp(-steepness * u)  # noqa: E731
    elif schedule == "sigmoid":
        shape = lambda u: 1.0 / (1.0 + math.exp(steepness * (u - 0.5)))  # noqa: E731
    else:
        raise ValueError(f"unknown sampling schedule {schedule!r}")
    return start * (shape(x) - shape(1.0)) / (shape(0.0) - shape(1.0))


def reverse_true_frame_probabilities(step: int, start_step: int, stop_step: int, alpha: float) -> tuple[float, float]:
    """Reverse scheduled sampling (PredRNN-V2, Wang et al. 2022): (input steps, predicted steps).

    On the input steps the encoder is at first fed its own predictions half of the time, and the
    chance of the true frame rises exponentially towards 1 from ``start_step`` (so it learns long-term
    dynamics instead of leaning on the frame just seen); on the predicted steps the chance of the true
    frame falls linearly from 1/2 to 0 between ``start_step`` and ``stop_step``.
    """
    if step < start_step:
        return 0.5, 0.5
    if step < stop_step:
        rising = 1.0 - 0.5 * math.exp(-(step - start_step) / alpha)
        falling = 0.5 - 0.5 * (step - start_step) / (stop_step - start_step)
        return rising, falling
    return 1.0, 0.0


def settings_probability(settings: Sampling, step: int) -> float:
    """``true_frame_probability`` of a family's shared ``Sampling`` settings at global ``step``."""
    if settings.sampling not in DECAYING_SCHEDULES:  # none (or PredRNN's reverse, which it draws itself)
        return 0.0
    return true_frame_probability(settings.sampling, step, settings.sampling_start, settings.sampling_stop_step,
                                  settings.sampling_steepness)


def describe_schedule(settings: Sampling) -> str:
    """The model summary's line for a decaying schedule (or none)."""
    if settings.sampling not in DECAYING_SCHEDULES:
        return "none (own predictions, as at inference)"
    bend = f", steepness {settings.sampling_steepness:g}" if settings.sampling != "linear" else ""
    return (f"{settings.sampling}, true-frame probability {settings.sampling_start:g} at step 0 -> 0 at step "
            f"{settings.sampling_stop_step}{bend}")


def draw_choices(settings: Sampling, step: int, batch: int, t_out: int, device: torch.device) -> torch.Tensor | None:
    """A frame-by-frame rollout's scheduled-sampling draws for its predicted steps (the t_out - 1 that
    read a frame which may be true or the model's own): (B, t_out - 1) booleans, True = the true frame.

    None when no true frame can be fed (``sampling`` "none", the schedule's end, one output): the pass
    is then exactly the inference one, and no random number is drawn.
    """
    probability = settings_probability(settings, step)
    if probability <= 0.0 or t_out == 1:
        return None
    return draw_true_tokens(probability, (batch, t_out - 1), device)
