"""Ensembles: several checkpoints predict (and are evaluated) as their mean, with a per-pixel spread."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from predict_helpers import (  # noqa: F401 (fixtures)
    HEIGHT,
    T_IN,
    T_OUT,
    WIDTH,
    cfg,
    data_root,
    make_checkpoint,
    read_first_frames,
)
from tiny_models import model_section

from core.checkpoint import FRAME_SIZE_KEY, save_checkpoint
from core.config import config_from_dict, config_to_dict
from core.errors import FramecastError
from data.predictions import load_spread, merge_shards, spread_path_for
import cli
from models import build_model
from models.loading import load_model
from stages import convert, evaluate, predict
from stages.convert import SPREAD_VMAX, spread_colours, write_pngs
from training.inference import resolve_checkpoints

REPO = Path(__file__).resolve().parent.parent
N_HIDDEN = 8


def make_variant(cfg, path: Path, *, t_out: int = T_OUT, family: str = "encoder_forecaster", in_channels: int = 3,
                 frame_size: tuple[int, int] | None = None, seed: int = 0) -> Path:
    """make_checkpoint's variants: another t_out, family or channel count, or a recorded frame size."""
    torch.manual_seed(seed)
    model_cfg = config_from_dict({"model": {**model_section(family), "in_channels": in_channels}}).model
    variant = dataclasses.replace(cfg, model=model_cfg, data=dataclasses.replace(cfg.data, t_out=t_out))
    model = build_model(model_cfg, variant.data.t_in, t_out)
    state = {"model": model.state_dict(), "config": config_to_dict(variant),
             "progress": {"epoch": 2, "step": 20, "best_val_loss": 0.05, "val_loss": 0.05}}
    if frame_size is not None:
        state[FRAME_SIZE_KEY] = list(frame_size)
    save_checkpoint(state, path)
    return path


def clipped_outputs(paths: list[Path], root: Path, names: list[str]) -> np.ndarray:
    """Each member applied to the named hidden videos (read straight from their PNGs), clipped to
    [0, 1]: float32 (members, N, T, H, W, 3)."""
    inputs = np.stack([read_first_frames(root / "hidden" / name, T_IN) for name in names])
    x = torch.from_numpy(inputs).permute(0, 1, 4, 2, 3).float() / 255  # (N, T_in, C, H, W)
    outputs = []
    for path in paths:
        model, _, _ = load_model(path)
        with torch.no_grad():
            outputs.append(model(x).clamp(0, 1).permute(0, 1, 3, 4, 2).numpy())  # (N, T_out, H, W, C)
    return np.stack(outputs)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- predict


def test_an_ensemble_of_one_is_the_single_model_byte_for_byte(cfg, tmp_path: Path):
    best = cfg.run_dir / "best.pt"
    single = predict.run(cfg)
    assert single == cfg.run_dir / "preds" / "hidden.npy"
    cfg.predict.checkpoint = [str(best)]  # a list: an ensemble (of one)
    ensemble = predict.run(cfg)
    # An ensemble's outputs go beside the run folders, never into a member's: its own predictions stay.
    assert ensemble == cfg.run_dir.parent / "ensembles" / cfg.run_dir.name / "preds" / "hidden.npy"
    assert ensemble.read_bytes() == single.read_bytes()
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (single, ensemble))
    assert b["members"] == [{"checkpoint": str(best), "epoch": 3, "family": "encoder_forecaster"}]
    assert a.pop("members") == b.pop("members")
    assert a["config"]["predict"].pop("checkpoint") == "" and b["config"]["predict"].pop("checkpoint") == [str(best)]
    assert a == b and a["checkpoint"] == str(best) and a["spread"] is None
    assert not spread_path_for(ensemble).exists()


def test_identical_members_have_zero_spread_and_the_spread_file_matches_its_index(cfg, tmp_path: Path):
    best = str(cfg.run_dir / "best.pt")
    single = predict.run(cfg)
    cfg.predict.checkpoint, cfg.predict.spread = [best, best], True
    cfg.predict.out = str(tmp_path / "twice" / "hidden.npy")
    out = predict.run(cfg)
    assert out.read_bytes() == single.read_bytes()  # the mean of two equal members is the member
    spread_file = tmp_path / "twice" / "hidden.std.npy"
    spread = np.load(spread_file, allow_pickle=False)
    assert spread.dtype == np.float16 and spread.shape == (N_HIDDEN, T_OUT, HEIGHT, WIDTH, 3)
    assert not spread.any()
    index = json.loads(out.with_suffix(".json").read_text())
    assert index["spread"]["file"] == "hidden.std.npy" and index["spread"]["dtype"] == "float16"
    assert index["checkpoint"] == [best, best] and len(index["members"]) == 2
    mapped, same_index = load_spread(out)
    assert mapped.shape == spread.shape and same_index == index


def test_two_members_give_the_mean_and_std_of_their_clipped_outputs(cfg, tmp_path: Path):
    # Seeds 0 and 1, and a constant colour far outside [0, 1] (so clipping must happen before the mean).
    paths = [make_checkpoint(cfg, path=tmp_path / "m" / f"seed{i}.pt", seed=i) for i in range(2)]
    paths.append(make_checkpoint(cfg, path=tmp_path / "m" / "seed2.pt", bias=(2.0, -1.0, 0.3)))
    cfg.predict.checkpoint, cfg.predict.spread = str(tmp_path / "m" / "seed*.pt"), True
    cfg.predict.batch_size = 1
    out = predict.run(cfg)
    assert out == cfg.run_dir.parent / "ensembles" / "seedall" / "preds" / "hidden.npy"  # named after the glob
    index = json.loads(out.with_suffix(".json").read_text())
    assert [m["checkpoint"] for m in index["members"]] == [str(p) for p in paths]  # the glob, sorted
    members = clipped_outputs(paths, Path(cfg.data.root), index["videos"])  # (3, N, T, H, W, 3)
    diff = np.abs(np.load(out).astype(int) - np.round(members.mean(axis=0) * 255).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # a value on a .5 boundary may round the other way
    spread = np.load(spread_path_for(out)).astype(np.float32)
    np.testing.assert_allclose(spread, members.std(axis=0), atol=2e-3, rtol=2e-3)  # float16 of the std
    assert spread.max() > 0.2


def test_sharded_ensemble_with_spread_merges_to_the_unsharded_arrays(cfg, tmp_path: Path):
    other = make_checkpoint(cfg, path=tmp_path / "other.pt", seed=1)
    cfg.predict.checkpoint, cfg.predict.spread, cfg.predict.batch_size = [str(cfg.run_dir / "best.pt"), str(other)], True, 1
    cfg.predict.out = str(tmp_path / "whole" / "hidden.npy")
    whole = predict.run(cfg)
    cfg.predict.out, cfg.predict.shards = str(tmp_path / "sharded" / "hidden.npy"), 3
    for i in reversed(range(3)):
        predict.run(cfg, shard=(i, 3))
    assert (tmp_path / "sharded" / "hidden.shard1of3.std.npy").is_file()
    merged = predict.merge(cfg)
    assert merged.read_bytes() == whole.read_bytes()
    assert spread_path_for(merged).read_bytes() == spread_path_for(whole).read_bytes()
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (merged, whole))
    assert a["spread"] == b["spread"] and a["members"] == b["members"] and a["videos"] == b["videos"]

    # A shard predicted without the spread does not merge with those that have one.
    cfg.predict.spread = False
    predict.run(cfg, shard=(2, 3))
    with pytest.raises(FramecastError, match=r"shard2of3\.npy: has no spread file but .*shard0of3\.npy has one"):
        merge_shards(cfg.predict.out, 3)


def test_members_of_different_families_average(cfg, tmp_path: Path):
    unet = make_variant(cfg, tmp_path / "unet.pt", family="unet")
    cfg.predict.checkpoint, cfg.predict.out = [str(cfg.run_dir / "best.pt"), str(unet)], str(tmp_path / "mixed.npy")
    index = json.loads(predict.run(cfg).with_suffix(".json").read_text())
    assert [m["family"] for m in index["members"]] == ["encoder_forecaster", "unet"]
    assert index["shape"] == [N_HIDDEN, T_OUT, HEIGHT, WIDTH, 3]


@pytest.mark.parametrize("variant, difference", [
    (dict(t_in=T_IN + 1), f"data.t_in={T_IN + 1}, but .*best\\.pt has data\\.t_in={T_IN}"),
    (dict(t_out=T_OUT + 1), f"data.t_out={T_OUT + 1}, but .*best\\.pt has data\\.t_out={T_OUT}"),
    (dict(in_channels=1), "model.in_channels=1, but .*best\\.pt has model\\.in_channels=3"),
    (dict(frame_size=(2 * HEIGHT, WIDTH)), f"frame size={2 * HEIGHT}x{WIDTH}, but .*first\\.pt has frame size={HEIGHT}x{WIDTH}"),
])
def test_a_mismatched_member_is_one_line_naming_both_files(cfg, tmp_path: Path, variant, difference):
    first = str(cfg.run_dir / "best.pt")
    if "t_in" in variant:
        other = make_checkpoint(cfg, path=tmp_path / "other.pt", t_in=variant["t_in"])
    else:
        other = make_variant(cfg, tmp_path / "other.pt", **variant)
    if "frame_size" in variant:  # both must record their frame size for it to be compared
        first = str(make_variant(cfg, tmp_path / "first.pt", frame_size=(HEIGHT, WIDTH)))
    cfg.predict.checkpoint = [first, str(other)]
    with pytest.raises(FramecastError, match=rf"other\.pt: ensemble member with {difference}") as info:
        predict.run(cfg)
    assert "\n" not in str(info.value)


def test_a_glob_matching_nothing_is_one_line(cfg, tmp_path: Path):
    cfg.predict.checkpoint = str(tmp_path / "sweep" / "*" / "best.pt")
    with pytest.raises(FramecastError, match=r"predict\.checkpoint: '.*sweep/\*/best\.pt' matches no file"):
        predict.run(cfg)
    with pytest.raises(FramecastError, match=r"predict\.checkpoint: an empty list"):
        config_from_dict({"predict": {"checkpoint": []}})
    # Saved configs of existing runs hold a string: one checkpoint, as before.
    assert config_from_dict({"predict": {"checkpoint": "runs/a/best.pt"}}).predict.checkpoint == "runs/a/best.pt"
    assert resolve_checkpoints(["b.pt", "a.pt"]) == [Path("b.pt"), Path("a.pt")]  # a list keeps its order


def test_repeated_checkpoint_flags_become_one_list_setting():
    parse = cli.build_parser().parse_args
    args = parse(["predict", "--checkpoint", "a.pt", "--checkpoint", "runs/*/best.pt", "--split", "val"])
    overrides = cli._flag_overrides(args, args.declared_stage.flag_keys())
    assert 'predict.checkpoint=["a.pt", "runs/*/best.pt"]' in overrides and "predict.split=val" in overrides
    args = parse(["evaluate", "--checkpoint", "*/best.pt"])
    assert cli._flag_overrides(args, args.declared_stage.flag_keys()) == ['predict.checkpoint="*/best.pt"']
    from core.config import load_config

    assert load_config(None, overrides).predict.checkpoint == ["a.pt", "runs/*/best.pt"]
    assert load_config(None, ['predict.checkpoint="*/best.pt"']).predict.checkpoint == "*/best.pt"


def test_cli_predicts_a_seed_sweep_from_a_glob_and_refuses_what_does_not_fit(cfg, tmp_path: Path):
    sweep = tmp_path / "sweep"
    cfg.run.out_dir = str(sweep)
    for seed in (1, 0):
        cfg.run.name = f"seed={seed}"
        make_checkpoint(cfg, seed=seed)  # sweep folders hold <run>/best.pt
    out = tmp_path / "ens" / "hidden.npy"
    done = run_cli("predict", "--checkpoint", str(sweep / "*" / "best.pt"), "--out", str(out), "predict.spread=true")
    assert done.returncode == 0, done.stderr
    index = json.loads(out.with_suffix(".json").read_text())
    assert index["checkpoint"] == [str(sweep / "seed=0" / "best.pt"), str(sweep / "seed=1" / "best.pt")]
    assert index["config"]["run"]["name"] == "seed=0"  # the first member's config
    assert np.load(spread_path_for(out)).shape == (N_HIDDEN, T_OUT, HEIGHT, WIDTH, 3)

    line = one_error_line(run_cli("predict", "--checkpoint", str(tmp_path / "none" / "*.pt")))
    assert "none/*.pt' matches no file" in line
    bad = make_checkpoint(cfg, path=tmp_path / "t5.pt", t_in=T_IN + 1)
    line = one_error_line(run_cli("predict", "--checkpoint", str(sweep / "seed=0" / "best.pt"),
                                  "--checkpoint", str(bad), "--out", str(tmp_path / "x.npy")))
    assert str(bad) in line and str(sweep / "seed=0" / "best.pt") in line and "data.t_in=5" in line


# ----------------------------------------------------------------------------- heat maps


def test_heat_maps_have_the_frames_names_and_size_on_a_fixed_scale(tmp_path: Path):
    videos, frames = ["video_3", "video_10"], [4, 5]
    array = np.zeros((2, 2, HEIGHT, WIDTH, 3), np.uint8)
    spread = np.zeros(array.shape, np.float16)
    spread[0, 0, :, :WIDTH // 4] = SPREAD_VMAX / 2  # half the scale
    spread[0, 0, :, WIDTH // 4:WIDTH // 2] = SPREAD_VMAX  # the top of the scale ...
    spread[0, 0, :, WIDTH // 2:] = 0.5  # ... where more saturates
    spread[1, 1, :, :, 0] = 3 * SPREAD_VMAX / 2  # one channel only: averaged over the three
    npy = tmp_path / "preds.npy"
    np.save(npy, array)
    np.save(spread_path_for(npy), spread)
    (tmp_path / "preds.json").write_text(json.dumps({"videos": videos, "frames": frames, "shape": list(array.shape),
                                                      "spread": {"file": "preds.std.npy"}}))
    out = tmp_path / "png"
    assert write_pngs(npy, out, workers=2, spread=True) == 2 * 2 * 2
    for video in videos:
        assert sorted(p.name for p in (out / video).iterdir()) == sorted(
            [f"image_{k}.png" for k in frames] + [f"spread_{k}.png" for k in frames])
    colours = spread_colours()
    with Image.open(out / "video_3" / "spread_4.png") as image:
        assert image.size == (WIDTH, HEIGHT) and image.mode == "RGB"
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[0, 0], colours[128])
    np.testing.assert_array_equal(pixels[0, WIDTH // 4], colours[255])
    np.testing.assert_array_equal(pixels[0, -1], colours[255])
    with Image.open(out / "video_10" / "spread_5.png") as image:
        np.testing.assert_array_equal(np.asarray(image)[0, 0], colours[128])
    with Image.open(out / "video_10" / "spread_4.png") as image:
        assert (np.asarray(image) == colours[0]).all()  # no spread: the darkest colour

    # np_to_png --spread does the same; an array predicted without a spread is one line.
    done = subprocess.run([sys.executable, str(REPO / "np_to_png.py"), str(npy), "--out", str(tmp_path / "cli"),
                           "--spread", "--frames", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(tmp_path / "cli").as_posix() for p in (tmp_path / "cli").rglob("*.png")) == sorted(
        [f"{v}/image_5.png" for v in videos] + [f"{v}/spread_5.png" for v in videos])
    (tmp_path / "preds.json").write_text(json.dumps({"videos": videos, "frames": frames, "spread": None}))
    with pytest.raises(FramecastError, match=r"preds\.json: names no spread file"):
        write_pngs(npy, out, spread=True)


def test_convert_stage_draws_the_spread_from_config(cfg, tmp_path: Path):
    other = make_checkpoint(cfg, path=tmp_path / "other.pt", seed=1)
    cfg.predict.checkpoint, cfg.predict.spread = [str(cfg.run_dir / "best.pt"), str(other)], True
    cfg.convert.spread, cfg.convert.frames, cfg.convert.workers = True, [T_IN + T_OUT - 1], 1
    predict.run(cfg)
    png = convert.run(cfg)
    assert png == cfg.run_dir.parent / "ensembles" / f"{cfg.run_dir.name}+other" / "png" / "hidden"
    names = {p.relative_to(png).as_posix() for p in png.rglob("*.png")}
    assert len(names) == 2 * N_HIDDEN and f"video_10/spread_{T_IN + T_OUT - 1}.png" in names


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_scores_the_ensemble_and_reports_each_member(cfg, tmp_path: Path):
    best = cfg.run_dir / "best.pt"
    other = make_checkpoint(cfg, path=tmp_path / "other.pt", seed=1)
    alone = {}
    for path in (best, other):
        cfg.predict.checkpoint = str(path)
        alone[path] = evaluate.run(cfg, "val", out_dir=tmp_path / path.stem, samples=0)
    assert alone[best]["members"] == [{"checkpoint": str(best), "epoch": 3, "family": "encoder_forecaster",
                                       "mean": alone[best]["model"]["mean"]}]
    cfg.predict.checkpoint = [str(best), str(other)]
    report = evaluate.run(cfg, "val", samples=1)
    # The report is the ensemble's, not the first member's: it is not written in that member's run folder.
    assert Path(report["files"]["report"]) == (cfg.run_dir.parent / "ensembles" / f"{cfg.run_dir.name}+other" /
                                               "eval" / "val" / "report.json")
    assert not (cfg.run_dir / "eval").exists()
    assert report["checkpoint"] == [str(best), str(other)] and report["family"] == ["encoder_forecaster"] * 2
    assert [m["checkpoint"] for m in report["members"]] == [str(best), str(other)]
    for member, path in zip(report["members"], (best, other)):
        for key, value in alone[path]["model"]["mean"].items():
            assert member["mean"][key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    # The ensemble's own score is of the mean forecast: not either member's.
    assert report["model"]["mean"]["mse_per_frame_sum"] not in [alone[p]["model"]["mean"]["mse_per_frame_sum"]
                                                                for p in alone]
    spread = report["ensemble_spread"]
    assert len(spread["per_lead_time"]) == T_OUT and spread["mean"] > 0


def test_an_ensemble_of_sweep_seeds_writes_beside_the_sweep_runs_named_after_its_glob():
    """The README's example: the seeds of one sweep point, with the first member's config (run.out_dir is
    the sweep folder): outputs in <sweep>/ensembles/<point>,seed=all/, no member's folder touched."""
    from core.config import config_from_dict
    from core.outputs import ensemble_name, eval_dir, png_dir, predictions_path

    member = "runs/lr-family/lr=3e-4,family=simvp,seed=0"
    cfg = config_from_dict({"run": {"out_dir": "runs/lr-family", "name": "lr=3e-4,family=simvp,seed=0"},
                            "predict": {"checkpoint": "runs/lr-family/lr=3e-4,family=simvp,seed=*/best.pt"}})
    assert ensemble_name(cfg) == "lr=3e-4,family=simvp,seed=all"
    folder = Path("runs/lr-family/ensembles/lr=3e-4,family=simvp,seed=all")
    assert predictions_path(cfg) == folder / "preds" / "hidden.npy"
    assert png_dir(cfg) == folder / "png" / "hidden" and eval_dir(cfg) == folder / "eval" / "val"
    assert not any(str(p).startswith(member) for p in (predictions_path(cfg), png_dir(cfg), eval_dir(cfg)))
    cfg.predict.checkpoint = [f"runs/x/{'a' * 80}/best.pt", f"runs/x/{'b' * 80}/best.pt"]
    assert len(ensemble_name(cfg)) == 100  # long lists end in a hash, within a file name's length
