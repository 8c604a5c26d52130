"""The by-hand sbatch scripts (jobs/*.SBATCH): their logs never land in the checkout as files git sees."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "jobs").glob("*.SBATCH"))


def _output(script: Path) -> str:
    found = re.findall(r"^#SBATCH --output=(\S+)$", script.read_text(), re.MULTILINE)
    assert len(found) == 1, script
    return found[0]


def _ignored(relative: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", relative], cwd=REPO, capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_sbatch_logs_go_to_an_ignored_folder_that_exists(script):
    """Slurm does not create the --output folder (a missing one fails the job): it is in the checkout,
    and what the jobs write there, like Slurm's default slurm-<id>.out, is ignored by git."""
    pattern = _output(script)
    folder = (REPO / pattern).parent
    assert folder.is_dir() and folder != REPO, pattern
    example = pattern.replace("%x", "framecast-train").replace("%j", "123").replace("%A", "123").replace("%a", "0")
    assert _ignored(example), example
    assert _ignored("slurm-123.out") and _ignored("slurm-framecast-train-123.out")
    assert not _ignored(str(folder.relative_to(REPO) / ".gitignore"))  # the folder itself stays tracked


def test_prediction_array_logs_are_named_by_array_and_task():
    """pred.SBATCH runs as an array: one log per task, named <array id>_<task> (%j alone would scatter them)."""
    assert "%A_%a" in _output(REPO / "jobs" / "pred.SBATCH")
