"""evaluate: per-lead-time metrics that match a direct computation, a baseline, and readable artefacts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import FramecastError
from models.loading import load_model
from predict_helpers import COUNTS, HEIGHT, T_IN, T_OUT, WIDTH, read_first_frames
from predict_helpers import cfg, data_root  # noqa: F401 (fixtures)
from stages import evaluate
from training import figures
from test_scores import numpy_reference


def strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_matches_direct_numpy_computation_for_model_and_baseline(cfg, tmp_path: Path):
    report = evaluate.run(cfg, "val", out_dir=tmp_path / "eval")
    assert report == strict_json(tmp_path / "eval" / "report.json")
    assert report["videos"] == COUNTS["val"] and report["frames"] == list(range(T_IN, T_IN + T_OUT))
    assert report["checkpoint"] == str(cfg.run_dir / "best.pt") and report["split"] == "val"

    # The same numbers straight from the PNGs, the model, and the textbook formulas.
    videos = sorted((Path(cfg.data.root) / "val").iterdir(), key=lambda p: int(p.name[6:]))
    frames = np.stack([read_first_frames(v, T_IN + T_OUT) for v in videos])  # (N, T, H, W, 3)
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).double().div(255).float()  # (N, T, C, H, W)
    model, _, _ = load_model(cfg.run_dir / "best.pt")
    with torch.no_grad():
        pred = model(x[:, :T_IN]).clamp(0, 1).numpy()
    truth = x[:, T_IN:].numpy()
    baseline = np.repeat(x[:, T_IN - 1:T_IN].numpy(), T_OUT, axis=1)
    for section, candidate in (("model", pred), ("copy_last_frame", baseline)):
        want = numpy_reference(candidate, truth)
        for key, values in want.items():
            np.testing.assert_allclose(report[section]["per_lead_time"][key], values, rtol=2e-4, err_msg=f"{section} {key}")
            assert report[section]["mean"][key] == pytest.approx(values.mean(), rel=2e-4)
    # Summed and per-pixel figures are labelled and differ exactly by the frame size.
    per_frame, per_pixel = (report["model"]["per_lead_time"][k] for k in ("mse_per_frame_sum", "mse_per_pixel"))
    np.testing.assert_allclose(np.array(per_frame) / (HEIGHT * WIDTH * 3), per_pixel, rtol=1e-9)
    assert "summed" in report["definitions"]["mse_per_frame_sum"]


def test_plot_strip_and_gif_are_written(cfg, tmp_path: Path):
    report = evaluate.run(cfg, "val", out_dir=tmp_path / "eval", samples=2)
    files = {k: Path(v) for k, v in report["files"].items()}
    with Image.open(files["plot"]) as plot:
        assert plot.format == "PNG" and plot.width > 400
    with Image.open(files["strip"]) as strip:
        # 2 videos x 3 rows (input / truth / prediction), max(t_in, t_out) frames per row.
        assert strip.height == 2 * 3 * (HEIGHT + figures.GAP_PX)
        assert strip.width == figures.GUTTER_PX + max(T_IN, T_OUT) * (WIDTH + figures.GAP_PX)
        # The first input frame of the first video sits in the top-left cell, pixel for pixel.
        first = read_first_frames(Path(cfg.data.root) / "val" / "video_0", 1)[0]
        cell = np.asarray(strip.convert("RGB"))[:HEIGHT, figures.GUTTER_PX:figures.GUTTER_PX + WIDTH]
        np.testing.assert_array_equal(cell, first)
    with Image.open(files["gif"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == T_IN + T_OUT
    assert not [p for p in files["report"].parent.iterdir() if p.name.startswith(".")]


def test_max_videos_and_split_errors(cfg, tmp_path: Path):
    report = evaluate.run(cfg, "val", out_dir=tmp_path / "one", max_videos=1, samples=1)
    assert report["videos"] == 1 and report["model"]["sequences"] == 1
    with pytest.raises(FramecastError, match=r"hidden: videos have 4 frames, but evaluating .* needs t_in \+ t_out = 4 \+ 4"):
        evaluate.run(cfg, "hidden", out_dir=tmp_path / "h")
    assert evaluate._json_safe({"psnr": [float("inf"), 1.5]}) == {"psnr": ["inf", 1.5]}


def test_evaluate_ssim_setting_picks_the_ssim_and_the_report_names_it(cfg, tmp_path: Path):
    from skimage.metrics import structural_similarity

    cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, ssim="skimage"))
    report = evaluate.run(cfg, "val", out_dir=tmp_path / "eval", samples=0)
    assert report["ssim"] == "skimage" and "7x7 uniform" in report["definitions"]["ssim"]
    # The copy-last baseline's SSIM, as OpenSTL-style code computes it with scikit-image.
    videos = sorted((Path(cfg.data.root) / "val").iterdir(), key=lambda p: int(p.name[6:]))
    frames = np.stack([read_first_frames(v, T_IN + T_OUT) for v in videos]).astype(np.float64) / 255  # (N, T, H, W, 3)
    last, truth = frames[:, T_IN - 1], frames[:, T_IN:]
    want = [np.mean([structural_similarity(last[i], truth[i, k], channel_axis=-1, data_range=1.0)
                     for i in range(len(videos))]) for k in range(T_OUT)]
    np.testing.assert_allclose(report["copy_last_frame"]["per_lead_time"]["ssim"], want, atol=1e-6, rtol=0)
