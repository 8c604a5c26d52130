"""framecast against a peer implementation of the same architecture: both trained on the same input
in one process, interleaved, printed as ONE JSON object.

    python -m benchmarks.bench_peers --convlstm-pytorch /tmp/peers/ConvLSTM-PyTorch --compare ef-gru ef-lstm
    python -m benchmarks.bench_peers --openstl /tmp/peers/OpenSTL --compare convlstm predrnn-v2
    python -m benchmarks.bench_peers --openstl /tmp/peers/OpenSTL --peer-packages /tmp/peers/site \
        --compare simvp-gsta tau --batch 4 --rounds 5 --profile

Peers are NOT part of framecast and nothing here fetches or builds them: give the path of a checkout
you made yourself, outside the repository, e.g. from a bare clone (a sparse checkout leaves out the
repositories' data files, which the models do not need)::

    git --git-dir=CLONE.git worktree add --detach --no-checkout /tmp/peers/OpenSTL HEAD
    git -C /tmp/peers/OpenSTL sparse-checkout set --no-cone '/*' '!/data/'
    git -C /tmp/peers/OpenSTL checkout

(``git archive HEAD | tar -x -C DIR`` works too; then pass ``--peer-commit`` since DIR has no git).

Comparisons (``--compare``), each at the peer's own Moving-MNIST configuration, 64x64 grey, 10 -> 10:

- ``ef-gru`` / ``ef-lstm``: the encoder-forecaster of jhhuang96/ConvLSTM-PyTorch (``net_params.py``:
  stem 16, ConvGRU/ConvLSTM cells of 64/96/96 channels, strides 1/2/2, kernel 5, GroupNorm) against
  framecast's ``encoder_forecaster`` with the same sizes (the ``mmnist`` preset). Its cells create
  their zero states with ``.cuda()``; while the peer runs, ``Tensor.cuda`` is redirected to the
  benchmark's device (nothing else of it is touched). Its recipe: Adam 1e-4, MSE, gradient values
  clipped at 10.
- ``convlstm``, ``predrnn-v2``, ``simvp-gsta``, ``tau``: OpenSTL's ``ConvLSTM_Model``,
  ``PredRNNv2_Model`` and ``SimVP_Model`` (gSTA, TAU) built from its ``configs/mmnist/*.py``, each
  trained as its ``openstl/methods`` training step does (patches and scheduled-sampling masks from
  its own ``openstl/utils/predrnn_utils.py``, the model's own loss for the recurrent ones, MSE plus
  its ``diff_div_reg`` for TAU), against framecast's ``convlstm``, ``predrnn`` and ``simvp``
  families at the ``mmnist`` preset (PredRNN-V2 with ``model.predrnn.layer_norm=false``, as OpenSTL's
  config). OpenSTL's package ``__init__`` files import every model and their dependencies (scipy,
  timm, lightning, ...); only the files each comparison needs are imported, under stand-in
  ``openstl.modules`` / ``openstl.models`` / ``openstl.utils`` packages (their ``__init__`` not run),
  and TAU's ``diff_div_reg`` is compiled from ``openstl/methods/tau.py`` alone. SimVP's modules need
  timm, whose own import needs a torchvision built for this very torch: install it outside the
  project (``pip install --no-deps --target /tmp/peers/site timm``) and pass ``--peer-packages
  /tmp/peers/site``. Where it then does not import, only its self-contained ``layers/drop.py``
  (``DropPath``: OpenSTL's translator drops paths at rates 0.01 -> 0 even with drop_path = 0, so it
  runs in forward) and ``layers/weight_init.py`` (``trunc_normal_``, initialisation) are loaded, and
  the names only other SimVP translators use are stand-ins that raise if built. The JSON lists
  every stand-in under ``peer.stubs``.

Both sides get the same random uint8 videos (one fixed batch, as ``bench_train.py``), converted to
[0, 1] floats the same way (``data.datasets.to_model_input``) inside the timed step (the peer's
inputs and targets then made contiguous, as its data loader delivers them), the same batch,
device and thread count, and the same optimizer: ``training.step.build_optimizer`` with the peer's
learning rate (framecast's ``train.optimizer=adam``, ``train.lr``; on a CPU Adam's foreach kernel
for both). framecast runs ``training.step.train_step`` on objects built as the train stage builds
them (its own gradient clipping, ``train.grad_clip``, kept); the peer runs its own recipe's step.
The timing is interleaved: ``--rounds`` rounds of ``--steps-per-round`` steps of each, the order
swapped every round, each step timed alone; the JSON has the median step time and videos/s of each
and the ratio framecast / peer, and, because a shared machine's other work inflates single steps
(several-fold on a busy 2-core machine), also the ratio of the fastest steps and of the process's
median CPU seconds per step (all threads; spinning OpenMP threads count too).

The untimed first step of each side counts its FLOPs (``FlopCounterMode``, convolutions and matrix
products, grouped-convolution weight gradients counted per group as ``benchmarks/common.py`` does),
the tensors autograd saves for backward and which parameters get a gradient (``params_with_grad``:
a parameter defined but never used in forward has none). ``--profile`` adds the top operators of
one more step of each (self CPU time, torch.profiler).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import runpy
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


# First, before torch: see its note on platform.uname and the children's peak RSS.
from benchmarks.common import (
    PRESETS,
    SavedActivations,
    arithmetic,
    build_config,
    build_training,
    conv_backward_flop,
    model_description,
    per_step,
    random_videos,
    setting,
)

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.distributed import pick_device
from core.errors import FramecastError
from data.datasets import to_model_input
from models import count_parameters
from training.step import build_optimizer, split_video

GEOMETRY = PRESETS["mmnist"]  # 64x64 grey, 10 -> 10: every peer's Moving-MNIST configuration
FRAMES = GEOMETRY.t_in + GEOMETRY.t_out


# -- the two sides -----------------------------------------------------------------------------------


@dataclass
class Side:
    """One model with its optimizer and ``step(batch_uint8, global_step) -> loss`` (a tensor)."""

    model: nn.Module
    step: Callable[[torch.Tensor, int], torch.Tensor]
    description: dict
    times: list[float] = field(default_factory=list)  # wall seconds of each timed step
    cpu_times: list[float] = field(default_factory=list)  # this process's CPU seconds (all threads) of each
    losses: list[float] = field(default_factory=list)
    counted: dict = field(default_factory=dict)
    global_step: int = 0

    def run(self, batch: torch.Tensor, device: torch.device) -> tuple[float, float]:
        """One step; returns its wall and CPU seconds and advances the global step."""
        loss = None

        def call():
            nonlocal loss
            loss = self.step(batch, self.global_step)

        cpu = time.process_time()
        seconds = per_step(call, device)
        cpu = time.process_time() - cpu
        self.global_step += 1
        self.losses.append(float(loss.reshape(-1)[0]))  # the frame loss (framecast returns it with its extra)
        return seconds, cpu


def framecast_side(family: str, cell: str | None, settings: list[str], overrides: list[str], batch: int,
                   device: torch.device) -> Side:
    cfg = build_config(family, GEOMETRY, cell=cell, settings=[*settings, setting("train.batch_size", batch)],
                       overrides=overrides)
    training = build_training(cfg, device)
    tc = cfg.train
    description = {**model_description(cfg), "arithmetic": arithmetic(training.precision),
                   "overrides": [*settings, *overrides],
                   "recipe": {"optimizer": tc.optimizer, "lr": tc.lr, "loss": tc.loss,
                              "grad_clip": f"norm {tc.grad_clip}" if tc.grad_clip > 0 else None,
                              "step": "training.step.train_step"}}
    return Side(training.model, training.step, description)


def peer_side(model: nn.Module, forward_loss: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], *,
              lr: float, clip: Callable[[nn.Module], None] | None, device: torch.device,
              context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
              description: dict) -> Side:
    """The peer's model trained as its recipe does: ``forward_loss(inputs, targets, step)`` on the
    same converted frames (B, T, 1, H, W), backward, its clipping, the same optimizer as framecast."""
    from core.config import TrainConfig

    optimizer = build_optimizer(model, TrainConfig(optimizer="adam", lr=lr), device)

    def step(batch: torch.Tensor, global_step: int) -> torch.Tensor:
        video = to_model_input(batch, device, False, GEOMETRY.in_channels)  # (B, T, 1, H, W) in [0, 1]
        inputs, targets = split_video(video, GEOMETRY.t_in)
        # Contiguous, as the peers' data loaders hand them over (SimVP_Model views its input).
        inputs, targets = inputs.contiguous(), targets.contiguous()
        with context():
            loss = forward_loss(inputs, targets, global_step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                clip(model)
            optimizer.step()
        return loss.detach()

    return Side(model, step, {**description, "recipe": {**description.get("recipe", {}), "optimizer": "adam", "lr": lr}})


# -- jhhuang96/ConvLSTM-PyTorch ---------------------------------------------------------------------


@contextlib.contextmanager
def peer_imports(root: Path):
    """The peer's top-level modules importable (and found there first) while inside."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def imported_from(name: str, root: Path) -> types.ModuleType:
    module = importlib.import_module(name)
    where = Path(getattr(module, "__file__", "") or "").resolve()
    if root.resolve() not in where.parents:
        raise FramecastError(f"module {name} was imported from {where}, not from the peer checkout {root}")
    return module


@contextlib.contextmanager
def cuda_calls_to(device: torch.device):
    """The peer's ``tensor.cuda()`` (its zero states) moves to ``device`` instead, while inside."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def convlstm_pytorch_side(root: Path, cell: str, batch: int, device: torch.device) -> Side:
    with peer_imports(root):
        for name in ("ConvRNN", "utils", "encoder", "decoder", "model"):
            imported_from(name, root)
        torch.manual_seed(0)
        net_params = imported_from("net_params", root)  # builds its cells (once per process) at import
        from decoder import Decoder
        from encoder import Encoder
        from model import ED
    prefix = "convlstm" if cell == "lstm" else "convgru"
    encoder_params = getattr(net_params, f"{prefix}_encoder_params")
    decoder_params = getattr(net_params, f"{prefix}_decoder_params")
    model = ED(Encoder(*encoder_params), Decoder(*decoder_params)).to(device)

    def forward_loss(inputs, targets, _step):
        return F.mse_loss(model(inputs), targets)  # its nn.MSELoss on (B, 10, 1, 64, 64)

    def clip(module):
        torch.nn.utils.clip_grad_value_(module.parameters(), clip_value=10.0)

    description = {"repo": "jhhuang96/ConvLSTM-PyTorch", "model": f"ED(Encoder, Decoder) of net_params.{prefix}_*_params",
                   "recipe": {"loss": "mse", "grad_clip": "value 10"},
                   "stubs": ["Tensor.cuda -> Tensor.to(device) while the peer runs (its zero states)"]}
    return peer_side(model, forward_loss, lr=1e-4, clip=clip, device=device, context=lambda: cuda_calls_to(device),
                     description=description)


# -- chengtan9907/OpenSTL ------------------------------------------------------------------------------


def stand_in_package(name: str, path: Path) -> types.ModuleType:
    """A package whose submodules import from ``path`` without running its ``__init__.py``."""
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, package)
    return sys.modules[name]


def export_into_package(package: str, module: str) -> types.ModuleType:
    """Import ``package.module`` and re-export what it defines on the package, as its __init__ would."""
    loaded = importlib.import_module(f"{package}.{module}")
    target = sys.modules[package]
    for key, value in vars(loaded).items():
        if getattr(value, "__module__", None) == loaded.__name__:
            setattr(target, key, value)
    return loaded


TIMM_STAND_INS: list[str] = []  # what timm_for_simvp put in sys.modules, once per process


def load_file(name: str, path: Path) -> types.ModuleType:
    """Execute one source file as module ``name`` (its package's __init__ is not run)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def timm_for_simvp() -> list[str]:
    """timm for SimVP's modules: the real package when it imports; else, where it is installed but
    cannot import (its import loads torchvision, which needs a build for this very torch), its two
    self-contained files that SimVP's gSTA/TAU blocks use, ``layers/drop.py`` (DropPath: OpenSTL's
    translator drops paths at rates from 0.01 down to 0 even with drop_path = 0) and
    ``layers/weight_init.py`` (trunc_normal_, initialisation), under stand-in packages, with the
    names only other SimVP variants use raising if built. Returns what was stood in."""
    if TIMM_STAND_INS:
        return list(TIMM_STAND_INS)  # already in place (an earlier comparison of this process)
    try:
        import timm  # noqa: F401
        return []
    except Exception:  # noqa: BLE001 - its torchvision missing, or built for another torch
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]
    found = importlib.util.find_spec("timm")
    if found is None or not found.submodule_search_locations:
        raise FramecastError("OpenSTL's SimVP needs timm's DropPath: install timm where this benchmark can "
                             "find it without touching the project's environment, e.g. pip install --no-deps "
                             "--target /tmp/peers/site timm, then pass --peer-packages /tmp/peers/site")
    timm_dir = Path(found.submodule_search_locations[0])

    def unavailable(name):
        class Unavailable(nn.Module):
            def __init__(self, *args, **kwargs):
                raise FramecastError(f"timm's {name} is a stand-in of bench_peers.py (timm does not import "
                                     f"here): this peer model needs the real timm")
        Unavailable.__name__ = name.rpartition(".")[2]
        return Unavailable

    def unavailable_function(name):
        def function(*args, **kwargs):
            raise FramecastError(f"timm's {name} is a stand-in of bench_peers.py (timm does not import here)")
        return function

    for name, path in (("timm", timm_dir), ("timm.layers", timm_dir / "layers"), ("timm.models", timm_dir / "models")):
        stand_in_package(name, path)
    drop = load_file("timm.layers.drop", timm_dir / "layers" / "drop.py")
    weight_init = load_file("timm.layers.weight_init", timm_dir / "layers" / "weight_init.py")
    layers = sys.modules["timm.layers"]
    layers.DropPath, layers.trunc_normal_ = drop.DropPath, weight_init.trunc_normal_
    layers.to_2tuple = unavailable_function("layers.to_2tuple")
    others = {
        "timm.models.convnext": {"ConvNeXtBlock": unavailable("models.convnext.ConvNeXtBlock")},
        "timm.models.mlp_mixer": {"MixerBlock": unavailable("models.mlp_mixer.MixerBlock")},
        "timm.models.swin_transformer": {
            "SwinTransformerBlock": unavailable("models.swin_transformer.SwinTransformerBlock"),
            "window_partition": unavailable_function("models.swin_transformer.window_partition"),
            "window_reverse": unavailable_function("models.swin_transformer.window_reverse")},
        "timm.models.vision_transformer": {"Block": unavailable("models.vision_transformer.Block")},
    }
    for name, members in others.items():
        module = types.ModuleType(name)
        vars(module).update(members)
        sys.modules[name] = module
    version_file = timm_dir / "version.py"
    version = version_file.read_text().partition("'")[2].partition("'")[0] if version_file.is_file() else "?"
    TIMM_STAND_INS[:] = [
        (f"timm {version} from {timm_dir}: only timm/layers/drop.py (DropPath, used) and "
         f"timm/layers/weight_init.py (trunc_normal_, init) loaded, its package __init__ not run"),
        ("timm ConvNeXtBlock, MixerBlock, SwinTransformerBlock, window_partition/reverse, ViT Block: "
         "stand-ins that raise if built (other SimVP translators only)"),
    ]
    return list(TIMM_STAND_INS)


def openstl_packages(root: Path) -> None:
    """``openstl`` itself (its __init__ needs only ``packaging``) and stand-ins for its aggregators."""
    if not (root / "openstl" / "models" / "convlstm_model.py").is_file():
        raise FramecastError(f"{root} is not an OpenSTL checkout (no openstl/models/convlstm_model.py)")
    with peer_imports(root):
        imported_from("openstl", root)
    for sub in ("modules", "models", "utils", "methods"):
        stand_in_package(f"openstl.{sub}", root / "openstl" / sub)


def openstl_config(root: Path, name: str, device: torch.device) -> types.SimpleNamespace:
    """configs/mmnist/<name>.py (plain assignments) plus what OpenSTL's data set adds: frames, shape."""
    values = {k: v for k, v in runpy.run_path(str(root / "configs" / "mmnist" / f"{name}.py")).items()
              if not k.startswith("__")}
    return types.SimpleNamespace(**values, in_shape=(GEOMETRY.t_in, GEOMETRY.in_channels, GEOMETRY.height,
                                                     GEOMETRY.width),
                                 pre_seq_length=GEOMETRY.t_in, aft_seq_length=GEOMETRY.t_out, total_length=FRAMES,
                                 device=device)


def openstl_rnn_side(root: Path, which: str, batch: int, device: torch.device) -> Side:
    """ConvLSTM_Model or PredRNNv2_Model trained as openstl/methods/predrnn.py's training_step."""
    openstl_packages(root)
    module_file, model_file, class_name, config_name = {
        "convlstm": ("convlstm_modules", "convlstm_model", "ConvLSTM_Model", "ConvLSTM"),
        "predrnn-v2": ("predrnnv2_modules", "predrnnv2_model", "PredRNNv2_Model", "PredRNNv2"),
    }[which]
    export_into_package("openstl.modules", module_file)
    model_module = export_into_package("openstl.models", model_file)
    utils = importlib.import_module("openstl.utils.predrnn_utils")  # numpy and torch only
    hp = openstl_config(root, config_name, device)
    num_hidden = [int(x) for x in hp.num_hidden.split(",")]
    torch.manual_seed(0)
    model = getattr(model_module, class_name)(len(num_hidden), num_hidden, hp).to(device)
    eta = {"value": 1.0}  # the method's self.eta (plain scheduled sampling)

    def forward_loss(inputs, targets, global_step):
        ims = torch.cat([inputs, targets], dim=1).permute(0, 1, 3, 4, 2).contiguous()  # (B, T, H, W, C)
        ims = utils.reshape_patch(ims, hp.patch_size)  # (B, T, H/p, W/p, p*p*C)
        if hp.reverse_scheduled_sampling == 1:
            mask = utils.reserve_schedule_sampling_exp(global_step, ims.shape[0], hp)
        else:
            eta["value"], mask = utils.schedule_sampling(eta["value"], global_step, ims.shape[0], hp)
        _, loss = model(ims, mask)  # its own MSE over the t_in + t_out - 1 frames (+ decoupling for V2)
        return loss

    description = {"repo": "chengtan9907/OpenSTL", "model": f"openstl.models.{class_name}",
                   "config": f"configs/mmnist/{config_name}.py",
                   "recipe": {"loss": "the model's own (MSE over all 19 next frames"
                                      + (" + 0.1 x decoupling)" if which == "predrnn-v2" else ")"),
                              "grad_clip": None, "sampling": "reverse" if hp.reverse_scheduled_sampling else "linear"},
                   "stubs": []}
    return peer_side(model, forward_loss, lr=hp.lr, clip=None, device=device, description=description)


def peer_function(path: Path, class_name: str, method: str, namespace: dict) -> Callable:
    """A method of a class in the peer's file, compiled from its own source (the module as a whole
    imports the training framework, which is not needed for one tensor function)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    code = compile(ast.Module(body=[item], type_ignores=[]), str(path), "exec")
                    scope = dict(namespace)
                    exec(code, scope)  # noqa: S102 - the peer's own code, from the checkout given
                    return scope[method]
    raise FramecastError(f"{path} has no {class_name}.{method}")


def openstl_simvp_side(root: Path, which: str, batch: int, device: torch.device) -> Side:
    """SimVP_Model (gSTA or TAU) trained as openstl/methods/simvp.py (and tau.py) training_step."""
    openstl_packages(root)
    stubs = timm_for_simvp()
    export_into_package("openstl.modules", "simvp_modules")
    model_module = export_into_package("openstl.models", "simvp_model")
    config_path = "simvp/SimVP_gSTA" if which == "simvp-gsta" else "TAU"
    hp = openstl_config(root, config_path, device)
    torch.manual_seed(0)
    model = model_module.SimVP_Model(**vars(hp)).to(device)  # as the method's _build_model(**config)
    divergence = None
    if which == "tau":
        divergence = peer_function(root / "openstl" / "methods" / "tau.py", "TAU", "diff_div_reg",
                                   {"torch": torch, "F": F})

    def forward_loss(inputs, targets, _step):
        predicted = model(inputs)  # t_in == t_out: one pass
        loss = F.mse_loss(predicted, targets)  # its criterion, nn.MSELoss
        if divergence is not None:
            loss = loss + hp.alpha * divergence(None, predicted, targets)
        return loss

    description = {"repo": "chengtan9907/OpenSTL", "model": f"openstl.models.SimVP_Model(model_type={hp.model_type!r})",
                   "config": f"configs/mmnist/{config_path}.py",
                   "recipe": {"loss": "mse" + (f" + {hp.alpha} x diff_div_reg" if divergence else ""), "grad_clip": None},
                   "stubs": stubs}
    return peer_side(model, forward_loss, lr=hp.lr, clip=None, device=device, description=description)


# -- what is compared ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    peer: str  # which checkout: "convlstm_pytorch" or "openstl"
    family: str
    cell: str | None
    settings: tuple[str, ...]  # framecast settings on top of the mmnist preset, to match the peer's recipe
    build_peer: Callable[[Path, int, torch.device], Side]
    # Where the parameter counts differ by design (checked against the counts in the JSON).
    params_note: str


ADAM = ("train.optimizer=adam", "train.loss=mse", "train.amp=off")


def encoder_forecaster_comparison(cell: str) -> Comparison:
    """framecast's encoder-forecaster against the jhhuang96 ConvLSTM-PyTorch model, with either cell."""
    return Comparison(
        "convlstm_pytorch", "encoder_forecaster", cell, (*ADAM, "train.lr=1e-4"),
        lambda root, batch, device: convlstm_pytorch_side(root, cell, batch, device),
        "the peer's lowest forecaster cell convolves an all-zero input (96 channels) at every step and "
        "its gate convs carry biases next to the GroupNorm shifts; framecast has neither")


COMPARISONS: dict[str, Comparison] = {
    "ef-gru": encoder_forecaster_comparison("gru"),
    "ef-lstm": encoder_forecaster_comparison("lstm"),
    "convlstm": Comparison(
        "openstl", "convlstm", "lstm", (*ADAM, "train.lr=5e-4"),
        lambda root, batch, device: openstl_rnn_side(root, "convlstm", batch, device),
        "OpenSTL's ConvLSTMCell defines conv_o (5x5, 2h -> h) and conv_last (1x1, 2h -> h) that its forward "
        "never uses (no gradient: params - params_with_grad); framecast's input convs carry a bias"),
    "predrnn-v2": Comparison(
        # OpenSTL's configs/mmnist/PredRNNv2.py has layer_norm = 0; framecast's default normalises.
        "openstl", "predrnn", None, (*ADAM, "train.lr=5e-4", "model.predrnn.layer_norm=false"),
        lambda root, batch, device: openstl_rnn_side(root, "predrnn-v2", batch, device),
        "framecast's conv_x and 1x1 memory conv carry biases and OpenSTL's convs none; otherwise the same layers"),
    "simvp-gsta": Comparison(
        "openstl", "simvp", None, (*ADAM, "train.lr=1e-3", "model.simvp.translator=gsta"),
        lambda root, batch, device: openstl_simvp_side(root, "simvp-gsta", batch, device),
        "the same layers"),
    "tau": Comparison(
        "openstl", "simvp", None, (*ADAM, "train.lr=1e-3", "model.simvp.translator=tau"),
        lambda root, batch, device: openstl_simvp_side(root, "tau", batch, device),
        "framecast's TAU squeeze-and-excitation MLP is width // 16 wide (32 at 512 channels, 40 at 640); "
        "OpenSTL's TemporalAttentionModule computes dim // max(dim // 16, 4), 16 for every width "
        "(8 blocks: 145,408 parameters, a negligible share of the FLOPs)"),
}

PEER_REPOS = {"convlstm_pytorch": "jhhuang96/ConvLSTM-PyTorch", "openstl": "chengtan9907/OpenSTL"}


# -- measuring -----------------------------------------------------------------------------------------


def counted_step(side: Side, batch: torch.Tensor, device: torch.device) -> None:
    """The untimed first step: FLOPs, saved activations and which parameters get a gradient."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with SavedActivations() as saved, counter:
        side.run(batch, device)
    videos = batch.shape[0]
    side.counted = {
        "params": count_parameters(side.model),
        "params_with_grad": sum(p.numel() for p in side.model.parameters() if p.grad is not None),
        "gflops_per_video_step": round(counter.get_total_flops() / videos / 1e9, 3),
        "saved_activations_mb_per_video": round(saved.mb / videos, 1) if saved.mb else None,
    }


def top_operators(side: Side, batch: torch.Tensor, device: torch.device, count: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.run(batch, device)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [{"op": e.key, "calls": e.count, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:count]]


def summary(side: Side, batch_size: int) -> dict:
    median = statistics.median(side.times)
    cpu = statistics.median(side.cpu_times)
    return {**side.description, **side.counted,
            "median_step_s": round(median, 4), "videos_per_s": round(batch_size / median, 4),
            # the fastest step: what the machine gives with the least interference from other work
            "min_step_s": round(min(side.times), 4),
            "achieved_gflops_per_s": (round(side.counted["gflops_per_video_step"] * batch_size / median, 1)
                                      if side.counted else None),
            "step_times_s": [round(t, 4) for t in side.times],
            # CPU seconds of the process per step: less sensitive than wall time to other work on the machine
            "median_step_cpu_s": round(cpu, 4), "videos_per_cpu_s": round(batch_size / cpu, 4),
            "first_loss": side.losses[0], "last_loss": side.losses[-1]}


def compare(name: str, root: Path, args: argparse.Namespace, device: torch.device) -> dict:
    spec = COMPARISONS[name]
    ours = framecast_side(spec.family, spec.cell, list(spec.settings), args.overrides, args.batch, device)
    theirs = spec.build_peer(root, args.batch, device)
    theirs.description["commit"] = peer_commit(root, args.peer_commit)
    batch = random_videos(args.batch, FRAMES, GEOMETRY.height, GEOMETRY.width, device)  # uint8 (B, T, H, W, 3)

    sides = (ours, theirs)
    for side in sides:
        counted_step(side, batch, device)
        for _ in range(args.warmup):
            side.run(batch, device)
    for round_index in range(args.rounds):
        for side in sides if round_index % 2 == 0 else sides[::-1]:
            for _ in range(args.steps_per_round):
                seconds, cpu = side.run(batch, device)
                side.times.append(seconds)
                side.cpu_times.append(cpu)
    result = {"name": name, "framecast": summary(ours, args.batch), "peer": summary(theirs, args.batch)}
    if args.profile:
        result["framecast"]["top_operators"] = top_operators(ours, batch, device)
        result["peer"]["top_operators"] = top_operators(theirs, batch, device)
    fc, peer = result["framecast"], result["peer"]
    result["ratio_framecast_over_peer"] = round(fc["videos_per_s"] / peer["videos_per_s"], 3)
    result["ratio_framecast_over_peer_fastest_step"] = round(peer["min_step_s"] / fc["min_step_s"], 3)
    result["ratio_framecast_over_peer_cpu_time"] = round(fc["videos_per_cpu_s"] / peer["videos_per_cpu_s"], 3)
    result["params_match"] = fc["params"] == peer["params"]
    result["params_note"] = None if result["params_match"] else (
        f"{fc['params']:,} vs {peer['params']:,} ({peer['params_with_grad']:,} of the peer's get a gradient): "
        + spec.params_note)
    return result


def peer_commit(root: Path, given: str | None) -> str | None:
    if given:
        return given
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--convlstm-pytorch", type=Path, metavar="DIR", help="a jhhuang96/ConvLSTM-PyTorch checkout")
    parser.add_argument("--openstl", type=Path, metavar="DIR", help="a chengtan9907/OpenSTL checkout")
    parser.add_argument("--compare", nargs="+", choices=sorted(COMPARISONS), default=None,
                        help="default: every comparison whose peer checkout is given")
    parser.add_argument("--peer-packages", type=Path, metavar="DIR", default=None,
                        help="extra packages a peer needs (timm for OpenSTL's SimVP), installed outside the "
                             "project with pip install --no-deps --target DIR; searched after everything else")
    parser.add_argument("--peer-commit", default=None, help="the peer's commit, where its checkout has no git")
    parser.add_argument("--batch", type=int, default=2, help="videos per step (both sides)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (order swapped every round)")
    parser.add_argument("--steps-per-round", type=int, default=1, help="timed steps of each side per round")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps of each after the counted first one")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (both sides; 0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--profile", action="store_true", help="top operators of one more step of each")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="framecast config settings (validated)")
    args = parser.parse_args(argv)
    if min(args.batch, args.rounds, args.steps_per_round) < 1 or args.warmup < 0:
        parser.error("--batch, --rounds and --steps-per-round must be >= 1, --warmup >= 0")
    roots = {"convlstm_pytorch": args.convlstm_pytorch, "openstl": args.openstl}
    if args.compare is None:
        args.compare = [name for name, spec in COMPARISONS.items() if roots[spec.peer] is not None]
        if not args.compare:
            parser.error("give a peer checkout: --convlstm-pytorch DIR and/or --openstl DIR")
    for name in args.compare:
        root = roots[COMPARISONS[name].peer]
        flag = "--" + COMPARISONS[name].peer.replace("_", "-")
        if root is None:
            parser.error(f"--compare {name} needs {flag} DIR (a {PEER_REPOS[COMPARISONS[name].peer]} checkout)")
        if not root.is_dir():
            parser.error(f"{flag} {root}: no such directory")
    if args.peer_packages is not None and not args.peer_packages.is_dir():
        parser.error(f"--peer-packages {args.peer_packages}: no such directory")
    args.roots = roots
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.peer_packages is not None and str(args.peer_packages) not in sys.path:
        sys.path.append(str(args.peer_packages))  # last: it never shadows the project's own packages
    try:
        comparisons = [compare(name, args.roots[COMPARISONS[name].peer], args, device) for name in args.compare]
    except FramecastError as exc:
        raise SystemExit(f"bench_peers.py: {exc}") from None
    result = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                    "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]},
        "date": datetime.date.today().isoformat(),
        "geometry": {"size": [GEOMETRY.height, GEOMETRY.width], "frames": [GEOMETRY.t_in, GEOMETRY.t_out],
                     "channels": GEOMETRY.in_channels},
        "dtype": "fp32",  # no autocast on either side (train.amp=off); on CUDA torch may run convs in TF32
        "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
        "comparisons": comparisons,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
