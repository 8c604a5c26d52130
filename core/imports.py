"""``"package.module:name"`` -> the object: declarations (stages, model families) name what they run
this way, so nothing is imported until it is used and ``main.py --help`` never loads torch."""
from __future__ import annotations

import importlib
from typing import Any


def import_named(path: str, owner: str) -> Any:
    """The object ``path`` names, imported now; ``owner`` (e.g. "stage 'train'") is named when it is missing."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{owner}: {module_name} has no {attr!r} ({path!r})") from None
