"""Nothing lost, nothing silently wrong: one writer per run folder, best.pt kept, the right frames
predicted, no leftovers after a kill, and one-line errors for what a user (or a full disk) causes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.atomic import TMP_MARK, atomic_path, remove_dead_temporaries
from core.checkpoint import load_checkpoint
from core.errors import FramecastError
from core.runlock import LOCK_NAME, RunLock
from data.layout import read_video
from data.synthetic import make_shapes_dataset
from stages import predict
from stages.train import run
from train_helpers import T_IN, losses, tiny_config
from train_helpers import data_root  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
HOST_MARK = f"{TMP_MARK}{socket.gethostname().split('.')[0].replace('-', '_')}-"

pytestmark = pytest.mark.usefixtures("one_thread")


def dead_pid() -> int:
    """The pid of a process that has just ended (and so names nobody)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- one writer per run folder


def test_a_second_training_of_the_same_run_is_refused_naming_the_holder(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "shared", "train.epochs=1")
    holder = RunLock(cfg.run_dir, stale_s=600)
    holder.acquire()
    try:
        with pytest.raises(FramecastError) as info:
            run(cfg)
        message = str(info.value)
        assert "another training is writing this run folder" in message
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in message and "\n" not in message
        assert not (cfg.run_dir / "last.pt").exists()  # the refused run wrote nothing
    finally:
        holder.release()
    assert not (cfg.run_dir / LOCK_NAME).exists()
    assert run(cfg)["stopped"] == "completed"  # free again once the holder ended
    assert not (cfg.run_dir / LOCK_NAME).exists()


def test_two_concurrent_trainings_one_is_refused_the_other_completes(data_root, tmp_path):
    """Two processes start the same training at once: exactly one writes the folder."""
    script = textwrap.dedent(f"""
        import sys, torch
        from pathlib import Path
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        torch.set_num_threads(1)
        from core.errors import FramecastError
        from stages.train import run
        from train_helpers import tiny_config
        try:
            print(run(tiny_config(Path({str(data_root)!r}), Path({str(tmp_path)!r}), "raced", "train.epochs=2"))["stopped"])
        except FramecastError as exc:
            print("refused:", exc)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs)
    assert outputs[0] == "completed" and outputs[1].startswith("refused:"), outputs
    cfg = tiny_config(data_root, tmp_path, "raced", "train.epochs=2")
    kinds = [(kind, step) for kind, _, step, _ in losses(cfg.run_dir)]
    assert kinds == sorted(set(kinds), key=kinds.index)  # one run's log: no record twice


def test_a_dead_holder_or_the_same_slurm_job_does_not_block(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root, tmp_path, "orphan", "train.epochs=1")
    lock = cfg.run_dir / LOCK_NAME
    lock.parent.mkdir(parents=True)
    # a holder on this host whose process is gone (killed with SIGKILL, say)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "slurm_job": "", "since": 0}))
    assert run(cfg)["stopped"] == "completed"
    # a holder on another node that stopped refreshing its lock long ago
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "slurm_job": "77", "since": 0}))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    cfg2 = tiny_config(data_root, tmp_path, "orphan", "train.epochs=2")
    assert run(cfg2)["epochs_run"] == 2
    # the same Slurm job, requeued onto another node: it takes its own folder back at once
    lock.write_text(json.dumps({"host": "node-before-requeue", "pid": 1, "slurm_job": "4242", "since": 0}))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg3 = tiny_config(data_root, tmp_path, "orphan", "train.epochs=3")
    assert run(cfg3)["epochs_run"] == 3
    # ... while a live holder of another job, elsewhere, is respected
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "slurm_job": "99", "since": 0}))
    with pytest.raises(FramecastError, match=r"another training.*host node-elsewhere, pid 1, Slurm job 99"):
        run(tiny_config(data_root, tmp_path, "orphan", "train.epochs=4"))


# ----------------------------------------------------------------------------- best.pt is never thrown away


def test_best_checkpoint_is_kept_and_resumed_from_when_last_is_missing(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "lost-last", "train.epochs=2")
    run(cfg)
    best = cfg.run_dir / "best.pt"
    kept = load_checkpoint(best)
    (cfg.run_dir / "last.pt").unlink()  # a scratch purge, or a copy of only the best file
    summary = run(tiny_config(data_root, tmp_path, "lost-last", "train.epochs=3"))
    assert summary["resumed_from"]["checkpoint"] == str(best)
    assert summary["resumed_from"]["epoch"] == kept["progress"]["epoch"]  # not from scratch
    after = load_checkpoint(best)
    # best.pt holds its model or a better one, never a worse first epoch of a fresh start
    assert after["progress"]["best_val_loss"] <= kept["progress"]["best_val_loss"]
    assert after["progress"]["epoch"] >= kept["progress"]["epoch"]


# ----------------------------------------------------------------------------- the right frames


def test_hidden_videos_longer_than_t_in_predict_what_follows_their_last_frame(tmp_path):
    """Hidden videos of 7 frames and a t_in=4 model: inputs 3..6, predicted frames 7..10."""
    from predict_helpers import make_checkpoint, make_config

    root = make_shapes_dataset(tmp_path / "data", counts={"val": 1, "hidden": 3}, height=32, width=48,
                               frames=8, hidden_frames=7, seed=1, workers=1)
    cfg = make_config(tmp_path, root)
    make_checkpoint(cfg)
    out = predict.run(cfg)
    index = json.loads(out.with_suffix(".json").read_text())
    assert index["inputs"] == [3, 4, 5, 6] and index["frames"] == [7, 8, 9, 10]
    # the rows are the model applied to the LAST t_in frames of each video
    from models.loading import load_model

    model, _, _ = load_model(cfg.run_dir / "best.pt")
    video = read_video(root / "hidden" / index["videos"][0])[-T_IN:]  # (t_in, H, W, 3)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float().div(255)[None]  # (1, t_in, C, H, W)
    with torch.no_grad():
        want = np.round(model(x).clamp(0, 1).permute(0, 1, 3, 4, 2).numpy() * 255).astype(np.uint8)[0]
    got = np.load(out)[0]
    assert np.abs(got.astype(int) - want).max() <= 1


def test_predict_refuses_an_override_that_changes_the_checkpoints_model(tmp_path):
    from core.checkpoint import config_from_checkpoint
    from predict_helpers import make_checkpoint, make_config, make_data

    cfg = make_config(tmp_path, make_data(tmp_path / "data"))
    path = make_checkpoint(cfg)
    with pytest.raises(FramecastError, match=r"best\.pt: holds a model with data\.t_in=4 but the config asks for data\.t_in=2"):
        config_from_checkpoint(path, ["data.t_in=2"])
    with pytest.raises(FramecastError, match=r"model\.encoder_forecaster\.hidden_channels"):
        config_from_checkpoint(path, ["model.encoder_forecaster.hidden_channels=[16,16]"])
    assert config_from_checkpoint(path, ["predict.split=val"]).predict.split == "val"  # the rest is free


# ----------------------------------------------------------------------------- leftovers after a kill


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f".hidden.npy{HOST_MARK}{dead_pid()}.npy"
    alive = tmp_path / f".hidden.json{HOST_MARK}{os.getppid()}"
    elsewhere = tmp_path / f".best.pt{TMP_MARK}othernode-{dead_pid()}"  # another host's: not ours to judge
    for path in (dead, alive, elsewhere):
        path.write_bytes(b"x" * 100)
    with atomic_path(tmp_path / "next.txt") as tmp:
        tmp.write_text("new")
    assert not dead.exists() and alive.exists() and elsewhere.exists()
    assert remove_dead_temporaries(tmp_path) == []


KILL_AFTER_START = r"""
import os, sys, time, threading
sys.path.insert(0, {repo!r})
{body}
"""


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses ps --ppid")
@pytest.mark.parametrize("stage", ["pack", "convert"])
def test_no_worker_survives_a_sigkill_of_its_parent(tmp_path, stage):
    if stage == "pack":
        root = make_shapes_dataset(tmp_path / "data", counts={"train": 24}, height=32, width=48, frames=8,
                                   hidden_frames=4, seed=0, workers=1)
        body = (f"from data.pack import pack_dataset\n"
                f"pack_dataset({str(root)!r}, out_dir={str(tmp_path / 'packed')!r}, workers=2)")
    else:
        npy = tmp_path / "preds.npy"
        np.save(npy, np.random.default_rng(0).integers(0, 255, (64, 4, 64, 96, 3), dtype=np.uint8))
        (tmp_path / "preds.json").write_text(json.dumps({"videos": [f"video_{i}" for i in range(64)],
                                                         "frames": [4, 5, 6, 7]}))
        body = (f"from stages.convert import write_pngs\n"
                f"write_pngs({str(npy)!r}, {str(tmp_path / 'png')!r}, workers=2)")
    # slow every worker down so the kill lands while they work
    slow = "import data.layout, stages.convert\n" if stage == "convert" else ""
    script = KILL_AFTER_START.format(repo=str(REPO), body=slow + body)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _children(parent.pid)
        if parent.poll() is not None:
            pytest.skip("the stage finished before its workers could be seen")
        time.sleep(0.02)
    assert len(workers) >= 2, "no pool workers started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "worker processes outlived their killed parent"


# ----------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("content, problem", [
    (b"hello: world\n", "not a framecast checkpoint"),  # a text file
    (os.urandom(4096), "not a framecast checkpoint"),  # random bytes
])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, content, problem):
    bad = tmp_path / "best.pt"
    bad.write_bytes(content)
    with pytest.raises(FramecastError, match=rf"{bad}: {problem}"):
        load_checkpoint(bad)
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "predict", "--checkpoint", str(bad)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0 and done.stderr.strip().count("\n") == 0 and str(bad) in done.stderr
    assert "Traceback" not in done.stderr


def _small_disk(tmp_path: Path, size: str) -> Path:
    """A tmpfs of ``size`` mounted under tmp_path (root only); unmounted by the caller."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / f"small-{len(list(tmp_path.glob('small-*')))}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return mount


@pytest.fixture
def small_disk(tmp_path):
    mounts = []

    def make(size: str) -> Path:
        mounts.append(_small_disk(tmp_path, size))
        return mounts[-1]

    yield make
    for mount in mounts:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> None:
    """Leave about ``leave`` free bytes on the file system of ``folder``."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for block in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)


def _one_line_error(args: list[str], *needles: str) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0, done.stdout
    err = done.stderr.strip().splitlines()
    assert err and "Traceback" not in done.stderr, done.stderr
    last = err[-1]
    assert last.startswith(("error:", "np_to_png: error:")), done.stderr
    for needle in needles:
        assert needle in last, last


def test_disk_full_is_one_line_for_pack_train_predict_and_convert(data_root, tmp_path, small_disk):
    # pack: the split is bigger than the disk
    disk = small_disk("96k")
    _one_line_error(["main.py", "pack", "--data", str(data_root), "--out", str(disk / "packed"), "--workers", "1"],
                    str(disk / "packed"), "could not write")
    assert not list((disk / "packed").glob("*.h5")) if (disk / "packed").exists() else True

    # train: the checkpoint does not fit; a previous good last.pt stays intact
    run_disk = small_disk("64M")
    cfg = tiny_config(data_root, run_disk, "full", "train.epochs=1")
    run(cfg)
    good = (cfg.run_dir / "last.pt").read_bytes()
    _fill(run_disk, leave=64 << 10)  # room for the lock, config and log, not for a checkpoint
    args = ["main.py", "train", "--config", str(cfg.run_dir / "config.yaml"), "train.epochs=2"]
    _one_line_error(args, "could not write", "No space left on device")
    assert (cfg.run_dir / "last.pt").read_bytes() == good

    # predict and convert: the array or the PNGs do not fit
    (run_disk / "filler").unlink()
    from predict_helpers import make_checkpoint, make_config, make_data as make_predict_data

    pcfg = make_config(tmp_path / "p", make_predict_data(tmp_path / "pdata"))
    ckpt = make_checkpoint(pcfg)
    out_disk = small_disk("1M")
    _fill(out_disk)
    _one_line_error(["main.py", "predict", "--checkpoint", str(ckpt), "--out", str(out_disk / "hidden.npy")],
                    str(out_disk / "hidden.npy"), "could not write")
    npy = predict.run(pcfg)
    _one_line_error(["np_to_png.py", str(npy), "--out", str(out_disk / "png"), "--workers", "1"],
                    str(out_disk / "png"))
