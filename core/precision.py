"""Device, precision and compilation policy: which autocast dtype, memory layout, cuDNN mode and
compiled code a run uses.

One home for training and inference alike (train, predict, evaluate and the benchmarks), so a model
is evaluated with the precision it was trained with.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import Config, TrainConfig


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``; None means plain fp32.

    auto: bf16 on a GPU that computes it natively (Ampere and later), fp16 on older GPUs (with a
    gradient scaler in training), fp32 on the CPU; bf16 / fp16: that dtype wherever asked (CPUs with
    bf16 units gain from it); off: fp32.
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return None


@dataclass(frozen=True)
class Precision:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = fp32
    channels_last: bool  # frames and weights in NHWC memory order (CUDA only)

    @classmethod
    def for_run(cls, train_cfg: TrainConfig, device: torch.device) -> "Precision":
        """The policy of ``train.*`` on ``device``; also lets cuDNN pick its fastest kernels on CUDA."""
        if device.type == "cuda":
            # Our shapes are fixed for a whole run, so timing the kernels once pays for itself.
            torch.backends.cudnn.benchmark = True
        return cls(device, autocast_dtype(train_cfg.amp, device), train_cfg.channels_last and device.type == "cuda")

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.amp_dtype is torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "fp32"


# torch.compile's on-disk caches, all pointed into one folder: inductor's kernels and FX graphs,
# AOT autograd's joint graphs, Triton's binaries.
_COMPILE_CACHE_ENV = {"TORCHINDUCTOR_CACHE_DIR": "", "TRITON_CACHE_DIR": "triton"}
_CACHE_SWITCHES = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def use_compile_cache(folder: str | Path) -> Path:
    """Keep torch.compile's caches in ``folder`` (a run's, on shared storage) for this process.

    Set before the first compile; a later job (requeued, resumed, predicting) that points at the same
    folder loads the compiled graphs instead of compiling them again.
    """
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name, sub in _COMPILE_CACHE_ENV.items():
        os.environ[name] = str(root / sub) if sub else str(root)
    for name, value in _CACHE_SWITCHES.items():
        os.environ.setdefault(name, value)
    return root


def compile_cache_dir(cfg: Config) -> Path:
    """``train.compile_cache``, or ``<run_dir>/compile_cache``."""
    return Path(cfg.train.compile_cache) if cfg.train.compile_cache else cfg.run_dir / "compile_cache"
