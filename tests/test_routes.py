"""The three routes to a future mask (and copy-last) run end to end on tiny data, from one config,
and hand off masks with the prediction index contract."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import FramecastError
from data.datasets import to_model_input
from data.predictions import load_masks
from data.sources import open_split
from data.synthetic import make_shapes_dataset
from models.loading import load_model, load_segmenter
from stages import segment as segment_stage
from stages.train import run as train
from train_helpers import T_IN, T_OUT, tiny_config
from training.metrics import read_metrics
from training.segmentation import segment

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENTER = ("segment.base_channels=8", "segment.levels=2", "segment.norm_groups=4", "segment.frames_per_video=2",
             "data.num_classes=25")
SHORT = ("train.epochs=1",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One config: a residual UNet forecaster, its segmenter, a masks forecaster and a joint fine-tune."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("routes") / "data",
                               {"train": 6, "val": 3, "hidden": 3}, height=32, width=48, frames=T_IN + T_OUT,
                               hidden_frames=T_IN + 1, seed=3, workers=1)
    out = tmp_path_factory.mktemp("runs")

    def cfg(*extra: str):
        return tiny_config(root, out, "r", *SEGMENTER, *SHORT, "model.unet.residual=true", *extra, family="unet")

    for task in ("forecast", "segment", "masks", "joint"):
        train(cfg(f"train.task={task}"))
    return root, cfg


def test_each_task_trains_into_its_own_folder(trained):
    _, cfg = trained
    base = cfg().base_run_dir
    for folder in ("", "segmenter", "masks", "joint"):
        assert (base / folder / "best.pt").is_file()
    masks_model, _, _ = load_model(base / "masks" / "best.pt")
    assert masks_model.in_channels == 25  # one-hot class maps of data.num_classes
    joint = [r for r in read_metrics(base / "joint" / "metrics.jsonl") if r["kind"] == "train"]
    assert all(r["train_extra_loss"] > 0 for r in joint)  # the segmenter's cross-entropy is in the loss


@pytest.mark.parametrize("route", ["frames", "masks", "joint", "copy_last"])
def test_each_route_hands_off_the_last_future_frames_mask(trained, route):
    root, cfg = trained
    config = cfg(f"segment.route={route}", "predict.split=hidden")
    out = segment_stage.run(config)
    masks, index = load_masks(out)
    assert masks.shape == (3, 32, 48) and masks.dtype == np.uint8 and masks.max() < 25
    assert index["videos"] == ["video_9", "video_10", "video_11"] and index["route"] == route
    assert index["frames"] == [T_IN + 1 + T_OUT - 1] and index["inputs"] == list(range(1, T_IN + 1))
    if route == "copy_last":  # the segmented last input frame, computed here by hand
        segmenter, _, _ = load_segmenter(config.base_run_dir / "segmenter" / "best.pt")
        source = open_split(config.data, "hidden")
        last = torch.from_numpy(np.stack([source.read(i, T_IN, T_IN + 1) for i in range(3)]))
        expected = segment(segmenter, to_model_input(last, "cpu"))[:, 0]
        np.testing.assert_array_equal(masks, expected.numpy())


def test_all_frames_and_lead_time_select_the_same_masks(trained):
    _, cfg = trained
    every, index = load_masks(segment_stage.run(cfg("segment.all_frames=true", "segment.out=" +
                                                    str(cfg().base_run_dir / "all.npy"))))
    assert every.shape == (3, T_OUT, 32, 48) and index["frames"] == list(range(T_IN + 1, T_IN + 1 + T_OUT))
    second, index = load_masks(segment_stage.run(cfg("segment.lead_time=2", "segment.out=" +
                                                     str(cfg().base_run_dir / "lead2.npy"))))
    np.testing.assert_array_equal(second, every[:, 1])
    assert index["frames"] == [T_IN + 2]
    with pytest.raises(FramecastError, match="segment.lead_time=9: the forecast holds 4 future frames"):
        segment_stage.run(cfg("segment.lead_time=9"))


def test_a_missing_route_model_is_one_line(trained, tmp_path):
    _, cfg = trained
    with pytest.raises(FramecastError, match=r"nowhere/best.pt: masks route's forecaster checkpoint not found"):
        segment_stage.run(cfg("segment.route=masks", f"segment.forecaster={tmp_path}/nowhere/best.pt"))


def test_evaluate_scores_every_route_against_copy_last_and_the_oracle(trained):
    from stages import evaluate

    _, cfg = trained
    config = cfg("evaluate.routes=[frames, masks, joint]", "evaluate.samples=2")
    report = evaluate.run(config)["masks"]
    assert report["routes"] == ["frames", "masks", "joint", "copy_last", "oracle"]
    assert report["target_frame"] == T_IN + T_OUT - 1 and report["frames"] == list(range(T_IN, T_IN + T_OUT))
    for name in report["routes"]:
        scores = report["scores"][name]
        assert len(scores["per_lead_time"]) == T_OUT and scores["target"] == scores["per_lead_time"][-1]
        assert 0 <= scores["target"] <= 1 and len(scores["per_class_iou_target"]) == 25
    copy = report["scores"]["copy_last"]["per_lead_time"]
    assert set(report["vs_copy_last"]) == set(report["routes"])
    for path in report["files"].values():
        assert Path(path).is_file()
    assert (Path(report["files"]["report"]).parent / "report.json").is_file()  # beside the frames' report
    assert len(copy) == T_OUT


def test_mask_hand_off_round_trips_through_palette_pngs(trained, tmp_path):
    from PIL import Image

    import np_to_png

    _, cfg = trained
    out = segment_stage.run(cfg("segment.all_frames=true", f"segment.out={tmp_path / 'all.npy'}"))
    masks, index = load_masks(out)
    assert np_to_png.main([str(out), "--out", str(tmp_path / "png")]) == 0
    for row, video in enumerate(index["videos"]):
        for column, number in enumerate(index["frames"]):
            image = Image.open(tmp_path / "png" / video / f"mask_{number}.png")
            assert image.mode == "P"  # coloured by its palette, the pixel values are the class ids
            np.testing.assert_array_equal(np.array(image), masks[row, column])


def test_main_py_segment_writes_the_hand_off(trained, tmp_path):
    import subprocess
    import sys

    from core.config import save_config

    _, cfg = trained
    config_file = tmp_path / "routes.yaml"
    save_config(cfg(), config_file)
    out = tmp_path / "copy.npy"
    done = subprocess.run([sys.executable, "main.py", "segment", "--config", str(config_file), "--route", "copy_last",
                           "--split", "hidden", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    masks, index = load_masks(out)
    assert masks.shape == (3, 32, 48) and index["route"] == "copy_last"


def test_foreground_decoding_marks_an_object_whose_mass_is_spread():
    from training.routes import decode_maps

    # One pixel: background 0.4, two object classes 0.35 and 0.25. argmax says background; together
    # the objects outweigh it, so foreground decoding says the likelier object.
    maps = torch.tensor([0.4, 0.35, 0.25]).view(1, 1, 3, 1, 1)
    assert decode_maps(maps, "argmax").item() == 0 and decode_maps(maps, "foreground").item() == 1
    clear = torch.tensor([0.7, 0.2, 0.1]).view(1, 1, 3, 1, 1)
    assert decode_maps(clear, "foreground").item() == 0
