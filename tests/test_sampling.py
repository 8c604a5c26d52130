"""Scheduled-sampling schedules: each one's shape as a function of the step (where it starts and
ends, which way it bends), and that a draw depends on nothing but the step and torch's generator."""
from __future__ import annotations

import math

import pytest
import torch
from family_helpers import family_model, videos

from models.families import Sampling
from models.sampling import DECAYING_SCHEDULES, draw_choices, reverse_true_frame_probabilities
from models.sampling import true_frame_probability

STOP = 100
STEEPNESS = 5.0


def settings(schedule: str) -> Sampling:
    return Sampling(sampling=schedule, sampling_start=1.0, sampling_stop_step=STOP, sampling_steepness=STEEPNESS)


def curve(schedule: str, start: float = 0.8) -> list[float]:
    return [true_frame_probability(schedule, step, start, STOP, STEEPNESS) for step in range(STOP + 20)]


@pytest.mark.parametrize("schedule", DECAYING_SCHEDULES)
def test_each_schedule_falls_from_its_start_to_exactly_zero_at_its_stop(schedule):
    values = curve(schedule)
    assert values[0] == pytest.approx(0.8, abs=1e-12)
    assert all(a >= b for a, b in zip(values, values[1:])), "not monotone"
    assert all(0.0 < v <= 0.8 for v in values[:STOP]) and all(v == 0.0 for v in values[STOP:])


def test_the_shapes_bend_as_their_names_say():
    linear, exponential, sigmoid = (curve(s) for s in ("linear", "exponential", "sigmoid"))
    inside = range(1, STOP)
    # exponential: falls fast at first, so below the straight line everywhere inside the schedule
    assert all(exponential[i] < linear[i] for i in inside)
    assert exponential[STOP // 2] == pytest.approx(0.8 * (math.exp(-2.5) - math.exp(-5)) / (1 - math.exp(-5)))
    # inverse sigmoid: holds near the start, drops around the middle, symmetric about it
    assert all(sigmoid[i] > linear[i] for i in range(1, STOP // 2))
    assert all(sigmoid[i] < linear[i] for i in range(STOP // 2 + 1, STOP))
    assert sigmoid[STOP // 2] == pytest.approx(0.4)
    for i in inside:
        assert sigmoid[i] + sigmoid[STOP - i] == pytest.approx(0.8)
    # linear: the straight line
    assert linear[25] == pytest.approx(0.6)
    # steeper: further from the straight line
    assert true_frame_probability("sigmoid", 20, 1.0, STOP, 10.0) > true_frame_probability("sigmoid", 20, 1.0, STOP, 5.0)
    assert true_frame_probability("exponential", 20, 1.0, STOP, 10.0) < true_frame_probability("exponential", 20, 1.0, STOP, 5.0)


def test_none_never_feeds_a_true_frame_and_draws_nothing():
    assert curve("none") == [0.0] * (STOP + 20)
    rng = torch.get_rng_state()
    assert draw_choices(settings("sigmoid"), STOP, 4, 3, torch.device("cpu")) is None  # schedule over
    assert draw_choices(settings("none"), 0, 4, 3, torch.device("cpu")) is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_reverse_schedule_rises_on_the_inputs_and_falls_on_the_predictions():
    values = [reverse_true_frame_probabilities(step, 20, 60, 10.0) for step in range(80)]
    assert values[:20] == [(0.5, 0.5)] * 20
    inputs, predicted = zip(*values)
    assert all(a <= b for a, b in zip(inputs, inputs[1:])) and all(a >= b for a, b in zip(predicted, predicted[1:]))
    assert predicted[40] == pytest.approx(0.25) and values[60:] == [(1.0, 0.0)] * 20
    assert inputs[30] == pytest.approx(1 - 0.5 * math.exp(-1))


@pytest.mark.parametrize("schedule", DECAYING_SCHEDULES)
def test_a_draw_is_a_function_of_the_step_and_the_generator_alone(schedule):
    """What exact resume rests on: the same step and generator state give the same draws, whatever
    was drawn before (no schedule state to save)."""
    def draws(step: int) -> torch.Tensor:
        return draw_choices(settings(schedule), step, 512, 3, torch.device("cpu"))

    torch.manual_seed(1)
    for step in range(30):
        draws(step)
    state = torch.get_rng_state()
    after_history = draws(30)
    torch.set_rng_state(state)
    assert torch.equal(draws(30), after_history)
    share = after_history.float().mean().item()  # 1024 draws: the schedule's probability within noise
    assert share == pytest.approx(true_frame_probability(schedule, 30, 1.0, STOP, STEEPNESS), abs=0.06)


@pytest.mark.parametrize("family", ["convlstm", "predrnn", "phydnet"])
@pytest.mark.parametrize("schedule", ["exponential", "sigmoid"])
def test_every_sampling_family_follows_the_schedule(family, schedule):
    """Mid-schedule the training pass draws (true frames fed at the schedule's chance); from the stop
    step on it is the inference pass, drawing nothing; the summary names the schedule."""
    model = family_model(family, 3, 3, **{"sampling": schedule, "sampling_stop_step": 10})
    assert dict(model.summary())["sampling"].startswith(schedule)
    x, y = videos(t=3), videos(t=3, seed=1)
    rng = torch.get_rng_state()
    with torch.no_grad():
        assert torch.equal(model.training_forward(x, y, 10).frames, model(x))
        assert torch.equal(torch.get_rng_state(), rng)
        model.training_forward(x, y, 5)
    assert not torch.equal(torch.get_rng_state(), rng)  # the step's draws were made
