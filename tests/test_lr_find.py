"""``main.py lr-find``: the range test writes its plot and curve in a folder of its own, suggests an lr,
and leaves the run folder of the same run.name byte for byte as it was."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict
from stages import registry
from stages.lr_find import CURVE_NAME, LR_FIND_DIR, PLOT_NAME, learning_rates, suggest

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_values(data_root: Path, runs: Path) -> dict:
    return {
        "run": {"name": "tiny-lr", "out_dir": str(runs), "device": "cpu"},
        "data": {"root": str(data_root), "train_splits": ["train"], "t_in": 4, "t_out": 4, "num_workers": 0},
        "model": {"family": "encoder_forecaster", "encoder_forecaster": {
            "cell": "gru", "stem_channels": 4, "hidden_channels": [4, 4], "strides": [1, 2], "kernel_size": 3,
            "norm_groups": 2}},
        "train": {"epochs": 1, "batch_size": 2, "lr": 3e-3, "log_every_steps": 1, "early_stop_patience": 0},
    }


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_learning_rates_are_log_spaced():
    lrs = learning_rates(1e-6, 1.0, 7)
    assert lrs[0] == 1e-6 and math.isclose(lrs[-1], 1.0) and all(math.isclose(b / a, 10) for a, b in zip(lrs, lrs[1:]))


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = learning_rates(1e-5, 1.0, 11)
    smoothed = [1.0, 0.99, 0.97, 0.9, 0.6, 0.3, 0.25, 0.24, 0.5, 2.0, 9.0]  # falls fastest at index 4
    result = suggest(lrs, smoothed, planned_steps=11)
    assert result["suggested_lr"] == result["steepest_lr"] == lrs[4]
    assert result["min_loss_lr"] == lrs[7] and math.isclose(result["min_lr_over_10"], lrs[7] / 10)


def test_the_first_steps_never_give_the_suggestion():
    # A fresh model's first losses drop fastest of all (the reported bug: "suggested lr 1e-06", the
    # sweep's first lr); the real descent comes later.
    lrs = learning_rates(1e-6, 1.0, 40)
    smoothed = [2.0, 1.0, 0.98] + [0.97 - 0.001 * i for i in range(17)] + [0.95 - 0.1 * i for i in range(8)] + \
               [0.2] * 4 + [0.4, 1.0, 3.0, 9.0, 20.0, 40.0, 80.0, 160.0]
    result = suggest(lrs, smoothed, planned_steps=40, skip_start=0.1)
    assert result["skipped_steps"] == 4
    assert result["suggested_lr"] != lrs[0] and lrs[20] <= result["suggested_lr"] <= lrs[27]
    # skip_start 0 still leaves out the first point: its one-sided slope is no descent of the sweep's.
    assert suggest(lrs, smoothed, planned_steps=40, skip_start=0.0)["suggested_lr"] != lrs[0]


def test_no_descent_gives_no_suggestion_and_says_why():
    lrs = learning_rates(1e-5, 1.0, 20)
    rising = suggest(lrs, [1.0 + 0.1 * i for i in range(20)], planned_steps=20)
    flat = suggest(lrs, [1.0, 0.999, 1.001, 0.998] * 5, planned_steps=20)  # noise, under min_drop
    for result in (rising, flat):
        assert result["suggested_lr"] is None and result["rule"].startswith("no descent")
        assert "lr_find.min_drop" in result["rule"] and "\n" not in result["rule"]
    too_short = suggest(lrs[:3], [1.0, 0.5, 0.2], planned_steps=20)
    assert too_short["suggested_lr"] is None and "too few" in too_short["rule"]


def test_lr_find_writes_its_plot_and_curve_and_leaves_the_run_untouched(tmp_path):
    from data.synthetic import make_shapes_dataset

    data_root = make_shapes_dataset(tmp_path / "data", counts={"train": 6, "val": 2, "unlabeled": 0, "hidden": 0},
                                    height=16, width=24, frames=8, hidden_frames=4, seed=0, workers=1)
    values = tiny_values(data_root, tmp_path / "runs")
    registry.run_stage("train", config_from_dict(values))  # an existing run of the same run.name
    run_dir = tmp_path / "runs" / "tiny-lr"
    before = snapshot(run_dir)
    assert {"last.pt", "best.pt", "config.yaml", "metrics.jsonl"} <= set(before)

    config = tmp_path / "tiny-lr.yaml"
    config.write_text(yaml.safe_dump(values))
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "lr-find", "--config", str(config), "--steps", "40",
                           "--start-lr", "1e-5", "--end-lr", "10"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / LR_FIND_DIR / "tiny-lr"
    assert f"wrote {out}" in done.stdout and "lr-find: suggested lr " in done.stdout
    # No terminal here (captured output): progress lines instead of a bar, every train.log_every_steps.
    assert "lr-find: step 1/40, lr 1e-05" in done.stderr and "lr-find: step 2/40" in done.stderr

    assert (out / PLOT_NAME).read_bytes()[:8] == PNG_MAGIC
    report = json.loads((out / CURVE_NAME).read_text())
    curve = report["curve"]
    assert 2 <= len(curve) == report["steps_run"] <= 40
    assert curve[0]["lr"] == pytest.approx(1e-5)
    assert all(b["lr"] > a["lr"] for a, b in zip(curve, curve[1:]))
    assert all(math.isfinite(p["loss"]) and math.isfinite(p["smoothed_loss"]) for p in curve)
    assert report["suggested_lr"] is not None and curve[4]["lr"] <= report["suggested_lr"] <= curve[-1]["lr"]
    assert report["skipped_steps"] == 4  # lr_find.skip_start 0.1 of 40 steps
    assert report["family"] == "encoder_forecaster" and report["batch_size"] == 2 and report["loss"] == "mse"

    assert snapshot(run_dir) == before  # not a byte, not an mtime of the run changed
