"""``load_model``: one checkpoint file is enough to rebuild the trained model and to say what it is."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import FramecastError
from load_model import main
from models.loading import load_model
from models import ConvLSTMCell, count_parameters
from stages.train import run
from train_helpers import make_data, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ConvLSTM trained for one epoch: (config, path of best.pt)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = make_data(tmp_path_factory.mktemp("shapes"))
        cfg = tiny_config(root, tmp_path_factory.mktemp("runs"), "lstm", "model.encoder_forecaster.cell=lstm",
                          "train.epochs=1")
        run(cfg)
    finally:
        torch.set_num_threads(previous)
    return cfg, cfg.run_dir / "best.pt"


def test_load_model_returns_the_trained_model_in_eval_mode_with_its_config(trained):
    cfg, best = trained
    model, loaded_cfg, state = load_model(best, "cpu")
    assert not model.training and loaded_cfg == cfg
    assert any(isinstance(m, ConvLSTMCell) for m in model.modules())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    x = torch.rand(2, cfg.data.t_in, 3, 32, 48)  # (B, t_in, C, H, W)
    with torch.no_grad():
        assert model(x).shape == (2, cfg.data.t_out, 3, 32, 48)


def test_cli_prints_cell_parameters_epoch_and_validation_loss(trained):
    _, best = trained
    state = load_checkpoint(best)
    model, _, _ = load_model(best)
    proc = subprocess.run([sys.executable, str(REPO / "load_model.py"), str(best)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    progress = state["progress"]
    assert "family:          encoder_forecaster (ConvLSTM/ConvGRU encoder-forecaster)" in out
    assert "cell:            lstm (modules: ConvLSTMCell)" in out
    assert f"parameters:      {count_parameters(model):,}" in out
    assert f"epoch:           1 (step {progress['step']})" in out
    assert f"validation loss: {progress['val_loss']:.6g}" in out


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "runs" / "none" / "best.pt"
    with pytest.raises(FramecastError, match=rf"{missing}: checkpoint not found"):
        load_model(missing)
    assert main([str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_framecast"])
def test_corrupt_checkpoint_is_a_clear_error(trained, tmp_path, damage):
    _, best = trained
    bad = tmp_path / "best.pt"
    if damage == "truncated":
        bad.write_bytes(best.read_bytes()[:1000])
        pattern = "not a readable checkpoint"
    elif damage == "garbage":
        bad.write_bytes(b"\x00not a checkpoint at all" * 100)
        pattern = "not a framecast checkpoint"
    else:
        torch.save({"weights": torch.zeros(3)}, bad)
        pattern = "not a framecast checkpoint"
    with pytest.raises(FramecastError, match=rf"{bad}: {pattern}"):
        load_model(bad)


def test_weights_that_do_not_fit_their_config_are_a_clear_error(trained, tmp_path):
    _, best = trained
    state = load_checkpoint(best)
    state["config"]["model"]["encoder_forecaster"]["hidden_channels"] = [16, 8]  # weights have 8
    bad = tmp_path / "mismatch.pt"
    save_checkpoint(state, bad)
    with pytest.raises(FramecastError, match=rf"{bad}: weights do not fit the encoder_forecaster model"):
        load_model(bad)
