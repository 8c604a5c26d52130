"""What the benchmark scripts share: per-family reference sizes (presets), a validated config from
command-line settings, the training objects exactly as the train stage builds them, FLOP counting
on the meta device, memory probes and the accelerators' peak FLOP/s.

Not a benchmark itself; ``bench_train.py``, ``bench_model.py``, ``bench_predict.py``, ``check_gpu.py``
and ``bench_quality.py`` import it (``benchmarks/`` is a namespace package of the repository root).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# h5py asks platform.uname() at import, which runs `uname -p` in a child process; after torch is
# loaded that child is forked from a ~230 MB process and its peak RSS is counted in RUSAGE_CHILDREN,
# masking the loader workers' peaks. Asked here first (the answer is cached), the child is small.
platform.uname().processor  # noqa: B018

REPO = Path(__file__).resolve().parents[1]

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from core.config import Config, load_config
from core.families import families, family_names
from core.errors import FramecastError
from core.precision import Precision
from models import TrainingForward, build_model
from models.base import FamilyModel
from training.step import FrameLoss, build_grad_scaler, build_optimizer, frame_loss, train_step


@dataclass(frozen=True)
class Preset:
    """Frame geometry and, per family, the ``model.<family>.*`` settings of a named reference size."""

    description: str
    height: int
    width: int
    t_in: int
    t_out: int
    in_channels: int
    # family -> "key=value" settings of its section; a family not listed keeps its config defaults.
    models: dict[str, tuple[str, ...]]


PRESETS: dict[str, Preset] = {
    # What framecast trains by default: the reference data set's frames, each family's own defaults.
    "default": Preset("160x240 RGB, 11 -> 11 frames, each family's config defaults", 160, 240, 11, 11, 3, {}),
    # The published Moving-MNIST configurations (OpenSTL's benchmark table, and the TrajGRU paper's design),
    # written out so a change of the config defaults cannot change them. TAU is the simvp family with
    # model.simvp.translator=tau on top of this preset.
    "mmnist": Preset(
        "the published Moving-MNIST configurations: 64x64 grey, 10 -> 10 frames", 64, 64, 10, 10, 1, {
            # The 2017 TrajGRU benchmark design, as re-implemented for 64x64 Moving MNIST.
            "encoder_forecaster": ("stem_channels=16", "hidden_channels=[64,96,96]", "strides=[1,2,2]",
                                   "kernel_size=5"),
            "convlstm": ("cell=lstm", "hidden_channels=[128,128,128,128]", "kernel_size=5", "patch_size=4"),  # ConvLSTM-S
            "predrnn": ("hidden_channels=[128,128,128,128]", "kernel_size=5", "patch_size=4",
                        "layer_norm=false"),  # PredRNN-V2 (OpenSTL: layer_norm = 0)
            # SimVP-gSTA: hid_S 64, hid_T 512, N_S 4, N_T 8.
            "simvp": ("translator=gsta", "spatial_channels=64", "temporal_channels=512", "spatial_layers=4",
                      "temporal_layers=8"),
        }),
    # Each family's tiny model (the family table's, as model.size: tiny) on the reference frames, for
    # smoke tests and memory curves.
    "tiny": Preset(
        "each family's tiny model (model.size: tiny) on 160x240 RGB, 11 -> 11 frames", 160, 240, 11, 11, 3,
        {family.name: tuple(f"{key}={json.dumps(value)}" for key, value in family.tiny.items())
         for family in families()}),
}

# Dense peak TFLOP/s of common accelerators (vendor data sheets, SXM parts where both exist), by the
# arithmetic the step's convolutions run in: bf16 tensor cores with autocast (fp16 runs on the same
# units at the same dense rate on these parts); without autocast, TF32 tensor cores where cuDNN may
# use them (torch's default), else plain fp32.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100": {"bf16": 125.0, "tf32": 15.7, "fp32": 15.7},  # no bf16 or TF32 units: fp16 / fp32 figures
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def cell_families() -> tuple[str, ...]:
    """Families whose section has a ``cell`` setting (``--cell`` applies to them)."""
    return tuple(family.name for family in families() if "cell" in family.setting_names())


def add_model_arguments(parser, *, frames: bool = True, preset: str = "default", preset_aliases: tuple[str, ...] = ()) -> None:
    """``--family``, ``--preset``, ``--cell``, the frame geometry and free ``key=value`` settings."""
    parser.add_argument("--family", choices=family_names(), default=family_names()[0],
                        help="model.family (default: %(default)s)")
    parser.add_argument("--preset", *preset_aliases, dest="preset", choices=sorted(PRESETS), default=preset,
                        help="reference size (default: %(default)s): "
                             + "; ".join(f"{k}: {p.description}" for k, p in PRESETS.items()))
    parser.add_argument("--cell", choices=["gru", "lstm"], default=None,
                        help=f"model.<family>.cell for the {' and '.join(cell_families())} families")
    if frames:
        parser.add_argument("--height", type=int, default=None, help="default: the preset's")
        parser.add_argument("--width", type=int, default=None, help="default: the preset's")
        parser.add_argument("--t-in", type=int, default=None, help="data.t_in (default: the preset's)")
        parser.add_argument("--t-out", type=int, default=None, help="data.t_out (default: the preset's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config settings, e.g. model.simvp.translator=tau train.loss=l1 (validated)")


def resolve_geometry(args) -> Preset:
    """The preset with the frame geometry the command line gave in place of its own."""
    preset = PRESETS[args.preset]
    changes = {key: getattr(args, key) for key in ("height", "width", "t_in", "t_out")
               if getattr(args, key, None) is not None}
    return dataclasses.replace(preset, **changes)


def setting(key: str, value: object) -> str:
    """``key=value`` as an override whose value YAML reads back as given: strings quoted (a bare
    ``off`` would be read as false), booleans as true/false (JSON scalars are YAML)."""
    return f"{key}={json.dumps(value)}"


def build_config(family: str, preset: Preset, *, cell: str | None = None, settings: list[str] = (),
                 overrides: list[str] = ()) -> Config:
    """A validated Config: the preset's frames and model section, ``cell``, then ``settings`` (what
    the script's own flags set) and last the user's ``overrides``, all through ``load_config``."""
    values = [f"model.family={family}", f"model.in_channels={preset.in_channels}",
              f"data.t_in={preset.t_in}", f"data.t_out={preset.t_out}",
              *(f"model.{family}.{item}" for item in preset.models.get(family, ()))]
    if cell is not None:
        if family not in cell_families():
            raise FramecastError(f"--cell applies to the {', '.join(cell_families())} families, not {family}")
        values.append(f"model.{family}.cell={cell}")
    return load_config(None, [*values, *settings, *overrides])


def model_description(cfg: Config) -> dict:
    """The family, its cell (None where it has none) and its whole section, for the JSON."""
    section = cfg.model.section
    return {"family": cfg.model.family, "cell": getattr(section, "cell", None),
            "in_channels": cfg.model.in_channels, "model": dataclasses.asdict(section)}


def arithmetic(precision: Precision) -> str:
    """bf16 / fp16 (autocast), tf32 (fp32 tensors, cuDNN convolutions on TF32 tensor cores) or fp32."""
    if precision.amp_dtype is torch.bfloat16:
        return "bf16"
    if precision.amp_dtype is torch.float16:
        return "fp16"
    if precision.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def peak_tflops(device: torch.device, arithmetic_name: str, override: float | None) -> float | None:
    """Peak for this device: ``--peak-tflops`` when given, else the table (longest matching name)."""
    if override:
        return override
    if device.type != "cuda":
        return None  # CPUs vary too much to guess; pass --peak-tflops to get a fraction
    name = torch.cuda.get_device_name(device)
    column = "bf16" if arithmetic_name == "fp16" else arithmetic_name
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key][column]
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """FLOPs of a convolution's backward, grouped ones included.

    torch's own formula (``torch.utils.flop_counter.conv_backward_flop``, torch 2.13) counts the
    weight gradient of a grouped convolution as if it were dense, ``groups`` times too much: for the
    depthwise 512-channel convs of SimVP's translator that made its backward 25x its forward. The
    input gradient is a (transposed) convolution with the same weight, which it counts right.
    """
    def swap(shape):  # (N, C, ...) <-> (C, N, ...)
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input = conv_transpose(grad_out, weight)
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # grad_weight = conv(input, grad_out) over the batch, one per group
        a, b = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(swap(a), swap(b), swap(out_shape[1]), transposed=False) // groups
    return flops


def count_flops(cfg: Config, batch: int, height: int, width: int, *, step: int = 0,
                recompute: bool = False) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of the family's TRAINING pass on ``batch`` videos, counted
    on the meta device: shapes only, no memory, no time.

    The pass is ``TrainingForward`` at global ``step`` (scheduled sampling included) with the
    ``train.loss`` frame loss plus the family's extra loss terms, as ``train_step`` computes them;
    matrix products and convolutions only (the optimizer and element-wise work are not counted).
    ``recompute`` counts activation checkpointing's recomputation too (extra work, not useful FLOPs).
    """
    t_in, t_out, channels = cfg.data.t_in, cfg.data.t_out, cfg.model.in_channels
    with torch.device("meta"):
        model = build_model(cfg.model, t_in, t_out)
        frames = torch.empty(batch, t_in, channels, height, width)  # (B, t_in, C, H, W)
        targets = torch.empty(batch, t_out, channels, height, width)  # (B, t_out, C, H, W)
    if recompute:
        model.set_activation_checkpointing(True)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        forecast = TrainingForward(model)(frames, targets, step)
        forward = counter.get_total_flops()
        total = frame_loss(FrameLoss.from_config(cfg.train), forecast.frames, targets)
        for term in forecast.losses.values():
            total = total + term.float()
        total.backward()
    return int(forward), int(counter.get_total_flops())


@dataclass
class Training:
    """The objects the train stage trains with, built the way ``stages.train.Trainer`` builds them,
    and one call of the shared ``training.step.train_step``."""

    cfg: Config
    precision: Precision
    model: FamilyModel  # the plain module (what a checkpoint holds)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    step_model: torch.nn.Module  # TrainingForward(model), compiled when train.compile

    def step(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        """One optimizer step on uint8 (B, T, H, W, C) ``batch`` -> (frame loss, extra loss) on the device."""
        tc = self.cfg.train
        return train_step(self.step_model, self.optimizer, batch, step=step, t_in=self.cfg.data.t_in,
                          in_channels=self.cfg.model.in_channels, precision=self.precision, loss=FrameLoss.from_config(tc),
                          grad_clip=tc.grad_clip, scaler=self.scaler)


def build_training(cfg: Config, device: torch.device, seed: int | None = None) -> Training:
    """Model, optimizer and scaler as ``stages.train.Trainer`` makes them (seeded by ``train.seed``)."""
    tc = cfg.train
    precision = Precision.for_run(tc, device)  # also turns cuDNN autotuning on, on CUDA
    torch.manual_seed(tc.seed if seed is None else seed)
    model = build_model(cfg.model, cfg.data.t_in, cfg.data.t_out).to(device)
    model.set_activation_checkpointing(tc.activation_checkpointing)  # FramecastError where unsupported
    model.set_input_supervision(tc.supervise_inputs)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tc, device)
    training_pass = TrainingForward(model)
    step_model = torch.compile(training_pass) if tc.compile else training_pass
    return Training(cfg, precision, model, optimizer, build_grad_scaler(precision), step_model)


class SavedActivations:
    """Counts what autograd keeps for the backward pass (unique storages) while active.

    Used around the first warm-up step itself: an extra forward just to count would leave its freed
    memory in the allocator and inflate the peak RSS the scripts report.
    """

    def __init__(self):
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._keep, lambda tensor: tensor)

    def _keep(self, tensor):
        storage = tensor.untyped_storage()
        # The storage's own identity: meta tensors (counting without memory) all have data_ptr 0.
        self.storages[storage._cdata] = storage.nbytes()
        return tensor

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def mb(self) -> float | None:
        return round(sum(self.storages.values()) / 2**20, 1) if self.storages else None


def count_saved_activations(cfg: Config, batch: int, height: int, width: int, *, step: int = 0) -> float | None:
    """MiB that autograd keeps for the backward pass of ``train_step``'s training pass and frame loss
    (fp32, no autocast; activation checkpointing as ``cfg`` sets it; the weights each conv saves
    included), counted on the meta device: no memory, no time. What ``bench_train.py`` measures on a
    CPU in fp32, exactly."""
    t_in, t_out, channels = cfg.data.t_in, cfg.data.t_out, cfg.model.in_channels
    with torch.device("meta"):
        model = build_model(cfg.model, t_in, t_out)
        frames = torch.empty(batch, t_in, channels, height, width)  # (B, t_in, C, H, W)
        targets = torch.empty(batch, t_out, channels, height, width)  # (B, t_out, C, H, W)
    model.set_activation_checkpointing(cfg.train.activation_checkpointing)
    with SavedActivations() as saved:
        forecast = TrainingForward(model)(frames, targets, step)
        frame_loss(FrameLoss.from_config(cfg.train), forecast.frames, targets)  # the loss saves its inputs too
    return saved.mb


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished, joined child processes), in MB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_videos(batch: int, frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Random uint8 videos (B, T, H, W, 3) on ``device``, as the loader delivers them (grey models
    read the first channel, as they do from grey data stored as RGB)."""
    return torch.randint(0, 256, (batch, frames, height, width, 3), dtype=torch.uint8, device=device)


def throughput(flops_per_video: float, videos_per_s: float, peak: float | None) -> dict:
    """Achieved TFLOP/s and its share of ``peak`` (TFLOP/s), rounded as the scripts print them."""
    achieved = flops_per_video * videos_per_s
    return {"achieved_tflops": round(achieved / 1e12, 4),
            "peak_tflops": peak,
            "fraction_of_peak": round(achieved / (peak * 1e12), 4) if peak else None}


def per_step(function: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, synchronised with the device on both sides."""
    import time

    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start
