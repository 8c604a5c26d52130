"""A family declared outside framecast (tests/toy_family.py: one module, one declaration) is a family
like any other through the public commands: trained, predicted, described, and its checkpoint loads
in a process that never imported it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.config import load_config
from core.errors import FramecastError
from train_helpers import T_IN, T_OUT, data_root  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


def main_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_a_family_declared_outside_framecast_trains_predicts_and_loads(data_root, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "toy", "out_dir": str(tmp_path / "runs"), "device": "cpu"},
        "data": {"root": str(data_root), "source": "png", "train_splits": ["train"], "t_in": T_IN, "t_out": T_OUT,
                 "num_workers": 0},
        "model": {"family": "toy", "plugins": ["tests.toy_family"], "toy": {"residual": True, "hidden_channels": 8}},
        "train": {"epochs": 2, "batch_size": 2, "lr": 3e-3, "early_stop_patience": 0},
    }))
    done = main_py("train", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    best = tmp_path / "runs" / "toy" / "best.pt"
    out = tmp_path / "val.npy"
    # The checkpoint alone: its saved config names the plug-in, so this fresh process finds the family.
    done = main_py("predict", "--checkpoint", str(best), "--split", "val", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.load(out).shape[1:] == (T_OUT, 32, 48, 3)
    done = subprocess.run([sys.executable, "load_model.py", str(best)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "toy two-conv forecaster" in done.stdout, done.stderr


def test_the_family_is_declared_once_with_its_tiny_model():
    cfg = load_config(None, ["model.plugins=[tests.toy_family]", "model.family=toy", "model.size=tiny"])
    assert cfg.model.section.hidden_channels == 8  # the declaration's tiny model


def test_an_undeclared_family_says_how_to_declare_it():
    with pytest.raises(FramecastError, match=r"model\.family: 'nosuch' is not one of .* model\.plugins"):
        load_config(None, ["model.family=nosuch"])
    with pytest.raises(FramecastError, match=r"model\.plugins: cannot import tests\.no_such_module"):
        load_config(None, ["model.plugins=[tests.no_such_module]"])
