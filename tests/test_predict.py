"""predict / merge / convert: the .npy a user submits, its index, shards, and the PNGs made from it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import FramecastError
from data.pack import pack_dataset
from data.predictions import load_predictions, merge_shards, shard_rows
from training.inference import to_uint8_frames
from models.loading import load_model
from predict_helpers import T_IN, T_OUT, HEIGHT, WIDTH, make_checkpoint, read_first_frames
from predict_helpers import cfg, data_root  # noqa: F401 (fixtures)
from stages import convert, predict

N_HIDDEN = 8


def expected_rows(cfg, names: list[str]) -> np.ndarray:
    """The model applied to each named hidden video, read straight from its PNGs; uint8 (N, T, H, W, 3)."""
    model, _, _ = load_model(cfg.run_dir / "best.pt")
    inputs = np.stack([read_first_frames(Path(cfg.data.root) / "hidden" / name, T_IN) for name in names])
    x = torch.from_numpy(inputs).permute(0, 1, 4, 2, 3).float() / 255  # (N, T_in, C, H, W)
    with torch.no_grad():
        y = model(x).permute(0, 1, 3, 4, 2).numpy()  # (N, T_out, H, W, C)
    return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)


def test_npy_shape_dtype_loads_with_plain_numpy_and_index_in_numeric_order(cfg):
    out = predict.run(cfg)
    assert out == cfg.run_dir / "preds" / "hidden.npy"
    # A fresh interpreter that imports nothing but numpy reads it, without pickles.
    code = "import sys, numpy; a = numpy.load(sys.argv[1], allow_pickle=False); print(a.shape, a.dtype)"
    loaded = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == f"({N_HIDDEN}, {T_OUT}, {HEIGHT}, {WIDTH}, 3) uint8"

    index = json.loads(out.with_suffix(".json").read_text())
    numeric = sorted((p.name for p in (Path(cfg.data.root) / "hidden").iterdir()), key=lambda n: int(n[6:]))
    assert index["videos"] == numeric and numeric[-2:] == ["video_9", "video_10"]
    assert index["frames"] == list(range(T_IN, T_IN + T_OUT))
    assert index["checkpoint"] == str(cfg.run_dir / "best.pt") and index["epoch"] == 3
    assert index["config"]["model"]["encoder_forecaster"]["hidden_channels"] == [8, 8] and index["shape"] == [N_HIDDEN, T_OUT, HEIGHT, WIDTH, 3]
    # Each row is the prediction for the video the index names at that row (up to float
    # summation order in another batch size: a value on a .5 boundary may round the other way).
    diff = np.abs(np.load(out).astype(int) - expected_rows(cfg, index["videos"]))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")], "temporary file left"


def test_pack_source_and_loader_workers_give_the_same_rows(cfg, tmp_path: Path):
    """The HDF5 pack read by two loader processes gives exactly the PNG source's rows, in order."""
    reference = np.load(predict.run(cfg))
    pack_dataset(cfg.data.root, out_dir=tmp_path / "packed", splits=["hidden"], workers=1)
    cfg.data.pack_dir, cfg.data.source, cfg.data.num_workers = str(tmp_path / "packed"), "h5", 2
    cfg.predict.out = str(tmp_path / "from_pack.npy")
    out = predict.run(cfg)
    np.testing.assert_array_equal(np.load(out), reference)
    assert json.loads(out.with_suffix(".json").read_text())["source"].startswith("pack ")


@pytest.mark.parametrize(
    "bias, colour",
    [
        ((2.0, -1.0, 0.6 / 255), (255, 0, 1)),  # far outside [0, 1] saturates; wrapping would give 254, 1
        ((0.4 / 255, 254.6 / 255, 127.6 / 255), (0, 255, 128)),  # rounds to nearest; truncating gives 0, 254, 127
    ],
)
def test_out_of_range_outputs_are_clipped_and_rounded_not_wrapped(cfg, bias, colour):
    make_checkpoint(cfg, bias=bias)
    array = np.load(predict.run(cfg))
    assert array.dtype == np.uint8
    assert np.all(array == np.array(colour, dtype=np.uint8)), np.unique(array.reshape(-1, 3), axis=0)


def test_to_uint8_frames_on_boundaries():
    raw = torch.tensor([-5.0, -1e-6, 0.4 / 255, 0.6 / 255, 127.4 / 255, 127.6 / 255, 1.0, 1.0 + 1e-6, 300.0])
    raw = raw.reshape(1, 9, 1, 1, 1).expand(1, 9, 3, 1, 1)  # (B, T, C, H, W)
    frames = to_uint8_frames(raw)
    assert frames.shape == (1, 9, 1, 1, 3) and frames.dtype == torch.uint8
    assert frames[0, :, 0, 0, 0].tolist() == [0, 0, 0, 1, 127, 128, 255, 255, 255]


@pytest.mark.parametrize("shards", [3, 5])
def test_sharded_prediction_merged_equals_unsharded(cfg, tmp_path: Path, shards: int):
    # One video per batch: convolution kernels may sum in another order for another batch size,
    # moving a value on a .5 boundary by one level; per-video batches make the comparison exact.
    cfg.predict.batch_size = 1
    whole = predict.run(cfg)
    cfg.predict.out = str(tmp_path / "sharded" / "hidden.npy")
    # Out of order on purpose: array tasks finish in any order.
    written = [predict.run(cfg, shard=(i, shards)) for i in reversed(range(shards))]
    assert sorted(p.name for p in written) == [f"hidden.shard{i}of{shards}.npy" for i in range(shards)]
    sizes = [np.load(p).shape[0] for p in sorted(written)]
    assert sum(sizes) == N_HIDDEN and max(sizes) - min(sizes) <= 1

    merged = merge_shards(cfg.predict.out, shards)
    np.testing.assert_array_equal(np.load(merged), np.load(whole))
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (merged, whole))
    assert a["videos"] == b["videos"] and a["frames"] == b["frames"] and a["shape"] == b["shape"]
    assert a["checkpoint"] == b["checkpoint"] and a["config"]["model"] == b["config"]["model"]


def test_merge_names_the_missing_or_inconsistent_shard(cfg, tmp_path: Path):
    cfg.predict.out = str(tmp_path / "p" / "hidden.npy")
    for i in (0, 2):
        predict.run(cfg, shard=(i, 3))
    with pytest.raises(FramecastError, match=r"hidden\.shard1of3\.npy: shard missing"):
        merge_shards(cfg.predict.out, 3)

    other = make_checkpoint(cfg, path=tmp_path / "other.pt", seed=1)
    cfg.predict.checkpoint = str(other)
    predict.run(cfg, shard=(1, 3))
    with pytest.raises(FramecastError, match=r"hidden\.shard1of3\.npy: 'checkpoint' differs from .*shard0of3\.npy"):
        merge_shards(cfg.predict.out, 3)
    assert not Path(cfg.predict.out).exists()


def test_convert_stage_merges_shards_then_writes_pngs_equal_to_the_array(cfg, tmp_path: Path):
    cfg.predict.out, cfg.predict.shards = str(tmp_path / "preds" / "hidden.npy"), 2
    cfg.convert.workers = 2
    for i in range(2):
        predict.run(cfg, shard=(i, 2))
    png_dir = convert.run(cfg)
    assert png_dir == cfg.run_dir / "png" / "hidden"
    array, index = load_predictions(cfg.predict.out)  # merged by convert
    for row, video in enumerate(index["videos"]):
        for column, k in enumerate(index["frames"]):
            with Image.open(png_dir / video / f"image_{k}.png") as image:
                np.testing.assert_array_equal(np.asarray(image), array[row, column])

    # A course submission wanting only the last frame.
    cfg.convert.out, cfg.convert.frames = str(tmp_path / "last"), [T_IN + T_OUT - 1]
    convert.run(cfg)
    assert len(list((tmp_path / "last").rglob("*.png"))) == N_HIDDEN
    assert {p.name for p in (tmp_path / "last").rglob("*.png")} == {f"image_{T_IN + T_OUT - 1}.png"}


def test_user_errors_name_the_file(cfg, tmp_path: Path):
    cfg.predict.checkpoint = str(tmp_path / "missing.pt")
    with pytest.raises(FramecastError, match=r"missing\.pt: checkpoint not found"):
        predict.run(cfg)
    # A model wanting more input frames than the hidden videos have.
    cfg.predict.checkpoint = str(make_checkpoint(cfg, path=tmp_path / "t5.pt", t_in=T_IN + 1))
    # ... a config asking for another t_in than the checkpoint's model is refused, never ignored
    with pytest.raises(FramecastError, match=r"t5\.pt: holds a model with data\.t_in=5 but the config asks for data\.t_in=4"):
        predict.run(cfg)
    cfg.data.t_in = T_IN + 1
    with pytest.raises(FramecastError, match=r"hidden: videos have 4 frames, but .*t5\.pt needs its last t_in=5"):
        predict.run(cfg)
    with pytest.raises(FramecastError, match=r"shard 3/3"):
        shard_rows(10, 3, 3)
    cfg.predict.out = str(tmp_path / "none.npy")
    with pytest.raises(FramecastError, match=r"none\.npy: prediction array not found"):
        convert.run(cfg)


def test_sigterm_stops_predict_with_one_line_and_leaves_no_temporary_file(cfg, monkeypatch, capsys):
    """SIGTERM arrives while the rows are being written: the partial .npy goes, the old output stays."""
    import os
    import signal

    import cli
    from training.inference import Ensemble

    old = predict.run(cfg)
    before = old.read_bytes()
    calls = []
    forward = Ensemble.__call__

    def terminated_midway(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Ensemble, "__call__", terminated_midway)
    status = cli.main(["predict", "--checkpoint", str(cfg.run_dir / "best.pt"), "--out", str(old),
                       f"data.root={cfg.data.root}", "data.num_workers=0", "predict.batch_size=2", "run.device=cpu"])
    err = capsys.readouterr().err
    assert status == 128 + signal.SIGTERM and len(calls) == 2
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"predict {old}: stopped by SIGTERM" in line
    from data.predictions import index_path_for

    assert sorted(old.parent.iterdir()) == sorted([old, index_path_for(old)])  # no temporary .npy left
    assert old.read_bytes() == before and load_predictions(old)[0].shape[0] == 8
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
