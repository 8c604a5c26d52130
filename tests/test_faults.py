"""Nothing lost, nothing silently wrong, under SIGKILL.

Each stage (pack, train, predict, merge, convert) runs once uninterrupted as a subprocess (``main.py
<stage>``): that run is the reference and its wall time T the stage's runtime.  Then the same command
is started again and SIGKILLed at seeded random moments drawn uniformly over (0, T) (``KILLS`` of
them per stage, one in each third), and rerun after each kill until one run completes.  The result
must equal the reference (pack: frames, names and attributes of every .h5; train: the losses at the
same steps and the same weights in last.pt and best.pt; predict and merge: the same .npy bytes and
index; convert: the same PNG files, byte for byte), and once the final run completed no ``.tmp-``
temporary and no lock file may be left.  After every kill, no process of the killed run's process group (its pool
and loader workers) may still be alive a few seconds later.

Every subprocess runs with one compute thread and its own session (process group), so the reference
and the resumed runs compute bit-for-bit the same and a survivor can be told apart and cleaned up.
A stop signal (not a kill) in the last step of an epoch is covered here too: it must not cost that
epoch its validation.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import losses, make_data, overrides, state_digest

from core.atomic import TMP_MARK
from core.checkpoint import load_checkpoint
from core.runlock import LOCK_NAME
from training.metrics import read_metrics
from data.synthetic import make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
MAIN = str(REPO / "main.py")
SEED = int(os.environ.get("FRAMECAST_FAULT_SEED", "20261201"))  # another seed: other kill times
KILLS = 3  # SIGKILLs per stage (fewer when a rerun completes before its kill time)
# One thread everywhere: the same numbers in every run of a config, and no fight over a 2-core CI box.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RUN_TIMEOUT_S = 120  # one run of any stage here takes seconds; this only stops a hang
ORPHAN_GRACE_S = 15.0  # torch loader workers look at their parent every 5 s; pool workers die at once

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for process groups"),
              pytest.mark.usefixtures("one_thread")]


# ----------------------------------------------------------------------------- processes


def _processes() -> dict[int, tuple[int, int, str]]:
    """{pid: (ppid, process group, state)} of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _descendants(pid: int) -> list[int]:
    table = _processes()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _live_in_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies waiting to be reaped do not count)."""
    return [p for p, (_, group, state) in _processes().items() if group == pgid and state not in ("Z", "X")]


@dataclass
class Attempt:
    kill_at: float | None  # seconds after the start at which it was to be killed (None: never)
    killed: bool
    children: int  # child processes it had when killed
    returncode: int
    seconds: float
    log: Path

    def describe(self) -> str:
        what = (f"killed at {self.seconds:.2f} s with {self.children} children" if self.killed
                else f"exit {self.returncode} after {self.seconds:.2f} s")
        planned = "none" if self.kill_at is None else f"{self.kill_at:.2f} s"
        return f"{what} (kill time {planned}), log {self.log}"


def run_once(cmd: list[str], log: Path, kill_at: float | None = None) -> Attempt:
    """Run ``cmd`` in its own session; SIGKILL it ``kill_at`` seconds after the start if still running.

    After a kill, every other process of its group (workers) must end within ``ORPHAN_GRACE_S``.
    """
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=RUN_TIMEOUT_S if kill_at is None else kill_at)
        except subprocess.TimeoutExpired:
            if kill_at is None:
                proc.kill()
                proc.wait()
                pytest.fail(f"{cmd[2]} did not finish within {RUN_TIMEOUT_S} s; log {log}:\n{log.read_text()}")
        else:
            return Attempt(kill_at, False, 0, proc.returncode, time.monotonic() - started, log)
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seconds = time.monotonic() - started
    deadline = time.monotonic() + ORPHAN_GRACE_S
    survivors = _live_in_group(proc.pid)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = _live_in_group(proc.pid)
    if survivors:
        table = _processes()
        for pid in survivors:  # leave nothing running behind the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"{cmd[2]} SIGKILLed at {seconds:.2f} s: processes {survivors} of its group outlived it "
                    f"by {ORPHAN_GRACE_S} s (its children at the kill: {children}; "
                    f"states {[table.get(p) for p in survivors]})")
    return Attempt(kill_at, True, len(children), -signal.SIGKILL, seconds, log)


def kill_times(stage: str, runtime: float) -> list[float]:
    """``KILLS`` moments drawn uniformly over the uninterrupted run's wall time, seeded per stage.

    Stratified: one in each of ``KILLS`` equal slices of the runtime, earliest first, so the kills
    never all land in the interpreter's start-up, and a resumed training (shorter than the first
    run) is still running when the later ones come; the last 5 % are left out, where a run would
    usually finish first.
    """
    rng = random.Random(f"{SEED}-{stage}")
    return [(i + rng.random()) / KILLS * 0.95 * runtime for i in range(KILLS)]


def reference_run(cmd: list[str], logs: Path) -> Attempt:
    logs.mkdir(parents=True, exist_ok=True)
    ref = run_once(cmd, logs / "reference.log")
    assert ref.returncode == 0, ref.log.read_text()
    return ref


def killed_until_complete(stage: str, cmd: list[str], runtime: float, logs: Path) -> list[Attempt]:
    """Start ``cmd`` and kill it at each of the stage's kill times in turn; then run it to completion.

    A run that ends before its kill time (a resumed training has less left to do; a loaded machine
    runs faster or slower than the reference did) must have succeeded; the next kill time then
    applies to the next run of the same command, which starts over or finds the work done.
    """
    logs.mkdir(parents=True, exist_ok=True)
    attempts: list[Attempt] = []
    for kill_at in [*kill_times(stage, runtime), None]:
        if kill_at is None and attempts and not attempts[-1].killed:
            break  # the last run already completed
        attempt = run_once(cmd, logs / f"attempt{len(attempts)}.log", kill_at)
        attempts.append(attempt)
        if not attempt.killed:
            assert attempt.returncode == 0, \
                f"{stage} failed after kills: {history(attempts)}\n{attempt.log.read_text()}"
    assert any(a.killed for a in attempts), f"{stage}: no kill landed (runtime {runtime:.2f} s)"
    print(f"{stage}: uninterrupted {runtime:.2f} s; {history(attempts)}")  # shown with -s or on failure
    return attempts


def assert_clean(folder: Path) -> None:
    """No temporary of a dead writer and no lock file anywhere under ``folder``."""
    left = [str(p) for p in folder.rglob("*") if TMP_MARK in p.name or p.name == LOCK_NAME]
    assert not left, f"left behind after the final run: {left}"


def history(attempts: list[Attempt]) -> str:
    return "; ".join(a.describe() for a in attempts)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- pack


def test_pack_killed_at_random_points_then_rerun_writes_the_same_packs(tmp_path):
    root = make_shapes_dataset(tmp_path / "data", counts={"train": 240, "val": 40}, height=64, width=96,
                               frames=8, hidden_frames=4, seed=0, workers=1)

    def cmd(out: Path) -> list[str]:
        return [sys.executable, MAIN, "pack", "--data", str(root), "--out", str(out), "--workers", "2",
                "--compression", "gzip"]

    ref = reference_run(cmd(tmp_path / "ref"), tmp_path / "logs-ref")
    out = tmp_path / "packed"
    attempts = killed_until_complete("pack", cmd(out), ref.seconds, tmp_path / "logs")
    assert sorted(p.name for p in out.iterdir()) == ["train.h5", "val.h5"], history(attempts)
    for split in ("train", "val"):
        with h5py.File(tmp_path / "ref" / f"{split}.h5") as want, h5py.File(out / f"{split}.h5") as got:
            assert np.array_equal(got["frames"][...], want["frames"][...]), (split, history(attempts))
            assert list(got["names"].asstr()[...]) == list(want["names"].asstr()[...]), split
            assert dict(got.attrs) == dict(want.attrs), split
    assert_clean(out)


# ----------------------------------------------------------------------------- train


TRAIN_EPOCHS = "train.epochs=12"  # 48 steps: most of the runtime is training, not start-up


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def empty_config(tmp_path_factory) -> Path:
    """``main.py train`` wants --config: an empty one, every setting given as an override."""
    path = tmp_path_factory.mktemp("config") / "empty.yaml"
    path.write_text("{}\n")
    return path


def train_cmd(config: Path, data: Path, out: Path, name: str) -> list[str]:
    return [sys.executable, MAIN, "train", "--config", str(config), *overrides(data, out, name, TRAIN_EPOCHS)]


@pytest.fixture(scope="module")
def train_reference(train_data, empty_config, tmp_path_factory) -> tuple[Path, Attempt]:
    """(run folder, run) of the uninterrupted training, in a subprocess like the killed ones."""
    out = tmp_path_factory.mktemp("train-ref")
    ref = reference_run(train_cmd(empty_config, train_data, out, "reference"), out / "logs")
    return out / "reference", ref


def assert_same_training(run_dir: Path, reference_dir: Path, note: str = "") -> None:
    """The same losses at the same steps, the same weights and optimizer state in last.pt, the same best.pt."""
    assert losses(run_dir) == losses(reference_dir), note
    for name in ("last.pt", "best.pt"):
        ours, theirs = load_checkpoint(run_dir / name), load_checkpoint(reference_dir / name)
        assert state_digest(ours["model"]) == state_digest(theirs["model"]), (name, note)
        for a, b in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
            assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]), (name, note)
        keys = ("step", "epoch", "best_val_loss", "best_epoch", "val_loss")
        assert [ours["progress"][k] for k in keys] == [theirs["progress"][k] for k in keys], (name, note)


def test_train_killed_at_random_points_then_rerun_is_the_uninterrupted_run(train_reference, train_data,
                                                                          empty_config, tmp_path):
    reference_dir, ref = train_reference
    attempts = killed_until_complete("train", train_cmd(empty_config, train_data, tmp_path, "killed"),
                                     ref.seconds, tmp_path / "logs")
    run_dir = tmp_path / "killed"
    assert_same_training(run_dir, reference_dir, history(attempts))
    assert_clean(tmp_path)


def test_stop_signal_in_the_last_step_of_an_epoch_still_validates_that_epoch(train_reference, train_data,
                                                                            tmp_path, monkeypatch):
    """SIGUSR2 (Slurm's time-limit warning) arriving during the last step of epoch 1: the stop must not
    skip epoch 1's validation; the resumed run equals the uninterrupted one."""
    if not hasattr(signal, "SIGUSR2") or signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL \
            or os.environ.get("SUBMITIT_EXECUTOR"):
        pytest.skip("SIGUSR2 is handled by someone else in this process")
    import stages.train
    from core.config import load_config

    reference_dir, _ = train_reference
    cfg = load_config(None, overrides(train_data, tmp_path, "signalled", TRAIN_EPOCHS))
    real_step = stages.train.train_step

    def step_then_signal(*args, step, **kwargs):
        result = real_step(*args, step=step, **kwargs)
        if step == 3:  # the 4th and last step of epoch 1 (4 steps an epoch)
            os.kill(os.getpid(), signal.SIGUSR2)
        return result

    monkeypatch.setattr(stages.train, "train_step", step_then_signal)
    with pytest.raises(stages.train.TrainingInterrupted):
        stages.train.run(cfg)
    # epoch 1 validated and saved first, then the stop right there, before epoch 2 begins
    saved = load_checkpoint(cfg.run_dir / "last.pt")["progress"]
    assert (saved["epoch"], saved["step"], saved["batches_done"]) == (1, 4, 4)
    assert [r["epoch"] for r in read_metrics(cfg.run_dir / "metrics.jsonl") if r.get("kind") == "val"] == [1]
    monkeypatch.setattr(stages.train, "train_step", real_step)
    stages.train.run(cfg)
    assert_same_training(cfg.run_dir, reference_dir)


# ----------------------------------------------------------------------------- predict and merge


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An (untrained) tiny model's best.pt whose config reads 300 hidden videos of 4 frames."""
    from predict_helpers import make_checkpoint, make_config

    tmp = tmp_path_factory.mktemp("predict")
    root = make_shapes_dataset(tmp / "data", counts={"val": 1, "hidden": 300}, height=32, width=48, frames=8,
                               hidden_frames=4, seed=0, workers=1)
    return make_checkpoint(make_config(tmp, root))


def predict_cmd(checkpoint: Path, out: Path) -> list[str]:
    # One loader worker: a process that must end with its killed parent.
    return [sys.executable, MAIN, "predict", "--checkpoint", str(checkpoint), "--out", str(out),
            "data.num_workers=1", "predict.batch_size=4"]


def test_predict_killed_at_random_points_then_rerun_writes_the_same_array(checkpoint, tmp_path):
    ref = reference_run(predict_cmd(checkpoint, tmp_path / "ref" / "hidden.npy"), tmp_path / "logs-ref")
    out = tmp_path / "preds" / "hidden.npy"
    attempts = killed_until_complete("predict", predict_cmd(checkpoint, out), ref.seconds, tmp_path / "logs")
    assert sorted(p.name for p in out.parent.iterdir()) == ["hidden.json", "hidden.npy"], history(attempts)
    assert out.read_bytes() == (tmp_path / "ref" / "hidden.npy").read_bytes(), history(attempts)
    index, want = (json.loads(p.read_text()) for p in (out.with_suffix(".json"), tmp_path / "ref" / "hidden.json"))
    # the same index but for where the array was asked to go (the resolved config records --out)
    outs = index["config"]["predict"].pop("out"), want["config"]["predict"].pop("out")
    assert outs == (str(out), str(tmp_path / "ref" / "hidden.npy"))
    assert index == want
    assert np.load(out).shape == (300, 4, 32, 48, 3)
    assert_clean(out.parent)


def test_merge_killed_at_random_points_then_rerun_writes_the_same_array(checkpoint, tmp_path):
    from core.checkpoint import config_from_checkpoint
    from stages import predict

    shards = tmp_path / "shards"
    cfg = config_from_checkpoint(checkpoint, [f"predict.out={shards / 'hidden.npy'}", "predict.shards=2",
                                              "data.num_workers=0", "predict.batch_size=10"])
    parts = [np.load(predict.run(cfg, shard=(i, 2))) for i in range(2)]
    for where in ("ref", "merged"):
        shutil.copytree(shards, tmp_path / where)

    def cmd(folder: Path) -> list[str]:
        return [sys.executable, MAIN, "merge", "--out", str(folder / "hidden.npy"), "--shards", "2"]

    ref = reference_run(cmd(tmp_path / "ref"), tmp_path / "logs-ref")
    out = tmp_path / "merged"
    attempts = killed_until_complete("merge", cmd(out), ref.seconds, tmp_path / "logs")
    assert tree(out) == tree(tmp_path / "ref"), history(attempts)  # merged .npy + .json and the shards
    assert np.array_equal(np.load(out / "hidden.npy"), np.concatenate(parts))
    assert_clean(out)


# ----------------------------------------------------------------------------- convert


def test_convert_killed_at_random_points_then_rerun_writes_the_same_pngs(tmp_path):
    videos, frames = 180, [4, 5, 6, 7]
    npy = tmp_path / "preds" / "hidden.npy"
    npy.parent.mkdir()
    array = np.random.default_rng(SEED).integers(0, 256, (videos, len(frames), 32, 48, 3), dtype=np.uint8)
    np.save(npy, array)
    npy.with_suffix(".json").write_text(json.dumps({"videos": [f"video_{i}" for i in range(videos)],
                                                    "frames": frames}))

    def cmd(out: Path) -> list[str]:  # two pool workers: processes that must end with their killed parent
        return [sys.executable, MAIN, "convert", "--npy", str(npy), "--out", str(out), "convert.workers=2"]

    ref = reference_run(cmd(tmp_path / "ref"), tmp_path / "logs-ref")
    out = tmp_path / "png"
    attempts = killed_until_complete("convert", cmd(out), ref.seconds, tmp_path / "logs")
    want = tree(tmp_path / "ref")
    assert len(want) == videos * len(frames)
    got = tree(out)
    assert sorted(got) == sorted(want), history(attempts)
    assert [k for k in want if got[k] != want[k]] == [], history(attempts)
    with Image.open(out / "video_179" / "image_7.png") as png:  # and they hold the array's frames
        assert np.array_equal(np.asarray(png), array[179, 3])
    assert_clean(out)
