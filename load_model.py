"""Load a framecast checkpoint and print what it holds.

    python load_model.py runs/<name>/best.pt [--device cpu]

A thin script over ``models.loading`` (``from models.loading import load_model`` in code); the
installed command has the same as ``framecast inspect runs/<name>/best.pt``.
"""
from __future__ import annotations

import argparse
import sys

from core.errors import FramecastError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load a framecast checkpoint and print what it holds.")
    parser.add_argument("checkpoint", help="path to a checkpoint, e.g. runs/<name>/best.pt")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<n> or auto (default cpu)")
    args = parser.parse_args(argv)
    from models.loading import inspect_checkpoint

    try:
        print(inspect_checkpoint(args.checkpoint, args.device))
    except FramecastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
