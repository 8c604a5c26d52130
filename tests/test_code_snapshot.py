"""Jobs run the code they were submitted with: a snapshot taken at submission, whatever the checkout
holds when the job starts.  Every edit here happens in a temporary copy of the project, never in the
real checkout."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs import snapshot
from tests import slurm_helpers, toy_stage

REPO = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 150
WITH_TOY = "import tests.toy_stage, runpy; runpy.run_path('main.py', run_name='__main__')"
# Not copied into the temporary project: environments, data, runs, caches, git's own files.
NOT_COPIED = shutil.ignore_patterns(".*", "runs", "datasets", "preds", "__pycache__")
needs_git = pytest.mark.skipif(shutil.which("git") is None or shutil.which("rsync") is None,
                               reason="git and rsync needed for submitit's RsyncSnapshot (apt-get install rsync)")
SLURM_REASON = slurm_helpers.slurm_unavailable()


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=repo,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def make_repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    return root


@needs_git
def test_snapshot_copies_the_working_tree_and_leaves_out_what_is_not_code(tmp_path):
    repo = make_repo(tmp_path / "repo", {
        ".gitignore": ".venv/\nruns/\ndatasets/\n__pycache__/\n",
        "pkg/__init__.py": "", "pkg/a.py": "A = 1\n", "pkg/gone.py": "", "configs/x.yaml": "a: 1\n",
        "main.py": "", "pkg/job.SBATCH": "#!/bin/bash\n", "README.md": "# r\n", "tests/test_a.py": "",
        "benchmarks/__init__.py": "", "benchmarks/b.py": "", "docs/d.md": "", "scripts/tool.py": "",
    })
    (repo / "pkg" / "a.py").write_text("A = 2\n")  # an uncommitted edit: in the snapshot
    (repo / "pkg" / "gone.py").unlink()  # deleted in the working tree: not in the snapshot
    (repo / "pkg" / "new.py").write_text("NEW = 1\n")  # a new module, not committed yet: in it
    (repo / "notes.txt").write_text("scratch\n")  # untracked, not code: left out
    for big in (".venv/lib/x.py", "datasets/d/clip.py", "runs/old/last.py", "pkg/__pycache__/a.cpython-311.pyc",
                "elsewhere_data/v.py"):
        (repo / big).parent.mkdir(parents=True, exist_ok=True)
        (repo / big).write_text("big\n")
    run_dir = repo / "experiments" / "r1"  # a run folder inside the project, not ignored by git

    code = snapshot.take_snapshot(run_dir, skip=[repo / "elsewhere_data"], source=repo)

    root = Path(code.root)
    assert root.parent == run_dir.resolve() / "code" and root.name == code.version["content_sha256"][:16]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    # Only what a job runs: the top-level modules and the packages' Python files (no tests, benchmarks,
    # docs, configs, scripts or other files: cluster scratch counts inodes).
    assert files == ["main.py", "pkg/__init__.py", "pkg/a.py", "pkg/new.py"]
    assert (root / "pkg" / "a.py").read_text() == "A = 2\n"
    assert code.version["git_commit"] == git(repo, "rev-parse", "HEAD").strip() and code.version["git_dirty"]
    assert json.loads((run_dir / "code_version.json").read_text()) == code.version
    assert "uncommitted changes" in code.describe()
    again = snapshot.take_snapshot(run_dir, skip=[repo / "elsewhere_data"], source=repo)
    assert again.root == code.root  # the same code: the same folder
    assert [p.name for p in (run_dir / "code").iterdir()] == [root.name]  # no temporaries left


def test_snapshot_without_git_copies_the_python_files(tmp_path):
    source = tmp_path / "project"
    for name in ("main.py", "pkg/__init__.py", "pkg/a.py", "README.md", ".venv/lib/x.py", "runs/a/b.py",
                 "tests/test_x.py", "benchmarks/bench.py"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("x = 1\n")
    code = snapshot.take_snapshot(tmp_path / "runs" / "r", source=source)
    files = sorted(p.relative_to(code.root).as_posix() for p in Path(code.root).rglob("*") if p.is_file())
    assert files == ["main.py", "pkg/__init__.py", "pkg/a.py"]
    assert code.version["git_commit"] is None and code.version["method"] == "copy of the .py files"


def test_the_project_snapshot_holds_only_what_jobs_run(tmp_path):
    """This project's snapshot: the modules jobs import, none of tests/, benchmarks/, docs/, configs/
    (benchmarks/RESULTS.md has the counts), unless a stage is declared there: the toy stage
    (tests/toy_stage.py, registered by this module's import) brings its folder's Python files along."""
    code = snapshot.take_snapshot(tmp_path / "run", source=snapshot.REPO_ROOT)
    files = [p.relative_to(code.root).as_posix() for p in Path(code.root).rglob("*") if p.is_file()]
    assert all(f.endswith(".py") for f in files), files
    tops = {f.split("/")[0] for f in files if "/" in f}
    assert {"core", "data", "models", "training", "stages", "jobs"} <= tops <= {
        "core", "data", "models", "training", "stages", "jobs", "tests"}
    assert "jobs/stage_job.py" in files and "main.py" in files
    assert "tests/toy_stage.py" in files and "tests/toy_version.py" in files  # the toy stage's folder
    assert "benchmarks" not in tops and "configs" not in tops and "docs" not in tops
    assert snapshot.code_folders(snapshot.REPO_ROOT) >= {"core", "stages", "tests"}


def copy_project(target: Path) -> Path:
    """The project's code, in a git repository of its own: what a user's checkout is."""
    shutil.copytree(REPO, target, ignore=NOT_COPIED)
    return make_repo(target, {})


@needs_git
@pytest.mark.parametrize("executor", [
    "local",
    pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.skipif(SLURM_REASON is not None,
                                                                       reason=SLURM_REASON or "")]),
])
def test_a_job_runs_the_code_it_was_submitted_with(tmp_path, executor):
    """Submit, edit the checkout (a tracked module and a new one), then let the job start: it reports
    the submitted values, and says which code it ran."""
    project = copy_project(tmp_path / "project")
    version_file, extra_file = project / "tests" / "toy_version.py", project / "tests" / "toy_extra.py"
    version_file.write_text('VERSION = "submitted"\n')  # uncommitted edit of a tracked module
    extra_file.write_text('VALUE = "submitted"\n')  # a module never committed
    runs = tmp_path / "runs"
    values = {"run": {"name": "snap", "out_dir": str(runs)}, "data": {"root": "relative-data"},
              "slurm": {"executor": executor, "time_min": 10, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(values))
    hold = runs / "snap" / toy_stage.HOLD_NAME
    hold.parent.mkdir(parents=True)
    hold.touch()  # the job waits for it to go before it imports the toy's modules
    proc = subprocess.Popen([sys.executable, "-c", WITH_TOY, "submit", "toy", "--config", str(tmp_path / "toy.yaml"),
                             "--wait", "--timeout", str(JOB_TIMEOUT_S)],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if line.startswith("submitted toy"):
                break
        job_id = output[-1].split("job ")[1].split()[0]
        version_file.write_text('VERSION = "edited"\n')
        extra_file.write_text('VALUE = "edited"\n')
        hold.unlink()
        output.append(proc.communicate(timeout=JOB_TIMEOUT_S + 60)[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(output)
    assert proc.returncode == 0, text
    log = (runs / "snap" / "jobs" / job_id / f"{job_id}_0_log.out").read_text()
    assert "toy snap shard 0/1 version submitted extra submitted" in log, text + log
    version = json.loads((runs / "snap" / "code_version.json").read_text())
    head = git(project, "rev-parse", "HEAD").strip()
    assert version["git_commit"] == head and version["git_dirty"] is True
    assert version["source"] == str(project.resolve())
    header = next(line for line in log.splitlines() if line.startswith("framecast toy:"))
    assert f"code {version['content_sha256'][:16]} (git {head[:12]}, uncommitted changes)" in header, header
    assert header.endswith(f"from {version['snapshot']}"), header
    # The snapshot holds the submitted code; the checkout has moved on.
    assert (Path(version["snapshot"]) / "tests" / "toy_version.py").read_text() == 'VERSION = "submitted"\n'
    assert not (Path(version["snapshot"]) / ".git").exists()


def test_a_family_declared_outside_the_packages_brings_its_folder(tmp_path, monkeypatch):
    """A family declared in a ``model.plugins`` module (``plugins/myfamily.py``) is imported by the jobs
    too: its folder's Python files are in the snapshot; other folders' are not."""
    import dataclasses

    from core import families

    @dataclasses.dataclass
    class Settings:
        width: int = 4

    # Declared for this test only (a real declaration would stay for the whole test session).
    monkeypatch.setitem(families._REGISTRY, "snapshot_probe",
                        families.Family("snapshot_probe", "a test family", Settings, "plugins.myfamily:Model"))
    source = tmp_path / "project"
    for name in ("pkg/__init__.py", "plugins/myfamily.py", "plugins/helper.py", "scripts/tool.py"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("x = 1\n")
    assert snapshot.code_folders(source) == {"pkg", "plugins"}
    code = snapshot.take_snapshot(tmp_path / "runs" / "r", source=source)
    files = sorted(p.relative_to(code.root).as_posix() for p in Path(code.root).rglob("*") if p.is_file())
    assert files == ["pkg/__init__.py", "plugins/helper.py", "plugins/myfamily.py"]
