"""Config behaviours users rely on: typos are errors, overrides work, every shipped config loads."""
from pathlib import Path

import pytest
import torch

from core.checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint
from core.config import config_to_dict, load_config, save_config
from core.errors import FramecastError

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.t_in >= 1 and cfg.model.cell in ("lstm", "gru")


def test_overrides_are_typed_and_applied(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "model.cell=lstm", "model.hidden_channels=[4, 8]",
                             "model.strides=[1,2]", "data.train_splits=[train]", "train.compile=true"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.cell == "lstm"
    assert cfg.model.hidden_channels == [4, 8]
    assert cfg.data.train_splits == ["train"]
    assert cfg.train.compile is True


def test_override_wins_over_file(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  lr: 0.1\n  epochs: 7\n")
    cfg = load_config(file, ["train.lr=0.5"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 7


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "train.lrr"),
        ("modle.cell=gru", "modle"),
        ("model.cell=transformer", "model.cell"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.compile=yes please", "train.compile"),
        ("model.kernel_size=4", "kernel_size"),
        ("model.strides=[1]", "model.strides"),
        ("novalue", "novalue"),
    ],
)
def test_bad_settings_name_the_setting(override, fragment):
    with pytest.raises(FramecastError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_and_invalid_files_are_errors(tmp_path):
    with pytest.raises(FramecastError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(FramecastError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(FramecastError, match=r"typo\.yaml: unknown setting train\.epoch"):
        load_config(typo)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.cell=lstm", "train.lr=0.25", "slurm.setup=['module load cuda']"])
    save_config(cfg, tmp_path / "config.yaml")
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(cfg)


def test_checkpoint_carries_its_config_and_loads_weights_only(tmp_path):
    cfg = load_config(None, ["model.cell=lstm", "run.name=x"])
    path = tmp_path / "best.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": config_to_dict(cfg)}, path)
    assert torch.load(path, weights_only=True)["model"]["w"].sum() == 2
    restored = config_from_checkpoint(path, ["predict.split=val"])
    assert restored.model.cell == "lstm" and restored.predict.split == "val"
    assert restored.predict.checkpoint == str(path)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FramecastError, match=r"absent\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a zip archive at all")
    with pytest.raises(FramecastError, match=r"corrupt\.pt: not a readable checkpoint"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}, "config": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(FramecastError, match=r"truncated\.pt"):
        load_checkpoint(truncated)
