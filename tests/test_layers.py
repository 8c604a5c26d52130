"""The layering a contributor relies on: imports only go down the floors (core < models, data <
training < stages < jobs < the command line), no stage imports another, no import circle in jobs/, and
reading a config loads neither a model module nor torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"core": 1, "models": 2, "data": 2, "training": 3, "stages": 4, "jobs": 5}
TOP = 6  # main.py, cli.py, load_model.py, np_to_png.py, framecast_cli.py


def imports_of(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def floor_of(module: str) -> int | None:
    top = module.split(".")[0]
    if top in FLOORS:
        return FLOORS[top]
    return TOP if top in {"main", "cli", "load_model", "np_to_png", "framecast_cli"} else None


def test_imports_only_go_down_the_floors():
    upward = []
    for package, floor in FLOORS.items():
        for path in sorted((REPO / package).glob("*.py")):
            for module in imports_of(path):
                target = floor_of(module)
                if target is not None and target > floor:
                    upward.append(f"{path.relative_to(REPO)} imports {module}")
    assert not upward, upward


def test_no_stage_module_imports_another():
    found = []
    for path in sorted((REPO / "stages").glob("*.py")):
        own = f"stages.{path.stem}"
        for module in imports_of(path):
            if module.startswith("stages.") and not module.startswith(("stages.registry", own)):
                found.append(f"{path.name} imports {module}")
    assert not found, found


def test_no_import_circle_in_jobs():
    graph = {f"jobs.{p.stem}": {m for m in imports_of(p) if m.startswith("jobs.") and m.count(".") == 1}
             for p in (REPO / "jobs").glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = [m for m in graph if reaches(m, m, {m})]
    assert not circles, circles


def test_reading_a_config_loads_no_model_module_and_no_torch():
    code = ("import sys; import core.config; before = [m for m in sys.modules if m.startswith('models')]; "
            "core.config.load_config('configs/mfmnist/simvp.yaml'); "
            "print(before, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]
