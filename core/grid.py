"""The settings that define what a run trained, and how a grid of them is named: read by the sweep
that names its runs and by the comparison that groups them into points (seeds pooled)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

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


def trained_settings(config: dict) -> dict[str, Any]:
    """{dotted key: value} of a config's ``TRAINED_SECTIONS`` (nested sections flattened, lists kept),
    of the model family it builds only."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = node

    for section in TRAINED_SECTIONS:
        values = config.get(section, {})
        if section == "model" and isinstance(values, dict):
            # The families a run did not build trained nothing: their sections neither split points
            # nor name them (a grid over model.family would otherwise vary every family's defaults).
            values = {k: v for k, v in values.items() if not isinstance(v, dict) or k == values.get("family")}
        walk(section, values)
    return flat
