"""The training loss's structure terms: SSIM and the gradient-difference loss, on pairs whose values
are known by hand, combined with train.loss by the configured weights, and resumed exactly."""
from __future__ import annotations

import math

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.config import load_config
from core.errors import FramecastError
from core.scores import SSIM_K1, SSIM_K2, ssim_per_frame
from stages.train import run
from training.step import FrameLoss, frame_loss, gradient_difference_loss, ssim_loss
from train_helpers import losses, run_killed_after, state_digest, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 3, 3, 16, 20)  # (B, T, C, H, W)


def test_ssim_loss_of_flat_frames_is_the_luminance_term():
    a, b = 0.5, 0.25  # flat frames: no variance, so SSIM is its luminance term alone
    c1 = SSIM_K1**2
    expected = 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    got = ssim_loss(torch.full(SHAPE, a), torch.full(SHAPE, b))
    assert math.isclose(float(got), expected, rel_tol=1e-4)  # float32 variances: ~1e-8 off, against C2 9e-4
    assert SSIM_K2  # (the contrast term is (0 + C2) / (0 + C2) = 1 here)


def test_ssim_loss_is_one_minus_the_scored_ssim_and_zero_for_a_perfect_forecast():
    torch.manual_seed(0)
    truth = torch.rand(SHAPE)
    pred = (truth + 0.2 * torch.randn(SHAPE)).clamp(0, 1)
    scored = ssim_per_frame(pred, truth).mean()  # float64, as evaluate reports it
    assert math.isclose(float(ssim_loss(pred, truth)), 1 - float(scored), abs_tol=1e-5)
    assert abs(float(ssim_loss(truth, truth))) < 1e-6


def test_gradient_difference_loss_of_a_ramp_against_flat_and_shifted_frames():
    ramp = (0.1 * torch.arange(8.0)).expand(*SHAPE[:-2], 6, 8)  # horizontal steps of 0.1, none vertical
    flat = torch.full_like(ramp, 0.3)
    assert math.isclose(float(gradient_difference_loss(flat, ramp)), 0.1, rel_tol=1e-5)
    assert math.isclose(float(gradient_difference_loss(flat, ramp, alpha=2)), 0.01, rel_tol=1e-4)
    # The same edges, brighter: no gradient difference, though MSE sees the offset.
    assert float(gradient_difference_loss(ramp + 0.2, ramp)) < 1e-7
    assert math.isclose(float(frame_loss("mse", ramp + 0.2, ramp)), 0.04, rel_tol=1e-5)


def test_frame_loss_adds_the_weighted_terms_to_train_loss():
    torch.manual_seed(1)
    truth, pred = torch.rand(SHAPE), torch.rand(SHAPE)
    combined = FrameLoss("l1", ssim_weight=0.5, gdl_weight=2.0, gdl_alpha=2)
    expected = (torch.nn.functional.l1_loss(pred, truth) + 0.5 * ssim_loss(pred, truth)
                + 2.0 * gradient_difference_loss(pred, truth, 2))
    assert torch.allclose(frame_loss(combined, pred, truth), expected)
    assert torch.equal(frame_loss(FrameLoss("mse"), pred, truth), frame_loss("mse", pred, truth))
    # Per video (4-D), as validation scores it:
    assert torch.isfinite(frame_loss(combined, pred[0], truth[0]))
    pred.requires_grad_(True)
    frame_loss(combined, pred, truth).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_config_reads_and_checks_the_weights():
    tc = load_config(None, ["train.loss=mse", "train.ssim_weight=0.3", "train.gdl_weight=1"]).train
    assert FrameLoss.from_config(tc) == FrameLoss("mse", 0.3, 1.0, 1)
    for bad in ("train.ssim_weight=-1", "train.gdl_weight=nan", "train.gdl_alpha=0"):
        with pytest.raises(FramecastError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(None, [bad])


def test_training_with_the_structure_terms_resumes_exactly(data_root, tmp_path):
    extra = ("train.epochs=2", "train.ssim_weight=0.5", "train.gdl_weight=1")
    reference = tiny_config(data_root, tmp_path, "reference", *extra)
    run(reference)
    cfg = tiny_config(data_root, tmp_path, "resumed", *extra)
    run_killed_after(cfg, epoch=1)
    assert run(cfg)["resumed_from"]["epoch"] == 1
    assert losses(cfg.run_dir) == losses(reference.run_dir)
    plain = tiny_config(data_root, tmp_path, "plain", "train.epochs=1")
    run(plain)  # the terms count: the first logged loss differs from plain MSE's
    assert losses(plain.run_dir)[0][3] < losses(reference.run_dir)[0][3]
    ours, theirs = load_checkpoint(cfg.run_dir / "last.pt"), load_checkpoint(reference.run_dir / "last.pt")
    assert state_digest(ours["model"]) == state_digest(theirs["model"])
