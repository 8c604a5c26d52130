"""train.amp=fp16 on the CPU: autocast to float16 with a gradient scaler, resumed exactly.

torch's CPU autocast computes convolutions in float16 (about 4x slower than fp32 here, so the runs
are short) and ``torch.amp.GradScaler("cpu")`` scales the loss as on a GPU. The scaler is built with
a growth interval of 2 steps instead of 2000, so its scale really changes within the run (1024 to
16384 in 8 steps): a resume that lost the scaler's state trains differently (checked by hand: with
the scaler dropped from last.pt the resumed losses differ in the 6th digit).
"""
from __future__ import annotations

import pytest
import torch
from train_helpers import losses, run_killed_after, state_digest, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

import stages.train
from core.checkpoint import load_checkpoint
from core.precision import Precision
from stages.train import run

FP16 = ("train.amp=fp16", "train.epochs=2")
INIT_SCALE = 2.0**10

pytestmark = pytest.mark.usefixtures("one_thread")


def fast_scaler(precision: Precision) -> torch.amp.GradScaler:
    assert precision.needs_grad_scaler  # fp16 asks for one
    return torch.amp.GradScaler(precision.device.type, init_scale=INIT_SCALE, growth_interval=2)


@pytest.fixture(autouse=True)
def patched_scaler(monkeypatch):
    monkeypatch.setattr(stages.train, "build_grad_scaler", fast_scaler)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """An uninterrupted fp16 run (2 epochs of 4 steps), the scaler patched as in every test here."""
    patch = pytest.MonkeyPatch()
    patch.setattr(stages.train, "build_grad_scaler", fast_scaler)
    try:
        cfg = tiny_config(data_root, tmp_path_factory.mktemp("runs"), "fp16-reference", *FP16)
        summary = run(cfg)
    finally:
        patch.undo()
    return cfg, summary


def test_fp16_trains_on_the_cpu_with_a_scaler_saved_in_the_checkpoint(reference):
    cfg, summary = reference
    assert summary["stopped"] == "completed" and summary["steps"] == 8
    vals = [loss for kind, _, _, loss in losses(cfg.run_dir) if kind == "val"]
    assert min(vals[1:]) < vals[0], vals
    scaler = load_checkpoint(cfg.run_dir / "last.pt")["scaler"]
    assert scaler is not None and scaler["growth_interval"] == 2
    assert scaler["scale"] != INIT_SCALE  # it moved during the run: resuming must restore it


def test_fp16_run_killed_after_epoch_1_resumes_to_the_same_losses_and_scaler(reference, data_root, tmp_path):
    cfg_ref, _ = reference
    cfg = tiny_config(data_root, tmp_path, "fp16-killed", *FP16)
    run_killed_after(cfg, epoch=1)
    saved = load_checkpoint(cfg.run_dir / "last.pt")
    assert saved["progress"]["epoch"] == 1 and saved["scaler"]["scale"] != INIT_SCALE
    summary = run(cfg)
    assert summary["resumed_from"]["epoch"] == 1 and summary["epochs_run"] == 2
    assert losses(cfg.run_dir) == losses(cfg_ref.run_dir)
    ours, theirs = load_checkpoint(cfg.run_dir / "last.pt"), load_checkpoint(cfg_ref.run_dir / "last.pt")
    assert ours["scaler"] == theirs["scaler"]
    assert state_digest(ours["model"]) == state_digest(theirs["model"])
