"""Installing: requirements.txt (the package's dependencies) gives ranges, so a cluster's own PyTorch is
kept; constraints.txt holds the exact versions tested, and setup.sh (which CI runs) always installs with it."""
from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _pins() -> dict[str, str]:
    pins = {}
    for req in _requirements(REPO / "constraints.txt"):
        [spec] = req.specifier
        assert spec.operator == "==", req  # a constraint is one exact version
        pins[req.name.lower()] = spec.version
    return pins


def test_torch_is_a_range_and_every_requirement_has_its_tested_version_pinned():
    required = _requirements(REPO / "requirements.txt") + _requirements(REPO / "requirements-test.txt")
    torch = next(r for r in required if r.name == "torch")
    assert not any(s.operator == "==" for s in torch.specifier) and torch.specifier.contains("2.13.0")
    assert not torch.specifier.contains("3.0.0")
    pins = _pins()
    for req in required:
        assert req.name.lower() in pins, f"{req.name}: no tested version in constraints.txt"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (req, pins[req.name.lower()])


def test_constraints_are_the_versions_this_environment_was_tested_with():
    for name, pinned in _pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-only package (pyspng) elsewhere
        assert installed.split("+")[0] == pinned, f"{name}: constraints.txt {pinned}, installed {installed}"


def test_setup_sh_installs_every_requirement_with_the_constraints(tmp_path):
    """setup.sh run with a stand-in .venv/bin/python that records its arguments: each `pip install` of the
    requirements carries `-c constraints.txt` (an unconstrained torch range would pull a CUDA build)."""
    for name in ("setup.sh", "requirements.txt", "requirements-test.txt", "constraints.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    calls = tmp_path / "calls.txt"
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 0\n")  # the Debian packages count as installed
    (bin_dir / "dpkg").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(tmp_path / "setup.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line.split() for line in calls.read_text().splitlines() if line.startswith("-m pip install")]
    with_requirements = [args for args in installs if "-r" in args]
    assert with_requirements, installs
    for args in with_requirements:
        assert args[args.index("-c") + 1] == "constraints.txt", args
        assert {"requirements.txt", "requirements-test.txt"} <= {args[i + 1] for i, a in enumerate(args) if a == "-r"}
    assert all("--no-deps" in args for args in installs if args not in with_requirements), installs
