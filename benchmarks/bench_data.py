"""Data-layer benchmark (not a test): prints one JSON object with

- generate: shapes videos written per second (PNG, parallel workers);
- decode_only: PNG videos decoded per second by ``--workers`` processes, results discarded
  (the ceiling for packing these PNGs on this machine);
- pack: videos per second of ``pack_split`` (decode + validate + write the HDF5 file);
- loader: videos per second through a DataLoader with ``--loader-workers`` workers, from the pack
  and from the PNG folders (the slower, pack-free path);
- rss: peak resident memory while streaming every video of a pack of ``--rss-videos`` sizes
  (default 200 and 2000) through the DataLoader, each in a fresh subprocess; it must stay flat.

    python -m benchmarks.bench_data                          # small frames, a few minutes on 2 cores
    python -m benchmarks.bench_data --height 160 --width 240 # the reference frame size
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

from data.generate import video_rng
from data.layout import list_videos, read_video
from data.pack import PackWriter, open_pack_for_writing, pack_split
from data.png import decoder_name
from data.synthetic import make_shapes_dataset, render_shapes_video

REPO = Path(__file__).resolve().parents[1]

# Distinct videos rendered for the RSS packs; rows beyond this repeat them (memory is what is measured).
RSS_DISTINCT_VIDEOS = 64


def _decode(video: Path) -> None:
    read_video(video)


def _loader_pass(source, args) -> tuple[int, float]:
    """Videos read and seconds for one steady-state pass (a first pass starts the workers)."""
    from data.datasets import VideoWindowDataset, make_loader  # torch: imported only when needed

    t_in = source.num_frames // 2
    dataset = VideoWindowDataset(source, t_in, source.num_frames - t_in)
    loader = make_loader(dataset, args.batch_size, shuffle=True, num_workers=args.loader_workers,
                         prefetch_factor=4, pin_memory=False, drop_last=False)
    for _ in range(2):
        start = time.perf_counter()
        count = sum(batch.shape[0] for batch in loader)
        seconds = time.perf_counter() - start
    loader.end_workers()  # joins the persistent workers, so getrusage counts them as children
    return count, seconds


def child_read(args) -> None:
    """Fresh process: stream a whole pack through the loader; report peak RSS of itself and its workers."""
    from data.sources import H5VideoSource

    count, seconds = _loader_pass(H5VideoSource(args.child_read), args)
    print(json.dumps({
        "videos": count,
        "videos_per_s": round(count / seconds, 1),
        "main_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }))


def write_rss_pack(path: Path, videos: int, args) -> None:
    """A pack of ``videos`` rows cycling through a few rendered videos (fast to make at any size)."""
    distinct = [render_shapes_video(video_rng(args.seed, n), args.height, args.width, args.frames)[0]
                for n in range(min(videos, RSS_DISTINCT_VIDEOS))]
    with open_pack_for_writing(path) as h5:
        writer = PackWriter(h5, videos, args.frames, args.height, args.width, "none")
        for n in range(videos):
            writer.append(f"video_{n}", distinct[n % len(distinct)])
        writer.finish("benchmark", [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200, help="videos generated, packed and loaded")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="generate/pack processes")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rss-videos", type=int, nargs="*", default=[200, 2000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png-level", type=int, default=6,
                        help="zlib level of the generated PNGs (default 6, what Pillow and most tools write; "
                             "make-data's own default 1 decodes about 45%% slower)")
    parser.add_argument("--dir", help="scratch folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--child-read", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_read:
        child_read(args)
        return

    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_data_"))
    scratch.mkdir(parents=True, exist_ok=True)
    # The load average says whether other work shared the CPUs (numbers then read low).
    report: dict = {"frames": [args.frames, args.height, args.width], "cpus": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                    "workers": args.workers, "loader_workers": args.loader_workers,
                    "png_level": args.png_level, "png_decoder": decoder_name()}
    try:
        root = scratch / "shapes"
        start = time.perf_counter()
        make_shapes_dataset(root, {"train": args.videos}, height=args.height, width=args.width, frames=args.frames,
                            hidden_frames=args.frames, seed=args.seed, workers=args.workers, overwrite=True,
                            compress_level=args.png_level)
        report["generate_videos_per_s"] = round(args.videos / (time.perf_counter() - start), 1)

        videos = list_videos(root / "train")
        with Pool(args.workers) as pool:
            start = time.perf_counter()
            pool.map(_decode, videos, chunksize=4)
            report["decode_only_videos_per_s"] = round(args.videos / (time.perf_counter() - start), 1)

        start = time.perf_counter()
        pack = pack_split(root / "train", scratch / "train.h5", workers=args.workers)
        report["pack_videos_per_s"] = round(args.videos / (time.perf_counter() - start), 1)

        from data.sources import H5VideoSource, PngVideoSource

        loader = {}
        for name, source in (("h5", H5VideoSource(pack)), ("png", PngVideoSource(root / "train"))):
            count, seconds = _loader_pass(source, args)
            loader[f"{name}_videos_per_s"] = round(count / seconds, 1)
        report["loader"] = loader

        rss = {}
        for size in args.rss_videos:
            path = scratch / f"rss_{size}.h5"
            write_rss_pack(path, size, args)
            command = [sys.executable, "-m", "benchmarks.bench_data", "--child-read", str(path), "--loader-workers",
                       str(args.loader_workers), "--batch-size", str(args.batch_size)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            rss[str(size)] = json.loads(done.stdout.strip().splitlines()[-1])
            path.unlink()
        report["rss"] = rss
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
