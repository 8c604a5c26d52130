"""The segmenter trains as a train-stage job: cross-entropy, best by val Jaccard, exact resume, and a
checkpoint that rebuilds it alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.errors import FramecastError
from models.loading import load_model, load_segmenter
from stages.train import run
from train_helpers import data_root, losses, run_killed_after, state_digest, tiny_config  # noqa: F401 (fixture)
from training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENT = ("train.task=segment", "segment.base_channels=8", "segment.levels=2", "segment.norm_groups=4",
           "segment.frames_per_video=2", "data.num_classes=25", "train.epochs=3")


@pytest.fixture(scope="module")
def segmenter_run(data_root, tmp_path_factory):
    cfg = tiny_config(data_root, tmp_path_factory.mktemp("seg"), "segmenter", *SEGMENT)
    return cfg, run(cfg)


def test_segmenter_learns_and_keeps_the_best_val_jaccard(segmenter_run):
    cfg, summary = segmenter_run
    assert summary["family"] == "segmenter" and summary["epochs_run"] == 3
    assert cfg.run_dir == cfg.base_run_dir / "segmenter"  # beside the forecaster of the same config
    vals = [r for r in read_metrics(cfg.run_dir / "metrics.jsonl") if r["kind"] == "val"]
    jaccards = [r["val_jaccard"] for r in vals]
    assert all(r["val_loss"] == pytest.approx(1 - r["val_jaccard"]) for r in vals)
    trains = [loss for kind, _, _, loss in losses(cfg.run_dir) if kind == "train"]
    assert trains[-1] < trains[0]  # cross-entropy falls
    best = load_checkpoint(cfg.run_dir / "best.pt")["progress"]
    assert best["best_val_loss"] == pytest.approx(1 - max(jaccards))


def test_segmenter_checkpoint_rebuilds_itself_alone(segmenter_run):
    cfg, _ = segmenter_run
    model, saved, _ = load_segmenter(cfg.run_dir / "best.pt")
    assert saved.data.num_classes == 25 and model.num_classes == 25
    logits = model(torch.rand(2, 3, 32, 48))
    assert logits.shape == (2, 25, 32, 48)
    with pytest.raises(FramecastError, match="holds a segmenter .* not a forecaster"):
        load_model(cfg.run_dir / "best.pt")


def test_segmenter_killed_mid_run_resumes_to_the_same_losses(segmenter_run, data_root, tmp_path):
    reference, _ = segmenter_run
    cfg = tiny_config(data_root, tmp_path, "seg-killed", *SEGMENT)
    run_killed_after(cfg, epoch=1)
    assert run(cfg)["resumed_from"]["epoch"] == 1
    assert losses(cfg.run_dir) == losses(reference.run_dir)
    ours, theirs = load_checkpoint(cfg.run_dir / "last.pt"), load_checkpoint(reference.run_dir / "last.pt")
    assert state_digest(ours["model"]) == state_digest(theirs["model"])


def test_segmenter_refuses_unlabeled_splits_and_a_changed_architecture(segmenter_run, data_root, tmp_path):
    root = Path(shutil.copytree(data_root, tmp_path / "data"))
    shutil.copytree(root / "train", root / "unlabeled")
    for mask in (root / "unlabeled").glob("*/mask.npy"):
        mask.unlink()
    cfg = tiny_config(root, tmp_path, "seg-bad", *SEGMENT, "segment.train_splits=[train, unlabeled]")
    with pytest.raises(FramecastError, match="unlabeled: holds no masks"):
        run(cfg)
    reference, _ = segmenter_run
    changed = tiny_config(data_root, reference.base_run_dir.parent, "segmenter", *SEGMENT, "segment.base_channels=4")
    with pytest.raises(FramecastError, match="segment.base_channels=8 but the config asks for segment.base_channels=4"):
        run(changed)


def test_load_model_py_describes_a_segmenter(segmenter_run, capsys):
    import load_model

    cfg, _ = segmenter_run
    assert load_model.main([str(cfg.run_dir / "best.pt")]) == 0
    shown = capsys.readouterr().out
    best = load_checkpoint(cfg.run_dir / "best.pt")["progress"]["best_val_loss"]
    assert "UNet segmenter" in shown and "classes" in shown and f"{1 - best:.4f}" in shown
