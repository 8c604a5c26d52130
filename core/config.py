"""Typed configuration: one YAML file -> nested dataclasses, overridable as ``key.sub=value``.

Every default lives here and nowhere else. Unknown keys and wrongly typed values are errors,
never silently ignored, so a typo in a config file cannot quietly train the wrong model.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import FramecastError


@dataclass
class DataConfig:
    # Folder holding the split folders train/, val/, unlabeled/, hidden/ of video_<n>/image_<k>.png.
    root: str = "datasets/shapes"
    # Folder of <split>.h5 packs made by `main.py pack`; empty means <root>/packed.
    pack_dir: str = ""
    # Where frames are read from: "h5" packs, "png" folders, or "auto" (a pack when one exists).
    source: Literal["auto", "h5", "png"] = "auto"
    train_splits: list[str] = field(default_factory=lambda: ["train", "unlabeled"])
    val_split: str = "val"
    t_in: int = 11  # frames fed to the model
    t_out: int = 11  # frames it predicts
    # Every window of t_in + t_out frames in a video is a sample when true, only the first when false.
    all_windows: bool = False
    num_workers: int = 4  # loader processes; 0 reads in the main process
    # Batches each worker keeps ready. Memory in flight is workers x this x batch bytes (pinned on
    # CUDA); a pack's loader delivers over 20x what an H100 trains on (benchmarks/RESULTS.md).
    prefetch_factor: int = 2
    pin_memory: bool = True  # used only when training on CUDA


@dataclass
class ModelConfig:
    cell: Literal["lstm", "gru"] = "gru"
    in_channels: int = 3
    stem_channels: int = 16  # the first (non-recurrent) conv's output channels
    # One entry per level, top (full resolution) first: recurrent hidden channels ...
    hidden_channels: list[int] = field(default_factory=lambda: [64, 96, 96])
    # ... and the stride of the conv that leads into that level (1 = same resolution).
    strides: list[int] = field(default_factory=lambda: [1, 2, 2])
    kernel_size: int = 5  # recurrent cells' kernel
    norm_groups: int = 16  # GroupNorm groups in the cells' gates; 0 disables it
    # Space-to-depth factor applied to frames before the stem (OpenSTL's "patch size").
    patch_size: int = 1


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 4  # per process
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["onecycle", "plateau", "constant"] = "onecycle"
    warmup_frac: float = 0.1  # onecycle: fraction of steps spent rising to lr
    plateau_factor: float = 0.5
    plateau_patience: int = 4
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    early_stop_patience: int = 20  # validations without improvement before stopping; 0 disables
    val_every_steps: int = 0  # 0 validates once per epoch
    max_steps_per_epoch: int = 0  # 0 = the whole training set each epoch
    max_val_batches: int = 0  # 0 = the whole validation split
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    # CUDA only. Off: on an H100 eager NCHW steps ran 1.15-1.2x faster (GroupNorm has no channels-last
    # CUDA kernel, so every norm converts layouts); benchmarks/RESULTS.md.
    channels_last: bool = False
    # torch.compile the model: 1.4x faster steps on an H100 (benchmarks/RESULTS.md), after minutes
    # of compiling at the start of every job (and of every requeue).
    compile: bool = False
    # Recompute each recurrent step in the backward pass instead of storing its gates: far fewer
    # stored activations for 17 % more conv FLOPs (default model); same results.
    activation_checkpointing: bool = False
    seed: int = 0
    log_every_steps: int = 10


@dataclass
class PredictConfig:
    checkpoint: str = ""  # empty means runs/<run.name>/best.pt
    split: str = "hidden"
    out: str = ""  # empty means <run.out_dir>/<run.name>/preds/<split>.npy
    batch_size: int = 8
    shards: int = 1  # >1 splits prediction into a Slurm job array, merged before conversion


@dataclass
class ConvertConfig:
    out: str = ""  # empty means <run.out_dir>/<run.name>/png/<split>
    frames: list[int] = field(default_factory=list)  # frame numbers to write; empty = all
    workers: int = 4


@dataclass
class SlurmConfig:
    executor: Literal["auto", "slurm", "local"] = "auto"  # auto = Slurm when sbatch is on PATH
    folder: str = ""  # submitit logs; empty means <run.out_dir>/<run.name>/jobs/%j
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 240
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    constraint: str = ""
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ...)
    # The command that runs Python in a Slurm job, e.g. "singularity exec --nv image.sif python";
    # empty = the interpreter that submits.
    python: str = ""
    signal_delay_s: int = 120  # seconds before the time limit that the job is told to checkpoint
    max_num_timeout: int = 20  # requeues after time-outs/preemptions before giving up
    array_parallelism: int = 16


@dataclass
class RunConfig:
    name: str = "default"
    out_dir: str = "runs"
    device: str = "auto"  # auto = cuda when available, else cpu


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


# ----------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise FramecastError(f"{where}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, where)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise FramecastError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except FramecastError as exc:
                errors.append(str(exc))
        raise FramecastError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise FramecastError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FramecastError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FramecastError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FramecastError(f"{where}: expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise FramecastError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise FramecastError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise FramecastError(
            f"unknown setting {prefix}{unknown[0]} (known in {where or 'the top level'}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict | None) -> Config:
    """Build and check a Config; raises FramecastError naming the offending setting."""
    return _validate(_build(Config, values or {}, ""))


def config_to_dict(cfg: Config) -> dict:
    """Plain types only, so it fits in a ``weights_only`` checkpoint and in YAML."""
    return dataclasses.asdict(cfg)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3e-4``, ``[1,2]``, ``true``)."""
    result = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FramecastError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise FramecastError(f"override {item!r}: value is not valid YAML ({exc})") from None
        parts = key.split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def _validate(cfg: Config) -> Config:
    m = cfg.model
    if len(m.hidden_channels) != len(m.strides) or not m.hidden_channels:
        raise FramecastError(
            "model.hidden_channels and model.strides must be non-empty lists of the same length "
            f"(got {m.hidden_channels} and {m.strides})"
        )
    if m.kernel_size % 2 == 0:
        raise FramecastError(f"model.kernel_size must be odd, got {m.kernel_size}")
    if cfg.data.t_in < 1 or cfg.data.t_out < 1:
        raise FramecastError(f"data.t_in and data.t_out must be >= 1 (got {cfg.data.t_in}, {cfg.data.t_out})")
    if cfg.train.batch_size < 1 or cfg.predict.batch_size < 1:
        raise FramecastError("train.batch_size and predict.batch_size must be >= 1")
    if cfg.predict.shards < 1:
        raise FramecastError(f"predict.shards must be >= 1, got {cfg.predict.shards}")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (a missing file is an error, never silent defaults) and apply overrides."""
    values: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FramecastError(f"{file}: config file not found")
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise FramecastError(f"{file}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise FramecastError(f"{file}: expected a mapping of sections at the top level")
        values = loaded or {}
    values = apply_overrides(values, overrides or [])
    try:
        return config_from_dict(values)
    except FramecastError as exc:
        where = f"{path}: " if path is not None else ""
        raise FramecastError(f"{where}{exc}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    from core.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
