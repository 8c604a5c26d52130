"""The model-family table: every family declared once, for the config, the model builder, the tests and
the benchmarks to read.

A declaration names the family, says what it is (the help text), gives its typed settings class (the
``model.<name>`` section of a config), where its model class lives (an import path, imported only when a
model is built, so reading a config or ``main.py --help`` never loads torch), the settings of its tiny
model (``model.size: tiny``, the tests and the benchmarks' tiny preset) and its ready configs.
``model.family``'s choices, the ``model.<name>`` sections and ``build_model`` are all derived from it.

Adding a family: write its model module (a ``models.base.FamilyModel``) and one ``Family(...)`` beside
its settings; the built-in ones are declared in the modules of ``BUILTIN_MODULES``, imported the first time
the table is read. Code outside framecast (a plug-in, a test) calls ``register(Family(...))`` in a module
that a job imports too (the one holding its model class), as stages do (stages/registry.py).

This module is torch-free and names no family itself.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.imports import import_named

# Modules whose import declares the built-in families (torch-free: settings and declarations only).
BUILTIN_MODULES = ("models.families",)


@dataclass(frozen=True)
class Family:
    """One model family, declared once. Plain data: settings, tiny sizes and where the model is."""

    name: str
    help: str
    settings: type  # a dataclass with check(where): the model.<name> section
    model: str  # "package.module:Class", imported when a model is built
    # Settings of the family's tiny model (seconds on a CPU at 32x48), under model.size: tiny.
    tiny: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # Ready configs using the family, relative to configs/.
    configs: tuple[str, ...] = ()

    def model_class(self) -> type:
        """The model class, imported now (not when the family was declared)."""
        return import_named(self.model, f"family {self.name!r}")

    def setting_names(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.settings)}


_REGISTRY: dict[str, Family] = {}
_builtin_loaded = False


def register(family: Family) -> Family:
    """Declare ``family``; declaring the same family again (a module imported twice) changes nothing."""
    if not dataclasses.is_dataclass(family.settings):
        raise TypeError(f"family {family.name!r}: settings must be a dataclass, got {family.settings!r}")
    known = _REGISTRY.get(family.name)
    if known is not None and known != family:
        raise ValueError(f"family {family.name!r} is already declared differently: {known}")
    _REGISTRY[family.name] = family
    return family


def _load_builtin() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def families() -> tuple[Family, ...]:
    """Every declared family, in declaration order (the first is ``model.family``'s default)."""
    _load_builtin()
    return tuple(_REGISTRY.values())


def family_names() -> tuple[str, ...]:
    return tuple(f.name for f in families())


def get(name: str) -> Family | None:
    _load_builtin()
    return _REGISTRY.get(name)
