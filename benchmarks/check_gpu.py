"""Do the CUDA paths compute the same model? Prints one JSON object of relative errors.

    python benchmarks/check_gpu.py             # needs a CUDA device
    python benchmarks/check_gpu.py --compile   # also the torch.compile'd model (a few minutes)
    python benchmarks/check_gpu.py --seed 123  # repeat a run (its seed is in the JSON)

Each cell (ConvGRU, ConvLSTM) of the default architecture runs once in float64 on the CPU (the
reference) and then on the GPU in each way training runs it: fp32 (cuDNN may use TF32), bf16
autocast, channels_last, activation checkpointing, and optionally compiled. For each,
||out - ref|| / ||ref|| of the predicted frames and of the whole gradient (the MSE loss against
random targets). Expected: fp32/TF32 near 1e-3, bf16 between 1e-3 and 5e-2; NaN fails. The exit
status is 1 when any check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import ModelConfig  # noqa: E402
from models import build_model  # noqa: E402
from training.step import autocast  # noqa: E402

# Largest relative error accepted per arithmetic (output and gradient alike).
TOLERANCE = {"fp32": 5e-3, "bf16": 5e-2}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return float((value - reference).norm() / reference.norm())


def forward_backward(model, inputs, targets, amp_dtype, device):
    """Predicted frames and the flat gradient of the MSE loss, both on the CPU in float64."""
    model.zero_grad(set_to_none=True)
    with autocast(device, amp_dtype):
        prediction = model(inputs)
    F.mse_loss(prediction.float() if amp_dtype else prediction, targets).backward()
    grads = torch.cat([p.grad.flatten().double().cpu() for p in model.parameters() if p.grad is not None])
    return prediction.detach().double().cpu(), grads


def check_cell(cell: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    reference_model = build_model(ModelConfig(cell=cell), args.t_in, args.t_out).double()
    inputs = torch.rand(args.batch, args.t_in, 3, args.height, args.width, dtype=torch.float64)
    targets = torch.rand(args.batch, args.t_out, 3, args.height, args.width, dtype=torch.float64)
    ref_out, ref_grad = forward_backward(reference_model, inputs, targets, None, torch.device("cpu"))

    # (arithmetic, channels_last, compiled, activation checkpointing): the ways training can run
    variants = [("fp32", False, False, False), ("fp32", True, False, False), ("fp32", False, False, True),
                ("bf16", False, False, False), ("bf16", True, False, False)]
    if args.compile:
        variants += [("bf16", False, True, False), ("bf16", True, True, False)]
    rows = []
    for dtype, channels_last, compiled, recompute in variants:
        model = build_model(ModelConfig(cell=cell), args.t_in, args.t_out)
        model.load_state_dict({k: v.float() for k, v in reference_model.state_dict().items()})
        model.set_activation_checkpointing(recompute)
        model.to(device)
        x, y = inputs.float().to(device), targets.float().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # channels innermost, as to_model_input
        run_model = torch.compile(model) if compiled else model
        out, grad = forward_backward(run_model, x, y, torch.bfloat16 if dtype == "bf16" else None, device)
        errors = relative_error(out, ref_out), relative_error(grad, ref_grad)
        rows.append({"cell": cell, "dtype": dtype, "channels_last": channels_last, "compile": compiled,
                     "activation_checkpointing": recompute,
                     "output_rel_err": errors[0], "grad_rel_err": errors[1],
                     "ok": all(math.isfinite(e) and e < TOLERANCE[dtype] for e in errors)})  # NaN never passes
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--t-in", type=int, default=4)
    parser.add_argument("--t-out", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu only to try this script without a GPU")
    parser.add_argument("--seed", type=int, default=None, help="inputs and weights (default: a fresh one, printed)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("check_gpu.py needs a CUDA device (or --device cpu for a dry run)")
    seed = torch.seed() if args.seed is None else args.seed  # fresh inputs and weights unless given
    torch.manual_seed(seed)
    rows = [row for cell in ("gru", "lstm") for row in check_cell(cell, args, device)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "seed": seed,
                      "tolerance": TOLERANCE, "checks": rows}, indent=2))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
