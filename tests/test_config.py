"""Config behaviours users rely on: typos are errors, overrides work, every shipped config loads."""
from pathlib import Path

import pytest
import torch
import yaml

from core.checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint
from core.config import config_to_dict, family_names, load_config, save_config
from core.errors import FramecastError

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.t_in >= 1 and cfg.model.family in family_names()


def test_overrides_are_typed_and_applied(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "model.encoder_forecaster.cell=lstm",
                             "model.encoder_forecaster.hidden_channels=[4, 8]", "model.encoder_forecaster.strides=[1,2]",
                             "model.encoder_forecaster.norm_groups=4", "data.train_splits=[train]",
                             "train.compile=true"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.encoder_forecaster.cell == "lstm"
    assert cfg.model.encoder_forecaster.hidden_channels == [4, 8]
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
        ("modle.family=simvp", "modle"),
        ("model.encoder_forecaster.cell=transformer", "model.encoder_forecaster.cell"),
        ("model.family=transformer", "model.family"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.compile=yes please", "train.compile"),
        ("model.encoder_forecaster.kernel_size=4", "kernel_size"),
        ("model.encoder_forecaster.strides=[1]", "model.encoder_forecaster.strides"),
        ("novalue", "novalue"),
        ("train.lr=-1", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("data.num_workers=-2", "data.num_workers"),
        ("run.name=../elsewhere", "run.name"),
        ("run.name=a/b", "run.name"),
        ("data.train_splits=[train,val,train]", "data.train_splits lists train more than once"),
        ("train.betas={a: 1, a: 2}", "key 'a' given twice"),
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
    cfg = load_config(None, ["model.encoder_forecaster.cell=lstm", "train.lr=0.25", "slurm.setup=['module load cuda']"])
    save_config(cfg, tmp_path / "config.yaml")
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(cfg)


def test_checkpoint_carries_its_config_and_loads_weights_only(tmp_path):
    cfg = load_config(None, ["model.encoder_forecaster.cell=lstm", "run.name=x"])
    path = tmp_path / "best.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": config_to_dict(cfg)}, path)
    assert torch.load(path, weights_only=True)["model"]["w"].sum() == 2
    restored = config_from_checkpoint(path, ["predict.split=val"])
    assert restored.model.encoder_forecaster.cell == "lstm" and restored.predict.split == "val"
    assert restored.predict.checkpoint == str(path)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FramecastError, match=r"absent\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a zip archive at all")
    with pytest.raises(FramecastError, match=r"corrupt\.pt: not a framecast checkpoint"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}, "config": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(FramecastError, match=r"truncated\.pt"):
        load_checkpoint(truncated)


@pytest.mark.parametrize(
    "override, belongs",
    [("model.cell=lstm", r"model\.encoder_forecaster\.cell and model\.convlstm\.cell"),
     ("model.simvp.decouple_weight=0.1", r"predrnn family \(model\.predrnn\.decouple_weight\)"),
     ("model.hidden_channels=[8]", r"model\.encoder_forecaster\.hidden_channels")],
)
def test_a_setting_of_another_family_says_where_it_belongs(override, belongs):
    """Old flat model keys and keys written in the wrong family's section name their real place."""
    with pytest.raises(FramecastError, match=belongs):
        load_config(None, [override])


def test_yaml_syntax_error_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  epochs: [3\nmodel:\n  family: simvp\n")
    with pytest.raises(FramecastError) as info:
        load_config(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: not valid YAML") and "\n" not in message and "line" in message


def test_a_key_written_twice_is_one_line_naming_the_key_and_its_lines(tmp_path):
    file = tmp_path / "dup.yaml"
    file.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(FramecastError) as info:
        load_config(file)
    assert str(info.value) == f"{file}: not valid YAML (key 'lr' given twice (first at line 2) at line 4, column 3)"
    file.write_text("shared: &b {lr: 0.1}\ntrain:\n  <<: *b\n  lr: 0.2\n")  # a merge key may be overridden
    with pytest.raises(FramecastError, match="unknown setting shared"):
        load_config(file)


@pytest.mark.parametrize("content, byte", [("train:\n  lr: 0.1  # caf\xe9\n".encode("latin-1"), "0xe9"),
                                           (bytes(range(256)) * 4, "0x80")])
def test_a_config_that_is_not_utf8_text_is_one_line_naming_the_file(tmp_path, content, byte):
    file = tmp_path / "c.yaml"
    file.write_bytes(content)
    with pytest.raises(FramecastError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: not UTF-8 text (byte {byte}") and "\n" not in str(info.value)


def test_yaml_off_is_the_choice_off(tmp_path):
    """YAML 1.1 reads ``off`` as false; where a setting's choices include "off", it means that."""
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  amp: off\n")
    assert load_config(file).train.amp == "off"
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(FramecastError, match=r"train\.compile"):
        load_config(None, ["train.compile=off please"])


def test_a_config_starts_from_its_base_and_writes_only_what_differs(tmp_path):
    """``base:`` is read relative to the file naming it; sections merge setting by setting, lists
    replace; the resolved config saved for a run is fully expanded."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text("train:\n  lr: 0.1\n  epochs: 7\ndata:\n  train_splits: [a, b]\n")
    (tmp_path / "shared" / "mid.yaml").write_text("base: root.yaml\ntrain:\n  lr: 0.2\n")
    (tmp_path / "leaf.yaml").write_text("base: shared/mid.yaml\ndata:\n  train_splits: [c]\nrun:\n  name: leaf\n")
    cfg = load_config(tmp_path / "leaf.yaml")
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.train_splits, cfg.run.name) == (0.2, 7, ["c"], "leaf")
    save_config(cfg, tmp_path / "saved.yaml")
    assert "base" not in yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert config_to_dict(load_config(tmp_path / "saved.yaml")) == config_to_dict(cfg)


def test_a_base_cycle_or_a_missing_base_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(FramecastError, match=r"a\.yaml: config files name each other as base in a cycle") as info:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(info.value)
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FramecastError, match=r"nowhere\.yaml: config file not found \(the base of .*c\.yaml\)"):
        load_config(tmp_path / "c.yaml")


def test_the_shipped_family_configs_share_one_base():
    """configs/mfmnist/<family>.yaml keep only what differs from base.yaml, and still resolve to the
    published sizes."""
    for path in sorted((REPO / "configs" / "mfmnist").glob("*.yaml")):
        if path.name == "base.yaml":
            continue
        assert "base: base.yaml" in path.read_text(), path
        cfg = load_config(path)
        assert (cfg.data.t_in, cfg.data.t_out, cfg.model.in_channels, cfg.train.epochs) == (10, 10, 1, 200), path
