"""Every model family behind the one seam: it trains on tiny data, resumes exactly (scheduled
sampling included), and its checkpoint works in predict, evaluate, load_model.py and a pipeline;
wrong families, misplaced settings, old checkpoints and grey data are handled clearly."""
from __future__ import annotations

import dataclasses
import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import MODEL_FIELDS, ModelConfig, config_to_dict, load_config, model_config_class
from core.errors import FramecastError
from core.families import families, family_names
from models.loading import load_model
from stages import evaluate, predict
from stages.train import run
from tiny_models import TINY, model_overrides
from train_helpers import losses, run_killed_after, state_digest, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY_NAMES = family_names()
FAMILIES = {family.name: family.model_class() for family in families()}


def family_config(data_root: Path, out_dir: Path, family: str, name: str, *extra: str):
    return tiny_config(data_root, out_dir, name, "train.epochs=3", "data.train_splits=[train,val]", *extra,
                       family=family)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """Each family trained for three epochs once: {family: (config, summary)}."""
    out = tmp_path_factory.mktemp("runs")
    return {family: (cfg := family_config(data_root, out, family, family), run(cfg)) for family in FAMILIES}


def test_every_declared_family_is_built_configured_and_shipped_as_declared():
    """The family table is the one declaration: the config's model.<name> sections, the model class
    (which names its family), the tiny model and the ready configs all come from it."""
    sections = {f.name for f in dataclasses.fields(model_config_class())} - set(MODEL_FIELDS)
    assert sections == set(FAMILY_NAMES) == set(FAMILIES) == set(TINY)
    for family in families():
        assert FAMILIES[family.name].family == family.name and family.tiny, family.name
        for config in family.configs:
            assert load_config(REPO / "configs" / config).model.family == family.name, config


@pytest.mark.parametrize("family", sorted(FAMILY_NAMES))
def test_each_family_trains_and_lowers_the_validation_loss(trained, family):
    cfg, summary = trained[family]
    vals = [loss for kind, _, _, loss in losses(cfg.run_dir) if kind == "val"]
    assert summary["family"] == family and len(vals) == 3
    assert min(vals[1:]) < vals[0], f"{family}: validation loss did not fall: {vals}"
    state = load_checkpoint(cfg.run_dir / "best.pt")
    assert state["config"]["model"]["family"] == family  # the checkpoint records the family


@pytest.mark.parametrize("family", sorted(FAMILY_NAMES))
def test_each_family_resumes_to_the_same_losses_and_weights(trained, data_root, tmp_path, family):
    """Killed after epoch 1 (scheduled sampling draws and all), resumed: the uninterrupted run."""
    reference, _ = trained[family]
    cfg = family_config(data_root, tmp_path, family, family)
    run_killed_after(cfg, epoch=1)
    assert run(cfg)["resumed_from"]["epoch"] == 1
    assert losses(cfg.run_dir) == losses(reference.run_dir)
    ours, theirs = load_checkpoint(cfg.run_dir / "last.pt"), load_checkpoint(reference.run_dir / "last.pt")
    assert state_digest(ours["model"]) == state_digest(theirs["model"])


@pytest.mark.parametrize("family", sorted(FAMILY_NAMES))
def test_each_familys_checkpoint_predicts_evaluates_and_describes_itself(trained, tmp_path, family):
    cfg, _ = trained[family]
    cfg.predict.split, cfg.predict.out = "val", str(tmp_path / "val.npy")
    out = predict.run(cfg)
    array = np.load(out)
    assert array.shape == (5, cfg.data.t_out, 32, 48, 3) and array.dtype == np.uint8
    report = evaluate.run(cfg, "val", out_dir=tmp_path / "eval", samples=1)
    assert report["family"] == family
    assert {"model", "copy_last_frame", "mean_of_inputs"} <= set(report)
    done = subprocess.run([sys.executable, str(REPO / "load_model.py"), str(cfg.run_dir / "best.pt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model, _, _ = load_model(cfg.run_dir / "best.pt")
    assert f"family:" in done.stdout and FAMILIES[family].title in done.stdout
    for label, value in model.summary():
        assert f"{label}:" in done.stdout and value in done.stdout


# The families with a ``residual`` setting.
RESIDUAL_FAMILIES = sorted(f for f in FAMILY_NAMES
                           if "residual" in {field.name for field in dataclasses.fields(getattr(ModelConfig(), f))})


@pytest.mark.parametrize("family", RESIDUAL_FAMILIES)
def test_a_residual_model_starts_exactly_at_copy_last(family):
    """``residual``: the untrained model predicts the last input frame, not grey frames."""
    cfg = load_config(None, [*model_overrides(family), f"model.{family}.residual=true"])
    model = FAMILIES[family](cfg.model, 3, 4)
    x = torch.rand(2, 3, 3, 32, 48)  # (B, t_in, C, H, W)
    with torch.no_grad():
        assert torch.equal(model(x), x[:, -1:].expand(-1, 4, -1, -1, -1))


@pytest.mark.parametrize("override, message", [
    ("model.family=transformer", r"model\.family: 'transformer' is not one of 'encoder_forecaster'"),
    ("model.simvp.cell=gru", r"unknown setting model\.simvp\.cell .*cell is a setting of the encoder_forecaster, "
                             r"convlstm families"),
])
def test_a_wrong_family_or_a_foreign_section_key_is_one_clear_line(override, message):
    with pytest.raises(FramecastError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_a_checkpoint_of_the_first_format_still_loads(trained, tmp_path):
    """framecast before model families wrote a flat encoder-forecaster section, ``model_config``,
    ``t_in``/``t_out`` and the counters at the top level: such files load as the same model."""
    cfg, _ = trained["encoder_forecaster"]
    state = load_checkpoint(cfg.run_dir / "best.pt")
    config = config_to_dict(cfg)
    flat = {"in_channels": 3, **config["model"]["encoder_forecaster"]}
    del flat["residual"], flat["bounded"]  # settings that did not exist then
    old_config = {**config, "model": flat}
    old_config.pop("evaluate")
    old = {"model": state["model"], "config": old_config, "model_config": flat, "t_in": cfg.data.t_in,
           "t_out": cfg.data.t_out, **state["progress"], "format_version": 1}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    model, loaded_cfg, loaded = load_model(path)
    assert loaded_cfg.model.family == "encoder_forecaster" and loaded["progress"]["epoch"] == state["progress"]["epoch"]
    x = torch.rand(1, cfg.data.t_in, 3, 32, 48)
    new_model, _, _ = load_model(cfg.run_dir / "best.pt")
    with torch.no_grad():
        assert torch.equal(model(x), new_model(x))


# ----------------------------------------------------------------------------- grey data


def write_idx_pair(folder: Path, count: int = 16) -> Path:
    """A small MNIST-format images/labels pair: blobs of ink on black 28x28 canvases."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for i in range(count):
        cy, cx, r = rng.uniform(9, 19), rng.uniform(9, 19), rng.uniform(4, 8)
        images[i] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 255, 0)
    folder.mkdir(parents=True, exist_ok=True)
    images_path = folder / "blobs-images-idx3-ubyte.gz"
    images_path.write_bytes(gzip.compress(struct.pack(">4B3I", 0, 0, 8, 3, count, 28, 28) + images.tobytes()))
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    (folder / "blobs-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">4BI", 0, 0, 8, 1, count)
                                                                      + labels.tobytes()))
    return images_path


def test_grey_data_trains_and_is_scored_as_one_channel(tmp_path):
    from data.moving_mnist import make_moving_mnist_dataset

    root = make_moving_mnist_dataset(tmp_path / "mm", write_idx_pair(tmp_path / "idx"),
                                     {"train": 6, "val": 3}, size=32, frames=8, hidden_frames=4, workers=1)
    cfg = tiny_config(root, tmp_path / "runs", "grey", "model.in_channels=1", "train.epochs=1", "train.loss=bce",
                      family="simvp")
    run(cfg)
    report = evaluate.run(cfg, "val", out_dir=tmp_path / "eval", samples=1)
    assert report["channels"] == 1
    per_frame, per_pixel = (report["model"]["mean"][k] for k in ("mse_per_frame_sum", "mse_per_pixel"))
    assert per_frame == pytest.approx(per_pixel * 32 * 32, rel=1e-9)  # one channel, not three
    assert 0 <= report["model"]["mean"]["f1"] <= 1 and "f1" in report["copy_last_frame"]["mean"]
    assert report["f1_threshold"] == cfg.evaluate.f1_threshold
    # predictions stay RGB on disk: grey replicated
    cfg.predict.split, cfg.predict.out = "val", str(tmp_path / "grey.npy")
    array = np.load(predict.run(cfg))
    assert array.shape[-1] == 3 and np.array_equal(array[..., 0], array[..., 2])
    index = json.loads((tmp_path / "grey.json").read_text())
    assert index["frames"] == [8, 9, 10, 11]


def test_a_one_channel_model_refuses_colour_frames(data_root, tmp_path):
    cfg = family_config(data_root, tmp_path, "simvp", "colour", "model.in_channels=1", "train.epochs=1")
    with pytest.raises(FramecastError, match=r"model\.in_channels=1 reads grey frames, but video_0 is in colour"):
        run(cfg)


@pytest.mark.parametrize("family", sorted(set(FAMILY_NAMES) - {"encoder_forecaster"}))
def test_each_family_runs_the_whole_pipeline_as_jobs(tmp_path, family):
    """train -> predict + evaluate -> convert through submitit's local executor, for every family
    (the encoder-forecaster's pipeline runs in test_jobs_local and test_slurm)."""
    from jobs.submit import pipeline_job_count, submit_pipeline
    from jobs.wait import wait_jobs
    from tests import slurm_helpers

    root = slurm_helpers.make_tiny_data(tmp_path / "data")
    values = slurm_helpers.tiny_job_values(root, tmp_path / "runs", family, executor="local",
                                       train={"epochs": 1})
    cfg = load_config(None, [f"{section}.{key}={json.dumps(value)}" for section, entries in values.items()
                             if section != "model" for key, value in entries.items()] + model_overrides(family))
    jobs = submit_pipeline(cfg, "local", timeout_s=300)
    ends = wait_jobs(jobs, timeout_s=300)
    assert len(jobs) == pipeline_job_count(cfg) and all(end.ok for end in ends), [e.describe() for e in ends]
    pngs = sorted((cfg.run_dir / "png" / "hidden").rglob("image_*.png"))
    assert len(pngs) == 3 * cfg.data.t_out  # 3 hidden videos, t_out frames each
    assert json.loads((cfg.run_dir / "eval" / "val" / "report.json").read_text())["family"] == family
