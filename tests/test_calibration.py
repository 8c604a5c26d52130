"""Calibrated uncertainty: the split-conformal factor's finite-sample guarantee, and on videos with a
known noise level, a scale head that learns it and intervals whose coverage on held-out videos is
the one asked for (evaluate's report), with or without an informative scale."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoint import save_checkpoint
from core.config import Config, config_from_dict, config_to_dict
from core.errors import FramecastError
from models import build_model
from data.predictions import load_spread
from stages import calibrate, evaluate, predict
from tiny_models import model_section
from training.calibration import Calibration, auroc, conformal_factor, likelihood_factor, spearman

pytestmark = pytest.mark.usefixtures("one_thread")

T_IN, T_OUT, HEIGHT, WIDTH = 3, 2, 16, 32
# Left half dim with little noise, right half bright with much: the forecast (copy-last) errs by the
# difference of two independent noise draws, std sqrt(2) * sigma, which the head can read off the brightness.
LEFT, RIGHT = (0.3, 0.02), (0.7, 0.08)  # (brightness, noise std)
SPLITS = {"train": (0, 24), "val": (100, 40), "unlabeled": (200, 40)}  # (first video number, videos)


def noisy_videos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, (first, count) in SPLITS.items():
        for number in range(first, first + count):
            folder = root / split / f"video_{number}"
            folder.mkdir(parents=True)
            for k in range(T_IN + T_OUT):
                frame = np.empty((HEIGHT, WIDTH))
                for (level, sigma), cols in ((LEFT, slice(0, WIDTH // 2)), (RIGHT, slice(WIDTH // 2, WIDTH))):
                    frame[:, cols] = level + sigma * rng.standard_normal((HEIGHT, WIDTH // 2))
                grey = np.clip(np.round(frame * 255), 0, 255).astype(np.uint8)
                Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(folder / f"image_{k}.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Config, list[Path]]:
    """Noisy videos and two copy-last checkpoints (residual encoder-forecasters, head at zero)."""
    tmp = tmp_path_factory.mktemp("calibration")
    root = noisy_videos(tmp / "noisy")
    cfg = config_from_dict({
        "run": {"out_dir": str(tmp / "runs"), "name": "cal", "device": "cpu"},
        "data": {"root": str(root), "source": "png", "t_in": T_IN, "t_out": T_OUT, "num_workers": 0},
        "model": {**model_section("encoder_forecaster"), "in_channels": 1},
        "predict": {"batch_size": 8},
        "calibrate": {"split": "val", "fit_split": "train", "likelihood": "gaussian", "head_steps": 150,
                      "head_lr": 1e-2, "pixels_per_video": 512},
        "evaluate": {"split": "unlabeled", "samples": 0, "rank_pixels_per_video": 256},
    })
    cfg.model.encoder_forecaster.residual = True
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(cfg.model, T_IN, T_OUT)
        path = tmp / f"copy_last_{seed}.pt"
        save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                         "progress": {"epoch": 1, "step": 1, "best_val_loss": 0.0, "val_loss": 0.0}}, path)
        paths.append(path)
    return cfg, paths


def with_settings(cfg: Config, **sections) -> Config:
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


# ----------------------------------------------------------------------------- the pieces


def test_conformal_factor_is_the_finite_sample_quantile_and_its_coverage_holds():
    scores = np.arange(1.0, 10.0)  # 9 calibration scores
    assert conformal_factor(scores, 0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_factor(scores, 0.5) == 5.0
    assert conformal_factor(scores, 0.95) == math.inf  # would need a 10th
    # the guarantee: P(test score <= factor) is in [level, level + 1/(n+1)), over many draws
    rng = np.random.default_rng(0)
    n, trials = 19, 20000
    draws = rng.exponential(size=(trials, n + 1))
    factors = np.array([conformal_factor(row[:n], 0.8) for row in draws])
    covered = (draws[:, n] <= factors).mean()
    assert 0.8 - 0.01 < covered < 0.8 + 1 / (n + 1) + 0.01


def test_likelihood_intervals_and_rank_scores():
    assert likelihood_factor("gaussian", 0.9) == pytest.approx(1.6449, abs=1e-4)
    assert likelihood_factor("laplace", 0.5) == pytest.approx(math.log(2))
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8])
    assert auroc(scores, np.array([False, False, False, True, True])) == 1.0
    assert auroc(scores, np.array([True, False, False, False, True])) == pytest.approx(2.5 / 6)  # a tie counts half
    assert auroc(np.zeros(4), np.array([True, False, True, False])) == 0.5  # ties: chance
    assert spearman(np.array([1.0, 2, 3]), np.array([10.0, 30, 20])) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- known noise, end to end


def test_scale_head_learns_the_noise_and_its_intervals_cover_held_out_videos(setup, tmp_path):
    cfg, paths = setup
    cfg = with_settings(cfg, predict={"checkpoint": str(paths[0])}, calibrate={"out": str(tmp_path / "head.pt")})
    out = calibrate.run(cfg)
    fitted = Calibration.load(out)
    assert (fitted.method, fitted.videos, fitted.pixels) == ("scale_head", 40, 40 * 512)
    # the head's scale is the error's std, sqrt(2) sigma, on each half of a held-out frame
    inputs = torch.full((1, T_IN, 1, HEIGHT, WIDTH), LEFT[0])
    inputs[..., WIDTH // 2:] = RIGHT[0]
    scale = fitted.scale_function(torch.device("cpu"))(inputs, inputs[:, -1:].expand(-1, T_OUT, -1, -1, -1), None)
    for (_, sigma), cols in ((LEFT, slice(0, WIDTH // 2)), (RIGHT, slice(WIDTH // 2 + 2, WIDTH - 2))):
        assert scale[..., 2:-2, cols].mean().item() == pytest.approx(math.sqrt(2) * sigma, rel=0.25)
    # so the conformal factors are close to the Gaussian's own
    for row in fitted.factors:
        assert row == pytest.approx([likelihood_factor("gaussian", p) for p in fitted.levels], rel=0.15)

    report = evaluate.run(with_settings(cfg, evaluate={"calibration": str(out), "out": str(tmp_path / "eval")}))
    unc = report["uncertainty"]
    assert unc["method"] == "scale_head" and set(unc["intervals"]) == {"conformal", "likelihood"}
    for level in fitted.levels:
        for coverage in unc["intervals"]["conformal"][f"{level:g}"]["coverage"]:  # every lead time
            assert coverage == pytest.approx(level, abs=0.02)
    # the big errors are on the noisy half, and the head says so
    assert min(unc["auroc_large_errors"]) > 0.75 and min(unc["spearman"]) > 0.3
    widths = unc["intervals"]["conformal"]["0.9"]["mean_width"]
    expected = 2 * likelihood_factor("gaussian", 0.9) * math.sqrt(2) * (LEFT[1] + RIGHT[1]) / 2
    assert all(w == pytest.approx(expected, rel=0.2) for w in widths)

    # predict writes the calibrated 90% half-widths as the spread file: narrow on the quiet half
    preds = tmp_path / "preds" / "unlabeled.npy"
    predict.run(with_settings(cfg, predict={"calibration": str(out), "split": "unlabeled", "out": str(preds)}))
    half, index = load_spread(preds)  # float16 (N, T_out, H, W, 3)
    assert "calibrated 90% interval" in index["spread"]["definition"]
    for (_, sigma), cols in ((LEFT, slice(2, WIDTH // 2 - 2)), (RIGHT, slice(WIDTH // 2 + 2, WIDTH - 2))):
        expected = likelihood_factor("gaussian", 0.9) * math.sqrt(2) * sigma
        assert float(half[:, :, 2:-2, cols].astype(np.float32).mean()) == pytest.approx(expected, rel=0.25)
    with pytest.raises(FramecastError, match=r"predict\.interval_level=0\.95: .*head\.pt was fitted for the levels"):
        predict.run(with_settings(cfg, predict={"calibration": str(out), "split": "unlabeled", "out": str(preds),
                                                "interval_level": 0.95}))


def test_an_ensemble_s_spread_rescaled_covers_even_when_the_members_agree(setup, tmp_path, caplog):
    """Two copy-last members agree everywhere (spread 0): the floor alone is the scale, and the
    conformal factor still makes the interval cover as asked, while the scale ranks nothing."""
    cfg, paths = setup
    cfg = with_settings(cfg, predict={"checkpoint": [str(p) for p in paths]},
                        calibrate={"method": "spread", "out": str(tmp_path / "spread.pt")})
    out = calibrate.run(cfg)
    report = evaluate.run(with_settings(cfg, evaluate={"calibration": str(out), "out": str(tmp_path / "eval")}))
    unc = report["uncertainty"]
    for level in (0.5, 0.8, 0.9):
        for coverage in unc["intervals"]["conformal"][f"{level:g}"]["coverage"]:
            # at least as asked; above it by up to the share of pixels whose error equals the factor
            # exactly (errors are multiples of 1/255 here, and a constant scale keeps those ties)
            assert level - 0.02 < coverage < level + 0.05
    assert unc["auroc_large_errors_mean"] == pytest.approx(0.5)
    # scored on the calibration split itself, past its first videos: those only, and a warning when they overlap
    skipped = evaluate.run(with_settings(cfg, evaluate={"calibration": str(out), "out": str(tmp_path / "skip"),
                                                        "split": "val", "skip_videos": 30}))
    assert skipped["videos"] == 10 and skipped["skipped_videos"] == 30
    assert "measured on videos it was fitted on" in caplog.text
    # without the calibration, the raw spread read as a std covers nothing (zero-width intervals)
    raw = evaluate.run(with_settings(cfg, evaluate={"out": str(tmp_path / "raw")}))["uncertainty"]
    assert raw["method"] == "raw spread" and max(raw["intervals"]["gaussian"]["0.9"]["coverage"]) < 0.2


def test_a_calibration_that_does_not_fit_is_one_line(setup, tmp_path):
    cfg, paths = setup
    one = with_settings(cfg, predict={"checkpoint": str(paths[0])}, calibrate={"method": "spread"})
    with pytest.raises(FramecastError, match=r"calibrate\.method=spread needs an ensemble"):
        calibrate.run(one)
    two = with_settings(cfg, predict={"checkpoint": [str(p) for p in paths]}, calibrate={"method": "spread"})
    cal = tmp_path / "two.pt"
    calibrate.run(with_settings(two, calibrate={"out": str(cal)}))
    with pytest.raises(FramecastError, match=r"two\.pt: a calibration of an ensemble's spread needs the ensemble"):
        evaluate.run(with_settings(one, evaluate={"calibration": str(cal), "out": str(tmp_path / "e")}))
    other = dataclasses.replace(Calibration.load(cal), checkpoints=["runs/other/best.pt"])
    other.save(tmp_path / "other.pt")
    with pytest.raises(FramecastError, match=r"other\.pt: fitted for \['runs/other/best\.pt'\], not for"):
        evaluate.run(with_settings(two, evaluate={"calibration": str(tmp_path / "other.pt"), "out": str(tmp_path / "e")}))
    (tmp_path / "junk.pt").write_text("no")
    with pytest.raises(FramecastError, match=r"junk\.pt: not a calibration file"):
        Calibration.load(tmp_path / "junk.pt")
