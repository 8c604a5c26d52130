"""Turn a prediction array into the reference PNG layout, one file per predicted frame.

    python np_to_png.py preds/hidden.npy --out DIR [--frames 21] [--workers 4] [--spread]

writes ``DIR/video_<n>/image_<k>.png``, names and frame numbers from the array's index
``preds/hidden.json``; with ``--spread`` (an ensemble predicted with ``predict.spread: true``) also
``DIR/video_<n>/spread_<k>.png``, heat maps of the members' per-pixel standard deviation on a fixed
scale (``stages.convert.SPREAD_VMAX``). A thin entry point over ``stages.convert.write_pngs``.
"""
from __future__ import annotations

import argparse
import sys

from core.config import ConvertConfig
from core.errors import FramecastError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a prediction .npy (N, T, H, W, 3) uint8 as DIR/video_<n>/image_<k>.png, "
        "using its sidecar index <name>.json for video names and frame numbers."
    )
    parser.add_argument("npy", help="prediction array, e.g. preds/hidden.npy")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--frames", type=int, nargs="+", metavar="K",
                        help="frame numbers to write (e.g. 21 for the last one); default all")
    parser.add_argument("--workers", type=int, default=ConvertConfig.workers,
                        help=f"parallel writer processes (default {ConvertConfig.workers})")
    parser.add_argument("--index", help="index JSON (default: the .npy path with .json)")
    parser.add_argument("--spread", action="store_true",
                        help="also write video_<n>/spread_<k>.png: heat maps of an ensemble's per-pixel std "
                             "(<name>.std.npy, from predict.spread: true), black 0 to yellow 0.25 or more, "
                             "averaged over channels")
    args = parser.parse_args(argv)
    from stages.convert import write_pngs

    try:
        count = write_pngs(args.npy, args.out, frames=args.frames, workers=args.workers, index_path=args.index,
                           spread=args.spread)
    except FramecastError as exc:
        print(f"np_to_png: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} PNG frames under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
