"""Packing PNG folders into HDF5: exact pixels, numeric order, validation, atomic output."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from core.errors import FramecastError
from data.layout import list_videos, read_video
from data.pack import pack_dataset, pack_split
from data.synthetic import make_shapes_dataset

FRAMES, HEIGHT, WIDTH = 8, 32, 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pack") / "data"
    return make_shapes_dataset(root, {"train": 5, "val": 2, "hidden": 2}, height=HEIGHT, width=WIDTH,
                               frames=FRAMES, hidden_frames=4, seed=0, workers=1)


@pytest.fixture
def split_copy(dataset, tmp_path) -> Path:
    """A private copy of the train split to damage."""
    return Path(shutil.copytree(dataset / "train", tmp_path / "train"))


def test_pack_holds_exactly_the_png_pixels_in_numeric_order(dataset, tmp_path):
    out = pack_split(dataset / "train", tmp_path / "train.h5", workers=2)
    videos = list_videos(dataset / "train")
    with h5py.File(out, "r") as h5:
        frames = h5["frames"]
        assert frames.dtype == np.uint8 and frames.shape == (5, FRAMES, HEIGHT, WIDTH, 3)
        assert frames.chunks == (1, FRAMES, HEIGHT, WIDTH, 3)  # one video per chunk
        assert list(h5["names"].asstr()[()]) == [v.name for v in videos]
        assert (h5.attrs["num_frames"], h5.attrs["height"], h5.attrs["width"]) == (FRAMES, HEIGHT, WIDTH)
        assert json.loads(h5.attrs["skipped"]) == []
        assert h5.attrs["source"] == str(dataset / "train")
        for i, video in enumerate(videos):
            np.testing.assert_array_equal(frames[i], read_video(video))


def test_pack_orders_videos_numerically(dataset, tmp_path):
    split = tmp_path / "split"
    for n in (10, 2, 1):  # string order would be 1, 10, 2
        shutil.copytree(dataset / "train" / f"video_{n % 5}", split / f"video_{n}")
    out = pack_split(split, tmp_path / "s.h5", workers=1)
    with h5py.File(out, "r") as h5:
        assert list(h5["names"].asstr()[()]) == ["video_1", "video_2", "video_10"]
        np.testing.assert_array_equal(h5["frames"][2], read_video(split / "video_10"))


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_packs_read_back_identically(dataset, tmp_path, compression):
    plain = pack_split(dataset / "train", tmp_path / "plain.h5", workers=1)
    packed = pack_split(dataset / "train", tmp_path / f"{compression}.h5", workers=2, compression=compression)
    with h5py.File(plain, "r") as a, h5py.File(packed, "r") as b:
        assert b["frames"].compression == compression
        np.testing.assert_array_equal(a["frames"][()], b["frames"][()])


def _damage(split: Path, how: str) -> Path:
    """Break video_3 of ``split``; returns the file the error must name."""
    video = split / "video_3"
    if how == "corrupt":
        bad = video / "image_5.png"
        bad.write_bytes(bad.read_bytes()[:60])
    elif how == "missing":
        bad = video / "image_4.png"
        bad.unlink()
    else:  # wrong size
        bad = video / "image_6.png"
        Image.fromarray(np.zeros((HEIGHT, WIDTH + 2, 3), dtype=np.uint8)).save(bad)
    return bad


@pytest.mark.parametrize("how, problem", [("corrupt", "PNG"), ("missing", "frame missing"),
                                          ("wrong_size", "frame is 32x50")])
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_video_stops_the_pack_naming_the_file_and_leaves_no_file(split_copy, tmp_path, how, problem, workers):
    bad = _damage(split_copy, how)
    out_dir = tmp_path / "packed"
    with pytest.raises(FramecastError) as caught:
        pack_split(split_copy, out_dir / "train.h5", workers=workers)
    message = str(caught.value)
    assert message.startswith(str(bad)) and problem in message and "\n" not in message
    assert list(out_dir.iterdir()) == []  # no pack, no temporary file


def test_skip_bad_leaves_the_video_out_and_records_it(split_copy, tmp_path):
    bad = _damage(split_copy, "missing")
    out = pack_split(split_copy, tmp_path / "train.h5", workers=2, skip_bad=True)
    with h5py.File(out, "r") as h5:
        names = list(h5["names"].asstr()[()])
        assert names == ["video_0", "video_1", "video_2", "video_4"]
        np.testing.assert_array_equal(h5["frames"][3], read_video(split_copy / "video_4"))
        skipped = json.loads(h5.attrs["skipped"])
    assert [s["video"] for s in skipped] == ["video_3"] and str(bad) in skipped[0]["error"]


def test_a_bad_first_video_does_not_set_the_expected_size(split_copy, tmp_path):
    """The split's frame count and size come from most videos, so the one bad video is the one named."""
    bad = split_copy / "video_0" / "image_0.png"
    Image.fromarray(np.zeros((HEIGHT + 4, WIDTH, 3), dtype=np.uint8)).save(bad)
    with pytest.raises(FramecastError, match=rf"^{bad}: frame is 36x48"):
        pack_split(split_copy, tmp_path / "train.h5", workers=1)


def test_pack_dataset_writes_one_file_per_existing_split(dataset, tmp_path):
    written = pack_dataset(dataset, out_dir=tmp_path / "packs", workers=1)
    assert [p.name for p in written] == ["train.h5", "val.h5", "hidden.h5"]  # no unlabeled/ in this data set
    with h5py.File(tmp_path / "packs" / "hidden.h5", "r") as h5:
        assert h5["frames"].shape == (2, 4, HEIGHT, WIDTH, 3)
        assert list(h5["names"].asstr()[()]) == ["video_7", "video_8"]


def test_pack_rejects_bad_settings(dataset, tmp_path):
    with pytest.raises(FramecastError, match="compression 'zip'"):
        pack_dataset(dataset, out_dir=tmp_path, compression="zip")
    with pytest.raises(FramecastError, match=r"unlabeled: split folder not found"):
        pack_dataset(dataset, out_dir=tmp_path, splits=["unlabeled"])


# ----------------------------------------------------------------------------- masks


def test_labeled_splits_pack_their_masks_exactly(dataset, tmp_path):
    written = pack_dataset(dataset, out_dir=tmp_path / "packs", workers=1)
    train, _, hidden = written
    with h5py.File(train, "r") as h5:
        masks = h5["masks"]
        assert masks.dtype == np.uint8 and masks.shape == (5, FRAMES, HEIGHT, WIDTH)
        for i, video in enumerate(list_videos(dataset / "train")):
            np.testing.assert_array_equal(masks[i], np.load(video / "mask.npy"))
        assert h5.attrs["max_class"] == max(np.load(v / "mask.npy").max() for v in list_videos(dataset / "train"))
    with h5py.File(hidden, "r") as h5:
        assert "masks" not in h5  # no mask.npy in the hidden split


@pytest.mark.parametrize("how, problem", [
    ("missing", "mask missing"),
    ("shape", f"expected (T, H, W) = ({FRAMES}, {HEIGHT}, {WIDTH})"),
    ("class", "class id 49 outside 0..48 (data.num_classes=49)"),
    ("float", "expected integer class ids"),
])
def test_bad_mask_stops_the_pack_in_one_line_naming_the_file(split_copy, tmp_path, how, problem):
    mask_file = split_copy / "video_3" / "mask.npy"
    mask = np.load(mask_file)
    if how == "missing":
        mask_file.unlink()
    elif how == "shape":
        np.save(mask_file, mask[:, :-1])
    elif how == "class":
        mask[2, 0, 0] = 49
        np.save(mask_file, mask)
    else:
        np.save(mask_file, mask.astype(np.float32))
    with pytest.raises(FramecastError) as caught:
        pack_split(split_copy, tmp_path / "packed" / "train.h5", workers=1)
    message = str(caught.value)
    assert message.startswith(str(mask_file)) and problem in message and "\n" not in message


def test_num_classes_bounds_the_class_ids(split_copy, tmp_path):
    top = max(np.load(v / "mask.npy").max() for v in list_videos(split_copy))
    with pytest.raises(FramecastError, match=rf"class id {top} outside 0\.\.{top - 1}"):
        pack_split(split_copy, tmp_path / "a.h5", workers=1, num_classes=int(top))
    pack_split(split_copy, tmp_path / "b.h5", workers=1, num_classes=int(top) + 1)
    with pytest.raises(FramecastError, match="num_classes must be a whole number from 2 to 256"):
        pack_split(split_copy, tmp_path / "c.h5", workers=1, num_classes=300)


def test_skip_bad_leaves_out_a_video_with_a_bad_mask(split_copy, tmp_path):
    (split_copy / "video_1" / "mask.npy").unlink()
    out = pack_split(split_copy, tmp_path / "train.h5", workers=2, skip_bad=True)
    with h5py.File(out, "r") as h5:
        assert list(h5["names"].asstr()[()]) == ["video_0", "video_2", "video_3", "video_4"]
        np.testing.assert_array_equal(h5["masks"][1], np.load(split_copy / "video_2" / "mask.npy"))


def test_a_changed_mask_makes_the_pack_stale(split_copy, tmp_path):
    from data.pack import video_stamp

    before = video_stamp(split_copy / "video_2")
    mask_file = split_copy / "video_2" / "mask.npy"
    mask = np.load(mask_file)
    mask[0, 0, 0] = 1 - min(mask[0, 0, 0], 1)
    np.save(mask_file, mask)
    assert video_stamp(split_copy / "video_2") != before
