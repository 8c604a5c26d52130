"""The command line as a user meets it: bad input gives one line naming the file, exit code 2."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("train", "--config", str(tmp_path / "absent.yaml")), "absent.yaml", "not found")


def test_mistyped_override_names_the_setting():
    assert_one_line_error(run_cli("train", "--config", "configs/tiny.yaml", "train.learning_rate=1"),
                          "configs/tiny.yaml", "train.learning_rate")


def test_predict_with_missing_checkpoint(tmp_path):
    assert_one_line_error(run_cli("predict", "--checkpoint", str(tmp_path / "best.pt")), "best.pt", "not found")


def test_pack_reports_the_corrupt_frame(tmp_path):
    data = tmp_path / "data"
    made = run_cli("make-data", "--out", str(data), "--train", "2", "--val", "0", "--unlabeled", "0",
                   "--hidden", "0", "--height", "32", "--width", "48", "--frames", "6", "--hidden-frames", "3")
    assert made.returncode == 0, made.stderr
    broken = data / "train" / "video_1" / "image_3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run_cli("pack", "--data", str(data), "--workers", "1")
    assert_one_line_error(result, str(broken))
    assert not list((data / "packed").glob("*.h5")) if (data / "packed").exists() else True


def test_convert_refuses_an_array_that_disagrees_with_its_index(tmp_path):
    pytest.importorskip("np_to_png")
    npy = tmp_path / "hidden.npy"
    np.save(npy, np.zeros((2, 3, 8, 8, 3), np.uint8))
    result = subprocess.run([sys.executable, str(REPO / "np_to_png.py"), str(npy), "--out", str(tmp_path / "png")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "hidden" in result.stderr and "Traceback" not in result.stderr


def test_sbatch_refusing_the_job_is_one_line_after_its_own_message(tmp_path):
    # A login node whose Slurm controller is down: sbatch is on PATH and fails.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Unable to contact slurm controller (connect failure)' >&2\n"
                      "exit 1\n")
    sbatch.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = run_cli("submit", "train", "--config", "configs/tiny.yaml", "--executor", "slurm",
                     f"run.out_dir={tmp_path / 'runs'}", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # submitit echoes sbatch's stderr first
    assert last.startswith("error: sbatch refused the train job") and "Unable to contact" in last, result.stderr
    assert "--executor local" in last
