"""Several processes: the launcher's environment is read right, the data is split right, and a real
2-process gloo run (torchrun) trains with every rank agreeing."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.distributed import (
    SLURM_PORT_BASE,
    SLURM_PORT_SPAN,
    expand_nodelist,
    init_distributed,
    pick_device,
    resolve_launch,
)
from core.errors import FramecastError
from data.datasets import build_datasets
from models.loading import load_model
from train_helpers import losses, make_data, tiny_config
from training.sampler import EpochSampler
from core.precision import Precision
from training.step import validation_sums

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the environment


def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"}
    info = resolve_launch(env)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port, info.source) == (
        3, 4, 1, "10.0.0.7", 29500, "env")


def test_srun_tasks_without_torch_variables():
    env = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "0",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
    info = resolve_launch(env)
    assert (info.rank, info.world_size, info.local_rank, info.source) == (2, 4, 0, "slurm")
    assert info.master_addr == "gpu07"  # the first host, padding kept
    assert info.master_port == SLURM_PORT_BASE + 123456 % SLURM_PORT_SPAN  # the same on every task


def test_a_batch_script_alone_is_one_process():
    # sbatch --ntasks=2 sets SLURM_NTASKS in the script itself; only srun starts the tasks
    assert resolve_launch({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n1"}).world_size == 1
    assert resolve_launch({}).source == "single"
    ctx = init_distributed("cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device.type, ctx.backend) == (0, 1, True, "cpu", None)


def test_bad_launcher_environment_is_a_clear_error():
    with pytest.raises(FramecastError, match="WORLD_SIZE='two'"):
        resolve_launch({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(FramecastError, match="rank 2 of world size 2"):
        resolve_launch({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(FramecastError, match="run.device='tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(FramecastError, match="no CUDA device"):
            pick_device("cuda")


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("gpu[008-010,12],login1", ["gpu008", "gpu009", "gpu010", "gpu12", "login1"]),
    ("a[1-2]-ib,b3", ["a1-ib", "a2-ib", "b3"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
])
def test_slurm_nodelist_expansion(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


# ----------------------------------------------------------------------------- the data split


def test_ranks_share_each_epoch_without_overlap_and_in_an_order_fixed_by_seed_and_epoch():
    def shards(epoch, size=10, world=3, pad=True):
        out = []
        for rank in range(world):
            sampler = EpochSampler(size, rank=rank, world_size=world, seed=7, pad=pad)
            sampler.set_epoch(epoch)
            out.append(list(sampler))
        return out

    padded = shards(0)
    assert [len(s) for s in padded] == [4, 4, 4]  # equal steps on every rank (DDP needs it)
    assert set(sum(padded, [])) == set(range(10))
    unpadded = shards(0, pad=False)
    assert sorted(sum(unpadded, [])) == list(range(10))  # validation: each video exactly once
    assert shards(0) == padded and shards(1) != padded  # a function of (seed, epoch)
    resumed = EpochSampler(10, rank=1, world_size=3, seed=7)
    resumed.set_epoch(0, skip=2)
    assert list(resumed) == padded[1][2:] and len(resumed) == 2


# ----------------------------------------------------------------------------- a real 2-process run


def test_two_process_gloo_run_trains_and_ranks_agree(tmp_path):
    data_root = make_data(tmp_path / "shapes")
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path
        import torch
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        torch.set_num_threads(1)
        from stages.train import run
        from train_helpers import state_digest, tiny_config

        seen = []
        def hook(info):
            seen.append({{"epoch": info["epoch"], "val_loss": info["val_loss"],
                          "weights": state_digest(info["model"].state_dict())}})

        out = Path({str(tmp_path)!r})
        summary = run(tiny_config(Path({str(data_root)!r}), out / "runs", "ddp", "train.epochs=3"),
                      on_checkpoint=hook)
        (out / f"rank{{os.environ['RANK']}}.json").write_text(json.dumps({{"summary": summary, "seen": seen}}))
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen"] == ranks[1]["seen"]  # same validation losses, same weights, every epoch
    s0, s1 = ranks[0]["summary"], ranks[1]["summary"]
    assert s0 == {**s1, "seconds": s0["seconds"]}
    assert s0["world_size"] == 2 and s0["steps"] == 6  # 8 videos / 2 processes / batch 2 = 2 steps an epoch
    vals = [record["val_loss"] for record in ranks[0]["seen"]]
    assert all(math.isfinite(v) for v in vals) and vals[-1] < vals[0]

    cfg = tiny_config(data_root, tmp_path / "runs", "ddp", "train.epochs=3")
    # only rank 0 wrote the log: one record per validation, not two
    assert [epoch for kind, epoch, _, _ in losses(cfg.run_dir) if kind == "val"] == [1, 2, 3]
    # the all-reduced validation loss is the mean over all 5 videos, though the ranks held 3 and 2
    model, _, state = load_model(cfg.run_dir / "last.pt")
    _, val_set = build_datasets(cfg)
    batches = (val_set[i].unsqueeze(0) for i in range(len(val_set)))
    total, count = validation_sums(model, batches, t_in=cfg.data.t_in, in_channels=3, loss="mse",
                                   precision=Precision(torch.device("cpu"), None, False)).tolist()
    assert count == 5 and math.isclose(total / count, vals[-1], rel_tol=1e-5)
    assert state["progress"]["world_size"] == 2


def _no_idle_slurm_node() -> str | None:
    if shutil.which("srun") is None or shutil.which("sinfo") is None:
        return "srun/sinfo not on PATH (start a one-node Slurm with: bash jobs/local_slurm.sh start)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    return None if "idle" in states.split() else f"no idle Slurm node (sinfo: {states.split() or 'none'})"


@pytest.mark.slurm
@pytest.mark.skipif(_no_idle_slurm_node() is not None, reason=_no_idle_slurm_node() or "")
def test_plain_srun_tasks_form_one_process_group(tmp_path):
    """srun with 2 tasks and no torch variables: ranks, rendezvous and port come from Slurm alone."""
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from core.distributed import all_reduce_sum, cleanup_distributed, init_distributed, resolve_launch
        ctx = init_distributed("cpu")
        total = all_reduce_sum(torch.tensor([float(ctx.rank + 1)]), ctx)
        print(f"rank={{ctx.rank}} world={{ctx.world_size}} backend={{ctx.backend}} "
              f"source={{resolve_launch().source}} sum={{total.item()}}", flush=True)
        cleanup_distributed(ctx)
    """))
    proc = subprocess.run(
        ["srun", "--ntasks", "2", "--cpus-per-task", "1", "--mem=1G", "--time", "5", sys.executable, str(probe)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank="))
    assert lines == [f"rank={r} world=2 backend=gloo source=slurm sum=3.0" for r in (0, 1)]


def test_two_process_segmenter_pools_the_val_jaccard_over_every_video(tmp_path):
    """train.task=segment under DDP: the ranks hold 3 and 2 val videos, the Jaccard is over all 5 at once."""
    data_root = make_data(tmp_path / "shapes")
    extra = ("train.task=segment", "segment.base_channels=8", "segment.levels=2", "segment.norm_groups=4",
             "segment.frames_per_video=2", "data.num_classes=25", "train.epochs=2")
    script = tmp_path / "ddp_segment.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path
        import torch
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        torch.set_num_threads(1)
        from stages.train import run
        from train_helpers import tiny_config

        out = Path({str(tmp_path)!r})
        summary = run(tiny_config(Path({str(data_root)!r}), out / "runs", "seg", *{extra!r}))
        (out / f"rank{{os.environ['RANK']}}.json").write_text(json.dumps(summary))
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert s0["val_loss"] == s1["val_loss"] and s0["world_size"] == 2
    assert 0 < s0["val_loss"] < 1  # some classes right, some wrong: a mean of per-rank scores would differ
    from data.datasets import build_segment_datasets
    from models.loading import load_segmenter
    from training.segmentation import segment_validation

    cfg = tiny_config(data_root, tmp_path / "runs", "seg", *extra)
    model, _, _ = load_segmenter(cfg.run_dir / "last.pt")
    _, val_set = build_segment_datasets(cfg)
    batches = [tuple(part.unsqueeze(0) for part in val_set[i]) for i in range(len(val_set))]
    score = segment_validation(model, batches, num_classes=25, in_channels=3,
                               precision=Precision(torch.device("cpu"), None, False))
    assert len(val_set) == 5 and math.isclose(1 - score["jaccard"], s0["val_loss"], rel_tol=1e-5, abs_tol=1e-9)
