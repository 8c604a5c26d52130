"""The benchmark scripts users run on their GPU nodes still run, and report what they claim."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=300)


def test_check_gpu_compares_every_path_with_the_float64_reference():
    done = run_script("check_gpu.py", "--device", "cpu", "--height", "16", "--width", "24",
                      "--t-in", "2", "--t-out", "2", "--batch", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    checks = {(c["cell"], c["dtype"], c["channels_last"], c["activation_checkpointing"]): c for c in report["checks"]}
    assert set(checks) == {(cell, dtype, layout, False) for cell in ("gru", "lstm")
                           for dtype in ("fp32", "bf16") for layout in (False, True)} | \
        {("gru", "fp32", False, True), ("lstm", "fp32", False, True)}
    for (cell, dtype, _, _), check in checks.items():
        assert check["ok"], check
        if dtype == "fp32":  # float32 against float64 on the same CPU kernels: far below the tolerance
            assert check["output_rel_err"] < 1e-4, check
        else:  # bf16 rounds: visibly worse than fp32, still inside the band
            assert 1e-4 < check["output_rel_err"] < report["tolerance"]["bf16"], check


def test_bench_train_reports_flops_throughput_and_fraction_consistently():
    done = run_script("bench_train.py", "--device", "cpu", "--height", "16", "--width", "24", "--t-in", "2",
                      "--t-out", "2", "--batch", "2", "--steps", "1", "--warmup", "1", "--peak-tflops", "1",
                      "--activation-checkpointing")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["dtype"], result["frames"], result["size"], result["batch"]) == ("fp32", [2, 2], [16, 24], 2)
    # useful FLOPs exclude the recomputation that activation checkpointing adds to what is executed
    assert 0 < result["gflops_per_video_step"] < result["executed_gflops_per_video_step"]
    assert result["saved_activations_mb"] > 0
    achieved = result["gflops_per_video_step"] * result["videos_per_s"] / 1000  # TFLOP/s
    assert abs(result["achieved_tflops"] - achieved) <= 1e-3 + 0.01 * achieved
    assert abs(result["fraction_of_peak"] - result["achieved_tflops"] / 1) <= 1e-4  # --peak-tflops 1
