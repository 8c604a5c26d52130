"""The benchmark scripts users run on their GPU nodes still run, and report what they claim."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(REPO))

from benchmarks import bench_model, bench_train  # noqa: E402

# Every family, and the settings that pick its variant (the TAU translator is one of SimVP's).
FAMILIES = {
    "convlstm": [],
    "predrnn": [],
    "simvp": ["model.simvp.translator=gsta"],
    "tau": ["model.simvp.translator=tau"],
}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<name>`` from the repository root, as the README runs them."""
    return subprocess.run([sys.executable, "-m", f"benchmarks.{Path(name).stem}", *args], cwd=BENCHMARKS.parent,
                          capture_output=True, text=True, timeout=300)


def family_args(name: str) -> list[str]:
    return ["--family", "simvp" if name == "tau" else name, *FAMILIES[name]]


# check_gpu draws fresh weights and inputs unless given a seed. bf16's error on models this small has a
# long tail across draws (PredRNN's gradient passed its tolerance in 22 of 24 seeds), and these tests
# are about which paths are checked against what, not about one draw: they pin it.
CHECK_GPU_SEED = "0"


def test_check_gpu_compares_every_path_with_the_float64_reference():
    done = run_script("check_gpu.py", "--device", "cpu", "--seed", CHECK_GPU_SEED, "--height", "16", "--width", "24",
                      "--t-in", "2", "--t-out", "2", "--batch", "1", "--families", "encoder_forecaster")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = [c for c in report["checks"] if c["family"] == "encoder_forecaster"]
    checks = {(c["cell"], c["dtype"], c["channels_last"], c["activation_checkpointing"]): c for c in rows}
    assert set(checks) == {(cell, dtype, layout, False) for cell in ("gru", "lstm")
                           for dtype in ("fp32", "bf16") for layout in (False, True)} | \
        {("gru", "fp32", False, True), ("lstm", "fp32", False, True)}
    for (_, dtype, _, _), check in checks.items():
        assert check["ok"], check
        if dtype == "fp32":  # float32 against float64 on the same CPU kernels: far below the tolerance
            assert check["output_rel_err"] < 1e-4, check
        else:  # bf16 rounds: visibly worse than fp32, still inside the band
            assert 1e-4 < check["output_rel_err"] < report["tolerance"]["bf16"], check


def test_check_gpu_checks_every_other_family_including_its_own_loss_terms():
    done = run_script("check_gpu.py", "--device", "cpu", "--seed", CHECK_GPU_SEED, "--height", "16", "--width", "24", "--t-in", "3",
                      "--t-out", "3", "--batch", "1", "--preset", "tiny", "--families", "convlstm", "predrnn", "simvp")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    checks = {(c["family"], c["variant"], c["dtype"], c["channels_last"], c["activation_checkpointing"]): c
              for c in report["checks"]}
    plain = {(family, variant, dtype, layout, False)
             for family, variant in (("convlstm", "lstm"), ("predrnn", "v2"), ("simvp", "gsta"), ("simvp", "tau"))
             for dtype in ("fp32", "bf16") for layout in (False, True)}
    # activation checkpointing where a family has recurrent steps to recompute (SimVP has none)
    assert set(checks) == plain | {("convlstm", "lstm", "fp32", False, True), ("predrnn", "v2", "fp32", False, True)}
    for (_, _, dtype, _, _), check in checks.items():
        assert check["ok"], check
        assert check["tolerance"] >= report["tolerance"][dtype]
        errors = check["output_rel_err"], check["grad_rel_err"], check["loss_rel_err"]
        if dtype == "fp32":
            assert max(errors) < 1e-4, check
        else:
            assert 1e-4 < check["output_rel_err"] < check["tolerance"], check


def test_bench_train_reports_flops_throughput_and_fraction_consistently():
    done = run_script("bench_train.py", "--device", "cpu", "--height", "16", "--width", "24", "--t-in", "2",
                      "--t-out", "2", "--batch", "2", "--steps", "1", "--warmup", "1", "--peak-tflops", "1",
                      "--activation-checkpointing")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["dtype"], result["frames"], result["size"], result["batch"]) == ("fp32", [2, 2], [16, 24], 2)
    assert (result["family"], result["cell"]) == ("encoder_forecaster", "gru")
    # useful FLOPs exclude the recomputation that activation checkpointing adds to what is executed
    assert 0 < result["gflops_per_video_step"] < result["executed_gflops_per_video_step"]
    assert result["saved_activations_mb"] > 0
    achieved = result["gflops_per_video_step"] * result["videos_per_s"] / 1000  # TFLOP/s
    assert abs(result["achieved_tflops"] - achieved) <= 1e-3 + 0.01 * achieved
    assert abs(result["fraction_of_peak"] - result["achieved_tflops"] / 1) <= 1e-4  # --peak-tflops 1


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bench_train_measures_every_family_with_the_train_step(name, capsys):
    sizes = ["--preset", "tiny", "--height", "16", "--width", "24", "--t-in", "3", "--t-out", "3", "--batch", "1",
             *family_args(name)]
    result = bench_train.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--peak-tflops", "1", *sizes])
    assert json.loads(capsys.readouterr().out) == result  # the one JSON object printed
    assert result["family"] == family_args(name)[1] and result["preset"] == "tiny"
    assert (result["frames"], result["size"], result["batch"]) == ([3, 3], [16, 24], 1)
    assert result["params"] > 0 and result["gflops_per_video_step"] > 0 and result["saved_activations_mb"] > 0
    assert result["executed_gflops_per_video_step"] == result["gflops_per_video_step"]  # no recomputation asked
    # the family's own loss terms are trained: PredRNN's decoupling loss, TAU's divergence
    assert (result["mean_extra_loss"] > 0) == (name in ("predrnn", "tau")), result
    assert abs(result["fraction_of_peak"] - result["achieved_tflops"]) <= 1e-4
    # bench_model counts on the meta device what the real fp32 step saved for backward, and the same FLOPs
    counted = bench_model.main(["--count-only", *sizes])
    capsys.readouterr()
    assert counted["saved_activations_mb_per_video"] == result["saved_activations_mb"]
    assert round(counted["flops_per_video_train_step"] / 1e9, 3) == result["gflops_per_video_step"]


def test_bench_train_refuses_what_a_family_does_not_have():
    """One line naming the setting (SystemExit with the message), not a traceback."""
    with pytest.raises(SystemExit, match="--cell applies to the encoder_forecaster, convlstm families, not simvp"):
        bench_train.main(["--device", "cpu", "--family", "simvp", "--cell", "gru"])
    with pytest.raises(SystemExit, match="activation_checkpointing is not available for model.family=simvp"):
        bench_train.main(["--device", "cpu", "--family", "simvp", "--activation-checkpointing", "--preset", "tiny"])
    with pytest.raises(SystemExit, match="unknown setting model.simvp.hidden_channels"):
        bench_train.main(["--device", "cpu", "--family", "simvp", "model.simvp.hidden_channels=[8]"])


# Published sizes of the Moving-MNIST configurations (OpenSTL's benchmark table, 10 -> 10 at 64x64):
# parameters, and forward "FLOPs" per video, which OpenSTL counts as multiply-accumulates.
PUBLISHED = {"predrnn": (23.9e6, 117e9), "simvp": (46.8e6, 16.5e9), "tau": (44.7e6, 16.0e9), "convlstm": (None, 56.8e9)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_mmnist_presets_are_the_published_models(name, capsys):
    result = bench_model.main(["--preset", "mmnist", "--count-only", *family_args(name)])
    capsys.readouterr()
    params, macs = PUBLISHED[name]
    assert (result["frames"], result["size"], result["in_channels"]) == ([10, 10], [64, 64], 1)
    if params:  # ConvLSTM: 11.7 M here, OpenSTL's cell has more (15.0 M); its FLOPs agree
        assert result["params"] == pytest.approx(params, rel=0.01)
    assert result["flops_per_video_forward"] / 2 == pytest.approx(macs, rel=0.05)
    # backward costs about twice the forward (grouped convolutions included: torch's own formula
    # counted their weight gradient as dense, 25x the forward for SimVP)
    assert 2.5 < result["flops_per_video_train_step"] / result["flops_per_video_forward"] <= 3.0


def test_bench_predict_runs_the_predict_path_of_a_family():
    done = run_script("bench_predict.py", "--family", "simvp", "--videos", "3", "--height", "16", "--width", "24",
                      "--t-in", "2", "--t-out", "2", "--batch-size", "2", "--workers", "0")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["family"], result["preset"], result["frames"], result["size"]) == ("simvp", "tiny", [2, 2], [16, 24])
    (run,) = result["runs"]
    assert run["videos"] == 3 and run["videos_per_s"] > 0 and run["output_mb"] >= 0


def test_bench_ssim_times_each_way_and_checks_they_agree():
    done = run_script("bench_ssim.py", "--videos", "1", "--frames", "2", "--height", "16", "--width", "24",
                      "--repeats", "1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["seconds"]["framecast_gaussian"]["median"] > 0 and result["speedup_gaussian_vs_dense_float64"] > 0
    # Every pair it reports agrees to ~1e-7: the faster SSIM is the same SSIM.
    assert len(result["max_abs_difference_per_frame"]) == 3
    assert all(d < 1e-6 for d in result["max_abs_difference_per_frame"].values())


def direct_baselines(pack: Path, t_in: int, t_out: int) -> dict[str, list[float]]:
    """Copy-last and mean-of-inputs MSE (summed over a frame) per lead time, straight from the pack."""
    from data.sources import H5VideoSource

    source = H5VideoSource(pack)
    sums = {"copy_last_frame": np.zeros(t_out), "mean_of_inputs": np.zeros(t_out)}
    for index in range(len(source)):
        video = source.read(index, 0, t_in + t_out).astype(np.float64) / 255  # (T, H, W, C)
        inputs, truth = video[:t_in], video[t_in:]
        for name, guess in (("copy_last_frame", inputs[-1]), ("mean_of_inputs", inputs.mean(axis=0))):
            sums[name] += ((truth - guess) ** 2).sum(axis=(1, 2, 3))
    return {name: (total / len(source)).tolist() for name, total in sums.items()}


def test_bench_quality_trains_and_scores_a_family_against_both_baselines(tmp_path):
    done = run_script("bench_quality.py", "--family", "convlstm", "--preset", "tiny", "--height", "32", "--width",
                      "48", "--t-in", "3", "--t-out", "3", "--train-videos", "8", "--val-videos", "4", "--steps", "6",
                      "--out", str(tmp_path), "train.batch_size=2", "data.num_workers=0")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds the JSON object and nothing else
    assert {"family", "data", "size", "frames", "parameters", "steps", "epochs", "train_wall_seconds",
            "train_videos_per_s", "scores", "model_vs_copy_last", "machine", "date"} <= set(result)
    assert (result["family"], result["size"], result["frames"]) == ("convlstm", [32, 48], [3, 3])
    assert (result["steps"], result["epochs"], result["stopped"]) == (6, 2, "completed")  # 4 steps an epoch
    assert result["data"]["train_videos"] == 8 and result["data"]["val_videos"] == 4
    assert result["train_wall_seconds"] > 0 and result["train_videos_per_s"] > 0 and result["parameters"] > 0
    assert {"cpu", "torch", "torch_threads"} <= set(result["machine"])
    scores = result["scores"]
    direct = direct_baselines(tmp_path / "data" / "packed" / "val.h5", 3, 3)
    for name in ("copy_last_frame", "mean_of_inputs"):
        assert scores[name]["per_lead_time"]["mse_per_frame_sum"] == pytest.approx(direct[name], rel=1e-5)
        assert scores[name]["mean"]["mse_per_frame_sum"] == pytest.approx(np.mean(direct[name]), rel=1e-5)
        assert all(0 < s <= 1 for s in scores[name]["per_lead_time"]["ssim"])
    assert all(m > 0 for m in direct["copy_last_frame"])  # the shapes move
    ratio = scores["model"]["mean"]["mse_per_frame_sum"] / scores["copy_last_frame"]["mean"]["mse_per_frame_sum"]
    assert result["model_vs_copy_last"]["mse_ratio"] == pytest.approx(ratio)
    assert result["model_vs_copy_last"]["ssim_difference"] == pytest.approx(
        scores["model"]["mean"]["ssim"] - scores["copy_last_frame"]["mean"]["ssim"])
    # the real stages wrote their files into the given folder
    run_dir = Path(result["run_dir"])
    assert (run_dir / "best.pt").is_file() and Path(result["report"]).is_file()


# bench_peers.py compares framecast with peer implementations from checkouts made outside the
# repository (its docstring says how); FRAMECAST_PEERS names the folder holding them.
PEERS = Path(os.environ.get("FRAMECAST_PEERS", "/tmp/peers"))


def test_bench_peers_asks_for_a_peer_checkout_and_checks_it(tmp_path, capsys):
    from benchmarks import bench_peers

    with pytest.raises(SystemExit):
        bench_peers.main(["--compare", "ef-gru"])
    assert "--compare ef-gru needs --convlstm-pytorch DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_peers.main(["--openstl", str(tmp_path / "missing")])
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"{tmp_path} is not an OpenSTL checkout"):
        bench_peers.main(["--openstl", str(tmp_path), "--compare", "convlstm"])


# (comparison, checkout folder under PEERS, its flag, the framecast and peer parameter counts, how
# many of the peer's get no gradient)
PEER_SMOKE = [
    # the peer convolves the lowest forecaster cell's all-zero input (96 -> 3 x 96, 5x5: 691,200) and
    # its gate convs have biases (3 x 512)
    ("ef-gru", "ConvLSTM-PyTorch", "--convlstm-pytorch", 6_187_553, 6_187_553 + 691_200 + 1_536, 0),
    # OpenSTL's cells define conv_o and conv_last that their forward never uses (4 x 851,968)
    ("convlstm", "OpenSTL", "--openstl", 11_677_712, 15_083_520, 3_407_872),
]


@pytest.mark.parametrize("name, folder, flag, ours, theirs, unused", PEER_SMOKE, ids=[p[0] for p in PEER_SMOKE])
def test_bench_peers_trains_both_sides_on_the_same_input(name, folder, flag, ours, theirs, unused, capsys):
    from benchmarks import bench_peers

    root = PEERS / folder
    if not root.is_dir():
        pytest.skip(f"no peer checkout at {root} (set FRAMECAST_PEERS; see benchmarks/bench_peers.py)")
    result = bench_peers.main([flag, str(root), "--compare", name, "--batch", "1", "--rounds", "1"])
    assert json.loads(capsys.readouterr().out) == result  # the one JSON object printed
    (comparison,) = result["comparisons"]
    fc, peer = comparison["framecast"], comparison["peer"]
    assert (result["geometry"], result["batch"]) == ({"size": [64, 64], "frames": [10, 10], "channels": 1}, 1)
    assert (fc["params"], peer["params"]) == (ours, theirs)
    assert fc["params_with_grad"] == ours and peer["params"] - peer["params_with_grad"] == unused
    assert comparison["params_match"] is False and comparison["params_note"]
    for side in (fc, peer):
        assert len(side["step_times_s"]) == 1 and side["videos_per_s"] > 0 and side["gflops_per_video_step"] > 0
        assert side["recipe"]["optimizer"] == "adam"
    assert comparison["ratio_framecast_over_peer"] == pytest.approx(fc["videos_per_s"] / peer["videos_per_s"], rel=1e-2)
    assert {"cpu", "torch", "torch_threads", "load_average"} <= set(result["machine"])
