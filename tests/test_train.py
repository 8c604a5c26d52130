"""The train stage: it learns, keeps the right checkpoints, resumes exactly, and fails clearly.

One uninterrupted 4-epoch run of a tiny ConvGRU (module fixture) is the reference the interrupted
runs are compared with, loss by loss and weight by weight. One thread, no loader workers: on the
CPU that makes every run of the same config bit-for-bit reproducible.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.checkpoint import checkpoint

from core.checkpoint import load_checkpoint
from core.config import load_config
from core.precision import Precision
from core.errors import FramecastError
from data.datasets import build_datasets
import models.cells
from models.loading import load_model
from models import ConvGRUCell, ConvLSTMCell
from stages.train import NonFiniteLossError, TrainingInterrupted, run
from train_helpers import losses, run_killed_after, state_digest, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)
from training.schedule import LRSchedule
from training.step import validation_sums

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """(config, summary) of the uninterrupted 4-epoch ConvGRU run."""
    cfg = tiny_config(data_root, tmp_path_factory.mktemp("runs"), "reference")
    return cfg, run(cfg)


def val_losses(run_dir: Path) -> list[float]:
    return [loss for kind, _, _, loss in losses(run_dir) if kind == "val"]


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """Same losses at the same steps, and the same final weights and optimizer state."""
    assert losses(run_dir) == losses(reference_dir)
    ours, theirs = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference_dir / "last.pt")
    assert state_digest(ours["model"]) == state_digest(theirs["model"])
    for a, b in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values(), strict=True):
        assert a.keys() == b.keys()
        for key in a:  # Adam's moments, RMSprop's square average and momentum, ...
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    ours, theirs = ours["progress"], theirs["progress"]
    assert (ours["step"], ours["epoch"], ours["best_val_loss"]) == (theirs["step"], theirs["epoch"], theirs["best_val_loss"])


# ----------------------------------------------------------------------------- learning and files


def test_training_lowers_validation_loss_and_writes_the_run(reference):
    cfg, summary = reference
    run_dir = cfg.run_dir
    vals = val_losses(run_dir)
    assert len(vals) == 4  # one validation per epoch
    assert min(vals[1:]) < vals[0] * 0.7, f"validation loss did not fall: {vals}"
    assert summary["epochs_run"] == 4 and summary["steps"] == 16 and summary["stopped"] == "completed"
    assert summary["best_val_loss"] == min(vals)
    # the resolved config is saved beside the run and reads back to the same config
    assert load_config(run_dir / "config.yaml") == cfg
    with Image.open(run_dir / "loss_curve.png") as image:
        assert image.format == "PNG" and image.width > 100
    train_rows = [row for row in losses(run_dir) if row[0] == "train"]
    assert [row[2] for row in train_rows] == [2, 4, 6, 8, 10, 12, 14, 16]  # every log_every_steps


def test_training_ends_its_loader_workers_however_it_ends(data_root, tmp_path):
    """Ended by an error, whose traceback still holds the trainer and its loaders: their worker
    processes are gone all the same (a caller that goes on keeps none idle, and none holds the
    process at exit)."""
    import multiprocessing

    def fail(info):
        raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test") as raised:
        run(tiny_config(data_root, tmp_path, "workers", "train.epochs=1", "data.num_workers=1"), on_checkpoint=fail)
    assert raised.traceback and multiprocessing.active_children() == []


def test_best_checkpoint_holds_the_epoch_with_the_lowest_validation_loss(reference):
    cfg, _ = reference
    vals = val_losses(cfg.run_dir)
    best_epoch = vals.index(min(vals)) + 1
    best = load_checkpoint(cfg.run_dir / "best.pt")["progress"]
    last = load_checkpoint(cfg.run_dir / "last.pt")["progress"]
    assert best["epoch"] == best_epoch and best["best_val_loss"] == min(vals) == best["val_loss"]
    assert last["epoch"] == 4 and last["val_loss"] == vals[-1] and last["best_epoch"] == best_epoch
    # the weights in best.pt really score that loss on the validation split
    model, _, _ = load_model(cfg.run_dir / "best.pt")
    _, val_set = build_datasets(cfg)
    batches = (val_set[i].unsqueeze(0) for i in range(len(val_set)))  # uint8 (1, T, H, W, C)
    total, count = validation_sums(model, batches, t_in=cfg.data.t_in, in_channels=3, loss="mse",
                                   precision=Precision(torch.device("cpu"), None, False)).tolist()
    assert count == len(val_set) == 5
    assert math.isclose(total / count, best["val_loss"], rel_tol=1e-5)


def test_checkpoints_hold_resume_state_as_plain_values(reference):
    cfg, _ = reference
    state = torch.load(cfg.run_dir / "last.pt", weights_only=True)  # no pickled objects inside
    for key in ("model", "optimizer", "scheduler", "progress", "rng", "config"):
        assert key in state, key
    for key in ("step", "epoch", "best_val_loss"):
        assert key in state["progress"], key
    # the model is described once: by the config's model section and frame counts
    assert "model_config" not in state and "t_in" not in state
    assert state["config"]["model"]["family"] == "encoder_forecaster"
    assert state["config"]["model"]["encoder_forecaster"]["cell"] == "gru"
    assert set(state["rng"]) >= {"torch", "numpy", "python"}


# ----------------------------------------------------------------------------- exact resume


def test_run_killed_after_an_epoch_resumes_to_the_same_losses(reference, data_root, tmp_path):
    """A real SIGKILL right after epoch 2's checkpoint, then the same command again."""
    cfg_ref, _ = reference
    marker = tmp_path / "epoch2.saved"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import torch
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        torch.set_num_threads(1)
        from stages.train import run
        from train_helpers import tiny_config

        def hook(info):
            if info["epoch"] == 2:
                Path({str(marker)!r}).write_text("saved")
                time.sleep(600)  # killed here

        run(tiny_config(Path({str(data_root)!r}), Path({str(tmp_path)!r}), "killed"), on_checkpoint=hook)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"training process ended early:\n{proc.stdout.read().decode()}")
            assert time.monotonic() < deadline, "epoch 2 was never saved"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    cfg = tiny_config(data_root, tmp_path, "killed")
    assert load_checkpoint(cfg.run_dir / "last.pt")["progress"]["epoch"] == 2
    summary = run(cfg)
    assert summary["resumed_from"]["epoch"] == 2 and summary["epochs_run"] == 4
    assert_same_run(cfg.run_dir, cfg_ref.run_dir)


@pytest.mark.skipif(
    not hasattr(signal, "SIGUSR2") or signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL
    or bool(os.environ.get("SUBMITIT_EXECUTOR")),
    reason="SIGUSR2 is handled by someone else in this process",
)
def test_stop_signal_saves_mid_epoch_and_resumes_to_the_same_losses(reference, data_root, tmp_path, monkeypatch):
    import stages.train

    cfg_ref, _ = reference
    cfg = tiny_config(data_root, tmp_path, "signalled")
    real_step = stages.train.train_step

    def step_then_signal(*args, step, **kwargs):
        result = real_step(*args, step=step, **kwargs)
        if step == 4:  # epoch 2's first step (4 steps an epoch)
            os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm does before a time limit
        return result

    monkeypatch.setattr(stages.train, "train_step", step_then_signal)
    # one process stops at the next step boundary (several at the next log interval, where they agree)
    with pytest.raises(TrainingInterrupted, match=r"SIGUSR2 at epoch 2, step 5.*last\.pt"):
        run(cfg)
    monkeypatch.setattr(stages.train, "train_step", real_step)
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # handler removed again
    saved = load_checkpoint(cfg.run_dir / "last.pt")["progress"]
    assert (saved["epoch"], saved["batches_done"], saved["step"]) == (2, 1, 5)
    summary = run(cfg)
    assert summary["resumed_from"] == {"epoch": 2, "step": 5, "batches_done": 1,
                                       "checkpoint": str(cfg.run_dir / "last.pt")}
    assert_same_run(cfg.run_dir, cfg_ref.run_dir)


@pytest.mark.skipif(
    not hasattr(signal, "SIGUSR2") or signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL
    or bool(os.environ.get("SUBMITIT_EXECUTOR")),
    reason="SIGUSR2 is handled by someone else in this process",
)
def test_a_stop_signal_is_honoured_with_one_step_per_epoch(data_root, tmp_path):
    """Every step ends an epoch: the stop comes right after that epoch's validation and save."""
    cfg = tiny_config(data_root, tmp_path, "one-step", "train.max_steps_per_epoch=1")

    def hook(info):
        if info["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGUSR2)

    with pytest.raises(TrainingInterrupted, match=r"SIGUSR2 at epoch 2, step 2"):
        run(cfg, on_checkpoint=hook)
    saved = load_checkpoint(cfg.run_dir / "last.pt")["progress"]
    assert (saved["epoch"], saved["step"]) == (2, 2)
    assert run(cfg)["epochs_run"] == 4


def test_validation_every_n_steps_resumes_mid_epoch_to_the_same_losses(data_root, tmp_path):
    extra = ("train.epochs=2", "train.val_every_steps=3")
    uninterrupted = tiny_config(data_root, tmp_path, "every3", *extra)
    run(uninterrupted)
    assert [(e, s) for kind, e, s, _ in losses(uninterrupted.run_dir) if kind == "val"] == [(1, 3), (2, 6)]

    cfg = tiny_config(data_root, tmp_path, "every3-killed", *extra)
    run_killed_after(cfg, step=3)
    assert load_checkpoint(cfg.run_dir / "last.pt")["progress"]["batches_done"] == 3  # part-way through epoch 1
    assert run(cfg)["resumed_from"]["step"] == 3
    assert_same_run(cfg.run_dir, uninterrupted.run_dir)


def test_an_optimiser_with_momentum_resumes_to_the_same_losses_and_state(data_root, tmp_path):
    extra = ("train.epochs=2", "train.optimizer=rmsprop", "train.momentum=0.9", "train.lr=1e-3")
    uninterrupted = tiny_config(data_root, tmp_path, "rmsprop", *extra)
    run(uninterrupted)
    cfg = tiny_config(data_root, tmp_path, "rmsprop-killed", *extra)
    run_killed_after(cfg, epoch=1)
    assert set(load_checkpoint(cfg.run_dir / "last.pt")["optimizer"]["state"][0]) >= {"square_avg", "momentum_buffer"}
    assert run(cfg)["resumed_from"]["epoch"] == 1
    assert_same_run(cfg.run_dir, uninterrupted.run_dir)


@pytest.mark.parametrize("family, schedule", [("convlstm", "sigmoid"), ("predrnn", "exponential"),
                                              ("phydnet", "exponential")])
def test_a_sampling_schedule_resumes_to_the_same_losses(data_root, tmp_path, family, schedule):
    """The schedule is a function of the step and the draws come from the checkpointed generator."""
    extra = ("train.epochs=2", f"model.{family}.sampling={schedule}", f"model.{family}.sampling_stop_step=8")
    uninterrupted = tiny_config(data_root, tmp_path, "whole", *extra, family=family)
    run(uninterrupted)
    cfg = tiny_config(data_root, tmp_path, "killed", *extra, family=family)
    run_killed_after(cfg, epoch=1)
    assert run(cfg)["resumed_from"]["epoch"] == 1
    assert_same_run(cfg.run_dir, uninterrupted.run_dir)


# ----------------------------------------------------------------------------- the two cells


def test_both_cells_train_and_differ_as_their_equations_say(reference, data_root, tmp_path):
    cfg_gru, _ = reference
    cfg_lstm = tiny_config(data_root, tmp_path, "lstm", "model.encoder_forecaster.cell=lstm", "train.epochs=2")
    summary = run(cfg_lstm)
    vals = val_losses(cfg_lstm.run_dir)
    assert summary["family"] == "encoder_forecaster" and vals[-1] < vals[0]

    lstm, lstm_cfg, lstm_state = load_model(cfg_lstm.run_dir / "best.pt")
    gru, _, _ = load_model(cfg_gru.run_dir / "best.pt")
    assert lstm_cfg.model.encoder_forecaster.cell == "lstm"
    assert lstm_state["config"]["model"]["encoder_forecaster"]["cell"] == "lstm"
    # what was asked for is what was trained: only ConvLSTM cells in the LSTM model, and vice versa
    assert {type(m) for m in lstm.modules()} & {ConvLSTMCell, ConvGRUCell} == {ConvLSTMCell}
    assert {type(m) for m in gru.modules()} & {ConvLSTMCell, ConvGRUCell} == {ConvGRUCell}

    # 4 gate blocks (i, f, o, g) against 3 (r, z, n): the recurrent parameters are exactly 4:3
    def cell_params(model, kind):
        return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters())

    assert 3 * cell_params(lstm, ConvLSTMCell) == 4 * cell_params(gru, ConvGRUCell)
    assert summary["parameters"] > load_checkpoint(cfg_gru.run_dir / "best.pt")["parameters"]
    # the LSTM carries a cell memory next to h; the GRU only h
    x = torch.rand(1, 2, 8, 32, 48)  # (B, T, C, H, W) into the first encoder cell
    with torch.no_grad():
        _, lstm_cell_state = lstm.encoder_cells[0](x)
        _, gru_cell_state = gru.encoder_cells[0](x)
    assert len(lstm_cell_state) == 2 and len(gru_cell_state) == 1
    assert lstm_cell_state[0].shape == lstm_cell_state[1].shape == gru_cell_state[0].shape == (1, 8, 32, 48)


def test_activation_checkpointing_trains_exactly_the_same_run(reference, data_root, tmp_path, monkeypatch):
    """train.activation_checkpointing changes what is stored for backward, never what is learned."""
    recomputed_steps = []

    def counting_checkpoint(function, *args, **kwargs):
        recomputed_steps.append(function)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(models.cells, "checkpoint", counting_checkpoint)
    cfg = tiny_config(data_root, tmp_path, "recomputed", "train.activation_checkpointing=true")
    run(cfg)
    assert recomputed_steps  # the setting reached the model's cells
    assert_same_run(cfg.run_dir, reference[0].run_dir)


# ----------------------------------------------------------------------------- failures


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "nan")

    def poison(info):
        if info["epoch"] == 1:
            with torch.no_grad():
                for p in info["model"].parameters():
                    p.fill_(float("nan"))  # what a diverging update does to the weights

    last = cfg.run_dir / "last.pt"
    with pytest.raises(NonFiniteLossError, match=rf"non-finite loss.*epoch 2 step 6.*{last}"):
        run(cfg, on_checkpoint=poison)
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(cfg.run_dir / name)
        assert saved["progress"]["epoch"] == 1 and saved["progress"]["step"] == 4
        assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert max(step for _, _, step, _ in losses(cfg.run_dir)) == 4  # nothing logged from the bad steps


def test_corrupt_last_checkpoint_is_a_clear_error(reference, tmp_path):
    cfg_ref, _ = reference
    shutil.copytree(cfg_ref.run_dir, tmp_path / "reference")
    last = tmp_path / "reference" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn copy
    cfg = load_config(cfg_ref.run_dir / "config.yaml", [f"run.out_dir={tmp_path}"])
    with pytest.raises(FramecastError, match=rf"{last}: not a readable checkpoint"):
        run(cfg)


def test_resuming_a_different_model_is_refused(reference, tmp_path):
    cfg_ref, _ = reference
    shutil.copytree(cfg_ref.run_dir, tmp_path / "reference")
    cfg = load_config(cfg_ref.run_dir / "config.yaml", [f"run.out_dir={tmp_path}", "model.encoder_forecaster.cell=lstm"])
    with pytest.raises(FramecastError, match=r"last\.pt: holds a model with model\.encoder_forecaster\.cell='gru'"
                                             r".*model\.encoder_forecaster\.cell='lstm'"):
        run(cfg)


def test_early_stopping_after_patience_and_a_finished_run_stays_finished(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "flat", "train.lr=0", "train.schedule=constant",
                      "train.epochs=10", "train.early_stop_patience=2")
    summary = run(cfg)  # lr 0: the validation loss never improves after epoch 1
    assert summary["stopped"] == "early_stop" and summary["epochs_run"] == 3
    assert len(set(val_losses(cfg.run_dir))) == 1
    records = losses(cfg.run_dir)
    again = run(cfg)  # e.g. a requeued job: nothing left to do
    assert again["stopped"] == "early_stop" and again["epochs_run"] == 3 and again["steps"] == summary["steps"]
    assert losses(cfg.run_dir) == records


# ----------------------------------------------------------------------------- schedules


def test_learning_rate_schedules(reference):
    cfg, _ = reference
    train = cfg.train
    onecycle = LRSchedule(train, total_steps=100)
    rates = [onecycle.lr(s) for s in range(100)]
    peak = max(range(100), key=rates.__getitem__)
    assert rates[0] < 0.2 * train.lr and math.isclose(rates[peak], train.lr) and peak == 10  # warmup_frac 0.1
    assert all(a <= b for a, b in zip(rates[:peak], rates[1 : peak + 1]))  # rising
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1 :]))  # then falling
    assert rates[-1] < 0.001 * train.lr
    assert LRSchedule(train, 100).lr(37) == rates[37]  # a function of the step alone

    plateau = LRSchedule(load_config(None, ["train.schedule=plateau", "train.plateau_patience=2",
                                            "train.plateau_factor=0.5"]).train, total_steps=100)
    for loss in (1.0, 0.9, 0.95, 0.95):
        plateau.observe(loss)
    assert plateau.lr(50) == plateau.peak  # two bad validations: within patience
    plateau.observe(0.95)
    assert plateau.lr(50) == 0.5 * plateau.peak  # the third one lowers it
    resumed = LRSchedule(plateau_cfg := load_config(None, ["train.schedule=plateau"]).train, 100)
    resumed.load_state_dict(plateau.state_dict())
    assert resumed.lr(0) == 0.5 * plateau_cfg.lr and resumed.best == 0.9
