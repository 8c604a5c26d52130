"""What recording a pack's source costs (not a test): prints one JSON object with

- pack_s: seconds of ``pack_split`` on the same PNG folders, ``--rounds`` times each, alternating
  between the code in ``--before`` (a checkout without the record, e.g. main before it) and this one;
- stamp_s: seconds to stamp every video from directory entries (size + mtime per frame), the check
  every reader makes before using a pack;
- crc_s: seconds to hash every frame file's bytes (zlib.crc32), the content-hash alternative, which
  a reader would have to repeat, reading every PNG, to check a pack;
- check_s: seconds of ``data.sources.check_pack_fresh`` on the fresh pack (list + stamp + compare).

    python -m benchmarks.bench_pack_record --before /path/to/old/checkout --videos 200 --height 64 --width 96
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # this checkout: the "after" code

# Wall seconds, and CPU seconds of the packing process and its workers (user + system): on a machine
# shared with other work the CPU time is the steadier measure of what the code costs.
PACK_CHILD = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from data.pack import pack_split
def cpu():
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
start, start_cpu = time.perf_counter(), cpu()
pack_split(sys.argv[2], sys.argv[3], workers=int(sys.argv[4]))
print(time.perf_counter() - start, cpu() - start_cpu)
"""


def time_pack(repo: Path, split: Path, out: Path, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one pack by the code in ``repo``, in a fresh process (each imports its own)."""
    done = subprocess.run([sys.executable, "-c", PACK_CHILD, str(repo), str(split), str(out), str(workers)],
                          capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    out.unlink()
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkout whose data/pack.py writes no record")
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from core.config import DataConfig
    from data.layout import list_frames, list_videos
    from data.pack import pack_split, video_stamp
    from data.sources import check_pack_fresh
    from data.synthetic import make_shapes_dataset

    scratch = Path(tempfile.mkdtemp(prefix="bench_pack_record_"))
    report: dict = {"frames": [args.frames, args.height, args.width], "videos": args.videos, "cpus": os.cpu_count(),
                    "workers": args.workers, "load_average_1min_start": round(os.getloadavg()[0], 2)}
    try:
        root = scratch / "shapes"
        make_shapes_dataset(root, {"train": args.videos}, height=args.height, width=args.width, frames=args.frames,
                            hidden_frames=args.frames, seed=0, workers=args.workers, overwrite=True, compress_level=6)
        split = root / "train"
        times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
        for _ in range(args.rounds):  # alternating, so load changes hit both alike
            times["before"].append(time_pack(Path(args.before), split, scratch / "before.h5", args.workers))
            times["after"].append(time_pack(HERE, split, scratch / "after.h5", args.workers))
        for index, measure in enumerate(("wall", "cpu")):
            values = {k: [t[index] for t in v] for k, v in times.items()}
            report[f"pack_{measure}_s"] = {k: [round(t, 3) for t in v] for k, v in values.items()}
            # The fastest round is the least disturbed by other work on a shared machine; the median too.
            for name, pick in (("best", min), ("median", statistics.median)):
                value = {k: pick(v) for k, v in values.items()}
                report[f"pack_{measure}_videos_per_s_{name}"] = {k: round(args.videos / t, 1) for k, t in value.items()}
                report[f"pack_{measure}_slowdown_pct_{name}"] = round(100 * (value["after"] / value["before"] - 1), 1)

        videos = list_videos(split)
        start = time.perf_counter()
        for video in videos:
            video_stamp(video)
        report["stamp_s"] = round(time.perf_counter() - start, 4)
        start = time.perf_counter()
        for video in videos:
            for frame in list_frames(video):
                zlib.crc32(frame.read_bytes())
        report["crc_s"] = round(time.perf_counter() - start, 4)

        pack_split(split, root / "packed" / "train.h5", workers=args.workers)
        cfg = DataConfig(root=str(root))
        start = time.perf_counter()
        check_pack_fresh(cfg, "train", root / "packed" / "train.h5")
        report["check_s"] = round(time.perf_counter() - start, 4)
        report["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
