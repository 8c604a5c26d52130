"""Rebuild a trained model from one checkpoint file, and say what it is.

    python load_model.py runs/<name>/best.pt [--device cpu]

The checkpoint holds the model's config and frame counts next to its weights (the nanoGPT way),
so ``best.pt`` alone is enough: no config file, no guessing which cell was trained.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checkpoint import load_checkpoint
from core.config import Config, config_from_dict
from core.distributed import pick_device
from core.errors import FramecastError
from models import CELLS, build_model, count_parameters

CELL_NAMES = {"lstm": "ConvLSTM", "gru": "ConvGRU"}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config, dict[str, Any]]:
    """(model in eval mode on ``device``, its Config, the checkpoint dict).

    A missing or corrupt file, or weights that do not fit the model its config describes, raise
    ``FramecastError`` naming the file.
    """
    file = Path(path)
    state = load_checkpoint(file)  # weights_only; FramecastError when missing or unreadable
    try:
        cfg = config_from_dict(state["config"])
    except FramecastError as exc:
        raise FramecastError(f"{file}: its saved config does not fit this framecast ({exc})") from None
    if "model_config" in state:
        # The model section the weights were trained with is authoritative.
        cfg.model = config_from_dict({"model": state["model_config"]}).model
    t_in = int(state.get("t_in", cfg.data.t_in))
    t_out = int(state.get("t_out", cfg.data.t_out))
    model = build_model(cfg.model, t_in, t_out)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])
        raise FramecastError(
            f"{file}: weights do not fit the {cfg.model.cell} model its config describes ({detail})"
        ) from None
    if isinstance(device, str):
        device = pick_device(device)
    model = model.to(device).eval()
    return model, cfg, state


def describe(path: str | Path, model: nn.Module, cfg: Config, state: dict[str, Any]) -> str:
    """A few lines a person reads to know what the file holds."""
    cells = sorted({type(m).__name__ for m in model.modules() if isinstance(m, tuple(CELLS.values()))})

    def loss(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.6g}"

    lines = [
        f"checkpoint:      {path}",
        f"cell:            {cfg.model.cell} ({CELL_NAMES.get(cfg.model.cell, cfg.model.cell)}; "
        f"modules: {', '.join(cells)})",
        f"parameters:      {count_parameters(model):,}",
        f"levels:          hidden {cfg.model.hidden_channels}, strides {cfg.model.strides}, "
        f"kernel {cfg.model.kernel_size}, patch {cfg.model.patch_size}",
        f"frames:          {state.get('t_in')} in -> {state.get('t_out')} out",
        f"epoch:           {state.get('epoch')} (step {state.get('step')})",
        f"validation loss: {loss(state.get('val_loss'))}",
        f"best val loss:   {loss(state.get('best_val_loss'))} (epoch {state.get('best_epoch')})",
        f"run:             {cfg.run.name}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load a framecast checkpoint and print what it holds.")
    parser.add_argument("checkpoint", help="path to a checkpoint, e.g. runs/<name>/best.pt")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<n> or auto (default cpu)")
    args = parser.parse_args(argv)
    try:
        model, cfg, state = load_model(args.checkpoint, args.device)
    except FramecastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(args.checkpoint, model, cfg, state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
