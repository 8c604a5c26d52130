"""make-data --from-video: real video files cut into windows of the reference layout, split in time."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import FramecastError
from data.layout import list_videos, read_video
from data.video import WINDOWS_NAME, decode_video, fit_frame, make_video_dataset

FRAMES_IN_FILE, SIDE = 40, 32


def _encode(path: Path, count: int, height: int = SIDE, width: int = 2 * SIDE) -> Path:
    """A video whose frame k is flat grey at level 6 * k, so every decoded frame says where in the
    file it came from."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=10)  # lossless: the grey levels survive exactly
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for k in range(count):
            frame = np.full((height, width, 3), 6 * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _level(frame: np.ndarray) -> int:
    """The source frame number a decoded frame carries (its grey level / 6)."""
    return int(round(float(frame.mean()) / 6))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _encode(tmp_path_factory.mktemp("videos") / "clip.avi", FRAMES_IN_FILE)


def test_decode_keeps_order_size_and_frame_step(clip):
    video = decode_video(clip, 16, 16, frame_step=2)  # 32x64 covered to 16x32, centre 16x16 kept
    assert video.shape == (FRAMES_IN_FILE // 2, 16, 16, 3) and video.dtype == np.uint8
    assert [_level(f) for f in video] == list(range(0, FRAMES_IN_FILE, 2))


def test_fit_frame_covers_then_crops_the_centre():
    frame = np.zeros((30, 90, 3), dtype=np.uint8)  # 1:3, three vertical bands: dark, bright, dark
    frame[:, 30:60] = 200
    fitted = fit_frame(frame, 20, 20)  # covered to 20x60, the middle 20x20 kept: the bright band
    assert fitted.shape == (20, 20, 3) and fitted[:, 1:-1].min() > 190
    assert fit_frame(frame, 30, 90).tobytes() == frame.tobytes()  # already the size: unchanged


def test_windows_split_in_time_and_record_their_source(clip, tmp_path):
    root = make_video_dataset([str(clip)], tmp_path / "set", frames=6, stride=3, height=16, width=24,
                              hidden_frames=3, holdout=0.4, unlabeled_share=0.5, hidden_share=0.5)
    record = json.loads((root / WINDOWS_NAME).read_text())
    windows = record["windows"]
    by_split = {split: [w for w in windows if w["split"] == split] for split in ("train", "unlabeled", "val", "hidden")}
    assert all(by_split.values()), "every split gets windows"
    trained = [w for s in ("train", "unlabeled") for w in by_split[s]]
    held_out = by_split["val"] + by_split["hidden"]
    assert max(w["last_frame"] for w in trained) < min(w["first_frame"] for w in held_out)
    assert max(w["last_frame"] for w in held_out) < FRAMES_IN_FILE
    for entry in windows:  # what the record says is what the frames show
        split_dir = root / entry["split"] / entry["video"]
        video = read_video(split_dir)
        assert len(video) == entry["frames"] == (3 if entry["split"] == "hidden" else 6)
        assert video.shape[1:] == (16, 24, 3)
        assert [_level(f) for f in video] == list(range(entry["first_frame"], entry["first_frame"] + len(video)))
    # Numbered consecutively across splits, train first.
    assert [v.name for v in list_videos(root / "train")] == [f"video_{n}" for n in range(len(by_split["train"]))]


def test_several_files_by_glob_and_overwrite(clip, tmp_path):
    other = _encode(tmp_path / "b.avi", 30)
    (tmp_path / "a.avi").write_bytes(clip.read_bytes())
    root = make_video_dataset([str(tmp_path / "*.avi")], tmp_path / "set", frames=5, height=16, width=16,
                              hidden_frames=5, hidden_share=0.0)
    sources = [s["source"] for s in json.loads((root / WINDOWS_NAME).read_text())["sources"]]
    assert sources == [str(tmp_path / "a.avi"), str(other)]
    assert not (root / "hidden").exists()
    with pytest.raises(FramecastError, match="already holds a data set"):
        make_video_dataset([str(other)], root, frames=5, height=16, width=16, hidden_frames=5)
    make_video_dataset([str(other)], root, frames=5, height=16, width=16, hidden_frames=5, overwrite=True)
    assert {s["source"] for s in json.loads((root / WINDOWS_NAME).read_text())["sources"]} == {str(other)}


def test_bad_short_and_missing_files_are_one_line_naming_them(clip, tmp_path, capsys):
    from cli import main

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    assert main(["make-data", "--from-video", str(clip), str(junk), "--out", str(tmp_path / "x"),
                 "--frames", "6", "--hidden-frames", "3", "--height", "16", "--width", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {junk}: not a readable video") and "\n" not in err
    small = dict(frames=6, hidden_frames=3, height=16, width=16)
    with pytest.raises(FramecastError, match=r"short\.avi: 8 frames .* too few"):
        make_video_dataset([str(_encode(tmp_path / "short.avi", 8))], tmp_path / "y", **small)
    with pytest.raises(FramecastError, match="no video file matches"):
        make_video_dataset([str(tmp_path / "none*.mp4")], tmp_path / "z", **small)
    with pytest.raises(FramecastError, match="missing.mp4: video file not found"):
        make_video_dataset([str(tmp_path / "missing.mp4")], tmp_path / "z", **small)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
