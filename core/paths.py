"""Path settings with ``${VAR}`` / ``${VAR:-default}``: kept as written, expanded where they are used.

On a cluster the same config runs on a login node and on compute nodes whose environments differ
(``$SCRATCH``, ``$SLURM_TMPDIR``, ``$SLURM_JOB_ID``), so a path setting such as
``data.root: ${SCRATCH}/competition`` is

- kept verbatim in the config: in ``runs/<name>/config.yaml``, in every checkpoint and in the config a
  job is submitted with (``config_to_dict`` writes the text as written, see ``written_texts``);
- expanded in the process that uses it: a stage expands its config once when it starts
  (``stages.registry.run_stage``, on the compute node inside a job) and the accessors that read a path
  (``Config.run_dir``, ``data.sources.open_split``) expand what they read, so an unexpanded config
  given to them still works;
- checked for syntax when the config is loaded (``check_path_settings``), and for unset variables when
  expanded: one line naming the setting, the variable and the host.

The submitting host expands only what it writes itself before the job starts: the job log folder
(``slurm.folder``) and the code snapshot under the run folder (``run.out_dir``); see ``jobs.submit``.

Only ``${NAME}`` and ``${NAME:-default}`` are expanded (``$NAME`` without braces and ``~`` stay as they
are). An empty variable counts as unset (``${SCRATCH}/x`` must never become ``/x``); ``${NAME:-}``
means "empty when unset" (``data.stage_to: ${SLURM_TMPDIR:-}``: staging only inside a job).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping

from core.errors import FramecastError

log = logging.getLogger(__name__)

# The folder holding core/, stages/, jobs/ and configs/: the checkout, or the installed package's folder.
CODE_ROOT = Path(__file__).resolve().parent.parent

# Every setting that holds a path (or, for the split settings, a split name or a .npy file), as
# "section.key". A list setting (data.train_splits) expands each entry; a setting this framecast does
# not have is skipped. A new path setting belongs here.
PATH_SETTINGS = (
    "run.out_dir",
    "data.root",
    "data.pack_dir",
    "data.stage_to",
    "data.train_splits",
    "data.val_split",
    "predict.checkpoint",
    "predict.split",
    "predict.out",
    "predict.calibration",
    "convert.out",
    "evaluate.split",
    "evaluate.out",
    "evaluate.calibration",
    "calibrate.split",
    "calibrate.fit_split",
    "calibrate.out",
    "slurm.folder",
    "lr_find.out",
    "train.compile_cache",
    "compare.runs",
    "compare.out",
)

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_REFERENCE = re.compile(r"\$\{(?P<body>[^}]*)\}")
_BODY = re.compile(rf"(?P<name>{_NAME})(?::-(?P<default>.*))?", re.DOTALL)
# The attribute of an expanded Config that remembers what each expanded setting said.
_WRITTEN = "_framecast_written_paths"


def _references(setting: str, text: str) -> list[tuple[re.Match, str, str | None]]:
    """Each ``${...}`` of ``text``: (match, variable, default or None); a malformed one is an error."""
    found = []
    for match in _REFERENCE.finditer(text):
        body = _BODY.fullmatch(match.group("body"))
        if body is None:
            raise FramecastError(
                f"{setting}: {text}: {match.group(0)} is not ${{NAME}} or ${{NAME:-default}} "
                "(NAME: letters, digits and _, not starting with a digit)"
            )
        found.append((match, body.group("name"), body.group("default")))
    rest = _REFERENCE.sub("", text)
    if "${" in rest:
        raise FramecastError(f"{setting}: {text}: a '${{' without its closing '}}'")
    return found


def check_syntax(setting: str, text: str) -> None:
    """Raise FramecastError when ``text`` holds a malformed ``${...}`` (load time: nothing is expanded)."""
    _references(setting, text)


def host_name() -> str:
    return socket.gethostname().split(".")[0] or "this host"


def expand(setting: str, text: str, env: Mapping[str, str] | None = None, where: str | None = None) -> str:
    """``text`` with every ``${NAME}`` / ``${NAME:-default}`` replaced from ``env`` (default: this
    process's environment). An unset (or empty) variable without a default is one FramecastError:
    ``data.root: ${SCRATCH}/x uses $SCRATCH, which is not set on node gpu07``."""
    if "${" not in text:
        return text
    env = os.environ if env is None else env
    pieces, last = [], 0
    for match, name, default in _references(setting, text):
        value = env.get(name, "")
        if not value:
            if default is None:
                state = "empty" if name in env else "not set"
                raise FramecastError(
                    f"{setting}: {text} uses ${name}, which is {state} {where or f'on node {host_name()}'} "
                    f"(set it there, or write ${{{name}:-<default>}})"
                )
            value = default
        pieces += [text[last:match.start()], value]
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces)


def expand_setting(setting: str, value: Any, env: Mapping[str, str] | None = None, where: str | None = None) -> Any:
    """``expand`` for one setting's value: a string, or a list of strings (``data.train_splits``)."""
    if isinstance(value, str):
        return expand(setting, value, env, where)
    if isinstance(value, list):
        return [expand(f"{setting}[{i}]", v, env, where) if isinstance(v, str) else v for i, v in enumerate(value)]
    return value


def expand_if_set(text: str) -> str | None:
    """``text`` expanded, or None where a variable is missing (for best-effort uses, never for reads)."""
    try:
        return expand("path", text)
    except FramecastError:
        return None


def _get(cfg: Any, setting: str) -> tuple[Any, str, Any] | None:
    section_name, _, key = setting.partition(".")
    section = getattr(cfg, section_name, None)
    if section is None or not hasattr(section, key):
        return None
    return section, key, getattr(section, key)


def check_path_settings(cfg: Any) -> None:
    """The ``${...}`` syntax of every path setting (called where the config is validated)."""
    for setting in PATH_SETTINGS:
        found = _get(cfg, setting)
        if found is None:
            continue
        value = found[2]
        for i, text in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(text, str):
                check_syntax(setting if not isinstance(value, list) else f"{setting}[{i}]", text)


def expand_config(cfg: Any, env: Mapping[str, str] | None = None, settings: Iterable[str] = PATH_SETTINGS,
                  where: str | None = None) -> Any:
    """A copy of ``cfg`` whose path settings are expanded, for the process about to use them.

    The copy remembers what each expanded setting said, so writing it out (``config_to_dict``, hence
    ``config.yaml`` and checkpoints) keeps ``${SCRATCH}/...`` rather than this node's value. A setting
    changed on the copy afterwards is written as it now is.
    """
    expanded = copy.deepcopy(cfg)
    written: dict[str, tuple[Any, Any]] = dict(getattr(cfg, _WRITTEN, {}))
    for setting in settings:
        found = _get(expanded, setting)
        if found is None:
            continue
        section, key, value = found
        new = expand_setting(setting, value, env, where)
        if new != value:
            setattr(section, key, new)
            written[setting] = (copy.deepcopy(value), copy.deepcopy(new))
    setattr(expanded, _WRITTEN, written)
    return expanded


def written_texts(cfg: Any, values: dict) -> dict:
    """``values`` (``dataclasses.asdict(cfg)``) with each expanded path setting back as it was written."""
    for setting, (text, expanded) in getattr(cfg, _WRITTEN, {}).items():
        section, _, key = setting.partition(".")
        node = values.get(section)
        if isinstance(node, dict) and node.get(key) == expanded:
            node[key] = copy.deepcopy(text)
    return values


def find_config_file(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists; else, for a relative path, the same file shipped with
    framecast (``configs/demo.yaml`` of the checkout or of the installed package), so the shipped
    configs work from any folder. Otherwise ``path`` unchanged (the caller reports it missing)."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    shipped = CODE_ROOT / given
    if shipped.is_file():
        log.info("%s: not in %s; using the one shipped with framecast, %s", given, Path.cwd(), shipped)
        return shipped
    return given
