"""run.tensorboard: event files beside metrics.jsonl, read back with TensorBoard's own reader.

One thread, no loader workers (as tests/test_train.py): every run of a config is bit-for-bit the same,
so a resumed run's events can be compared with an uninterrupted run's value for value.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from train_helpers import Killed, losses, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

from core.errors import FramecastError
from stages import evaluate
from stages.train import run
from training.metrics import SAMPLES_TAG, TENSORBOARD_DIR, read_metrics

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

EPOCHS = 3  # 4 steps each (tests/train_helpers.py); log every 2 steps
TB = ("run.tensorboard=true", f"train.epochs={EPOCHS}")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The config of an uninterrupted run with TensorBoard on."""
    cfg = tiny_config(data_root, tmp_path_factory.mktemp("runs"), "tb-reference", *TB)
    run(cfg)
    return cfg


def read_events(run_dir: Path, purge: bool = True):
    """TensorBoard's reader over the run's event folder (every file in it), everything kept."""
    events = event_accumulator.EventAccumulator(
        str(run_dir / TENSORBOARD_DIR), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0},
        purge_orphaned_data=purge)
    events.Reload()
    return events


def scalars(events) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def images(events) -> dict[str, list[tuple[int, bytes]]]:
    return {tag: [(e.step, e.encoded_image_string) for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_event_files_hold_the_scalars_and_the_sample_strip(reference):
    records = read_metrics(reference.run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    found = scalars(read_events(reference.run_dir))
    t_out = reference.data.t_out
    lead = [f"lead_time_{k:02d}" for k in range(1, t_out + 1)]
    wanted = {"train/loss", "train/lr", "train/videos_per_s", "val/loss", "val/best_loss", "val/mse_per_frame_sum",
              "val/ssim", *(f"val_mse_per_frame_sum_by_lead_time/{k}" for k in lead),
              *(f"val_ssim_by_lead_time/{k}" for k in lead)}
    assert set(found) == wanted
    # metrics.jsonl is the record; the events hold the same numbers (as float32) at the same steps
    for tag, field, rows in (("train/loss", "train_loss", train), ("train/lr", "lr", train),
                             ("val/loss", "val_loss", val), ("val/ssim", "val_ssim", val)):
        assert [s for s, _ in found[tag]] == [r["step"] for r in rows], tag
        for (_, value), row in zip(found[tag], rows):
            assert math.isclose(value, row[field], rel_tol=1e-6), (tag, value, row[field])
    assert [s for s, _ in found["val_ssim_by_lead_time/lead_time_01"]] == [4, 8, 12]
    last = val[-1]
    assert len(last["val_mse_per_lead_time"]) == len(last["val_ssim_per_lead_time"]) == t_out
    for k, name in enumerate(lead):
        assert math.isclose(found[f"val_mse_per_frame_sum_by_lead_time/{name}"][-1][1],
                            last["val_mse_per_lead_time"][k], rel_tol=1e-6)
    # the sample strip at each validation, a PNG of the evaluate stage's layout
    strips = images(read_events(reference.run_dir))
    assert list(strips) == [SAMPLES_TAG] and [s for s, _ in strips[SAMPLES_TAG]] == [4, 8, 12]
    assert strips[SAMPLES_TAG][-1][1].startswith(b"\x89PNG")


def test_per_lead_time_scores_are_the_evaluate_stage_s(reference):
    """The last validation's per-lead-time MSE and SSIM are what `evaluate` reports for that checkpoint."""
    last = [r for r in read_metrics(reference.run_dir / "metrics.jsonl") if r["kind"] == "val"][-1]
    cfg = dataclasses.replace(reference, predict=dataclasses.replace(
        reference.predict, checkpoint=str(reference.run_dir / "last.pt")))
    report = evaluate.run(cfg, out_dir=reference.run_dir / "eval-last", samples=0)
    per_lead = report["model"]["per_lead_time"]
    for ours, theirs in zip(last["val_mse_per_lead_time"], per_lead["mse_per_frame_sum"]):
        assert math.isclose(ours, theirs, rel_tol=1e-5)
    for ours, theirs in zip(last["val_ssim_per_lead_time"], per_lead["ssim"]):
        assert math.isclose(ours, theirs, rel_tol=1e-5)


def test_tensorboard_off_writes_no_events_and_trains_the_same(reference, data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "tb-off", f"train.epochs={EPOCHS}")
    assert cfg.run.tensorboard is False  # the default
    run(cfg)
    assert not (cfg.run_dir / TENSORBOARD_DIR).exists()
    assert losses(cfg.run_dir) == losses(reference.run_dir)  # the same losses, bit for bit
    val = [r for r in read_metrics(cfg.run_dir / "metrics.jsonl") if r["kind"] == "val"]
    assert "val_ssim" not in val[-1]  # nothing computed beyond the loss


def test_resumed_run_s_events_equal_an_uninterrupted_run_s(reference, data_root, tmp_path):
    """Killed after epoch 2 had logged but before its last.pt counted (the epoch-1 last.pt is what is
    left): the resumed run redoes epoch 2, and the reader purges the first attempt's events after step 4."""
    cfg = tiny_config(data_root, tmp_path, "tb-killed", *TB)
    kept = tmp_path / "epoch1-last.pt"

    def hook(info):
        if info["epoch"] == 1:
            shutil.copy2(cfg.run_dir / "last.pt", kept)
        elif info["epoch"] == 2:
            shutil.copy2(kept, cfg.run_dir / "last.pt")  # as if killed just before this save
            raise Killed

    with pytest.raises(Killed):
        run(cfg, on_checkpoint=hook)
    unpurged = scalars(read_events(cfg.run_dir, purge=False))
    assert max(s for s, _ in unpurged["train/loss"]) == 8  # events past the step resumed from (4)

    summary = run(cfg)
    assert summary["resumed_from"]["step"] == 4
    assert len(list((cfg.run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    ours, theirs = read_events(cfg.run_dir), read_events(reference.run_dir)
    assert scalars(ours).keys() == scalars(theirs).keys()
    for tag, values in scalars(theirs).items():
        if tag != "train/videos_per_s":  # a measured speed, never the same twice
            assert scalars(ours)[tag] == values, tag
    assert [s for s, _ in scalars(ours)["train/videos_per_s"]] == [s for s, _ in scalars(theirs)["train/videos_per_s"]]
    assert images(ours) == images(theirs)  # the same predictions drawn: the same PNG bytes


def test_missing_tensorboard_package_is_one_clear_error(data_root, tmp_path, monkeypatch):
    for module in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    cfg = tiny_config(data_root, tmp_path, "tb-missing", *TB)
    with pytest.raises(FramecastError, match=r"run\.tensorboard is true.*pip install tensorboard"):
        run(cfg)
    assert not (cfg.run_dir / "last.pt").exists()


def test_two_process_run_writes_one_event_file_with_scores_over_every_video(data_root, tmp_path):
    """A 2-process gloo run (torchrun): rank 0 alone writes events; the per-lead-time scores are summed over
    both ranks' videos (3 and 2 of the 5), so they are the evaluate stage's over all five."""
    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import torch
        sys.path[:0] = [{str(repo)!r}, {str(repo / 'tests')!r}]
        torch.set_num_threads(1)
        from stages.train import run
        from train_helpers import tiny_config

        run(tiny_config(Path({str(data_root)!r}), Path({str(tmp_path)!r}), "ddp-tb", "run.tensorboard=true",
                        "train.epochs=1"))
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = tiny_config(data_root, tmp_path, "ddp-tb", "run.tensorboard=true", "train.epochs=1")
    assert len(list((cfg.run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
    [val] = [r for r in read_metrics(cfg.run_dir / "metrics.jsonl") if r["kind"] == "val"]
    found = scalars(read_events(cfg.run_dir))
    assert found["val_ssim_by_lead_time/lead_time_01"][0][0] == val["step"]
    cfg = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, checkpoint=str(cfg.run_dir / "last.pt")))
    report = evaluate.run(cfg, out_dir=tmp_path / "eval", samples=0)
    assert report["videos"] == 5
    for ours, theirs in zip(val["val_mse_per_lead_time"], report["model"]["per_lead_time"]["mse_per_frame_sum"]):
        assert math.isclose(ours, theirs, rel_tol=1e-5)
    for ours, theirs in zip(val["val_ssim_per_lead_time"], report["model"]["per_lead_time"]["ssim"]):
        assert math.isclose(ours, theirs, rel_tol=1e-5)
