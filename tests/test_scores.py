"""The metrics agree with a direct numpy computation, and with hand-checkable cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.scores import LeadTimeMetrics, frame_metrics


def numpy_ssim_frame(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook SSIM of one (C, H, W) frame: explicit 11x11 Gaussian windows, valid positions."""
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for ch in range(x.shape[0]):
        wx = np.lib.stride_tricks.sliding_window_view(x[ch], (11, 11))  # (H-10, W-10, 11, 11)
        wy = np.lib.stride_tricks.sliding_window_view(y[ch], (11, 11))
        mx = (wx * w).sum(axis=(-1, -2))
        my = (wy * w).sum(axis=(-1, -2))
        vx = (w * (wx - mx[..., None, None]) ** 2).sum(axis=(-1, -2))
        vy = (w * (wy - my[..., None, None]) ** 2).sum(axis=(-1, -2))
        cxy = (w * (wx - mx[..., None, None]) * (wy - my[..., None, None])).sum(axis=(-1, -2))
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


def numpy_reference(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-lead-time means over sequences, straight from the definitions. Arrays (N, T, C, H, W)."""
    n, t = pred.shape[:2]
    d = pred.astype(np.float64) - truth.astype(np.float64)
    mse_sum = (d**2).reshape(n, t, -1).sum(-1)  # (N, T)
    mae_sum = np.abs(d).reshape(n, t, -1).sum(-1)
    size = d[0, 0].size
    psnr = 10 * np.log10(1.0 / (mse_sum / size))
    ssim = np.array([[numpy_ssim_frame(pred[i, j], truth[i, j]) for j in range(t)] for i in range(n)])
    return {
        "mse_per_frame_sum": mse_sum.mean(0),
        "mae_per_frame_sum": mae_sum.mean(0),
        "mse_per_pixel": (mse_sum / size).mean(0),
        "mae_per_pixel": (mae_sum / size).mean(0),
        "psnr": psnr.mean(0),
        "ssim": ssim.mean(0),
    }


def test_metrics_match_numpy_on_known_arrays_accumulated_over_batches():
    rng = np.random.default_rng(0)
    truth = rng.random((5, 3, 3, 16, 20), dtype=np.float32)  # (N, T, C, H, W)
    noise = rng.normal(0, 0.1, truth.shape).astype(np.float32)
    pred = np.clip(truth + noise * np.arange(1, 4, dtype=np.float32)[None, :, None, None, None], 0, 1)

    acc = LeadTimeMetrics(t_out=3)
    for lo, hi in [(0, 2), (2, 3), (3, 5)]:  # uneven batches must not change the means
        acc.update(torch.from_numpy(pred[lo:hi]), torch.from_numpy(truth[lo:hi]))
    got = acc.compute()
    want = numpy_reference(pred, truth)

    assert got["sequences"] == 5
    for key, expected in want.items():
        np.testing.assert_allclose(got["per_lead_time"][key], expected, rtol=1e-5, err_msg=key)
        assert got["mean"][key] == pytest.approx(expected.mean(), rel=1e-5), key
    # Noise grows with lead time, so every error metric must grow and SSIM fall.
    assert np.all(np.diff(got["per_lead_time"]["mse_per_frame_sum"]) > 0)
    assert np.all(np.diff(got["per_lead_time"]["ssim"]) < 0)


def test_hand_checkable_values():
    # Identical frames: no error, infinite PSNR, SSIM exactly 1.
    x = torch.rand(2, 2, 3, 12, 12)
    same = frame_metrics(x, x.clone())
    assert torch.all(same["mse_per_frame_sum"] == 0) and torch.all(same["mae_per_pixel"] == 0)
    assert torch.all(torch.isinf(same["psnr"])) and torch.all(same["psnr"] > 0)
    torch.testing.assert_close(same["ssim"], torch.ones(2, 2, dtype=torch.float64))

    # Constant error 0.5 on every value of a 3x12x12 frame: sum 0.25 * 432 = 108, MAE sum 216,
    # per pixel 0.25 / 0.5, PSNR 10*log10(4).
    zeros, halves = torch.zeros(1, 1, 3, 12, 12), torch.full((1, 1, 3, 12, 12), 0.5)
    m = frame_metrics(halves, zeros)
    assert m["mse_per_frame_sum"].item() == pytest.approx(108.0)
    assert m["mae_per_frame_sum"].item() == pytest.approx(216.0)
    assert m["mse_per_pixel"].item() == pytest.approx(0.25)
    assert m["mae_per_pixel"].item() == pytest.approx(0.5)
    assert m["psnr"].item() == pytest.approx(10 * math.log10(4))
    # Two flat images: SSIM reduces to the luminance term (2*0.5*0 + C1) / (0.25 + C1).
    c1 = 0.01**2
    assert m["ssim"].item() == pytest.approx(c1 / (0.25 + c1))


def test_infinite_psnr_survives_the_mean():
    acc = LeadTimeMetrics(t_out=1)
    x = torch.rand(3, 1, 3, 11, 11)
    acc.update(x, x)
    out = acc.compute()
    assert math.isinf(out["mean"]["psnr"]) and out["mean"]["ssim"] == pytest.approx(1.0)


def test_gaussian_ssim_keeps_float64_values_on_bright_nearly_flat_frames():
    # Bright, low-contrast frames are where float32 loses most to E[x^2] - E[x]^2 cancellation:
    # without the per-image shift the float32 filtering was off by ~3e-6 here.
    gen = torch.Generator().manual_seed(0)
    truth = (0.98 + 0.002 * torch.randn(2, 3, 3, 24, 30, generator=gen)).clamp(0, 1)
    pred = (truth + 0.002 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    got = frame_metrics(pred, truth)["ssim"]  # (B, T) float64
    want = np.array([[numpy_ssim_frame(pred[i, j].double().numpy(), truth[i, j].double().numpy())
                      for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-7, rtol=0)


@pytest.mark.parametrize("kind, data_range", [("skimage", 1.0), ("openstl", 2.0)])
def test_skimage_and_openstl_ssim_match_scikit_image(kind, data_range):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    truth = rng.random((2, 2, 3, 20, 26))  # (B, T, C, H, W)
    pred = np.clip(truth + rng.normal(0, 0.15, truth.shape), 0, 1)
    got = frame_metrics(torch.from_numpy(pred).float(), torch.from_numpy(truth).float(), ssim=kind)["ssim"]
    # scikit-image's defaults (7x7 uniform window, sample covariance), in float64, channels averaged.
    want = np.array([[structural_similarity(pred[i, j].astype(np.float32).astype(np.float64),
                                            truth[i, j].astype(np.float32).astype(np.float64),
                                            channel_axis=0, data_range=data_range)
                      for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0)
    # The three definitions are different figures: quoting one as another would mislead.
    gaussian = frame_metrics(torch.from_numpy(pred).float(), torch.from_numpy(truth).float())["ssim"]
    assert (got - gaussian).abs().max() > 1e-3  # far above the 1e-6 they match scikit-image to


def test_each_ssim_is_named_in_its_definition_and_in_the_config():
    import typing

    from core.config import EvaluateConfig, load_config
    from core.errors import FramecastError
    from core.scores import SSIM_KINDS, definitions

    assert set(typing.get_args(typing.get_type_hints(EvaluateConfig)["ssim"])) == set(SSIM_KINDS)
    assert "11x11 Gaussian" in definitions("gaussian")["ssim"]
    assert "7x7 uniform" in definitions("skimage")["ssim"] and "data range 1" in definitions("skimage")["ssim"]
    assert "data range 2" in definitions("openstl")["ssim"]
    assert load_config(None, ["evaluate.ssim=skimage"]).evaluate.ssim == "skimage"
    with pytest.raises(FramecastError, match="evaluate.ssim"):
        load_config(None, ["evaluate.ssim=box"])
    with pytest.raises(FramecastError, match="7x7"):  # too small for the window: one clear line
        frame_metrics(torch.rand(1, 1, 1, 6, 20), torch.rand(1, 1, 1, 6, 20), ssim="skimage")
