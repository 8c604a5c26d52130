"""The built-in model families: each family's settings (its ``model.<name>`` section) and its
declaration in the family table (core/families.py), which everything else derives from.

Torch-free on purpose: reading a config imports this module, and ``main.py --help`` or ``framecast
config`` must not load torch. The models themselves live in their own modules, imported when built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from core.config import check_at_least, check_odd, check_positive
from core.errors import FramecastError
from core.families import Family, register


# ----------------------------------------------------------------------------- settings shared by families


@dataclass
class Residual:
    """For every family that predicts frames.

    ``residual: true`` predicts the change from the frame the model reads (the last input frame; for
    the families that roll out frame by frame, the frame read at that step) instead of the frame
    itself, with the output head initialised to zero: an untrained model is exactly copy-last, so
    training starts from that baseline instead of from grey frames, and a static background stays
    sharp while the model learns what moves.

    ``head: warp`` (unet, simvp, convlstm, predrnn) replaces that readout by a motion head
    (models/heads.py): a per-pixel displacement reads the frame the model reads (bilinear sampling),
    blended through a mask with a residual for what appears, so moving texture is moved, not repainted
    and blurred. It too starts exactly at copy-last, whatever ``residual`` says (``residual`` is the
    readout head's setting).
    """

    residual: bool = False
    head: Literal["residual", "warp"] = "residual"


@dataclass
class Sampling:
    """Scheduled sampling, for the families that roll out frame by frame and train on their own outputs.

    While training, the chance of feeding the true next frame rather than the model's own prediction
    falls from ``sampling_start`` at step 0 to exactly 0 at ``sampling_stop_step`` along the schedule
    (Bengio et al. 2015's three shapes, models/sampling.py): ``linear``; ``exponential``, fast at first;
    ``sigmoid`` (inverse sigmoid), holding near the start, then dropping around the midpoint
    (``sampling_steepness`` bends the last two). ``none``: always the model's own prediction, as when
    predicting. A pure function of the step, so a resumed run draws the same. Short runs must end it
    early (a small ``sampling_stop_step``), or the model trains on true frames it will not get when
    predicting.
    """

    sampling: Literal["linear", "exponential", "sigmoid", "none"] = "linear"
    sampling_start: float = 1.0
    sampling_stop_step: int = 50000
    # k of exponential e^(-k x) and sigmoid 1 / (1 + e^(k (x - 1/2))), x = step / sampling_stop_step.
    sampling_steepness: float = 5.0

    def check_sampling(self, where: str) -> None:
        if not 0.0 <= self.sampling_start <= 1.0:
            raise FramecastError(f"{where}.sampling_start must be in [0, 1], got {self.sampling_start}")
        if self.sampling_stop_step < 1:
            raise FramecastError(f"{where}.sampling_stop_step must be >= 1, got {self.sampling_stop_step}")
        if not (math.isfinite(self.sampling_steepness) and self.sampling_steepness > 0):
            raise FramecastError(f"{where}.sampling_steepness must be > 0, got {self.sampling_steepness}")


# ----------------------------------------------------------------------------- each family's settings


# GroupNorm spans of each recurrent cell's gate pre-activations, in gate blocks of ``hidden`` channels:
# the ConvLSTM normalises its four gates together, the ConvGRU r and z together and its candidate alone.
CELL_NORM_BLOCKS = {"lstm": (4,), "gru": (2, 1)}


def _check_norm_groups(where: str, cell: str, hidden: list[int], groups: int) -> None:
    if groups < 0:
        raise FramecastError(f"{where}.norm_groups must be >= 0 (0 disables GroupNorm), got {groups}")
    if groups == 0:
        return
    for level, width in enumerate(hidden):
        for blocks in CELL_NORM_BLOCKS[cell]:
            if (blocks * width) % groups:
                raise FramecastError(
                    f"{where}.norm_groups={groups} does not divide the {blocks * width} gate channels of the "
                    f"{cell} cell at level {level} ({where}.hidden_channels={hidden}); pick a divisor of "
                    "them, or 0 to disable GroupNorm"
                )


@dataclass
class EncoderForecasterConfig(Residual):
    """The 2017 TrajGRU benchmark's encoder-forecaster (Shi et al. 2017): recurrent levels going down
    through strided convs, mirrored going up by transposed convs."""

    cell: Literal["lstm", "gru"] = "gru"
    stem_channels: int = 16  # the first (non-recurrent) conv's output channels
    # One entry per level, top (full resolution) first: recurrent hidden channels ...
    hidden_channels: list[int] = field(default_factory=lambda: [64, 96, 96])
    # ... and the stride of the conv that leads into that level (1 = same resolution).
    strides: list[int] = field(default_factory=lambda: [1, 2, 2])
    kernel_size: int = 5  # recurrent cells' kernel
    norm_groups: int = 16  # GroupNorm groups in the cells' gates; 0 disables it
    # Space-to-depth factor applied to frames before the stem (OpenSTL's "patch size").
    patch_size: int = 1
    # Keep predictions in [0, 1]: a sigmoid on absolute output, a clamp on residual output.
    bounded: bool = False

    def check(self, where: str) -> None:
        if len(self.hidden_channels) != len(self.strides) or not self.hidden_channels:
            raise FramecastError(
                f"{where}.hidden_channels and {where}.strides must be non-empty lists of the same length "
                f"(got {self.hidden_channels} and {self.strides})"
            )
        check_positive(where, hidden_channels=self.hidden_channels, strides=self.strides,
                        stem_channels=self.stem_channels, patch_size=self.patch_size, kernel_size=self.kernel_size)
        check_odd(where, "kernel_size", self.kernel_size)
        _check_norm_groups(where, self.cell, self.hidden_channels, self.norm_groups)


@dataclass
class ConvLSTMConfig(Sampling, Residual):
    """Stacked ConvLSTM (or ConvGRU) layers on space-to-depth patches, rolled out frame by frame
    (OpenSTL's ConvLSTM with scheduled sampling; Shi et al. 2015)."""

    cell: Literal["lstm", "gru"] = "lstm"
    hidden_channels: list[int] = field(default_factory=lambda: [128, 128, 128, 128])  # one entry per layer
    kernel_size: int = 5
    patch_size: int = 4  # frames are cut into patch x patch blocks stacked as channels
    norm_groups: int = 0  # GroupNorm on the gate pre-activations; 0 = none (OpenSTL uses none)
    # Normalisation of each layer's hidden state where it feeds the layer above (the recurrence keeps
    # it raw): "batch" as seed 002's stacked ConvLSTM, "group" (norm_between_groups groups), "layer"
    # (one group: every channel and pixel of a video's frame), "none".
    norm: Literal["none", "batch", "group", "layer"] = "none"
    norm_between_groups: int = 4

    def check(self, where: str) -> None:
        check_positive(where, hidden_channels=self.hidden_channels, kernel_size=self.kernel_size,
                        patch_size=self.patch_size)
        check_odd(where, "kernel_size", self.kernel_size)
        _check_norm_groups(where, self.cell, self.hidden_channels, self.norm_groups)
        if self.norm == "group":
            check_positive(where, norm_between_groups=self.norm_between_groups)
            for layer, width in enumerate(self.hidden_channels[:-1]):
                if width % self.norm_between_groups:
                    raise FramecastError(f"{where}.norm_between_groups={self.norm_between_groups} does not divide "
                                         f"the {width} channels of layer {layer} ({where}.hidden_channels="
                                         f"{self.hidden_channels})")
        self.check_sampling(where)


@dataclass
class PredRNNConfig(Sampling, Residual):
    """PredRNN-V2 (Wang et al. 2022): stacked spatiotemporal LSTMs with the zigzag memory, the
    memory-decoupling loss and reverse scheduled sampling."""

    hidden_channels: list[int] = field(default_factory=lambda: [128, 128, 128, 128])  # one entry per layer
    kernel_size: int = 5
    patch_size: int = 4
    layer_norm: bool = True  # normalise each gate convolution's output (PredRNN's layer_norm)
    decouple_weight: float = 0.1  # beta of the memory-decoupling loss; 0 disables it
    # "reverse": reverse scheduled sampling (true-frame probability on the INPUT steps rises towards 1
    # between reverse_start_step and reverse_stop_step, while the one on the predicted steps falls);
    # "linear", "exponential", "sigmoid": plain scheduled sampling on the predicted steps as in the
    # ConvLSTM family; "none": always its own prediction.
    sampling: Literal["reverse", "linear", "exponential", "sigmoid", "none"] = "reverse"
    reverse_start_step: int = 25000
    reverse_stop_step: int = 50000
    reverse_exp_alpha: float = 5000.0

    def check(self, where: str) -> None:
        check_positive(where, hidden_channels=self.hidden_channels, kernel_size=self.kernel_size,
                        patch_size=self.patch_size, reverse_start_step=self.reverse_start_step)
        if len(set(self.hidden_channels)) != 1:
            # The memory m passes from every layer to the next (and top to bottom), and one adapter
            # serves every layer's memory increments: all layers have its width.
            raise FramecastError(f"{where}.hidden_channels must all be equal (the spatiotemporal memory "
                                 f"flows through every layer), got {self.hidden_channels}")
        check_odd(where, "kernel_size", self.kernel_size)
        if self.decouple_weight < 0:
            raise FramecastError(f"{where}.decouple_weight must be >= 0, got {self.decouple_weight}")
        if self.reverse_stop_step <= self.reverse_start_step:
            raise FramecastError(
                f"{where}.reverse_stop_step ({self.reverse_stop_step}) must be after "
                f"{where}.reverse_start_step ({self.reverse_start_step})"
            )
        if self.reverse_exp_alpha <= 0:
            raise FramecastError(f"{where}.reverse_exp_alpha must be > 0, got {self.reverse_exp_alpha}")
        self.check_sampling(where)


# SimVP's encoder and decoder blocks normalise with this many GroupNorm groups (as the paper).
SIMVP_NORM_GROUPS = 2


@dataclass
class SimVPConfig(Residual):
    """SimVP (Gao et al. 2022; Tan et al. 2022): a per-frame conv encoder, a translator over the
    stacked frames' features, a per-frame conv decoder. Translators: gSTA (SimVP-v2) and TAU."""

    translator: Literal["gsta", "tau"] = "gsta"
    spatial_channels: int = 64  # hid_S: encoder/decoder channels
    temporal_channels: int = 512  # hid_T: translator channels
    spatial_layers: int = 4  # N_S: encoder and decoder conv layers each (every other one strided)
    temporal_layers: int = 8  # N_T: translator blocks
    spatial_kernel: int = 3  # encoder/decoder conv kernel
    mlp_ratio: float = 8.0  # translator MLP width / temporal_channels
    drop_path: float = 0.0  # stochastic depth of the translator blocks
    # TAU's differential divergence regularisation: KL between the softmax over time of the true and
    # predicted frame-to-frame differences, this weight times it added to the loss (0 disables it).
    divergence_weight: float = 0.1
    # Initial weights: "pytorch" (PyTorch's defaults) or "published" (as the SimVP reference code:
    # truncated normal, std 0.02, in the encoder/decoder convs; He fan-out normal in the translator blocks).
    init: Literal["pytorch", "published"] = "pytorch"

    def check(self, where: str) -> None:
        check_positive(where, spatial_channels=self.spatial_channels, temporal_channels=self.temporal_channels,
                        spatial_layers=self.spatial_layers, temporal_layers=self.temporal_layers,
                        spatial_kernel=self.spatial_kernel)
        check_odd(where, "spatial_kernel", self.spatial_kernel)
        if self.spatial_channels % SIMVP_NORM_GROUPS:
            raise FramecastError(f"{where}.spatial_channels={self.spatial_channels} must be divisible by "
                                 f"{SIMVP_NORM_GROUPS} (the encoder/decoder GroupNorm groups)")
        if self.mlp_ratio <= 0:
            raise FramecastError(f"{where}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        check_at_least(where, 0, divergence_weight=self.divergence_weight)
        if not 0.0 <= self.drop_path < 1.0:
            raise FramecastError(f"{where}.drop_path must be in [0, 1), got {self.drop_path}")


@dataclass
class UNetConfig(Residual):
    """A UNet mapping the stacked input frames to the stacked future frames in one pass (Ronneberger
    et al. 2015, as the Moving MNIST forecasters of the systems framecast replaces used it)."""

    base_channels: int = 64  # channels at full resolution; each level down doubles them
    levels: int = 4  # downsamplings (frame sides must be divisible by 2 ** levels)
    norm_groups: int = 8  # GroupNorm groups in every conv block; 0 disables it

    def check(self, where: str) -> None:
        check_positive(where, base_channels=self.base_channels, levels=self.levels)
        check_at_least(where, 0, norm_groups=self.norm_groups)
        if self.norm_groups and self.base_channels % self.norm_groups:
            raise FramecastError(f"{where}.norm_groups={self.norm_groups} must divide "
                                 f"{where}.base_channels={self.base_channels}")


@dataclass
class PhyDNetConfig(Sampling, Residual):
    """PhyDNet (Le Guen & Thome, CVPR 2020): a PhyCell (convolutions constrained by their moment
    matrices to act as finite-difference operators: a learned PDE) beside a ConvLSTM branch for the
    rest, with a shared encoder and decoder."""

    encoder_channels: int = 64  # the shared encoder's output channels (OpenSTL: 64)
    phycell_channels: int = 49  # F: hidden channels of the PhyCell (7 x 7 moments)
    phycell_layers: int = 1
    kernel_size: int = 7  # the PhyCell's kernel; its moment matrix is kernel x kernel
    convlstm_channels: list[int] = field(default_factory=lambda: [128, 128, 64])  # one per layer
    convlstm_kernel: int = 3
    # Weight of the moment-matrix constraint loss (the PhyCell's kernels vs their target moments).
    moment_weight: float = 1.0

    def check(self, where: str) -> None:
        check_positive(where, encoder_channels=self.encoder_channels, phycell_channels=self.phycell_channels,
                        phycell_layers=self.phycell_layers, kernel_size=self.kernel_size,
                        convlstm_channels=self.convlstm_channels, convlstm_kernel=self.convlstm_kernel)
        check_odd(where, "kernel_size", self.kernel_size)
        check_odd(where, "convlstm_kernel", self.convlstm_kernel)
        check_at_least(where, 0, moment_weight=self.moment_weight)
        if self.moment_weight > 0 and self.phycell_channels < self.kernel_size**2:
            raise FramecastError(
                f"{where}.phycell_channels={self.phycell_channels} must be >= kernel_size**2="
                f"{self.kernel_size**2}: the moment constraint makes one filter per derivative "
                f"d^(p+q)/dy^p dx^q, p, q < kernel_size (or set {where}.moment_weight=0)"
            )
        self.check_sampling(where)


@dataclass
class AttentionGRUConfig(Residual):
    """A ConvGRU encoder-decoder whose decoder attends over every encoder time step, with blur
    (anti-aliased) upsampling."""

    hidden_channels: list[int] = field(default_factory=lambda: [64, 96])  # one per level, top first
    kernel_size: int = 3
    norm_groups: int = 8  # GroupNorm groups in the GRU gates; 0 disables it
    patch_size: int = 2  # space-to-depth before the first level
    residual: bool = True  # this family starts at copy-last by default (Residual)

    def check(self, where: str) -> None:
        check_positive(where, hidden_channels=self.hidden_channels, kernel_size=self.kernel_size,
                        patch_size=self.patch_size)
        check_odd(where, "kernel_size", self.kernel_size)
        _check_norm_groups(where, "gru", self.hidden_channels, self.norm_groups)


# ----------------------------------------------------------------------------- the declarations

# In this order: the first is model.family's default. ``tiny``: the family's tiny model (seconds on a
# CPU; every family's stride divides 32x48 frames), for model.size: tiny, the tests and the benchmarks.
BUILTIN = (
    Family("encoder_forecaster", "ConvGRU or ConvLSTM encoder-forecaster (the 2017 TrajGRU benchmark design)",
           EncoderForecasterConfig, "models.encoder_forecaster:EncoderForecaster",
           tiny={"stem_channels": 8, "hidden_channels": [8, 8], "strides": [1, 2], "kernel_size": 3,
                 "norm_groups": 4},
           configs=("default.yaml", "tiny.yaml", "mfmnist/encoder_forecaster.yaml")),
    Family("convlstm", "stacked ConvLSTM (or ConvGRU) layers on space-to-depth patches, rolled out frame by "
           "frame (OpenSTL's ConvLSTM-S)", ConvLSTMConfig, "models.convlstm:ConvLSTMStack",
           tiny={"hidden_channels": [8, 8], "kernel_size": 3, "patch_size": 4, "sampling_stop_step": 8},
           configs=("mfmnist/convlstm.yaml",)),
    Family("predrnn", "PredRNN-V2: spatiotemporal LSTMs with the zigzag memory", PredRNNConfig,
           "models.predrnn:PredRNN",
           tiny={"hidden_channels": [8, 8], "kernel_size": 3, "patch_size": 4, "reverse_start_step": 4,
                 "reverse_stop_step": 8, "reverse_exp_alpha": 2.0, "sampling_stop_step": 8},
           configs=("mfmnist/predrnn.yaml",)),
    Family("simvp", "SimVP: conv encoder, translator over the stacked frames (gSTA = SimVP-v2, or TAU), conv "
           "decoder", SimVPConfig, "models.simvp:SimVP",
           tiny={"spatial_channels": 8, "temporal_channels": 16, "spatial_layers": 2, "temporal_layers": 2},
           configs=("mfmnist/simvp.yaml", "mfmnist/tau.yaml")),
    Family("unet", "a UNet from the stacked input frames to the stacked future frames", UNetConfig,
           "models.unet:UNet", tiny={"base_channels": 8, "levels": 2, "norm_groups": 4},
           configs=("demo.yaml", "real.yaml", "mfmnist/unet.yaml")),
    Family("phydnet", "PhyDNet: a PhyCell (moment-constrained kernels: a learned PDE) beside a ConvLSTM branch",
           PhyDNetConfig, "models.phydnet:PhyDNet",
           tiny={"encoder_channels": 8, "phycell_channels": 9, "kernel_size": 3, "convlstm_channels": [8],
                 "sampling_stop_step": 8},
           configs=("mfmnist/phydnet.yaml",)),
    Family("attention_gru", "ConvGRU encoder-decoder whose decoder attends over every encoder step",
           AttentionGRUConfig, "models.attention_gru:AttentionGRU",
           tiny={"hidden_channels": [8, 8], "patch_size": 2, "norm_groups": 4},
           configs=("mfmnist/attention_gru.yaml",)),
)

for _family in BUILTIN:
    register(_family)
