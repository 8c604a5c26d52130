"""np_to_png: PNGs hold exactly the array's pixels, in the reference layout; bad inputs are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.convert import write_pngs
from core.errors import FramecastError

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ["video_2", "video_9", "video_10", "video_15000"]
FRAMES = [4, 5, 6]


def write_preds(folder: Path, array: np.ndarray, videos=VIDEOS, frames=FRAMES, **extra) -> Path:
    npy = folder / "preds.npy"
    np.save(npy, array)
    index = {"videos": videos, "frames": frames, "shape": list(array.shape), **extra}
    (folder / "preds.json").write_text(json.dumps(index))
    return npy


@pytest.fixture
def preds(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (len(VIDEOS), len(FRAMES), 32, 48, 3), dtype=np.uint8)  # (N, T, H, W, 3)
    return write_preds(tmp_path, array), array


@pytest.mark.parametrize("workers", [1, 2])
def test_pngs_equal_the_array_pixels(preds, tmp_path: Path, workers: int):
    npy, array = preds
    out = tmp_path / "png"
    assert write_pngs(npy, out, workers=workers) == array.shape[0] * array.shape[1]
    for row, video in enumerate(VIDEOS):
        files = sorted(p.name for p in (out / video).iterdir())
        assert files == sorted(f"image_{k}.png" for k in FRAMES)
        for column, k in enumerate(FRAMES):
            with Image.open(out / video / f"image_{k}.png") as image:
                assert image.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(image), array[row, column])
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_frames_option_writes_only_those(preds, tmp_path: Path):
    npy, array = preds
    out = tmp_path / "last"
    assert write_pngs(npy, out, frames=[6], workers=1) == len(VIDEOS)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(
        f"{v}/image_6.png" for v in VIDEOS
    )
    with Image.open(out / "video_10" / "image_6.png") as image:
        np.testing.assert_array_equal(np.asarray(image), array[2, 2])
    with pytest.raises(FramecastError, match=r"preds\.npy: frame\(s\) \[3\] were not predicted"):
        write_pngs(npy, out, frames=[3, 6])


@pytest.mark.parametrize(
    "array, videos, frames, message",
    [
        (np.zeros((4, 3, 8, 8, 3), np.float32), VIDEOS, FRAMES, r"dtype float32, expected uint8"),
        (np.zeros((4, 3, 8, 8), np.uint8), VIDEOS, FRAMES, r"shape \[4, 3, 8, 8\], expected"),
        (np.zeros((4, 3, 8, 8, 4), np.uint8), VIDEOS, FRAMES, r"shape \[4, 3, 8, 8, 4\], expected"),
        (np.zeros((3, 3, 8, 8, 3), np.uint8), VIDEOS, FRAMES, r"3 rows, but its index .*preds\.json names 4 videos"),
        (np.zeros((4, 2, 8, 8, 3), np.uint8), VIDEOS, FRAMES, r"2 frames per video, but its index .* lists 3"),
        (np.zeros((4, 3, 8, 8, 3), np.uint8), ["video_1", "x/../video_2", "video_3", "video_4"], FRAMES,
         r"not a video_<n> folder name"),
    ],
)
def test_refuses_array_that_disagrees_with_its_index(tmp_path: Path, array, videos, frames, message):
    npy = write_preds(tmp_path, array, videos, frames)
    with pytest.raises(FramecastError, match=message) as info:
        write_pngs(npy, tmp_path / "png", workers=1)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "png").exists() or not any((tmp_path / "png").iterdir())


def test_refuses_missing_index_and_shape_mismatch_in_index(preds, tmp_path: Path):
    npy, array = preds
    index = json.loads((tmp_path / "preds.json").read_text())
    index["shape"] = [4, 3, 32, 40, 3]
    (tmp_path / "preds.json").write_text(json.dumps(index))
    with pytest.raises(FramecastError, match=r"shape \[4, 3, 32, 48, 3\], but its index .* says"):
        write_pngs(npy, tmp_path / "png")
    (tmp_path / "preds.json").unlink()
    with pytest.raises(FramecastError, match=r"preds\.json: prediction index not found"):
        write_pngs(npy, tmp_path / "png")


def test_cli_writes_pngs_and_reports_errors_in_one_line(preds, tmp_path: Path):
    npy, array = preds
    ok = subprocess.run(
        [sys.executable, str(REPO / "np_to_png.py"), str(npy), "--out", str(tmp_path / "cli"), "--frames", "5", "6",
         "--workers", "2"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "cli").rglob("*.png"))) == 2 * len(VIDEOS)

    bad = subprocess.run(
        [sys.executable, str(REPO / "np_to_png.py"), str(tmp_path / "nope.npy"), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "nope.npy: prediction array not found" in bad.stderr
