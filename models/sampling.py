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


def linear_true_frame_probability(step: int, start: float, stop_step: int) -> float:
    """Scheduled sampling (Bengio et al. 2015, as OpenSTL): ``start`` at step 0, falling linearly to 0
    at ``stop_step``, 0 after."""
    return max(0.0, start * (1.0 - step / stop_step))


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


def draw_linear_choices(sampling: str, start: float, stop_step: int, step: int, batch: int, t_out: int,
                        device: torch.device) -> torch.Tensor | None:
    """A frame-by-frame rollout's scheduled-sampling draws for its predicted steps (the t_out - 1 that
    read a frame which may be true or the model's own): (B, t_out - 1) booleans, True = the true frame.

    None when no true frame can be fed (``sampling`` "none", the schedule's end, one output): the pass
    is then exactly the inference one, and no random number is drawn.
    """
    probability = linear_true_frame_probability(step, start, stop_step) if sampling == "linear" else 0.0
    if probability <= 0.0 or t_out == 1:
        return None
    return draw_true_tokens(probability, (batch, t_out - 1), device)
