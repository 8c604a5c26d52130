"""The compare stage: runs grouped by what they trained, seeds pooled into mean +/- std, reports reused."""
from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from train_helpers import make_data, tiny_config

from core.config import load_config
from core.errors import FramecastError
from core import outputs
from stages import compare
from stages.train import CONFIG_NAME, run

REPO = Path(__file__).resolve().parent.parent
# Two seeds of one learning rate, one run of another: two grid points.
RUNS = {"lr=3e-3,seed=0": ("train.lr=3e-3", "train.seed=0"), "lr=3e-3,seed=1": ("train.lr=3e-3", "train.seed=1"),
        "lr=1e-3,seed=0": ("train.lr=1e-3", "train.seed=0")}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A folder of three trained runs (1 epoch each), a run that never got a best.pt, and a non-run folder."""
    data_root = make_data(tmp_path_factory.mktemp("shapes"))
    folder = tmp_path_factory.mktemp("runs") / "sweep"
    for name, extra in RUNS.items():
        run(tiny_config(data_root, folder, name, "train.epochs=1", *extra))
    broken = folder / "lr=1e-2,seed=0"
    broken.mkdir()
    shutil.copy(folder / "lr=3e-3,seed=0" / CONFIG_NAME, broken / CONFIG_NAME)  # config.yaml, no best.pt
    (folder / "code").mkdir()  # a sweep's code snapshot folder: not a run
    return folder


def compare_config(sweep: Path, *extra: str):
    runs = f"compare.runs=['{sweep}/*', '{sweep}/lr=9,seed=0']"  # a glob, and a run that never began
    return load_config(None, [runs, "run.device=cpu", "evaluate.samples=0", *extra])


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_compare_tabulates_mean_and_std_over_seeds_per_point(sweep):
    table = compare.run(compare_config(sweep))
    out = sweep / "compare"
    assert table == out / outputs.TABLE_MD
    reports = {name: json.loads((sweep / name / "eval" / "val" / "report.json").read_text()) for name in RUNS}
    mse = {name: r["model"]["mean"]["mse_per_frame_sum"] for name, r in reports.items()}
    ssim = {name: r["model"]["mean"]["ssim"] for name, r in reports.items()}

    points = rows(out / outputs.TABLE_CSV)
    assert [p["train.lr"] for p in points] == ["0.001", "0.003"]  # sorted by the setting that differs
    low, high = points
    assert (low["seeds"], low["runs_scored"], low["mse_std"]) == ("0", "1", "")  # one seed: no std
    assert high["seeds"] == "0 1" and high["runs_scored"] == "2"
    # the lr=3e-3 point pools the report of its seed 0 and the broken run's config (no best.pt)
    assert high["runs_not_scored"] == "1"
    pair = [mse["lr=3e-3,seed=0"], mse["lr=3e-3,seed=1"]]
    assert float(high["mse_mean"]) == pytest.approx(statistics.fmean(pair), rel=1e-6)
    assert float(high["mse_std"]) == pytest.approx(statistics.stdev(pair), rel=1e-6)
    assert float(high["ssim_mean"]) == pytest.approx((ssim["lr=3e-3,seed=0"] + ssim["lr=3e-3,seed=1"]) / 2, rel=1e-6)
    assert int(high["parameters"]) > 0 and float(high["train_minutes_mean"]) >= 0

    runs = {r["run"]: r for r in rows(out / outputs.RUNS_CSV)}
    assert set(runs) == {*RUNS, "lr=1e-2,seed=0", "lr=9,seed=0"}  # code/ is not a run
    assert runs["lr=1e-2,seed=0"]["status"] == "no best.pt"
    assert runs["lr=9,seed=0"]["status"] == "no such folder"  # named, so listed
    assert float(runs["lr=1e-3,seed=0"]["mse"]) == pytest.approx(mse["lr=1e-3,seed=0"], rel=1e-6)
    text = table.read_text()
    assert "| lr | seeds | MSE | SSIM |" in text and " ± " in text and "no best.pt" in text
    # both baselines, on the same videos (every run's report scores the same val split)
    baseline = reports["lr=1e-3,seed=0"]["mean_of_inputs"]["mean"]
    assert f"mean-of-inputs baseline MSE: {baseline['mse_per_frame_sum']:.5g}, SSIM {baseline['ssim']:.4g}" in text
    with Image.open(out / outputs.COMPARE_PLOT_NAME) as image:
        assert image.format == "PNG"


def test_a_second_comparison_reuses_the_reports(sweep):
    report = sweep / "lr=3e-3,seed=1" / "eval" / "val" / "report.json"
    if not report.exists():
        compare.run(compare_config(sweep))
    before = report.stat().st_mtime_ns
    table = compare.run(compare_config(sweep, f"compare.out={sweep / 'again'}"))
    assert report.stat().st_mtime_ns == before  # not evaluated again
    assert table.read_text().count("(report reused)") == 3
    # a report of fewer videos is not reused
    compare.run(compare_config(sweep, "evaluate.max_videos=2", f"compare.out={sweep / 'fewer'}"))
    assert json.loads(report.read_text())["videos"] == 2


def test_compare_from_the_command_line(sweep, tmp_path):
    done = subprocess.run(
        [sys.executable, "main.py", "compare", "--runs", f"{sweep}/lr=3e-3,*", "--out", str(tmp_path / "cli"),
         "run.device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {tmp_path / 'cli' / outputs.TABLE_MD}" in done.stdout
    [point] = rows(tmp_path / "cli" / outputs.TABLE_CSV)
    assert point["point"] == "all runs" and point["runs_scored"] == "2"  # one setting: nothing differs


def test_nothing_to_compare_is_one_clear_error(tmp_path):
    with pytest.raises(FramecastError, match="compare.runs is empty"):
        compare.run(load_config(None, []))
    with pytest.raises(FramecastError, match="no run folder"):
        compare.run(load_config(None, [f"compare.runs=['{tmp_path}/*']"]))
    with pytest.raises(FramecastError, match="none of these folders exists"):
        compare.run(load_config(None, [f"compare.runs=['{tmp_path}/a', '{tmp_path}/b']"]))


def test_points_of_different_families_are_named_by_what_varies_within_each():
    from stages.compare import RunScore, group_points

    def run(family: str, sampling: str, seed: int) -> RunScore:
        section = {"hidden_channels": [8, 8], "sampling": sampling}
        return RunScore(Path(f"{family}-{sampling}-{seed}"), "ok", settings={
            "model.family": family, **{f"model.{family}.{k}": v for k, v in section.items()}, "train.seed": seed})

    runs = [run(f, s, seed) for f in ("predrnn", "convlstm") for s in ("none", "linear") for seed in (0, 1)]
    varying, points = group_points(runs)
    # hidden_channels is the same within each family: no column; each family's sampling varies
    assert varying == ["model.convlstm.sampling", "model.family", "model.predrnn.sampling"]
    assert [(p.values["model.family"], p.values["model.convlstm.sampling"] or p.values["model.predrnn.sampling"])
            for p in points] == [("convlstm", "linear"), ("convlstm", "none"), ("predrnn", "linear"), ("predrnn", "none")]
    assert all(len(p.runs) == 2 for p in points)


def test_compare_scores_with_the_ssim_it_is_given_and_says_which(sweep):
    report = sweep / "lr=3e-3,seed=1" / "eval" / "val" / "report.json"
    if not report.exists():
        compare.run(compare_config(sweep))
    gaussian = json.loads(report.read_text())["model"]["mean"]["ssim"]
    table = compare.run(compare_config(sweep, "evaluate.ssim=openstl", f"compare.out={sweep / 'openstl'}"))
    assert "(report reused)" not in table.read_text()  # a Gaussian-SSIM report is not an OpenSTL one
    assert "SSIM (evaluate.ssim=openstl: 7x7 uniform window" in table.read_text()
    scored = json.loads(report.read_text())
    assert scored["ssim"] == "openstl" and scored["model"]["mean"]["ssim"] != pytest.approx(gaussian, abs=1e-4)
    run_row = {r["run"]: r for r in rows(sweep / "openstl" / outputs.RUNS_CSV)}["lr=3e-3,seed=1"]
    assert float(run_row["ssim"]) == pytest.approx(scored["model"]["mean"]["ssim"], rel=1e-6)


def test_runs_of_the_same_settings_and_seed_count_once(tmp_path):
    """Two spellings of one learning rate trained the same thing twice: one sample, not two seeds."""
    settings = {"train.lr": 0.003, "train.seed": 1, "model.family": "encoder_forecaster"}
    runs = [compare.RunScore(tmp_path / name, "ok", settings=dict(settings), mse=190.33, ssim=0.5)
            for name in ("lr=3e-3,seed=1", "lr=0.003,seed=1")]
    other = {**settings, "train.seed": 2}
    runs.append(compare.RunScore(tmp_path / "lr=0.003,seed=2", "ok", settings=other, mse=180.0, ssim=0.6))
    varying, points = compare.group_points(runs)
    [point] = points
    assert [r.name for r in point.scored] == ["lr=3e-3,seed=1", "lr=0.003,seed=2"] and point.seeds == 2
    assert point.stats("mse") == (statistics.fmean([190.33, 180.0]), statistics.stdev([190.33, 180.0]))
    table = compare.markdown(varying, points, runs, {}, "val")
    assert "| 2/2 |" in table and "same settings and seed as lr=3e-3,seed=1: counted once" in table
    runs[2].settings = {**settings}  # now all three are one training: no spread to report
    varying, [point] = compare.group_points(runs)
    assert len(point.scored) == 1 and point.stats("mse") == (190.33, None)


def test_settings_of_families_not_built_do_not_make_points():
    from core.grid import trained_settings

    a = {"model": {"family": "encoder_forecaster", "encoder_forecaster": {"k": 3}, "convlstm": {"kernel_size": 3}}}
    b = {"model": {"family": "encoder_forecaster", "encoder_forecaster": {"k": 3}, "convlstm": {"kernel_size": 5}}}
    assert trained_settings(a) == trained_settings(b) == {"model.family": "encoder_forecaster",
                                                          "model.encoder_forecaster.k": 3}
