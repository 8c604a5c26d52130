"""The settings that define what a run trained, and how a grid of them is named: read by the sweep
that names its runs and by the comparison that groups them into points (seeds pooled)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from core.config import family_names

# What was trained: the config sections that group runs into points (train.seed aside).
TRAINED_SECTIONS = ("data", "model", "train")
SEED_KEY = "train.seed"


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each dotted setting by its shortest dotted tail that no other of ``keys`` ends with:
    ``train.lr`` -> ``lr``; ``model.convlstm.cell`` and ``model.predrnn.cell`` keep their family."""
    keys = list(keys)
    names = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        names[key] = tail
    return names


def format_value(value: Any) -> str:
    """A setting's value as written in a point's name and in the tables: 0.0003, true, [8, 8]."""
    if value is None:  # a setting of another family than the point's
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def family_section(key: str) -> str | None:
    """The family whose settings ``key`` is (``model.convlstm.kernel_size`` -> convlstm), or None."""
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "model" and parts[1] in family_names() else None


def trained_settings(config: dict) -> dict[str, Any]:
    """{dotted key: value} of a config's ``TRAINED_SECTIONS`` (nested sections flattened, lists kept).

    Only the built family's section counts (``model.family``): the other families' settings change
    nothing that is trained, so runs differing only there trained the same thing."""
    flat: dict[str, Any] = {}
    family = (config.get("model") or {}).get("family") if isinstance(config.get("model"), dict) else None

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        elif family_section(prefix) in (None, family):
            flat[prefix] = node

    for section in TRAINED_SECTIONS:
        walk(section, config.get(section, {}))
    return flat
