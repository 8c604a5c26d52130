"""Window datasets over packs and PNG folders: exact pixels, windows, splits, loaders, device input."""
from __future__ import annotations

import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import Config
from core.errors import FramecastError
from data.datasets import VideoWindowDataset, build_datasets, build_split_dataset, make_loader, to_model_input
from data.layout import list_videos, read_video
from data.pack import pack_dataset
from data.sources import ArrayVideoSource, H5VideoSource, PngVideoSource, open_split
from data.synthetic import make_shapes_dataset

FRAMES, HEIGHT, WIDTH, T_IN, T_OUT = 8, 32, 48, 3, 4
REPO = Path(__file__).resolve().parents[1]
COUNTS = {"train": 3, "val": 2, "unlabeled": 2, "hidden": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny shapes data set with packs of every split in <root>/packed."""
    root = tmp_path_factory.mktemp("datasets") / "data"
    make_shapes_dataset(root, COUNTS, height=HEIGHT, width=WIDTH, frames=FRAMES, hidden_frames=T_IN, seed=5, workers=1)
    pack_dataset(root, workers=1)
    return root


def config(root: Path, **data) -> Config:
    cfg = Config()
    cfg.data.root = str(root)
    cfg.data.t_in, cfg.data.t_out = T_IN, T_OUT
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def test_pack_and_png_sources_return_exactly_the_png_pixels(dataset):
    pack = H5VideoSource(dataset / "packed" / "train.h5")
    folder = PngVideoSource(dataset / "train")
    assert pack.names == folder.names == [v.name for v in list_videos(dataset / "train")]
    assert pack.num_frames == folder.num_frames == FRAMES and pack.frame_shape == folder.frame_shape == (HEIGHT, WIDTH, 3)
    for i, video in enumerate(list_videos(dataset / "train")):
        pixels = read_video(video)  # (T, H, W, 3), decoded straight from the PNGs
        np.testing.assert_array_equal(pack.read(i), pixels)
        np.testing.assert_array_equal(folder.read(i, 2, 6), pixels[2:6])
        np.testing.assert_array_equal(pack.read(i, 2, 6), pixels[2:6])


def test_every_window_is_the_right_frames(dataset):
    source = H5VideoSource(dataset / "packed" / "train.h5")
    windows = VideoWindowDataset(source, T_IN, T_OUT, all_windows=True)
    per_video = FRAMES - T_IN - T_OUT + 1
    assert len(windows) == 3 * per_video
    for index in range(len(windows)):
        video, start = divmod(index, per_video)
        sample = windows[index]
        assert sample.dtype == torch.uint8 and sample.shape == (T_IN + T_OUT, HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(sample.numpy(), source.read(video)[start:start + T_IN + T_OUT])
        assert windows.video_name(index) == source.names[video]
    first_only = VideoWindowDataset(source, T_IN, T_OUT)
    assert len(first_only) == 3
    with pytest.raises(IndexError):
        first_only[3]


def test_training_combines_splits_and_validation_uses_val(dataset):
    train, val = build_datasets(config(dataset))  # default train_splits: train + unlabeled
    assert len(train) == 5 and len(val) == 2
    assert [train.video_name(i) for i in range(5)] == ["video_0", "video_1", "video_2", "video_5", "video_6"]
    assert [val.video_name(i) for i in range(2)] == ["video_3", "video_4"]
    np.testing.assert_array_equal(train[3].numpy(), read_video(dataset / "unlabeled" / "video_5")[: T_IN + T_OUT])
    assert all(isinstance(s, H5VideoSource) for s in train.sources)  # auto picks the packs


def test_hidden_split_gives_the_input_frames_only(dataset):
    hidden = VideoWindowDataset(open_split(config(dataset).data, "hidden"), T_IN, 0)
    assert len(hidden) == 2 and hidden[1].shape == (T_IN, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(hidden[1].numpy(), read_video(dataset / "hidden" / "video_8"))
    with pytest.raises(FramecastError, match=r"hidden\.h5: videos have 3 frames, fewer than t_in \+ t_out = 3 \+ 4"):
        build_split_dataset(config(dataset).data, "hidden")


def test_source_setting_chooses_pack_or_folder(dataset, tmp_path):
    assert isinstance(open_split(config(dataset).data, "val"), H5VideoSource)
    assert isinstance(open_split(config(dataset, source="png").data, "val"), PngVideoSource)
    elsewhere = config(dataset, pack_dir=str(tmp_path))  # no packs there
    assert isinstance(open_split(elsewhere.data, "val"), PngVideoSource)
    elsewhere.data.source = "h5"
    with pytest.raises(FramecastError, match=rf"{tmp_path}/val\.h5: pack not found"):
        open_split(elsewhere.data, "val")


def test_loader_workers_stream_from_the_pack(dataset):
    train, _ = build_datasets(config(dataset))
    expected = torch.stack([train[i] for i in range(len(train))])  # read in this process first
    assert all(s._pid is not None for s in train.sources)  # ... so the handles are open here
    pickle.loads(pickle.dumps(train))  # an open HDF5 handle is never pickled
    loader = make_loader(train, batch_size=2, shuffle=False, num_workers=2, prefetch_factor=2,
                         pin_memory=False, drop_last=False)
    for _ in range(2):  # persistent workers serve a second epoch
        batches = list(loader)
        assert [b.shape[0] for b in batches] == [2, 2, 1]
        assert batches[0].dtype == torch.uint8
        assert torch.equal(torch.cat(batches), expected)


def receiver_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "framecast-batch-receiver"]


def test_loader_stopped_early_leaves_no_receiver_thread(dataset):
    train, _ = build_datasets(config(dataset))
    loader = make_loader(train, batch_size=1, shuffle=False, num_workers=2, prefetch_factor=2,
                         pin_memory=False, drop_last=False)
    batches = iter(loader)
    assert torch.equal(next(batches)[0], train[0])
    assert len(receiver_threads()) == 1  # batches come through the receiving thread
    batches.close()  # what a ``break`` out of the loop does
    assert receiver_threads() == []
    assert len(list(loader)) == len(train)  # and the persistent workers still serve the next epoch


def run_loader_script(split_dir: Path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter with ``loader`` (2 workers, PNG frames of ``split_dir``)."""
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from data.datasets import VideoWindowDataset, make_loader
from data.sources import PngVideoSource
windows = VideoWindowDataset(PngVideoSource({str(split_dir)!r}), {T_IN}, {T_OUT})
loader = make_loader(windows, batch_size=1, shuffle=False, num_workers=2, prefetch_factor=2, pin_memory=False,
                     drop_last=False)
{body}
"""
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_script_ends_with_its_loader_workers_still_running(dataset):
    """Workers ignore SIGTERM (Slurm's signal is for the trainer); exiting must still end them."""
    done = run_loader_script(dataset / "train", "print('done', tuple(next(iter(loader)).shape))")  # epoch suspended
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done")


def test_a_script_whose_loader_is_gone_but_not_its_workers_still_exits(dataset):
    """A loader collected while torch's worker iterator lives on (held in a reference cycle, as a
    generator frame or traceback holds it): its workers must still end at exit, or the process (a
    job whose work is done) waits on them forever."""
    body = """
for _ in loader:
    pass
kept = loader._iterator
del loader
print('done')
"""
    done = run_loader_script(dataset / "train", body)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done")


@pytest.fixture
def broken_png(tmp_path) -> Path:
    """A frame of train/video_1 corrupted after the layout was validated: found only when read."""
    root = tmp_path / "data"
    make_shapes_dataset(root, {"train": 2}, height=HEIGHT, width=WIDTH, frames=FRAMES, hidden_frames=T_IN, seed=1,
                        workers=1)
    broken = root / "train" / "video_1" / "image_2.png"
    broken.write_bytes(b"not a png")
    return broken


def test_error_in_a_loader_worker_reaches_the_loop_naming_the_file(broken_png):
    train = build_split_dataset(config(broken_png.parents[2], source="png").data, "train")
    loader = make_loader(train, batch_size=1, shuffle=False, num_workers=2, prefetch_factor=2,
                         pin_memory=False, drop_last=False)
    with pytest.raises(FramecastError, match=re.escape(str(broken_png))) as raised:
        list(loader)
    assert str(raised.value) == f"{broken_png}: not a readable PNG (empty, or not image data)"  # no worker traceback
    assert receiver_threads() == []


def test_a_script_failing_on_a_bad_file_exits_at_once(broken_png):
    """The error ends the workers before it travels on: the process fails and exits, never hangs.

    Caught and dropped, as a job wrapper or test runner does, the loader is then collected with the
    error's traceback, which used to leave its workers running and the process waiting on them.
    """
    body = """
try:
    list(loader)
except Exception as error:
    print(error, file=sys.stderr)
del loader
import gc; gc.collect()
sys.exit(1)
"""
    done = run_loader_script(broken_png.parents[1], body)
    assert done.returncode == 1
    assert str(broken_png) in done.stderr


def test_shuffled_loader_is_seeded(dataset):
    train, _ = build_datasets(config(dataset, source="png"))

    def order(seed):
        loader = make_loader(train, 1, shuffle=True, num_workers=0, prefetch_factor=2, pin_memory=False,
                             drop_last=False, seed=seed)
        return [batch.sum().item() for batch in loader]

    assert order(1) == order(1) and sorted(order(1)) == sorted(order(2))


@pytest.mark.parametrize("channels_last", [False, True])
def test_model_input_is_float_frames_first_in_unit_range(channels_last):
    batch = torch.randint(0, 256, (2, 5, 6, 7, 3), dtype=torch.uint8)  # (B, T, H, W, C)
    x = to_model_input(batch, "cpu", channels_last=channels_last)
    assert x.shape == (2, 5, 3, 6, 7) and x.dtype == torch.float32
    assert torch.equal(x, batch.permute(0, 1, 4, 2, 3).float() / 255)
    assert x.is_contiguous() != channels_last


def test_sources_of_different_frame_sizes_do_not_mix(dataset):
    small = ArrayVideoSource(np.zeros((2, FRAMES, 16, 16, 3), dtype=np.uint8), label="small array")
    with pytest.raises(FramecastError, match=r"small array: frames are \(16, 16, 3\)"):
        VideoWindowDataset([H5VideoSource(dataset / "packed" / "train.h5"), small], T_IN, T_OUT)


def test_unreadable_pack_is_named(tmp_path):
    bad = tmp_path / "train.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FramecastError, match=rf"{bad}: not a framecast pack"):
        H5VideoSource(bad)


def test_labeled_windows_yield_their_masks_from_pack_and_folder(dataset):
    cfg = config(dataset)
    for source in (H5VideoSource(dataset / "packed" / "val.h5"), PngVideoSource(dataset / "val")):
        assert source.has_masks
        windows = VideoWindowDataset(source, T_IN, T_OUT, masks=True)
        frames, masks = windows[1]
        expected = np.load(dataset / "val" / source.names[1] / "mask.npy")[:T_IN + T_OUT]
        assert frames.shape == (T_IN + T_OUT, HEIGHT, WIDTH, 3) and masks.dtype == torch.uint8
        np.testing.assert_array_equal(masks.numpy(), expected)
    batch_frames, batch_masks = next(iter(make_loader(build_split_dataset(cfg.data, "val", masks=True), 2,
                                                      shuffle=False, num_workers=0, prefetch_factor=2,
                                                      pin_memory=False, drop_last=False)))
    assert batch_frames.shape[:2] == batch_masks.shape[:2] == (2, T_IN + T_OUT)


def test_masks_asked_of_an_unlabeled_split_or_too_few_classes_are_one_line(dataset):
    with pytest.raises(FramecastError, match=r"unlabeled.h5: holds no masks"):
        VideoWindowDataset(H5VideoSource(dataset / "packed" / "unlabeled.h5"), T_IN, T_OUT, masks=True)
    with pytest.raises(FramecastError, match=r"train.h5: masks hold class id \d+, but data.num_classes is 2"):
        open_split(config(dataset, num_classes=2).data, "train")
