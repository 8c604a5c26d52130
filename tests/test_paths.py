"""${VAR} in path settings: kept as written in the config, expanded where the path is used (inside the
job, on the compute node), one clear line when a variable is unset."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict, config_to_dict, load_config, save_config
from core.errors import FramecastError
from core.paths import expand, expand_config
from jobs import submit
from jobs.wait import wait_jobs
from tests import paths_stage, slurm_helpers

REPO = Path(__file__).resolve().parent.parent
VAR = "FRAMECAST_TEST_ROOT"
JOB_TIMEOUT_S = 180
SLURM_REASON = slurm_helpers.slurm_unavailable()


def test_expand_variables_and_defaults():
    env = {"A": "/scratch/me", "EMPTY": ""}
    assert expand("data.root", "${A}/x", env) == "/scratch/me/x"
    assert expand("data.root", "${B:-/tmp/d}/x", env) == "/tmp/d/x"
    assert expand("data.stage_to", "${B:-}", env) == ""
    assert expand("data.root", "plain/$A/~", env) == "plain/$A/~"  # only ${...} is expanded
    with pytest.raises(FramecastError) as unset:
        expand("data.root", "${SCRATCH}/competition", env)
    assert str(unset.value).startswith(
        f"data.root: ${{SCRATCH}}/competition uses $SCRATCH, which is not set on node {socket.gethostname().split('.')[0]}")
    with pytest.raises(FramecastError, match=r"uses \$EMPTY, which is empty"):
        expand("run.out_dir", "${EMPTY}/runs", env)  # never "/runs"


@pytest.mark.parametrize("text, fragment", [("${1A}/x", "is not ${NAME}"), ("${A/x", "without its closing"),
                                            ("${A:x}/y", "is not ${NAME}")])
def test_malformed_references_are_refused_at_load_time(text, fragment):
    with pytest.raises(FramecastError) as bad:
        load_config(None, [f"data.root={text}"])
    assert str(bad.value).startswith("data.root: ") and fragment in str(bad.value)


def test_an_expanded_config_is_written_as_it_was_written(tmp_path):
    cfg = config_from_dict({"data": {"root": f"${{{VAR}}}/competition", "train_splits": ["train", f"${{{VAR}}}/x.npy"]},
                            "run": {"out_dir": f"${{{VAR}:-runs}}/r"}, "predict": {"out": "plain.npy"}})
    expanded = expand_config(cfg, env={VAR: "/node/scratch"})
    assert expanded.data.root == "/node/scratch/competition"
    assert expanded.data.train_splits == ["train", "/node/scratch/x.npy"]
    assert expanded.run.out_dir == "/node/scratch/r"
    assert cfg.data.root == f"${{{VAR}}}/competition"  # the original is not touched
    written = config_to_dict(expanded)
    assert written["data"]["root"] == f"${{{VAR}}}/competition"
    assert written["data"]["train_splits"] == ["train", f"${{{VAR}}}/x.npy"]
    assert written["run"]["out_dir"] == f"${{{VAR}:-runs}}/r"
    save_config(expanded, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["root"] == f"${{{VAR}}}/competition"
    expanded.data.root = "/elsewhere"  # changed after expanding: written as it now is
    assert config_to_dict(expanded)["data"]["root"] == "/elsewhere"


def test_run_dir_expands_run_out_dir(monkeypatch):
    monkeypatch.setenv(VAR, "/scratch/x")
    assert config_from_dict({"run": {"out_dir": f"${{{VAR}}}/runs", "name": "a"}}).run_dir == Path("/scratch/x/runs/a")


def test_an_unset_variable_is_one_line_from_the_cli(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != VAR}
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "train", "--config", "configs/tiny.yaml",
                           f"data.root=${{{VAR}}}/competition", f"run.out_dir={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: data.root: ${{{VAR}}}/competition uses ${VAR}, which is not set on node "), done.stderr


def test_the_submitting_host_expands_only_the_log_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(VAR, raising=False)
    cfg = config_from_dict({"slurm": {"folder": f"${{{VAR}}}/logs/%j"}})
    with pytest.raises(FramecastError, match=rf"slurm.folder: .* uses \${VAR}, which is not set on the submitting host"):
        submit.job_folder(cfg)
    monkeypatch.setenv(VAR, str(tmp_path))
    assert submit.job_folder(cfg) == f"{tmp_path}/logs/%j"


def test_shipped_configs_are_found_from_any_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/tiny.yaml").run.name == "tiny"
    with pytest.raises(FramecastError, match="config file not found"):
        load_config("configs/absent.yaml")


def _probe_config(tmp_path: Path, setup: list[str]) -> dict:
    return {
        "run": {"name": "probe", "out_dir": str(tmp_path / "runs"), "device": "cpu"},
        "data": {"root": f"${{{VAR}}}/data"},
        "predict": {"out": f"${{{VAR}}}/preds/hidden.npy"},
        "evaluate": {"out": f"${{{VAR}:-/nowhere}}/eval"},
        "slurm": {"executor": "slurm", "time_min": 5, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1,
                  "setup": setup},
    }


@pytest.mark.slurm
@pytest.mark.skipif(SLURM_REASON is not None, reason=SLURM_REASON or "")
def test_paths_expand_inside_a_real_slurm_job(monkeypatch, tmp_path):
    """The variable exists only in the job (slurm.setup exports it): the stage sees the node's value,
    the config it writes keeps ${VAR}; without it the job fails with the one-line reason."""
    monkeypatch.delenv(VAR, raising=False)
    node_root = tmp_path / "node"
    assert paths_stage.PROBE.name == "paths-probe"
    good = config_from_dict(_probe_config(tmp_path, [f"export {VAR}={node_root}"]))
    bad = config_from_dict(_probe_config(tmp_path, []))
    jobs = [*submit.submit_jobs("paths-probe", good, "slurm"), *submit.submit_jobs("paths-probe", bad, "slurm")]
    ok, failed = wait_jobs(jobs, timeout_s=JOB_TIMEOUT_S)
    assert ok.ok, ok.describe()
    assert ok.result["env"] == str(node_root)
    assert ok.result["seen"] == {"data.root": f"{node_root}/data", "predict.out": f"{node_root}/preds/hidden.npy",
                                 "evaluate.out": f"{node_root}/eval", "run_dir": str(tmp_path / "runs" / "probe")}
    assert ok.result["written"] == {"data.root": f"${{{VAR}}}/data", "predict.out": f"${{{VAR}}}/preds/hidden.npy",
                                    "evaluate.out": f"${{{VAR}:-/nowhere}}/eval"}
    saved = yaml.safe_load((tmp_path / "runs" / "probe" / "config.yaml").read_text())
    assert saved["data"]["root"] == f"${{{VAR}}}/data"
    assert not failed.ok
    log = Path(jobs[1].paths.stderr).read_text()
    assert f"data.root: ${{{VAR}}}/data uses ${VAR}, which is not set on node {ok.result['host'].split('.')[0]}" in log
