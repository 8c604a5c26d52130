"""Sweeps (jobs/sweep.py) and job arrays above the cluster's MaxArraySize (jobs/submit.py), without Slurm.

The splitting is checked against a recording stand-in for submitit's executor; the Slurm tests
(tests/test_sweep_slurm.py) submit real arrays. The local sweep at the end trains for real.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict, config_to_dict, load_config
from core.errors import FramecastError
from jobs import submit
from jobs.snapshot import CodeSnapshot
from jobs.sweep import MANIFEST_NAME, parse_grid, plan_sweep, split_values, value_text
from core.grid import short_names, trained_settings
from tests import slurm_helpers

REPO = Path(__file__).resolve().parent.parent
LOCAL_TIMEOUT_S = 240


# ----------------------------------------------------------------------------- grids and names


def test_grid_values_split_at_top_level_commas_only():
    assert split_values("1e-3,3e-4") == ["1e-3", "3e-4"]
    assert split_values("[8,8],[16,16]") == ["[8,8]", "[16,16]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_grid(["train.lr=1e-3,3e-4", "model.family=predrnn,simvp"]) == [
        ("train.lr", ["1e-3", "3e-4"]), ("model.family", ["predrnn", "simvp"])]


@pytest.mark.parametrize("item, fragment", [
    ("train.lr", "expected KEY=V1,V2"),
    ("train.lr=1e-3,", "expected KEY=V1,V2"),
    ("train.seed=1,2", "--seeds"),
    ("slurm.mem_gb=1,2", "only data.*, model.*, train.* settings"),
    ("run.name=a,b", "only data.*, model.*, train.* settings"),
    ("train.lr=1e-3,1e-3", "listed twice"),
])
def test_bad_grids_are_one_clear_error(item, fragment):
    with pytest.raises(FramecastError, match=fragment.replace("*", r"\*").replace(".", r"\.")):
        parse_grid([item])
    with pytest.raises(FramecastError, match="given twice"):
        parse_grid(["train.lr=1", "train.lr=2"])


def test_run_names_are_short_valid_run_names():
    assert short_names(["train.lr", "model.family"]) == {"train.lr": "lr", "model.family": "family"}
    assert short_names(["model.convlstm.cell", "model.encoder_forecaster.cell", "train.lr"]) == {
        "model.convlstm.cell": "convlstm.cell", "model.encoder_forecaster.cell": "encoder_forecaster.cell",
        "train.lr": "lr"}
    assert [value_text(v) for v in ("1e-3", "[8,8]", "'a b'", "x/y")] == ["1e-3", "8+8", "ab", "x_y"]


def test_a_planned_sweep_has_one_checked_config_per_point_and_seed(tmp_path):
    sweep = plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}", "run.name=sw", "train.seed=5"],
                       ["train.lr=1e-3,3e-4", "model.encoder_forecaster.hidden_channels=[8,8],[16,16]"], 2)
    names = [r.name for r in sweep.runs]
    assert names[:2] == ["lr=1e-3,hidden_channels=8+8,seed=5", "lr=1e-3,hidden_channels=8+8,seed=6"]
    assert len(names) == len(set(names)) == 8
    assert sweep.folder == tmp_path / "sw"
    first = sweep.runs[0].cfg
    assert first.run_dir == tmp_path / "sw" / names[0] and first.train.seed == 5 and first.train.lr == 1e-3
    last = sweep.runs[-1].cfg
    assert last.train.lr == 3e-4 and last.model.encoder_forecaster.hidden_channels == [16, 16]
    assert last.train.seed == 6
    assert sweep.compare.compare.runs == [str(r.cfg.run_dir) for r in sweep.runs]
    assert sweep.compare.compare.out == str(tmp_path / "sw" / "compare")
    with pytest.raises(FramecastError, match="nothing to sweep"):
        plan_sweep("configs/tiny.yaml", [], [], 1)
    with pytest.raises(FramecastError, match="train.lr"):  # every config is loaded and checked first
        plan_sweep("configs/tiny.yaml", [], ["train.lr=1e-3,oops"], 1)


def test_two_spellings_of_one_value_are_one_error_naming_both(tmp_path):
    with pytest.raises(FramecastError, match=r"train.lr=3e-3 and train.lr=0.003 are the same setting") as caught:
        plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}"], ["train.lr=3e-3,0.003"], 1)
    assert "\n" not in str(caught.value)
    with pytest.raises(FramecastError, match=r"\[8,8\] and .*\[8, 8\] are the same"):
        plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}"],
                   ["model.encoder_forecaster.hidden_channels=[8,8],[8, 8]"], 1)


def test_a_setting_of_a_family_no_run_builds_is_an_error_naming_it(tmp_path):
    with pytest.raises(FramecastError, match=r"model.convlstm.kernel_size: a setting of the convlstm family, "
                                             r"but every run builds model.family=encoder_forecaster"):
        plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}"], ["model.convlstm.kernel_size=3,5"], 2)


def test_a_family_setting_swept_with_the_family_trains_the_other_family_once(tmp_path):
    sweep = plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}"],
                       ["model.family=encoder_forecaster,convlstm", "model.convlstm.kernel_size=3,5"], 2)
    built = [(r.cfg.model.family, r.cfg.model.convlstm.kernel_size, r.seed) for r in sweep.runs]
    assert built == [("encoder_forecaster", 3, 0), ("encoder_forecaster", 3, 1),
                     ("convlstm", 3, 0), ("convlstm", 3, 1), ("convlstm", 5, 0), ("convlstm", 5, 1)]


# ----------------------------------------------------------------------------- arrays above MaxArraySize


class FakeExecutor:
    """Records what submitit's executor is asked to submit; job ids like Slurm's (<array>_<task>)."""

    cluster = "slurm"
    ids = itertools.count(101)  # one sequence for every executor, as the cluster's

    def __init__(self):
        self.parameters: dict = {}
        self.arrays: list[tuple[int, dict]] = []  # (tasks, parameters at submission)

    def update_parameters(self, **values):
        self.parameters.update(values)

    def _job(self, job_id: str):
        return type("Job", (), {"job_id": job_id})()

    def submit(self, fn):
        self.arrays.append((1, dict(self.parameters)))
        return self._job(str(next(self.ids)))

    def submit_array(self, fns):
        self.arrays.append((len(fns), dict(self.parameters)))
        array_id = next(self.ids)
        if len(fns) == 1:  # submitit submits an "array" of one as a plain job
            return [self._job(str(array_id))]
        return [self._job(f"{array_id}_{i}") for i in range(len(fns))]


def test_array_chunks_share_the_parallelism():
    assert submit.array_chunks(5, 2, 16) == [(0, 2, 6), (2, 4, 5), (4, 5, 5)]
    assert submit.array_chunks(4, 2, 1) == [(0, 2, 1), (2, 4, 1)]  # never fewer than one each
    assert submit.array_chunks(3, 1001, 16) == [(0, 3, 16)]


def test_array_limit_is_the_smaller_of_the_setting_and_the_cluster_s(monkeypatch):
    slurm = config_from_dict({"slurm": {"max_array_size": 50}}).slurm
    monkeypatch.setattr(submit, "cluster_max_array_size", lambda: 1001)
    assert submit.array_limit(slurm) == 50
    monkeypatch.setattr(submit, "cluster_max_array_size", lambda: 8)
    assert submit.array_limit(slurm) == 8
    monkeypatch.setattr(submit, "cluster_max_array_size", lambda: None)  # no scontrol
    assert submit.array_limit(slurm) == 50
    assert submit.array_limit(config_from_dict({}).slurm) is None


def test_max_array_size_is_read_from_scontrol(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'MaxArraySize            = 7'\necho 'MaxJobCount             = 10000'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    submit.cluster_max_array_size.cache_clear()
    try:
        assert submit.cluster_max_array_size() == 7
    finally:
        submit.cluster_max_array_size.cache_clear()


def test_predict_shards_above_the_limit_go_in_several_arrays_merged_after_all(tmp_path, monkeypatch):
    monkeypatch.setattr(submit, "cluster_max_array_size", lambda: 2)
    monkeypatch.setattr(FakeExecutor, "ids", itertools.count(101))
    fakes: list[FakeExecutor] = []

    def make_executor(cfg, stage, executor=None, code_root=None):
        fakes.append(FakeExecutor())
        fakes[-1].update_parameters(slurm_array_parallelism=cfg.slurm.array_parallelism)
        return fakes[-1]

    monkeypatch.setattr(submit, "make_executor", make_executor)
    cfg = config_from_dict({"run": {"out_dir": str(tmp_path)}, "predict": {"shards": 5},
                            "slurm": {"array_parallelism": 4}})
    code = CodeSnapshot(root=tmp_path, version={})
    jobs = submit.submit_jobs("predict", cfg, "slurm", code=code)
    shards, merge = fakes
    assert [tasks for tasks, _ in shards.arrays] == [2, 2, 1]  # 5 shards, at most 2 per array
    assert [p["slurm_array_parallelism"] for _, p in shards.arrays] == [2, 1, 1]  # 4 at most in all
    assert [job.job_id for job in jobs] == ["101_0", "101_1", "102_0", "102_1", "103", "104"]
    assert merge.arrays[0][1]["slurm_dependency"] == "afterok:101:102:103"  # the merge waits for every array
    assert submit.job_count("predict", cfg) == len(jobs)


def test_short_arrays_stay_one_array(tmp_path, monkeypatch):
    monkeypatch.setattr(submit, "cluster_max_array_size", lambda: 1001)
    fake = FakeExecutor()
    monkeypatch.setattr(submit, "make_executor", lambda *args, **kwargs: fake)
    cfg = config_from_dict({"run": {"out_dir": str(tmp_path)}, "predict": {"shards": 3}})
    jobs = submit.submit_jobs("predict", cfg, "slurm", code=CodeSnapshot(root=tmp_path, version={}), join=False)
    assert [tasks for tasks, _ in fake.arrays] == [3] and len(jobs) == 3


# ----------------------------------------------------------------------------- local executor


def test_local_sweep_trains_the_seeds_one_after_another_then_compares(tmp_path):
    data_root = slurm_helpers.make_tiny_data(tmp_path / "shapes")
    values = slurm_helpers.tiny_job_values(data_root, tmp_path / "runs", "local-sweep", executor="local",
                                       train={"epochs": 1}, evaluate={"samples": 0})
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(values))
    empty = tmp_path / "bin"  # no sbatch: what a laptop looks like
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "main.py", "submit", "sweep", "--config", str(config_file), "--seeds", "2", "--wait",
         "--timeout", str(LOCAL_TIMEOUT_S)],
        cwd=REPO, capture_output=True, text=True, timeout=LOCAL_TIMEOUT_S + 60,
        env={**os.environ, "PATH": f"{empty}{os.pathsep}{Path(sys.executable).parent}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("(local)") == 3 and "all jobs completed" in done.stdout  # 2 runs, then compare
    sweep = tmp_path / "runs" / "local-sweep"
    assert sorted(p.name for p in sweep.glob("seed=*")) == ["seed=0", "seed=1"]
    # one after another: the second run started after the first had finished
    first, second = (json.loads(line) for line in ((sweep / name / "metrics.jsonl").read_text().splitlines()[0]
                                                   for name in ("seed=0", "seed=1")))
    last_of_first = json.loads((sweep / "seed=0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert second["time"] > last_of_first["time"] >= first["time"]
    [row] = list(csv.DictReader((sweep / "compare" / "compare.csv").open()))
    assert row["seeds"] == "0 1" and row["runs_scored"] == "2" and row["mse_std"] != ""
    manifest = json.loads((sweep / MANIFEST_NAME).read_text())
    assert [r["name"] for r in manifest["runs"]] == ["seed=0", "seed=1"]


def test_a_family_grid_gives_each_member_its_own_section_and_any_family_keys_follow_it(tmp_path):
    sweep = plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}", "run.name=fam", "model.*.sampling_stop_step=7"],
                       ["model.family=convlstm,predrnn", "model.*.sampling=linear,none"], 1)
    assert [r.name for r in sweep.runs] == ["family=convlstm,sampling=linear,seed=0", "family=convlstm,sampling=none,seed=0",
                                            "family=predrnn,sampling=linear,seed=0", "family=predrnn,sampling=none,seed=0"]
    defaults = load_config("configs/tiny.yaml").model
    for run, (family, sampling) in zip(sweep.runs, itertools.product(["convlstm", "predrnn"], ["linear", "none"])):
        model = run.cfg.model
        other = "predrnn" if family == "convlstm" else "convlstm"
        assert model.family == family
        assert (model.section.sampling, model.section.sampling_stop_step) == (sampling, 7)
        assert getattr(model, other) == getattr(defaults, other)  # the other family's section untouched
        # what the comparison groups by: the built family's settings only
        settings = trained_settings(config_to_dict(run.cfg))
        assert settings[f"model.{family}.sampling"] == sampling
        assert not any(key.startswith(f"model.{other}.") for key in settings)
    # a shared key one of the families lacks: one line naming that family's setting, before any submission
    with pytest.raises(FramecastError, match=r"unknown setting model\.predrnn\.cell"):
        plan_sweep("configs/tiny.yaml", [f"run.out_dir={tmp_path}"], ["model.family=convlstm,predrnn", "model.*.cell=gru"], 1)
