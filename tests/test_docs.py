"""What the repository tells its users stands on its own: no citations of notes they do not have, and
every relative link of its Markdown files leads to a file that is there."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CITATIONS = re.compile(r"shared README|README §|shared/README|/work/shared")


def _tracked() -> list[Path]:
    done = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip("needs a git checkout")
    return [REPO / name for name in done.stdout.splitlines()
            if name.endswith((".py", ".md", ".yaml", ".sh", ".SBATCH", ".toml", ".txt")) and (REPO / name).is_file()]


def test_no_file_cites_notes_outside_the_repository():
    this = Path(__file__).resolve()
    cited = [f"{p.relative_to(REPO)}:{n}" for p in _tracked() if p != this
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if CITATIONS.search(line)]
    assert not cited, cited


def test_relative_links_in_markdown_resolve():
    broken = []
    for doc in (p for p in _tracked() if p.suffix == ".md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+://", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken
