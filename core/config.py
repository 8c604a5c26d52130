"""Typed configuration: one YAML file -> nested dataclasses, overridable as ``key.sub=value``.

Every default lives here and nowhere else. Unknown keys and wrongly typed values are errors,
never silently ignored, so a typo in a config file cannot quietly train the wrong model.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import FramecastError


# The routes to a future mask that use a forecaster (segment.route adds copy_last, the baseline).
MASK_ROUTES = ("frames", "masks", "joint")
# Masks are stored as uint8 class ids.
MAX_CLASSES = 256


@dataclass
class DataConfig:
    # Folder holding the split folders train/, val/, unlabeled/, hidden/ of video_<n>/image_<k>.png.
    root: str = "datasets/shapes"
    # Folder of <split>.h5 packs made by `main.py pack`; empty means <root>/packed.
    pack_dir: str = ""
    # Where frames are read from: "h5" packs, "png" folders, or "auto" (a pack when one exists, refused
    # when the split's PNG folders have changed since packing; "h5" trusts the pack unchecked).
    source: Literal["auto", "h5", "png"] = "auto"
    train_splits: list[str] = field(default_factory=lambda: ["train", "unlabeled"])
    val_split: str = "val"
    t_in: int = 11  # frames fed to the model
    t_out: int = 11  # frames it predicts
    # Every window of t_in + t_out frames in a video is a sample when true, only the first when false.
    all_windows: bool = False
    num_workers: int = 4  # loader processes; 0 reads in the main process
    # Batches each worker keeps ready. Memory in flight is workers x this x batch bytes (pinned on
    # CUDA); two per worker kept a GPU fed from a pack (benchmarks/RESULTS.md).
    prefetch_factor: int = 2
    pin_memory: bool = True  # used only when training on CUDA
    # Node-local folder the packs a job reads are copied to once per node before reading (verified by
    # size and checksum, reused by later jobs while valid; data/staging.py), e.g. ${SLURM_TMPDIR};
    # empty = read the packs where they are.
    stage_to: str = ""
    # Classes of the labeled videos' mask.npy, background (0) included: every class id is below it.
    # 49 as the reference layout (background + shape x material x colour); stored as uint8, so <= 256.
    num_classes: int = 49

    def check(self, where: str) -> None:
        check_positive(where, t_in=self.t_in, t_out=self.t_out, prefetch_factor=self.prefetch_factor)
        check_at_least(where, 0, num_workers=self.num_workers)
        repeated = sorted({s for s in self.train_splits if self.train_splits.count(s) > 1})
        if repeated:  # one split twice would weight its videos double without a word
            raise FramecastError(f"{where}.train_splits lists {', '.join(repeated)} more than once: {self.train_splits}")
        self.check_num_classes(f"{where}.num_classes", self.num_classes)

    @staticmethod
    def check_num_classes(name: str, value: int) -> None:
        """2..256: a background and at least one class, and ids that fit the uint8 masks."""
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_CLASSES:
            raise FramecastError(f"{name} must be a whole number from 2 to {MAX_CLASSES}, got {value!r}")


# ----------------------------------------------------------------------------- checks every section uses


def check_positive(where: str, **values: int | list[int]) -> None:
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if not items or any(v < 1 for v in items):
            raise FramecastError(f"{where}.{name} must be >= 1{' for every entry' if isinstance(value, list) else ''}, got {value}")


def check_at_least(where: str, low: float, **values: float) -> None:
    """Each value finite and >= ``low`` (a NaN passes every comparison, so it is tested first)."""
    for name, value in values.items():
        if not math.isfinite(value) or value < low:
            raise FramecastError(f"{where}.{name} must be a number >= {low:g}, got {value}")


def check_odd(where: str, name: str, value: int) -> None:
    if value % 2 == 0:
        raise FramecastError(f"{where}.{name} must be odd, got {value}")


# ----------------------------------------------------------------------------- model: one section per family
# ``model.family`` picks the family that is built; each family's settings are the ``model.<name>``
# section of the same name. The families, their settings classes and their tiny sizes come from the
# family table (core/families.py); this module names none of them.

SIZES = ("full", "tiny")


class _ModelSections:
    """What every ModelConfig has besides its fields (the class itself is made from the family table)."""

    family: str
    in_channels: int
    size: str

    @property
    def section(self) -> Any:
        """The chosen family's own settings."""
        return getattr(self, self.family)

    def check(self, where: str) -> None:
        from core.families import family_names

        names = family_names()
        if self.family not in names:
            raise FramecastError(f"{where}.family: {self.family!r} is not one of {', '.join(repr(n) for n in names)}"
                                 f" (a family declared outside framecast: name its module in {where}.plugins)")
        if self.size not in SIZES:
            raise FramecastError(f"{where}.size: {self.size!r} is not one of {', '.join(repr(s) for s in SIZES)}")
        if isinstance(self.in_channels, bool) or self.in_channels < 1:
            raise FramecastError(f"{where}.in_channels must be >= 1 (1 grey, 3 RGB, any count of maps), "
                                 f"got {self.in_channels}")
        for name in names:
            getattr(self, name).check(f"{where}.{name}")

    @classmethod
    def unknown_setting_hint(cls, key: str, where: str) -> str:
        """Where a misplaced setting belongs: a key of a family's section written elsewhere."""
        from core.families import families

        owners = [f.name for f in families() if key in f.setting_names()]
        if not owners:
            return ""
        places = " and ".join(f"model.{name}.{key}" for name in owners)
        names = ", ".join(owners)
        return f"; {key} is a setting of the {names} famil{'ies' if len(owners) > 1 else 'y'} ({places})"


_model_classes: dict[tuple, type] = {}


def _model_own_fields(default_family: str) -> list[tuple[str, type, Any]]:
    """The model section's fields besides one per family (fresh ``field`` objects for each class made)."""
    return [
        # Which model is built; its settings are the section of the same name.
        ("family", str, field(default=default_family)),
        # Channels the model sees per frame: 3 for colour, 1 for grey data (frames stored as RGB on
        # disk are then read as their first channel, and predictions written back as grey RGB).
        ("in_channels", int, field(default=3)),
        # "tiny": every family's section starts from the family's declared tiny model (seconds on a
        # CPU), the settings written in the config still applying on top; "full": its defaults.
        ("size", str, field(default="full")),
        # Modules that declare more model families (plug-ins: core/families.py), imported before the
        # rest of the config is read; saved with the run, so its jobs and checkpoints find them too.
        ("plugins", list[str], field(default_factory=list)),
    ]


MODEL_FIELDS = tuple(name for name, _, _ in _model_own_fields(""))  # besides one section per family


def model_config_class() -> type:
    """The ``model:`` section's dataclass: ``family`` (default: the first declared family),
    ``in_channels``, ``size`` and one field per declared family, of its settings class. Made again when
    a family is declared later (a plug-in), so its section is known from then on."""
    from core.families import families

    table = families()
    key = tuple((f.name, f.settings) for f in table)
    cls = _model_classes.get(key)
    if cls is None:
        fields = [*_model_own_fields(table[0].name),
                  *((f.name, f.settings, field(default_factory=f.settings)) for f in table)]
        cls = dataclasses.make_dataclass("ModelConfig", fields, bases=(_ModelSections,))
        cls.__module__ = __name__
        _model_classes[key] = cls
    return cls


def family_names() -> tuple[str, ...]:
    """``model.family``'s choices, in declaration order."""
    from core.families import family_names as names

    return names()


def __getattr__(name: str) -> Any:
    # ``ModelConfig`` is made from the family table on first use (importing this module reads no table).
    if name == "ModelConfig":
        return model_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class SegmentConfig:
    """The segmenter: a UNet from one frame to per-pixel class logits (``data.num_classes``), trained
    with cross-entropy on the labeled videos' masks when ``train.task`` is ``segment``. Not a
    forecasting family: it maps a frame to its mask, and the routes to a future mask use it."""

    base_channels: int = 32  # channels at full resolution; each level down doubles them
    levels: int = 3  # downsamplings (frame sides must be divisible by 2 ** levels)
    norm_groups: int = 8  # GroupNorm groups in every conv block; 0 disables it
    # Splits it trains on: labeled ones (their videos carry mask.npy), unlike the forecaster's.
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    # Frames of each training window segmented per step (chosen evenly, rotating with the step, so
    # every frame is seen and resume stays exact); fewer than the window's frames keeps steps cheap.
    frames_per_video: int = 4
    # The segmenter's checkpoint the routes use; empty = <run.out_dir>/<run.name>/segmenter/best.pt.
    checkpoint: str = ""
    # How `main.py segment` gets the future mask: "frames" segments the frames a forecaster predicted,
    # "masks" forecasts the segmented input frames' class maps (a forecaster trained with
    # train.task=masks), "joint" segments the frames of a forecaster fine-tuned with the segmenter's
    # loss (train.task=joint), "copy_last" segments the last input frame (the baseline).
    route: Literal["frames", "masks", "joint", "copy_last"] = "frames"
    # How the masks route turns forecast class maps into a mask: "foreground" keeps a pixel background
    # only where the background map outweighs all objects' together, else the likeliest object (a
    # forecast that spreads an object over the pixels it may reach still marks it: better far ahead,
    # benchmarks/RESULTS.md "Routes"); "argmax" the likeliest class (background wins any doubt).
    decode: Literal["foreground", "argmax"] = "foreground"
    # The route's forecaster checkpoint; empty = that route's run: frames <run>/best.pt, masks
    # <run>/masks/best.pt, joint <run>/joint/best.pt.
    forecaster: str = ""
    # Which future frame the hand-off holds: 0 = the last (frame 22 of the reference layout), k = the
    # k-th after the inputs; all_frames writes every future frame, (N, T, H, W) instead of (N, H, W).
    lead_time: int = 0
    all_frames: bool = False
    # The hand-off .npy; empty = <run_dir>/seg/<predict.split>.<route>.npy (its index beside it).
    out: str = ""
    # train.task=joint: weight of the frozen segmenter's cross-entropy on the predicted frames (against
    # the true future masks), added to the frame loss, so the forecaster keeps what the mask needs.
    joint_weight: float = 0.1
    # train.task=joint starts from this forecaster's weights; empty = <run_dir>/best.pt.
    joint_from: str = ""
    # `submit pipeline` (and the demo) also train the segmenter and the routes' models (segment.route
    # and evaluate.routes), hand off the masks (segment stage) and write them as PNGs.
    pipeline: bool = False

    def check(self, where: str) -> None:
        check_positive(where, base_channels=self.base_channels, levels=self.levels,
                        frames_per_video=self.frames_per_video)
        check_at_least(where, 0, norm_groups=self.norm_groups)
        if self.norm_groups and self.base_channels % self.norm_groups:
            raise FramecastError(f"{where}.norm_groups={self.norm_groups} must divide "
                                 f"{where}.base_channels={self.base_channels}")
        if not self.train_splits:
            raise FramecastError(f"{where}.train_splits is empty: name at least one labeled split")
        check_at_least(where, 0, lead_time=self.lead_time, joint_weight=self.joint_weight)


@dataclass
class TrainConfig:
    # What the run trains: "forecast" a model.family forecaster (frames -> future frames); "segment"
    # the segment section's segmenter (a frame -> its class mask), in <run_dir>/segmenter/; "masks" a
    # model.family forecaster of one-hot class maps (data.num_classes channels), in <run_dir>/masks/;
    # "joint" a forecaster fine-tuned with the segmenter's loss on its frames, in <run_dir>/joint/.
    task: Literal["forecast", "segment", "masks", "joint"] = "forecast"
    epochs: int = 50
    batch_size: int = 4  # per process
    # adam / adamw (betas below), rmsprop (rho, momentum), adadelta (rho; its steps are scaled by lr,
    # which is 1.0 in its paper), sgd (momentum, nesterov). Seed recipes: RMSprop, Adadelta.
    optimizer: Literal["adam", "adamw", "rmsprop", "adadelta", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled in adamw; an L2 term in the gradient of the others
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam and adamw
    # Decay of the running average of squared gradients: rmsprop's alpha, adadelta's rho (Keras's
    # default for both; torch's RMSprop uses 0.99).
    rho: float = 0.9
    momentum: float = 0.0  # sgd and rmsprop; 0.9 is the usual choice with sgd
    nesterov: bool = False  # sgd: Nesterov momentum (needs momentum > 0)
    schedule: Literal["onecycle", "plateau", "constant"] = "onecycle"
    warmup_frac: float = 0.1  # onecycle: fraction of steps spent rising to lr
    plateau_factor: float = 0.5
    plateau_patience: int = 4
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    early_stop_patience: int = 20  # validations without improvement before stopping; 0 disables
    val_every_steps: int = 0  # 0 validates once per epoch
    max_steps_per_epoch: int = 0  # 0 = the whole training set each epoch
    max_val_batches: int = 0  # 0 = the whole validation split
    # Stop (validating and saving first) once this many minutes of training have passed in this
    # process; the run then counts as finished ("time_budget"). 0 = no limit. For fixed-time
    # comparisons; on a cluster the job's time limit and requeue are the way to train longer.
    max_minutes: float = 0.0
    # Autocast: auto = bf16 on GPUs that compute it natively, fp16 (with a gradient scaler) on older
    # GPUs, fp32 on the CPU; bf16 / fp16 wherever asked; off = fp32 (core/precision.py).
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    # CUDA only. Off: eager NCHW steps measured faster on an H100, as GroupNorm has no channels-last
    # CUDA kernel, so every norm converts layouts (benchmarks/RESULTS.md).
    channels_last: bool = False
    # torch.compile the model: faster steps on a GPU (benchmarks/RESULTS.md), after minutes of
    # compiling; the compiled kernels are kept in compile_cache, so a resumed or requeued job, a
    # predict job and later validations reuse them instead of compiling again.
    compile: bool = False
    # Folder of torch.compile's caches (inductor, FX graphs, AOT autograd, Triton); empty means
    # <run.out_dir>/<run.name>/compile_cache. Share one across runs of the same model to compile once.
    compile_cache: str = ""
    # Recompute each recurrent step in the backward pass instead of storing its gates: far fewer
    # stored activations for some more conv FLOPs (benchmarks/RESULTS.md); same results.
    activation_checkpointing: bool = False
    # Frame-by-frame families (convlstm, predrnn, phydnet): also score the next-frame predictions the
    # model makes while reading its inputs (frames 1..t_in-1), each prediction weighted alike, as
    # OpenSTL trains its recurrent methods; false scores only the t_out forecast frames.
    supervise_inputs: bool = False
    # Per-pixel training loss: "mse", "l1", "mse+l1" (their sum) or "bce" (binary cross-entropy on
    # frames in [0, 1], for near-binary data such as Moving MNIST).
    loss: Literal["mse", "l1", "mse+l1", "bce"] = "mse"
    # Terms that keep structure, added to train.loss with these weights (0 = off): an MSE-trained
    # model wins MSE by blurring. ssim_weight x (1 - SSIM) (the scores' 11x11 Gaussian SSIM) ...
    ssim_weight: float = 0.0
    # ... and gdl_weight x the gradient-difference loss (Mathieu, Couprie & LeCun 2016): the mean
    # |(|dY| - |dY_hat|)|^gdl_alpha of the vertical and horizontal neighbour differences, summed, so
    # predicted edges must be as sharp as the true ones wherever those are.
    gdl_weight: float = 0.0
    gdl_alpha: int = 1  # the exponent above: 1 penalises a mismatch linearly, 2 squares it
    seed: int = 0
    log_every_steps: int = 10

    def check(self, where: str) -> None:
        check_positive(where, epochs=self.epochs, batch_size=self.batch_size, log_every_steps=self.log_every_steps,
                       gdl_alpha=self.gdl_alpha)
        check_at_least(where, 0, ssim_weight=self.ssim_weight, gdl_weight=self.gdl_weight)
        check_at_least(where, 0, lr=self.lr, max_minutes=self.max_minutes, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                        early_stop_patience=self.early_stop_patience, val_every_steps=self.val_every_steps,
                        max_steps_per_epoch=self.max_steps_per_epoch, max_val_batches=self.max_val_batches,
                        plateau_patience=self.plateau_patience)
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise FramecastError(f"{where}.betas must be two numbers in [0, 1), got {self.betas}")
        if not (math.isfinite(self.rho) and 0 < self.rho < 1):
            raise FramecastError(f"{where}.rho must be in (0, 1), got {self.rho}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise FramecastError(f"{where}.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise FramecastError(f"{where}.nesterov needs {where}.optimizer=sgd and {where}.momentum > 0 "
                                 f"(got optimizer={self.optimizer}, momentum={self.momentum})")
        if not 0 <= self.warmup_frac < 1:
            raise FramecastError(f"{where}.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 < self.plateau_factor < 1:
            raise FramecastError(f"{where}.plateau_factor must be in (0, 1), got {self.plateau_factor}")


@dataclass
class PredictConfig:
    # One checkpoint (empty means runs/<run.name>/best.pt), or an ensemble: a glob
    # ("runs/sweep/*/best.pt", matches in sorted order) or a list of paths and globs, whose members'
    # outputs are averaged (training/inference.py resolves it; an ensemble's outputs default to
    # <run.out_dir>/ensembles/<name>/, so they never replace a member's own: core/outputs.py).
    checkpoint: str | list[str] = ""
    split: str = "hidden"
    out: str = ""  # empty means <run.out_dir>/<run.name>/preds/<split>.npy (an ensemble: core/outputs.py)
    batch_size: int = 8
    shards: int = 1  # >1 splits prediction into a Slurm job array, merged before conversion
    # Also write <out stem>.std.npy: the per-pixel standard deviation across the ensemble's members of
    # their outputs clipped to [0, 1], float16 (N, T_out, H, W, 3).
    spread: bool = False
    # A calibration (main.py calibrate) of this checkpoint or ensemble: the spread file then holds, per
    # pixel, the half-width of its calibrated interval of coverage interval_level (written with or
    # without predict.spread), so the spread maps read as error bars.
    calibration: str = ""
    interval_level: float = 0.9  # one of the calibration's calibrate.levels

    def check(self, where: str) -> None:
        check_positive(where, batch_size=self.batch_size, shards=self.shards)
        if not 0 < self.interval_level < 1:
            raise FramecastError(f"{where}.interval_level must be in (0, 1), got {self.interval_level}")
        if isinstance(self.checkpoint, list) and (not self.checkpoint or not all(self.checkpoint)):
            raise FramecastError(f"{where}.checkpoint: an empty list or entry in {self.checkpoint} "
                                 "(give checkpoint paths or globs)")


@dataclass
class ConvertConfig:
    out: str = ""  # empty means <run.out_dir>/<run.name>/png/<split>
    frames: list[int] = field(default_factory=list)  # frame numbers to write; empty = all
    workers: int = 4
    # Also write video_<n>/spread_<k>.png: heat maps of an ensemble's spread (predict.spread), on the
    # fixed scale of stages/convert.py (SPREAD_VMAX).
    spread: bool = False

    def check(self, where: str) -> None:
        check_positive(where, workers=self.workers)
        check_at_least(where, 0, **{f"frames[{i}]": k for i, k in enumerate(self.frames)})


@dataclass
class EvaluateConfig:
    split: str = "val"
    out: str = ""  # empty means <run.out_dir>/<run.name>/eval/<split>
    max_videos: int = 0  # 0 = every video of the split
    samples: int = 2  # videos drawn in the sample strip and GIF
    # Grey data (model.in_channels 1) is also scored by the F1 of the binarised frame (pixel >
    # threshold, in [0, 1]) per lead time, as Moving MNIST forecasters report it.
    f1_threshold: float = 0.5
    skip_videos: int = 0  # leave out the first videos of the split (those a calibration was fitted on)
    # A calibration (main.py calibrate) whose intervals are scored: coverage, width, and how well
    # their scale ranks pixel errors. Empty: an ensemble's raw spread is scored (Gaussian intervals).
    calibration: str = ""
    # The pixels whose error ranks above this fraction of the lead time's are the "large errors" the
    # AUROC of the interval scale is measured on.
    large_error_fraction: float = 0.1
    # Random pixels per video and lead time kept for the ranking scores (AUROC, Spearman).
    rank_pixels_per_video: int = 2048
    # Which SSIM (core/scores.py defines each): gaussian = 11x11 Gaussian window, Wang et al.'s;
    # skimage = scikit-image's defaults (7x7 uniform window, sample covariance) with data range 1;
    # openstl = the same with data range 2, as OpenSTL's published tables computed it. Training's
    # validation scores (TensorBoard, W&B) and compare use it too, so figures set side by side agree.
    ssim: Literal["gaussian", "skimage", "openstl"] = "gaussian"
    # Mask routes (frames, masks, joint) whose future masks are scored too, by Jaccard per lead time
    # and of segment.lead_time's frame, against copy-last and the oracle (masks_report.json); their
    # checkpoints are the segment section's. Empty: frames only.
    routes: list[str] = field(default_factory=list)

    def check(self, where: str) -> None:
        check_at_least(where, 0, max_videos=self.max_videos, samples=self.samples, skip_videos=self.skip_videos)
        check_positive(where, rank_pixels_per_video=self.rank_pixels_per_video)
        if not 0 < self.large_error_fraction < 1:
            raise FramecastError(f"{where}.large_error_fraction must be in (0, 1), got {self.large_error_fraction}")
        for route in self.routes:
            if route not in MASK_ROUTES:
                raise FramecastError(f"{where}.routes: {route!r} is not one of {', '.join(MASK_ROUTES)}")
        if not 0 < self.f1_threshold < 1:
            raise FramecastError(f"{where}.f1_threshold must be in (0, 1), got {self.f1_threshold}")


@dataclass
class CalibrateConfig:
    """``main.py calibrate`` (stages/calibrate.py): a per-pixel predictive interval whose coverage holds
    on held-out videos, fitted for ``predict.checkpoint`` (one model or an ensemble)."""

    # "spread": the ensemble's per-pixel std (plus spread_floor) rescaled per lead time; "scale_head":
    # a small conv net trained on fit_split to predict each pixel's error scale from the input frames
    # and the forecast (any family, one checkpoint or several), then rescaled per lead time the same way.
    method: Literal["spread", "scale_head"] = "scale_head"
    # The labeled split the per-lead-time factors are fitted on (split-conformal); score coverage on
    # videos it does not hold (another split, or evaluate.skip_videos past these).
    split: str = "val"
    max_videos: int = 0  # the first videos of split only (numeric order); 0 = all
    # Random pixels of each calibration video per lead time whose scores are kept (bounded memory; the
    # finite-sample guarantee holds for the pixels kept).
    pixels_per_video: int = 4096
    # Interval coverages fitted (and reported by evaluate).
    levels: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])
    # Added to the ensemble's std before rescaling: where the members agree exactly an interval of
    # zero width would miss every error.
    spread_floor: float = 0.01
    # scale_head: its training split, likelihood, size and training.
    fit_split: str = "train"
    likelihood: Literal["laplace", "gaussian"] = "laplace"
    head_channels: int = 16
    head_layers: int = 3
    head_kernel: int = 3
    head_steps: int = 300
    head_lr: float = 3e-3
    min_scale: float = 1e-3  # the head's smallest scale (its NLL is unbounded below at scale 0)
    seed: int = 0  # the head's initial weights, its batches and the calibration pixels drawn
    # Empty means <run.out_dir>/<run.name>/calibration.pt, an ensemble's <run.out_dir>/ensembles/<name>/.
    out: str = ""

    def check(self, where: str) -> None:
        check_at_least(where, 0, max_videos=self.max_videos, spread_floor=self.spread_floor)
        check_positive(where, pixels_per_video=self.pixels_per_video, head_channels=self.head_channels,
                        head_layers=self.head_layers, head_kernel=self.head_kernel, head_steps=self.head_steps)
        check_odd(where, "head_kernel", self.head_kernel)
        if not self.levels or not all(0 < level < 1 for level in self.levels) or len(set(self.levels)) != len(self.levels):
            raise FramecastError(f"{where}.levels must be distinct coverages in (0, 1), got {self.levels}")
        if not (math.isfinite(self.head_lr) and self.head_lr > 0):
            raise FramecastError(f"{where}.head_lr must be > 0, got {self.head_lr}")
        if not (math.isfinite(self.min_scale) and self.min_scale > 0):
            raise FramecastError(f"{where}.min_scale must be > 0, got {self.min_scale}")


@dataclass
class LRFindConfig:
    """The learning-rate range test (``main.py lr-find``, stages/lr_find.py): an exponential sweep of
    the learning rate over ``steps`` training steps, stopped when the loss diverges."""

    start_lr: float = 1e-6
    end_lr: float = 1.0
    steps: int = 100
    smoothing: float = 0.98  # of the loss's exponential moving average (fastai's beta)
    diverge_factor: float = 4.0  # stop once the smoothed loss exceeds this times its minimum
    # Fraction of the steps whose losses the suggestion ignores (fastai skips num_it // 10): the first
    # losses of a fresh model on a few batches move for reasons no lr explains, and their steepest
    # "descent" would suggest the sweep's first lr.
    skip_start: float = 0.1
    # The smoothed loss must fall by at least this fraction (from the first step kept to its minimum)
    # for a suggestion; a flatter curve is noise, and lr-find says so instead of suggesting.
    min_drop: float = 0.05
    out: str = ""  # empty means <run.out_dir>/lr-find/<run.name> (never the run folder itself)

    def check(self, where: str) -> None:
        check_positive(where, steps=self.steps)
        if not (math.isfinite(self.start_lr) and math.isfinite(self.end_lr) and 0 < self.start_lr < self.end_lr):
            raise FramecastError(f"{where}.start_lr and {where}.end_lr must satisfy 0 < start_lr < end_lr, "
                                 f"got {self.start_lr} and {self.end_lr}")
        if not 0 <= self.smoothing < 1:
            raise FramecastError(f"{where}.smoothing must be in [0, 1), got {self.smoothing}")
        if not self.diverge_factor > 1:
            raise FramecastError(f"{where}.diverge_factor must be > 1, got {self.diverge_factor}")
        if not 0 <= self.skip_start < 1:
            raise FramecastError(f"{where}.skip_start must be in [0, 1), got {self.skip_start}")
        if not 0 <= self.min_drop < 1:
            raise FramecastError(f"{where}.min_drop must be in [0, 1), got {self.min_drop}")


@dataclass
class CompareConfig:
    """``main.py compare`` (stages/compare.py): evaluate runs' best.pt and tabulate them, seeds pooled."""

    # Run folders (each with config.yaml and best.pt), as paths or glob patterns.
    runs: list[str] = field(default_factory=list)
    out: str = ""  # empty means <the folder holding the runs>/compare

    def check(self, where: str) -> None:
        if any(not pattern for pattern in self.runs):
            raise FramecastError(f"{where}.runs: an empty pattern in {self.runs}")


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
    array_parallelism: int = 16  # array tasks running at once (in all, when an array is split)
    # Tasks per job array at most; a longer array (predict shards, a sweep) is submitted as several.
    # 0 = the cluster's MaxArraySize (scontrol show config); the smaller of the two when both are set.
    max_array_size: int = 0

    def check(self, where: str) -> None:
        check_positive(where, time_min=self.time_min, nodes=self.nodes, tasks_per_node=self.tasks_per_node,
                        cpus_per_task=self.cpus_per_task, mem_gb=self.mem_gb,
                        array_parallelism=self.array_parallelism)
        check_at_least(where, 0, gpus_per_node=self.gpus_per_node, signal_delay_s=self.signal_delay_s,
                        max_num_timeout=self.max_num_timeout, max_array_size=self.max_array_size)


_RUN_NAME = re.compile(r"[A-Za-z0-9._+=,-]+")


@dataclass
class RunConfig:
    name: str = "default"
    out_dir: str = "runs"
    device: str = "auto"  # auto = cuda when available, else cpu
    # A training's lock on its run folder is taken for dead when not refreshed for this long (its
    # holder refreshes it every quarter of this); a holder on this host or of this Slurm job is
    # checked directly.
    lock_stale_s: int = 600
    # Also write TensorBoard event files to <run_dir>/tensorboard/ (train and val losses, lr, videos/s,
    # per-lead-time val MSE and SSIM, a sample strip per validation); metrics.jsonl stays the record.
    # Needs the tensorboard package (requirements.txt).
    tensorboard: bool = False
    # Also log the same records to Weights & Biases (training/metrics.py): the run's config, train and
    # val scores, the sample strip. Files go to <run_dir>/wandb/; WANDB_MODE=offline writes them
    # there without a network (compute nodes), `wandb sync` sends them later from a login node.
    # Needs the wandb package: pip install 'framecast[wandb]'.
    wandb: bool = False
    wandb_project: str = "framecast"  # the W&B project the runs go to (WANDB_ENTITY picks the team)
    # Dotted settings (train.lr, model.family, ...) that are this run's hyperparameters: with
    # run.tensorboard they are written as TensorBoard hparams beside the val scores (the HParams tab
    # compares runs), with run.wandb the runs are grouped by their parent folder. A sweep sets it to
    # its grid's settings and train.seed.
    hparams: list[str] = field(default_factory=list)
    # CPU threads torch computes with in every stage: 0 = OMP_NUM_THREADS when set, else
    # SLURM_CPUS_PER_TASK, else the CPUs this process may use (core/threads.py). torch's own default
    # (every core of the machine) oversubscribes a shared or loaded machine.
    threads: int = 0

    def check(self, where: str) -> None:
        # The name is a folder under out_dir: one plain component, never a path that leads elsewhere.
        if not _RUN_NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise FramecastError(
                f"{where}.name={self.name!r}: use letters, digits, '.', '_', '-', '+', '=' and ',' only "
                "(it names a folder under run.out_dir)"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise FramecastError(f"{where}.device={self.device!r}: expected auto, cpu, cuda or cuda:<n>")
        check_positive(where, lock_stale_s=self.lock_stale_s)
        check_at_least(where, 0, threads=self.threads)
        if self.wandb and not self.wandb_project:
            raise FramecastError(f"{where}.wandb_project is empty: name the W&B project the runs go to")
        for key in self.hparams:
            if not re.fullmatch(r"[a-z_]+(\.[a-z0-9_]+)+", key):
                raise FramecastError(f"{where}.hparams: {key!r} is not a dotted setting such as train.lr")


# The folder inside <run.out_dir>/<run.name> each train.task trains into (one config, several runs).
TASK_DIRS = {"forecast": "", "segment": "segmenter", "masks": "masks", "joint": "joint"}


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: model_config_class()())
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)

    @property
    def run_dir(self) -> Path:
        """``<run.out_dir>/<run.name>``, ``${VAR}`` in run.out_dir expanded here (core/paths.py)."""
        from core.paths import expand

        base = Path(expand("run.out_dir", self.run.out_dir)) / self.run.name
        return base / TASK_DIRS[self.train.task] if TASK_DIRS[self.train.task] else base

    @property
    def base_run_dir(self) -> Path:
        """``<run.out_dir>/<run.name>``: the forecaster's folder, holding the other tasks' runs."""
        from core.paths import expand

        return Path(expand("run.out_dir", self.run.out_dir)) / self.run.name


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
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads off/on as booleans: ``amp: off`` is "off"
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


def _tiny_under(values: dict) -> dict:
    """``model.size: tiny``: each family's section starts from its declared tiny settings, what the
    config writes in it applying on top."""
    from core.families import families

    values = dict(values)
    for family in families():
        section = values.get(family.name)
        if section is None or isinstance(section, dict):
            values[family.name] = {**family.tiny, **(section or {})}
    return values


def _build(cls: type, values: dict, where: str) -> Any:
    if isinstance(cls, type) and issubclass(cls, _ModelSections) and values.get("size") == "tiny":
        values = _tiny_under(values)
    hints = typing.get_type_hints(cls, localns={"ModelConfig": model_config_class()})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        hint = _ModelSections.unknown_setting_hint(unknown[0], where) if where.startswith("model") else ""
        raise FramecastError(
            f"unknown setting {prefix}{unknown[0]} (known in {where or 'the top level'}: "
            f"{', '.join(sorted(names))}){hint}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _import_plugins(values: dict) -> None:
    """Import the modules ``model.plugins`` names, so the families they declare are known."""
    import importlib

    model = values.get("model")
    plugins = model.get("plugins") if isinstance(model, dict) else None
    if plugins is None:
        return
    if not isinstance(plugins, list) or not all(isinstance(name, str) and name for name in plugins):
        raise FramecastError(f"model.plugins: expected a list of module names, got {plugins!r}")
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise FramecastError(f"model.plugins: cannot import {name} ({exc})") from None


def config_from_dict(values: dict | None) -> Config:
    """Build and check a Config; raises FramecastError naming the offending setting."""
    _import_plugins(values or {})
    return _validate(_build(Config, values or {}, ""))


def config_to_dict(cfg: Config) -> dict:
    """Plain types only, so it fits in a ``weights_only`` checkpoint and in YAML. Path settings are
    written as they were written (``${SCRATCH}/...``), also from a config expanded for a run."""
    from core.paths import written_texts

    return written_texts(cfg, dataclasses.asdict(cfg))


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3e-4``, ``[1,2]``, ``true``)."""
    result = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FramecastError(f"override {item!r}: expected key.sub=value")
        try:
            value = _load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise FramecastError(f"override {item!r}: value is not valid YAML ({_yaml_problem(exc)})") from None
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
    """Every setting is checked here, once, when a config is loaded: each section checks its own."""
    for section in dataclasses.fields(cfg):
        getattr(cfg, section.name).check(section.name)
    from core.paths import check_path_settings

    check_path_settings(cfg)  # the ${VAR} syntax only: variables are looked up where the path is used
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error: plain PyYAML
    keeps the last silently (``lr: 0.1`` then ``lr: 0.2``), so an edit could be overridden unseen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *base`` keys may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first at line {first[key] + 1})", key_node.start_mark)
                first[key] = key_node.start_mark.line
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one clause: what is wrong and where (1-based line, column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


# The resolved config a run saves in its folder (the train stage writes it; runs and compare read it).
CONFIG_NAME = "config.yaml"


# A config file may start from another: ``base: <file>`` (relative to the file that names it).
BASE_KEY = "base"


def _merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: sections merge key by key, any other value (a list too) replaces."""
    result = dict(base)
    for key, value in over.items():
        known = result.get(key)
        result[key] = _merged(known, value) if isinstance(known, dict) and isinstance(value, dict) else value
    return result


def _read_config_file(file: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The file's settings on top of those of the ``base:`` it names, recursively; a missing base or a
    cycle is one line naming the files."""
    if not file.is_file():
        raise FramecastError(f"{file}: config file not found"
                             + (f" (the base of {chain[-1]})" if chain else ""))
    if file.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, file.resolve()))
        raise FramecastError(f"{file}: config files name each other as base in a cycle ({cycle})")
    try:
        loaded = _load_yaml(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FramecastError(f"{file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                             "a config file is YAML saved as UTF-8") from None
    except OSError as exc:
        raise FramecastError(f"{file}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise FramecastError(f"{file}: not valid YAML ({_yaml_problem(exc)})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise FramecastError(f"{file}: expected a mapping of sections at the top level")
    values = dict(loaded or {})
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise FramecastError(f"{file}: {BASE_KEY}: expected the path of a config file, got {base!r}")
    return _merged(_read_config_file(file.parent / base, (*chain, file.resolve())), values)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (a missing file is an error, never silent defaults), its ``base:`` configs
    underneath it, and apply overrides."""
    values: dict = {}
    if path is not None:
        from core.paths import find_config_file

        values = _read_config_file(find_config_file(path))  # also configs/ shipped with framecast
    values = apply_overrides(values, overrides or [])
    try:
        return config_from_dict(values)
    except FramecastError as exc:
        where = f"{path}: " if path is not None else ""
        raise FramecastError(f"{where}{exc}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    from core.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
