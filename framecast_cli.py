"""The ``framecast`` command that ``pip install`` puts on the PATH: ``main.py`` under another name.

    framecast train --config configs/default.yaml        # = python main.py train ...
    framecast runs

framecast's modules import each other as top-level packages (``core``, ``data``, ``stages``, ...), so the
installed copy keeps them together in one folder, ``site-packages/framecast/``, beside this module,
and puts that folder first on ``sys.path`` here, in the framecast process (and in its jobs, through the
code snapshot on their PYTHONPATH) only: ``import data`` elsewhere in the environment still means
whatever it meant. From a checkout (``pip install -e .``) the folder is the checkout itself.
"""
from __future__ import annotations

import sys
from pathlib import Path


def code_root() -> Path:
    """The folder holding main.py, core/, stages/, ...: the installed package's, or the checkout."""
    here = Path(__file__).resolve().parent
    for root in (here / "framecast", here):
        if (root / "main.py").is_file() and (root / "core" / "paths.py").is_file():
            return root
    raise SystemExit(f"framecast: its modules are missing beside {here} (reinstall framecast)")


def main() -> int:
    root = str(code_root())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    from cli import main as run_command  # framecast's own (the folder above is first on sys.path)

    return run_command(prog="framecast")


if __name__ == "__main__":
    sys.exit(main())
