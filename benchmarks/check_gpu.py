"""Do the CUDA paths compute the same model? Prints one JSON object of relative errors.

    python -m benchmarks.check_gpu                      # needs a CUDA device; every family
    python -m benchmarks.check_gpu --compile            # also the torch.compile'd training pass (minutes)
    python -m benchmarks.check_gpu --families simvp     # some families only
    python -m benchmarks.check_gpu --seed 123           # repeat a run (its seed is in the JSON)

Each checked model (the encoder-forecaster with its ConvGRU and ConvLSTM cells, the stacked ConvLSTM,
PredRNN-V2, SimVP with its gSTA and TAU translators; each family's default architecture, or the sizes
of ``--preset``) runs once in float64 on the CPU (the reference) and then on the device in each way
training runs it: fp32 (cuDNN may use TF32), bf16 autocast, channels_last, activation checkpointing
(the families with recurrent steps), and optionally compiled. What runs is the family's training
pass (``models.TrainingForward``, as ``training.step.train_step`` calls it) at a global step past
every scheduled-sampling schedule, so nothing is drawn at random and both devices compute the same
thing, with the MSE frame loss plus the family's own loss terms (PredRNN's decoupling loss, TAU's
divergence). For each, ||out - ref|| / ||ref|| of the predicted frames, of the whole gradient and of
the loss. Expected: fp32/TF32 near 1e-3, bf16 between 1e-3 and 5e-2 (PredRNN 1.5e-1: see
``FAMILY_TOLERANCE``); NaN fails. The exit status is 1 when any check fails. ``--device cpu`` is a
dry run (there channels_last is used as asked, though training uses it on CUDA only).
"""
from __future__ import annotations

import argparse
import json
import math
import sys


from benchmarks.common import PRESETS, random_videos  # first, before torch: see its note

import torch
import torch.nn.functional as F

from core.config import Config, load_config
from core.errors import FramecastError
from core.precision import Precision
from data.datasets import to_model_input
from models import TrainingForward, build_model
from training.step import split_video

# Largest relative error accepted per arithmetic (output, gradient and loss alike) ...
TOLERANCE = {"fp32": 5e-3, "bf16": 5e-2}
# ... and where a family's numerics need a wider band. PredRNN-V2 (4 layers x 128, default
# architecture) measured on the CPU (torch 2.13, oneDNN bf16) at 32x48, 4 + 4 frames: bf16 output
# 4.5e-2 and gradient 8e-2 (2.9e-3 and 3.7e-2 with model.predrnn.layer_norm=false): the gate convs'
# bf16 outputs lose their small per-pixel differences to rounding before GroupNorm(1) subtracts
# their mean, and seven rollout steps compound it. fp32 stays at 1e-5.
FAMILY_TOLERANCE = {"predrnn": {"bf16": 1.5e-1}}


def tolerance(family: str, dtype: str) -> float:
    return FAMILY_TOLERANCE.get(family, {}).get(dtype, TOLERANCE[dtype])
# (family, variant, settings): every family at its default architecture, each cell / translator.
CHECKED = (
    ("encoder_forecaster", "gru", ("model.encoder_forecaster.cell=gru",)),
    ("encoder_forecaster", "lstm", ("model.encoder_forecaster.cell=lstm",)),
    ("convlstm", "lstm", ("model.convlstm.cell=lstm",)),
    ("predrnn", "v2", ()),
    ("simvp", "gsta", ("model.simvp.translator=gsta",)),
    ("simvp", "tau", ("model.simvp.translator=tau",)),
)
# A global step past every scheduled-sampling schedule: the training pass then feeds the true input
# frames and the model's own predictions, with no random draw (draws differ between devices).
PAST_SCHEDULES = 10**9


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return float((value - reference).norm() / reference.norm())


def forward_backward(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, precision: Precision):
    """Predicted frames, the flat gradient and the loss of the training pass, on the CPU in float64.

    ``model`` is a ``TrainingForward`` (or its compiled wrapper). The loss is the MSE frame loss plus
    the family's terms, in the targets' dtype (float64 for the reference, fp32 otherwise, as training).
    """
    model.zero_grad(set_to_none=True)
    with precision.autocast():
        forecast = model(inputs, targets, PAST_SCHEDULES)  # frames (B, t_out, C, H, W)
    loss = F.mse_loss(forecast.frames.to(targets.dtype), targets)
    for term in forecast.losses.values():
        loss = loss + term.to(targets.dtype)
    loss.backward()
    grads = torch.cat([p.grad.flatten().double().cpu() for p in model.parameters() if p.grad is not None])
    return forecast.frames.detach().double().cpu(), grads, loss.detach().double().cpu()


def supports_recompute(cfg: Config) -> bool:
    """Whether the family has recurrent steps to recompute (the others refuse the setting)."""
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.data.t_in, cfg.data.t_out)
    try:
        model.set_activation_checkpointing(True)
    except FramecastError:
        return False
    return True


def check_model(family: str, variant: str, settings: tuple[str, ...], args: argparse.Namespace,
                device: torch.device) -> list[dict]:
    preset = PRESETS[args.preset]  # its model sizes and channels; the frames are the check's own
    cfg = load_config(None, [f"model.family={family}", f"model.in_channels={preset.in_channels}",
                             *(f"model.{family}.{item}" for item in preset.models.get(family, ())),
                             f"data.t_in={args.t_in}", f"data.t_out={args.t_out}", *settings])
    t_in, t_out, channels = cfg.data.t_in, cfg.data.t_out, cfg.model.in_channels
    reference_model = build_model(cfg.model, t_in, t_out).double()
    # One uint8 video batch (B, T, H, W, 3), converted by the loader's own function on each device.
    video_u8 = random_videos(args.batch, t_in + t_out, args.height, args.width, torch.device("cpu"))
    inputs, targets = (part.double() for part in split_video(to_model_input(video_u8, "cpu", False, channels), t_in))
    cpu64 = Precision(torch.device("cpu"), None, False)
    ref_out, ref_grad, ref_loss = forward_backward(TrainingForward(reference_model), inputs, targets, cpu64)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in reference_model.state_dict().items()}

    # (arithmetic, channels_last, compiled, activation checkpointing): the ways training can run
    variants = [("fp32", False, False, False), ("fp32", True, False, False), ("bf16", False, False, False),
                ("bf16", True, False, False)]
    if supports_recompute(cfg):
        variants.insert(2, ("fp32", False, False, True))
    if args.compile:
        variants += [("bf16", False, True, False), ("bf16", True, True, False)]
    rows = []
    for dtype, channels_last, compiled, recompute in variants:
        model = build_model(cfg.model, t_in, t_out)
        model.load_state_dict(weights)
        model.set_activation_checkpointing(recompute)
        model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        precision = Precision(device, torch.bfloat16 if dtype == "bf16" else None, channels_last)
        video = to_model_input(video_u8, device, channels_last, channels)  # (B, T, C, H, W), as train_step
        x, y = split_video(video, t_in)
        training_pass = TrainingForward(model)
        run_model = torch.compile(training_pass) if compiled else training_pass
        out, grad, loss = forward_backward(run_model, x, y, precision)
        errors = relative_error(out, ref_out), relative_error(grad, ref_grad), relative_error(loss, ref_loss)
        section = cfg.model.section
        rows.append({"family": family, "variant": variant, "cell": getattr(section, "cell", None),
                     "dtype": dtype, "channels_last": channels_last, "compile": compiled,
                     "activation_checkpointing": recompute,
                     "output_rel_err": errors[0], "grad_rel_err": errors[1], "loss_rel_err": errors[2],
                     "tolerance": tolerance(family, dtype),
                     "ok": all(math.isfinite(e) and e < tolerance(family, dtype) for e in errors)})  # NaN never passes
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--t-in", type=int, default=4)
    parser.add_argument("--t-out", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    families = sorted({family for family, _, _ in CHECKED})
    parser.add_argument("--families", nargs="+", choices=families, default=families, help="default: all")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="model sizes and channels of this preset (default: each family's config defaults)")
    parser.add_argument("--device", default="cuda", help="cpu only to try this script without a GPU")
    parser.add_argument("--seed", type=int, default=None, help="inputs and weights (default: a fresh one, printed)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("check_gpu.py needs a CUDA device (or --device cpu for a dry run)")
    seed = torch.seed() if args.seed is None else args.seed  # fresh inputs and weights unless given
    torch.manual_seed(seed)
    try:
        rows = [row for family, variant, settings in CHECKED if family in args.families
                for row in check_model(family, variant, settings, args, device)]
    except FramecastError as exc:  # e.g. a frame size the model's stride does not divide
        raise SystemExit(f"check_gpu.py: {exc}") from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "seed": seed, "preset": args.preset,
                      "size": [args.height, args.width], "frames": [args.t_in, args.t_out], "batch": args.batch,
                      "tolerance": TOLERANCE, "family_tolerance": FAMILY_TOLERANCE, "checks": rows}, indent=2))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
