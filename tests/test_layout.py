"""The reference layout: numeric ordering, and a clear error naming the file for each kind of bad frame."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.atomic import atomic_dir
from core.errors import FramecastError
from data import png
from data.layout import (
    frame_number, list_frames, list_videos, read_frame, read_video, video_number,
)

H, W = 12, 16


@pytest.fixture(params=["libspng", "pillow"])
def decoder(request, monkeypatch):
    """Run a test with each PNG decoder framecast can use (libspng where its wheel exists, else Pillow)."""
    if request.param == "libspng" and png.pyspng is None:
        pytest.skip("pyspng is not installed on this platform")
    if request.param == "pillow":
        monkeypatch.setattr(png, "pyspng", None)
    return request.param


def frame_pixels(k: int) -> np.ndarray:
    """A frame whose every pixel encodes its number k, so a frame read in the wrong order shows."""
    pixels = np.zeros((H, W, 3), dtype=np.uint8)  # (H, W, 3)
    pixels[..., 0] = k
    pixels[..., 1] = np.arange(W, dtype=np.uint8)[None, :]
    pixels[..., 2] = 255 - k
    return pixels


def write_video(folder, frames: int):
    folder.mkdir(parents=True)
    for k in range(frames):
        Image.fromarray(frame_pixels(k)).save(folder / f"image_{k}.png")
    return folder


def test_numbers_parse_from_names_and_paths(tmp_path):
    assert video_number("video_15000") == 15000
    assert video_number(tmp_path / "video_7") == 7
    assert frame_number("image_21.png") == 21
    with pytest.raises(FramecastError, match="frame_9.png"):
        frame_number("frame_9.png")


def test_videos_listed_in_numeric_order(tmp_path):
    for n in (10, 2, 1, 100):
        (tmp_path / f"video_{n}").mkdir()
    (tmp_path / "video_x").mkdir()  # not a video folder: ignored
    (tmp_path / "notes.txt").write_text("ignored")
    names = [p.name for p in list_videos(tmp_path)]
    assert names == ["video_1", "video_2", "video_10", "video_100"]


def test_frames_listed_and_read_in_numeric_order(tmp_path):
    video = write_video(tmp_path / "video_0", 12)
    assert [p.name for p in list_frames(video)][1:4] == ["image_1.png", "image_2.png", "image_3.png"]
    assert [frame_number(p) for p in list_frames(video)] == list(range(12))
    frames = read_video(video)  # (T, H, W, 3)
    assert frames.shape == (12, H, W, 3) and frames.dtype == np.uint8
    for k in range(12):  # image_2 must come before image_10
        np.testing.assert_array_equal(frames[k], frame_pixels(k))


def test_missing_frame_names_the_file(tmp_path):
    video = write_video(tmp_path / "video_3", 6)
    (video / "image_2.png").unlink()
    with pytest.raises(FramecastError, match=r"video_3/image_2\.png: frame missing"):
        read_video(video)


def test_missing_last_frame_names_the_file_when_the_count_is_known(tmp_path):
    video = write_video(tmp_path / "video_0", 5)
    with pytest.raises(FramecastError, match=r"video_0/image_5\.png: frame missing"):
        list_frames(video, expected=6)
    with pytest.raises(FramecastError, match=r"video_0: 5 frames, expected 4"):
        list_frames(video, expected=4)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("garbage", "not a readable PNG"),
        ("truncated", "does not decode"),
        ("wrong_size", "frame is 8x16"),
        ("grey", "colour mode L"),
        ("jpeg", "not a PNG file"),
    ],
)
def test_bad_frame_names_the_file(tmp_path, decoder, damage, message):
    video = write_video(tmp_path / "video_0", 4)
    bad = video / "image_3.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not an image at all")
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-40])  # the image data cut off mid-stream
    elif damage == "wrong_size":
        Image.fromarray(frame_pixels(3)[:8]).save(bad)
    elif damage == "grey":
        Image.fromarray(frame_pixels(3)[..., 0]).save(bad)
    else:
        Image.fromarray(frame_pixels(3)).save(bad, format="JPEG")
    with pytest.raises(FramecastError) as caught:
        read_video(video)
    text = str(caught.value)
    assert text.startswith(str(bad)) and message in text and "\n" not in text


def test_read_frame_checks_the_expected_size(tmp_path):
    video = write_video(tmp_path / "video_0", 1)
    with pytest.raises(FramecastError, match=r"image_0\.png: frame is 12x16 \(HxW\), expected 13x16"):
        read_frame(video / "image_0.png", expected_hw=(13, 16))


def test_missing_split_and_video_folders_are_named(tmp_path):
    with pytest.raises(FramecastError, match=r"nowhere: split folder not found"):
        list_videos(tmp_path / "nowhere")
    (tmp_path / "video_0").mkdir()
    with pytest.raises(FramecastError, match=r"video_0: no image_<k>\.png frames"):
        list_frames(tmp_path / "video_0")


def test_atomic_dir_leaves_nothing_when_interrupted_and_swaps_when_done(tmp_path):
    target = tmp_path / "train"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "partial").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "first").write_text("1")
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "second").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    assert sorted(p.name for p in target.iterdir()) == ["second"]


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_both_decoders_return_the_exact_pixels(tmp_path, decoder, level):
    """Noise exercises every PNG row filter the encoder picks; the pixels must come back bit-exact."""
    pixels = np.random.default_rng(level).integers(0, 256, (37, 53, 3), dtype=np.uint8)  # (H, W, 3)
    pixels[:, :20] //= 16  # flat areas too, where the encoder prefers other filters
    path = tmp_path / "image_0.png"
    Image.fromarray(pixels).save(path, compress_level=level)
    np.testing.assert_array_equal(read_frame(path), pixels)


def test_sixteen_bit_frame_is_named_as_such(tmp_path, decoder):
    path = tmp_path / "image_0.png"
    path.write_bytes(png.SIGNATURE + b"\x00\x00\x00\x0dIHDR" + (16).to_bytes(4, "big") + (12).to_bytes(4, "big")
                     + bytes([16, 2, 0, 0, 0]) + b"\x00" * 4)  # IHDR of a 16-bit RGB image
    with pytest.raises(FramecastError, match=r"image_0\.png: colour mode RGB;16, expected RGB"):
        read_frame(path)
