"""The shapes and Moving MNIST generators write the reference layout, deterministically by seed."""
from __future__ import annotations

import gzip
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.config import DataConfig
from core.errors import FramecastError
from data.layout import list_frames, list_videos, read_video, video_number
from data.moving_mnist import (
    labels_path_for, make_moving_mnist_dataset, read_idx_images, read_idx_labels, read_toronto,
)
from data.sources import open_toronto
from data.synthetic import NUM_CLASSES, make_shapes_dataset

COUNTS = {"train": 3, "val": 2, "unlabeled": 2, "hidden": 2}
FRAMES, HIDDEN_FRAMES, HEIGHT, WIDTH = 8, 4, 32, 48


def _fashion_images() -> Path:
    """The Fashion-MNIST test images of Debian's dataset-fashion-mnist, located through dpkg."""
    try:
        listing = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("dpkg not available, so the Debian package dataset-fashion-mnist cannot be found")
    paths = [Path(line) for line in listing.stdout.splitlines() if line.endswith("t10k-images-idx3-ubyte.gz")]
    if listing.returncode != 0 or not paths:
        pytest.skip("Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return paths[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "data"
    return make_shapes_dataset(root, COUNTS, height=HEIGHT, width=WIDTH, frames=FRAMES,
                               hidden_frames=HIDDEN_FRAMES, seed=3, workers=2)


def test_shapes_layout_numbering_masks_and_hidden(shapes):
    numbers = {split: [video_number(v) for v in list_videos(shapes / split)] for split in COUNTS}
    # Numbered consecutively across splits in the order train, val, unlabeled, hidden.
    assert numbers == {"train": [0, 1, 2], "val": [3, 4], "unlabeled": [5, 6], "hidden": [7, 8]}
    for split in COUNTS:
        for video in list_videos(shapes / split):
            expected = HIDDEN_FRAMES if split == "hidden" else FRAMES
            assert len(list_frames(video, expected)) == expected
            assert read_video(video).shape == (expected, HEIGHT, WIDTH, 3)
            assert (video / "mask.npy").exists() == (split in ("train", "val"))
    mask = np.load(shapes / "train" / "video_0" / "mask.npy")
    assert mask.shape == (FRAMES, HEIGHT, WIDTH) and np.issubdtype(mask.dtype, np.integer)
    assert mask.min() == 0 and 0 < mask.max() < NUM_CLASSES
    assert NUM_CLASSES <= DataConfig().num_classes  # packs with the default data.num_classes


def test_mask_marks_exactly_the_moving_objects(shapes):
    """Where the mask says background in two frames, the pixel is the same static background."""
    for video in list_videos(shapes / "train"):
        frames = read_video(video)  # (T, H, W, 3)
        mask = np.load(video / "mask.npy")  # (T, H, W)
        assert len(np.unique(mask[0])) >= 3  # background + at least two objects
        both_background = (mask[0] == 0) & (mask[-1] == 0)
        np.testing.assert_array_equal(frames[0][both_background], frames[-1][both_background])
        # Objects differ from what lies under them: the mask is not just painted on unchanged pixels.
        moved = (mask[0] > 0) & (mask[-1] == 0)
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int))[moved].mean() > 20


def test_copying_the_last_frame_is_a_poor_forecast(tmp_path):
    """Objects travel well beyond their own size over the prediction horizon."""
    root = make_shapes_dataset(tmp_path / "d", {"train": 6}, height=64, width=96, frames=22, hidden_frames=11,
                               seed=0, workers=1)
    overlaps = []
    for video in list_videos(root / "train"):
        mask = np.load(video / "mask.npy") > 0  # (T, H, W) object pixels
        last_input, last_target = mask[10], mask[21]
        overlaps.append((last_input & last_target).sum() / (last_input | last_target).sum())
        assert all((mask[t] != mask[t + 1]).any() for t in range(21))  # something moves every frame
    assert np.mean(overlaps) < 0.4


def test_same_seed_same_videos_whatever_the_worker_count(tmp_path, shapes):
    again = make_shapes_dataset(tmp_path / "one_worker", COUNTS, height=HEIGHT, width=WIDTH, frames=FRAMES,
                                hidden_frames=HIDDEN_FRAMES, seed=3, workers=1)
    other = make_shapes_dataset(tmp_path / "other_seed", {"train": 1}, height=HEIGHT, width=WIDTH,
                                frames=FRAMES, hidden_frames=HIDDEN_FRAMES, seed=4, workers=1)
    for split in COUNTS:
        for a, b in zip(list_videos(shapes / split), list_videos(again / split), strict=True):
            np.testing.assert_array_equal(read_video(a), read_video(b))
    assert not np.array_equal(read_video(shapes / "train" / "video_0"), read_video(other / "train" / "video_0"))


def test_existing_data_set_needs_overwrite(tmp_path):
    root = make_shapes_dataset(tmp_path / "d", {"train": 2, "val": 1}, height=16, width=16, frames=3,
                               hidden_frames=2, seed=0, workers=1)
    (root / "packed").mkdir()
    (root / "packed" / "train.h5").write_text("stale pack")
    with pytest.raises(FramecastError, match=rf"{root}: already holds a data set.*overwrite"):
        make_shapes_dataset(root, {"train": 1}, height=16, width=16, frames=3, hidden_frames=2, workers=1)
    make_shapes_dataset(root, {"train": 1}, height=16, width=16, frames=3, hidden_frames=2, workers=1,
                        overwrite=True)
    # The new data set replaces the old one whole: no stale split, no stale pack, no temporary folder.
    assert sorted(p.name for p in root.iterdir()) == ["train"]
    assert [v.name for v in list_videos(root / "train")] == ["video_0"]


def test_bad_generator_settings_are_errors(tmp_path):
    with pytest.raises(FramecastError, match="unknown split 'test'"):
        make_shapes_dataset(tmp_path / "a", {"test": 2}, workers=1)
    with pytest.raises(FramecastError, match="hidden_frames"):
        make_shapes_dataset(tmp_path / "b", {"train": 1}, frames=4, hidden_frames=5, workers=1)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_idx_reader_reads_the_debian_fashion_mnist_file():
    images_file = _fashion_images()
    images = read_idx_images(images_file)
    labels = read_idx_labels(labels_path_for(images_file))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert labels[0] == 9  # the test set opens with an ankle boot
    assert 20 < images.mean() < 120 and images.max() == 255


def test_idx_reader_reads_raw_files_and_rejects_bad_ones(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2, 3, 4) + pixels.tobytes()
    (tmp_path / "x-images-idx3-ubyte").write_bytes(raw)
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx_images(tmp_path / "x-images-idx3-ubyte"), pixels)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "x-images-idx3-ubyte.gz"), pixels)
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(FramecastError, match=r"short: idx data is 19 bytes"):
        read_idx_images(tmp_path / "short")
    with pytest.raises(FramecastError, match=r"missing\.gz: MNIST idx file not found"):
        read_idx_images(tmp_path / "missing.gz")


def test_moving_mnist_from_fashion_mnist(tmp_path):
    images_file = _fashion_images()
    root = make_moving_mnist_dataset(tmp_path / "mm", images_file, {"train": 2, "hidden": 1}, size=40, frames=6,
                                     hidden_frames=3, seed=1, workers=1)
    assert [video_number(v) for v in list_videos(root / "train")] == [0, 1]
    assert [video_number(v) for v in list_videos(root / "hidden")] == [2]
    frames = read_video(root / "train" / "video_0")  # (T, S, S, 3)
    assert frames.shape == (6, 40, 40, 3)
    np.testing.assert_array_equal(frames[..., 0], frames[..., 2])  # grey replicated to RGB
    mask = np.load(root / "train" / "video_0" / "mask.npy")
    assert set(np.unique(mask)) - {0} <= set(range(1, 11)) and mask.max() > 0
    assert frames[..., 0][mask > 0].min() >= 64  # mask pixels are digit ink
    assert len(read_video(root / "hidden" / "video_2")) == 3


def test_moving_mnist_wrong_path_is_named(tmp_path):
    with pytest.raises(FramecastError, match=r"nope-images-idx3-ubyte\.gz: MNIST idx file not found"):
        make_moving_mnist_dataset(tmp_path / "mm", tmp_path / "nope-images-idx3-ubyte.gz", {"train": 1}, workers=1)
    assert not (tmp_path / "mm").exists()


def test_toronto_file_read_time_first_and_served_as_rgb(tmp_path):
    videos = np.random.default_rng(0).integers(0, 256, size=(3, 5, 64, 64), dtype=np.uint8)  # (N, T, H, W)
    np.save(tmp_path / "mnist_test_seq.npy", videos.transpose(1, 0, 2, 3))  # the file is (T, N, H, W)
    np.testing.assert_array_equal(read_toronto(tmp_path / "mnist_test_seq.npy"), videos)
    source = open_toronto(tmp_path / "mnist_test_seq.npy")
    assert len(source) == 3 and source.num_frames == 5 and source.frame_shape == (64, 64, 3)
    window = source.read(2, 1, 4)  # (3, 64, 64, 3)
    np.testing.assert_array_equal(window, np.repeat(videos[2, 1:4, ..., None], 3, axis=-1))
    np.save(tmp_path / "flat.npy", videos[0])
    with pytest.raises(FramecastError, match=r"flat\.npy: expected uint8 \(T, N, H, W\)"):
        read_toronto(tmp_path / "flat.npy")
