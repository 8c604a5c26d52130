"""Node-local staging (data.stage_to): one copy per node, verified, reused while valid, a corrupted
copy detected and replaced, reading from the copy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import config_from_dict
from core.errors import FramecastError
from data import staging
from data.sources import H5VideoSource, open_split

REPO = Path(__file__).resolve().parent.parent
SIZE = 3 * 256 * 1024 + 12345  # several chunks of CHUNK below, the last one partial
CHUNK = 256 * 1024

# A process that stages SOURCE into STAGE_TO and prints what it did; with SLOW it takes a while to copy.
STAGER = """
import json, sys, time, logging
logging.basicConfig(level=logging.INFO)
from data import staging
staging.CHUNK_BYTES = {chunk}
if {slow}:
    copy = staging._copy_hashing
    def slow_copy(*args):
        time.sleep(1.5)
        return copy(*args)
    staging._copy_hashing = slow_copy
done = staging.stage(sys.argv[1], sys.argv[2])
print(json.dumps({{"action": done.action, "path": str(done.path)}}))
"""


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(staging, "CHUNK_BYTES", CHUNK)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def make_source(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8).tobytes())
    return path


def stager(source: Path, stage_to: Path, slow: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-c", STAGER.format(chunk=CHUNK, slow=slow), str(source), str(stage_to)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_on_a_node_copy_once(tmp_path):
    source = make_source(tmp_path / "shared" / "train.h5")
    stage_to = tmp_path / "local"
    first = stager(source, stage_to, slow=True)
    time.sleep(0.8)  # the first holds the node's lock and is copying
    second = stager(source, stage_to, slow=False)
    outs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["action"] for r in results] == ["copied", "reused"]
    assert "waiting for another process" in outs[1][1]  # it waited instead of copying too
    copy = Path(results[0]["path"])
    assert results[1]["path"] == str(copy) and copy.read_bytes() == source.read_bytes()
    assert copy.is_relative_to(stage_to / staging.STAGED_DIR)
    assert not [p for p in copy.parent.iterdir() if ".tmp-" in p.name]  # renamed into place, nothing left over


def test_a_corrupted_copy_is_detected_and_copied_again(tmp_path):
    source = make_source(tmp_path / "shared" / "val.h5")
    first = staging.stage(source, tmp_path / "local")
    assert first.action == "copied"
    data = bytearray(first.path.read_bytes())
    data[SIZE // 2] ^= 0x01  # one flipped bit, same size
    first.path.write_bytes(bytes(data))
    again = staging.stage(source, tmp_path / "local")
    assert again.action == "recopied" and again.path.read_bytes() == source.read_bytes()
    assert staging.stage(source, tmp_path / "local").action == "reused"


def test_a_changed_source_is_copied_again_and_one_job_verifies_once(tmp_path, monkeypatch):
    source = make_source(tmp_path / "shared" / "train.h5")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert staging.stage(source, tmp_path / "local").action == "copied"
    monkeypatch.setattr(staging, "file_digest", lambda *a, **k: pytest.fail("re-verified within one job"))
    assert staging.stage(source, tmp_path / "local").action == "reused"  # this job verified it already
    monkeypatch.undo()
    monkeypatch.setattr(staging, "CHUNK_BYTES", CHUNK)
    make_source(source, seed=1)  # re-packed: new bytes, new mtime
    os.utime(source, ns=(time.time_ns() + 10**9,) * 2)
    done = staging.stage(source, tmp_path / "local")
    assert done.action == "copied" and done.path.read_bytes() == source.read_bytes()


def test_a_source_that_reads_differently_than_recorded_is_refused(tmp_path):
    source = make_source(tmp_path / "shared" / "train.h5")
    staging.stage(source, tmp_path / "node1")
    record = source.with_name(f".{source.name}.blake2b.json")  # the source's checksum, recorded beside it
    values = json.loads(record.read_text())
    values["digest"] = "0" * 64  # as if the shared file system now served other bytes
    record.write_text(json.dumps(values))
    with pytest.raises(FramecastError, match="do not match the checksum recorded"):
        staging.stage(source, tmp_path / "node2")
    assert not staging.staged_path(source, tmp_path / "node2").exists()


def test_open_split_reads_the_staged_pack(tmp_path):
    from data.pack import pack_dataset
    from data.synthetic import make_shapes_dataset

    root = make_shapes_dataset(tmp_path / "data", counts={"train": 2, "val": 1, "unlabeled": 0, "hidden": 0},
                               height=16, width=24, frames=6, hidden_frames=3, seed=0, workers=1)
    pack_dataset(root, splits=["train"], workers=1)
    data = config_from_dict({"data": {"root": str(root), "stage_to": "${FRAMECAST_TEST_NODE_TMP:-}"}}).data
    assert open_split(data, "train").path == root / "packed" / "train.h5"  # empty after expansion: off
    os.environ["FRAMECAST_TEST_NODE_TMP"] = str(tmp_path / "node")
    try:
        source = open_split(data, "train")
    finally:
        del os.environ["FRAMECAST_TEST_NODE_TMP"]
    assert isinstance(source, H5VideoSource)
    assert source.path.is_relative_to(tmp_path / "node" / staging.STAGED_DIR)
    original = H5VideoSource(root / "packed" / "train.h5")
    assert np.array_equal(source.read(1), original.read(1))
