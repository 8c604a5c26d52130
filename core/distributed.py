"""One process or many: read the launcher's environment, pick the device, set up the process group.

Three launchers are understood, so the same ``stages.train.run`` works everywhere:
- torchrun, or submitit's ``TorchDistributedEnvironment().export()``: RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT are already set;
- plain ``srun`` (an SBATCH file with several tasks): SLURM_PROCID, SLURM_STEP_NUM_TASKS or
  SLURM_NTASKS, SLURM_LOCALID; the first host of SLURM_JOB_NODELIST is the rendezvous and the
  port is derived from SLURM_JOB_ID, so every task computes the same address without talking;
- nothing: one process, no process group.
gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from core.errors import FramecastError

log = logging.getLogger(__name__)

# Ports derived from SLURM_JOB_ID fall in [BASE, BASE + SPAN): above the well-known range and
# below Linux's default ephemeral range (32768+), so two jobs sharing a node rarely collide.
SLURM_PORT_BASE = 12000
SLURM_PORT_SPAN = 20000
# How long a process waits for its peers (joining, or in a collective) before giving up.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


# What each launcher source is, for the log line each rank writes when it joins.
LAUNCHERS = {"env": "RANK/WORLD_SIZE (torchrun or submitit)", "slurm": "srun's SLURM_PROCID/SLURM_NTASKS",
             "single": "one process"}


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits among its peers, as the launcher described it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = ""
    master_port: int = 0
    source: str = "single"  # which launcher described it: a key of LAUNCHERS


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool
    backend: str | None = None  # None when no process group is used (one process)
    owns_group: bool = False  # True when init_distributed created the group (and must destroy it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise FramecastError(f"environment variable {name}={raw!r} is not a whole number") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand Slurm's compressed host list (``gpu[01-03,7],login1``) without calling Slurm.

    Used when ``scontrol`` is not on PATH; zero padding of ranges is kept (``01``..``03``).
    """
    tokens, depth, current = [], 0, ""
    for char in nodelist.strip():
        if char == "," and depth == 0:
            tokens.append(current)
            current = ""
            continue
        depth += char == "["
        depth -= char == "]"
        current += char
    if current:
        tokens.append(current)
    hosts: list[str] = []
    for token in tokens:
        hosts.extend(_expand_token(token))
    return hosts


def _expand_token(token: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", token)
    if not match:
        return [token] if token else []
    head, tail = token[: match.start()], token[match.end():]
    expanded: list[str] = []
    for part in match.group(1).split(","):
        lo, sep, hi = part.partition("-")
        if sep:
            width = len(lo)
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            values = [lo]
        for value in values:
            expanded.extend(_expand_token(head + value + tail))
    return expanded


def first_slurm_host(nodelist: str) -> str:
    """The first host of the job: ``scontrol show hostnames`` when present (it knows every syntax)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                check=True, capture_output=True, text=True, timeout=30,
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise FramecastError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts[0]


def resolve_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read the launcher's variables (pure apart from ``scontrol``); never starts anything."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        rank = _int(env, "RANK")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 0
        info = LaunchInfo(rank, world, local, env.get("MASTER_ADDR", ""), port, "env")
    else:
        tasks_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        tasks = _int(env, tasks_var) if tasks_var in env else 1
        # A batch script itself also sees SLURM_NTASKS > 1; only tasks started by srun have a PROCID
        # that differs per task, and only a step's task count says how many were really started.
        if tasks > 1 and "SLURM_PROCID" in env:
            rank = _int(env, "SLURM_PROCID")
            local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
            addr = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", ""))
            if "MASTER_PORT" in env:
                port = _int(env, "MASTER_PORT")
            else:
                port = SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID") % SLURM_PORT_SPAN
            info = LaunchInfo(rank, tasks, local, addr, port, "slurm")
        else:
            return LaunchInfo()
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise FramecastError(
            f"launcher environment gives rank {info.rank} of world size {info.world_size}"
        )
    if info.world_size > 1 and (not info.master_addr or not info.master_port):
        raise FramecastError(
            f"{info.world_size} processes but MASTER_ADDR/MASTER_PORT are not set "
            "(launch with torchrun or srun)"
        )
    return info


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA works, else the CPU. ``cuda`` means cuda:<local rank>."""
    pref = pref.strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FramecastError(f"run.device={pref!r} but no CUDA device is available")
        device = torch.device(pref)
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise FramecastError(
                f"run.device={pref!r}: process {local_rank} on this node needs cuda:{index} "
                f"but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", index)
    raise FramecastError(f"run.device={pref!r}: expected auto, cpu, cuda or cuda:<n>")


def init_distributed(device_pref: str = "auto", env: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group the launcher describes (or none), and pick this process's device."""
    if dist.is_available() and dist.is_initialized():
        # Someone (a test, a wrapper) already made the group: use it and leave it to them.
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int((env or os.environ).get("LOCAL_RANK", "0"))
        device = pick_device(device_pref, local)
        return DistContext(rank, world, local, device, rank == 0, dist.get_backend(), False)
    info = resolve_launch(env)
    device = pick_device(device_pref, info.local_rank)
    if info.world_size == 1:
        return DistContext(0, 1, 0, device, True)
    if not dist.is_available():
        raise FramecastError("several processes were launched but this torch has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    log.info("rank %d of %d (%s, from %s), rendezvous %s:%d", info.rank, info.world_size, backend,
             LAUNCHERS[info.source], info.master_addr, info.master_port)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=PROCESS_GROUP_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    return DistContext(info.rank, info.world_size, info.local_rank, device, info.rank == 0, backend, True)


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op for one process); returns it."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()
