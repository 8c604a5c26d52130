"""The trackers research groups use beside metrics.jsonl: a W&B run in offline mode (synced later from
a login node) and TensorBoard hparams for the members of a sweep."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from train_helpers import tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

from core.errors import FramecastError
from stages.train import run
from training.metrics import HPARAM_METRICS, TENSORBOARD_DIR, WANDB_ID_NAME, WANDB_RUN_DIR, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B offline, its own settings and caches in the test's folder (never the user's home)."""
    pytest.importorskip("wandb", reason="the wandb package (requirements-test.txt) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def wandb_records(run_file: Path) -> list:
    """Every record of an offline run file. wandb 0.31 has no Python reader of its own any more; the
    file is a LevelDB-style log (W&B's header, 32 KiB blocks of chunks with a 7-byte header: CRC,
    length, type full/first/middle/last) of ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the zero padding at a block's end
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(records: list) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_writes_the_run_s_records_config_and_summary(data_root, tmp_path, wandb_offline):
    cfg = tiny_config(data_root, tmp_path / "runs", "wb", "run.wandb=true", "train.epochs=2")
    run(cfg)
    import wandb

    wandb.teardown()  # W&B's service process writes the run file; it has all of it when the service ends
    run_id = (cfg.run_dir / WANDB_ID_NAME).read_text().strip()
    [offline] = (cfg.run_dir / WANDB_RUN_DIR).glob(f"offline-run-*-{run_id}")
    run_file = offline / f"run-{run_id}.wandb"
    assert run_file.stat().st_size > 0
    records = wandb_records(run_file)
    rows = history(records)
    jsonl = read_metrics(cfg.run_dir / "metrics.jsonl")
    # Every train and val record of metrics.jsonl, at its step, under TensorBoard's tags.
    train = [(r["step"], r["train_loss"]) for r in jsonl if r["kind"] == "train"]
    val = [(r["step"], r["val_ssim"]) for r in jsonl if r["kind"] == "val"]
    assert [(row["step"], row["train/loss"]) for row in rows if "train/loss" in row] == \
        [(s, pytest.approx(v, rel=1e-9)) for s, v in train]
    assert [(row["step"], row["val/ssim"]) for row in rows if "val/ssim" in row] == \
        [(s, pytest.approx(v, rel=1e-9)) for s, v in val]
    images = [row for row in rows if "val/samples/path" in row]  # the sample strip, a file beside the run
    assert images and all((offline / "files" / row["val/samples/path"]).is_file() for row in images)
    assert any("val_mse_per_frame_sum_by_lead_time/lead_time_01" in row for row in rows)
    # The run's whole config, and the best validation's scores in the summary.
    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["train"]["epochs"] == 2 and config["run"]["name"] == "wb" and config["run"]["wandb"] is True
    assert run_record.project == "framecast" and run_record.display_name == "wb"
    summaries = [r.summary for r in records if r.WhichOneof("record_type") == "summary"]
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for s in summaries for item in s.update}
    best = min((r for r in jsonl if r["kind"] == "val"), key=lambda r: r["val_loss"])
    assert math.isclose(summary["best/val_loss"], best["val_loss"]) and summary["best/step"] == best["step"]


def test_missing_wandb_package_is_one_clear_error(data_root, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(FramecastError, match=r"run.wandb is true but the wandb package is not installed: "
                                             r"pip install 'framecast\[wandb\]'"):
        run(tiny_config(data_root, tmp_path / "runs", "no-wb", "run.wandb=true"))


def test_sweep_members_write_their_settings_as_tensorboard_hparams(data_root, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = tiny_config(data_root, tmp_path / "runs", "lr=3e-3,seed=0", "run.tensorboard=true", "train.epochs=1",
                      "train.lr=3e-3", "run.hparams=[train.lr, train.seed, model.encoder_forecaster.hidden_channels]")
    run(cfg)
    events = event_accumulator.EventAccumulator(str(cfg.run_dir / TENSORBOARD_DIR))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    [experiment] = [d.experiment for d in data.values() if d.HasField("experiment")]
    [session] = [d.session_start_info for d in data.values() if d.HasField("session_start_info")]
    assert session.hparams["train.lr"].number_value == pytest.approx(3e-3)
    assert session.hparams["train.seed"].number_value == 0
    assert session.hparams["model.encoder_forecaster.hidden_channels"].string_value == "[8,8]"
    # The metrics the HParams tab shows are the validation scalars this run logged.
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics == list(HPARAM_METRICS) and set(metrics) <= set(events.Tags()["scalars"])
    with pytest.raises(FramecastError, match="run.hparams: 'train.nope' is not a setting"):
        run(tiny_config(data_root, tmp_path / "runs", "bad", "run.tensorboard=true", "run.hparams=[train.nope]"))


def test_a_sweep_names_its_grid_and_seed_as_each_member_s_hparams(tmp_path):
    from jobs.sweep import plan_sweep

    config = tmp_path / "base.yaml"
    config.write_text(f"run: {{name: sw, out_dir: {tmp_path}}}\n")
    sweep = plan_sweep(config, [], ["train.lr=1e-3,3e-4"], seeds=2)
    assert [r.cfg.run.hparams for r in sweep.runs] == [["train.lr", "train.seed"]] * 4
