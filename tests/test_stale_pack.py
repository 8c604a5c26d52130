"""A pack is never read once its PNG folders have changed: train, predict and evaluate all refuse a
stale pack with one line naming the videos and the command that repacks it."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import h5py
import pytest

from core.errors import FramecastError
from data.pack import SOURCE_NAMES, SOURCE_STAMPS, pack_dataset, pack_split
from data.sources import H5VideoSource, PngVideoSource, open_split
from data.synthetic import make_shapes_dataset
from predict_helpers import make_checkpoint, make_config
from train_helpers import tiny_config


def _data(root: Path) -> Path:
    make_shapes_dataset(root, counts={"train": 4, "val": 2, "hidden": 9}, height=32, width=48, frames=8,
                        hidden_frames=4, seed=0, workers=1)
    pack_dataset(root, workers=1)
    return root


@pytest.fixture
def root(tmp_path_factory) -> Path:
    return _data(tmp_path_factory.mktemp("stale") / "shapes")


def _videos(root: Path, split: str) -> list[Path]:
    return sorted((root / split).iterdir(), key=lambda p: int(p.name.split("_")[1]))


def _replace_frames(video: Path, other: Path) -> None:
    """``video``'s frames overwritten with ``other``'s (as a user re-exporting a video would)."""
    for frame in video.iterdir():
        frame.write_bytes((other / frame.name).read_bytes())
        os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))


def test_an_unchanged_pack_is_read(root):
    cfg = make_config(root.parent, root)
    assert isinstance(open_split(cfg.data, "hidden"), H5VideoSource)


def test_added_changed_and_removed_videos_are_named_with_the_repack_command(root):
    hidden = _videos(root, "hidden")
    shutil.copytree(hidden[0], root / "hidden" / "video_99")
    _replace_frames(hidden[1], hidden[2])
    shutil.rmtree(hidden[3])
    with pytest.raises(FramecastError) as caught:
        open_split(make_config(root.parent, root).data, "hidden")
    message = str(caught.value)
    assert "\n" not in message and "stale" in message
    assert f"added: video_99; removed: {hidden[3].name}; changed: {hidden[1].name}" in message
    assert f"main.py pack --data {root} --split hidden" in message


def test_a_long_list_of_changed_videos_is_cut_short_with_the_count(root):
    hidden = _videos(root, "hidden")
    for video in hidden:
        os.utime(video / "image_0.png", ns=(0, 10**9))
    message = str(pytest.raises(FramecastError, open_split, make_config(root.parent, root).data, "hidden").value)
    assert f"changed: {', '.join(v.name for v in hidden[:5])}, ... (9 in all)" in message


def test_train_refuses_a_stale_pack(root, tmp_path):
    from stages.train import run

    train = _videos(root, "train")
    _replace_frames(train[0], train[1])
    cfg = tiny_config(root, tmp_path, "stale", "data.source=auto", "train.epochs=1")
    with pytest.raises(FramecastError, match=rf"train\.h5: stale.*changed: {train[0].name}"):
        run(cfg)
    assert not (cfg.run_dir / "best.pt").exists()


def test_predict_refuses_a_stale_pack_and_writes_nothing(root, tmp_path):
    from stages.predict import run

    cfg = make_config(tmp_path, root)
    make_checkpoint(cfg)
    shutil.copytree(_videos(root, "hidden")[0], root / "hidden" / "video_99")
    with pytest.raises(FramecastError, match=r"hidden\.h5: stale.*added: video_99"):
        run(cfg)
    assert not (cfg.run_dir / "preds").exists()


def test_explicit_h5_source_trusts_the_pack_unchecked(root):
    shutil.copytree(_videos(root, "hidden")[0], root / "hidden" / "video_99")
    cfg = make_config(root.parent, root)
    cfg.data = dataclasses.replace(cfg.data, source="h5")
    assert len(open_split(cfg.data, "hidden")) == 9


def test_a_pack_without_its_folders_is_read(root, tmp_path):
    cfg = make_config(tmp_path, tmp_path / "nowhere")
    cfg.data = dataclasses.replace(cfg.data, pack_dir=str(root / "packed"))
    assert len(open_split(cfg.data, "hidden")) == 9


def test_an_old_pack_that_records_nothing_is_refused_suggesting_a_repack(root):
    with h5py.File(root / "packed" / "hidden.h5", "a") as h5:
        del h5[SOURCE_NAMES], h5[SOURCE_STAMPS]
    cfg = make_config(root.parent, root)
    with pytest.raises(FramecastError, match=r"does not record which frames.*repack with `main.py pack"):
        open_split(cfg.data, "hidden")
    cfg.data = dataclasses.replace(cfg.data, source="h5")
    assert isinstance(open_split(cfg.data, "hidden"), H5VideoSource)


def test_skipped_videos_are_recorded_so_fixing_one_asks_for_a_repack(root, tmp_path):
    video = _videos(root, "train")[1]
    (video / "image_7.png").write_bytes(b"not a png")
    pack_split(root / "train", root / "packed" / "train.h5", workers=1, skip_bad=True)
    cfg = make_config(tmp_path, root)
    assert len(open_split(cfg.data, "train")) == 3  # still as packed: nothing changed
    _replace_frames(video, _videos(root, "train")[0])
    with pytest.raises(FramecastError, match=rf"changed: {video.name}"):
        open_split(cfg.data, "train")
    cfg.data = dataclasses.replace(cfg.data, source="png")
    assert isinstance(open_split(cfg.data, "train"), PngVideoSource)


def test_a_data_path_that_is_not_utf8_packs_and_reads(tmp_path):
    root = Path(os.fsdecode(bytes(tmp_path) + b"/d\xe9j\xe0"))  # Latin-1 bytes: not UTF-8
    _data(root)
    with h5py.File(root / "packed" / "hidden.h5", "r") as h5:
        assert h5.attrs["source"].endswith("d\\xe9j\\xe0/hidden")
    assert len(open_split(make_config(tmp_path, root).data, "hidden")) == 9


def test_pack_prints_a_path_that_is_not_utf8_as_its_bytes(tmp_path):
    import subprocess
    import sys

    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    make_shapes_dataset(root, counts={"val": 2}, height=32, width=48, frames=8, hidden_frames=4, seed=0, workers=1)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "main.py"), "pack",
                           "--data", root, "--workers", "1"], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8", "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"wrote " + os.fsencode(root / "packed" / "val.h5") + b"\n"
