"""Tiny data and configs for the train / load_model / distributed tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from core.config import Config, load_config
from data.synthetic import make_shapes_dataset
from tiny_models import model_overrides
from training.metrics import read_metrics

T_IN, T_OUT = 4, 4
HEIGHT, WIDTH = 32, 48
# 8 train videos with batch 2: 4 steps an epoch; 5 val videos (an odd count, so two processes hold
# different numbers and the all-reduced mean must still be the mean over all five).
COUNTS = {"train": 8, "val": 5, "unlabeled": 0, "hidden": 0}


def make_data(root: Path) -> Path:
    return make_shapes_dataset(root, counts=COUNTS, height=HEIGHT, width=WIDTH, frames=8,
                               hidden_frames=T_IN, seed=0, workers=1)


class Killed(Exception):
    """Raised from a checkpoint hook: the run ends there, as if the process had been killed."""


def run_killed_after(cfg: Config, **progress: int) -> None:
    """Trains ``cfg`` until the first checkpoint saved at ``progress`` (``epoch=1``, ``step=3``) and ends
    the run right there, as a kill would."""
    from stages.train import run

    def hook(info):
        if all(info[key] == value for key, value in progress.items()):
            raise Killed

    with pytest.raises(Killed):
        run(cfg, on_checkpoint=hook)


def overrides(data_root: Path, out_dir: Path, name: str, *extra: str, family: str = "encoder_forecaster") -> list[str]:
    """4 epochs of 4 steps (batch 2) of ``family``'s tiny model on ``make_data``'s videos, then ``extra``."""
    return [
        f"run.out_dir={out_dir}", f"run.name={name}", "run.device=cpu",
        f"data.root={data_root}", "data.source=png", "data.train_splits=[train]",
        f"data.t_in={T_IN}", f"data.t_out={T_OUT}", "data.num_workers=0",
        *model_overrides(family),
        "train.epochs=4", "train.batch_size=2", "train.lr=3e-3", "train.log_every_steps=2",
        "train.early_stop_patience=0",
        *extra,
    ]


def tiny_config(data_root: Path, out_dir: Path, name: str, *extra: str, family: str = "encoder_forecaster") -> Config:
    return load_config(None, overrides(data_root, out_dir, name, *extra, family=family))


# A fixture for the modules that import it: ``make_data``'s videos, made once per module.
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("shapes"))


def losses(run_dir: Path) -> list[tuple[str, int, int, float]]:
    """(kind, epoch, step, loss) of every record of a run's metrics.jsonl, in order."""
    rows = []
    for record in read_metrics(Path(run_dir) / "metrics.jsonl"):
        key = "train_loss" if record["kind"] == "train" else "val_loss"
        rows.append((record["kind"], record["epoch"], record["step"], record[key]))
    return rows


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
