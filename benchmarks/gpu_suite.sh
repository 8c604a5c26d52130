#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go, on a machine with one CUDA device:
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [part ...]     parts: check train layout loader predict compile (default: all)
#
# Each benchmark writes OUT_DIR/<name>.json (stderr to OUT_DIR/<name>.log) and the last lines printed
# are a table of the figures. A failing benchmark (out of memory, say) is reported and the rest run.
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR [check train layout loader predict compile]}
shift
parts=${*:-check train layout loader predict compile}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

bench() {  # bench NAME SECONDS command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.log"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "   FAILED (exit $rc): $(tail -n 2 "$out/$name.log" | tr '\n' ' ')"
    fi
}

want() { [[ " $parts " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv >"$out/gpu.csv" 2>&1
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" \
    | tee "$out/versions.txt"

if want check; then
    bench check_gpu 600 $py benchmarks/check_gpu.py --compile
fi
if want train; then
    for batch in 4 8 16; do
        bench "train_gru_bf16_b$batch" 300 $py benchmarks/bench_train.py --cell gru --amp bf16 --batch "$batch"
    done
    bench train_lstm_bf16_b8 300 $py benchmarks/bench_train.py --cell lstm --amp bf16 --batch 8
    bench train_gru_fp32_b8 300 $py benchmarks/bench_train.py --cell gru --amp off --batch 8
    bench train_gru_bf16_b8_cl 300 $py benchmarks/bench_train.py --cell gru --amp bf16 --batch 8 --channels-last
fi
if want layout; then
    bench train_lstm_bf16_b8_cl 300 $py benchmarks/bench_train.py --cell lstm --amp bf16 --batch 8 --channels-last
fi
if want loader; then
    # Keeps its 160x240 pack in $out/data so the loader-fed training run below can read it.
    bench data_160x240 600 $py benchmarks/bench_data.py --videos 480 --height 160 --width 240 \
        --loader-workers 8 --rss-videos 200 2000 --dir "$out/data"
    bench train_gru_bf16_b8_loader 300 $py benchmarks/bench_train.py --cell gru --amp bf16 --batch 8 \
        --steps 40 --with-loader "$out/data/train.h5" --workers 8
    rm -rf "$out/data"
fi
if want predict; then
    # Enough videos that every loader process has all its prefetched batches in flight at both sizes.
    bench predict_default 300 $py benchmarks/bench_predict.py --model default --videos 600 2000 \
        --batch-size 16 --workers 8
    bench predict_default_prefetch4 300 $py benchmarks/bench_predict.py --model default --videos 600 2000 \
        --batch-size 16 --workers 8 --prefetch 4
fi
if want compile; then
    bench train_gru_bf16_b8_compile 600 $py benchmarks/bench_train.py --cell gru --amp bf16 --batch 8 --compile
    bench train_gru_bf16_b8_compile_cl 600 $py benchmarks/bench_train.py --cell gru --amp bf16 --batch 8 --compile \
        --channels-last
    bench train_lstm_bf16_b8_compile 600 $py benchmarks/bench_train.py --cell lstm --amp bf16 --batch 8 --compile
fi

$py - "$out" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        r = json.loads(path.read_text())
    except ValueError:
        continue
    if "achieved_tflops" in r:
        print(f"{path.stem:32} {r['videos_per_s']:8.2f} videos/s {r['achieved_tflops']:8.1f} TFLOP/s "
              f"({r['fraction_of_peak']}) cuda {r['peak_cuda_mb']} MB rss {r['peak_rss_mb']} MB")
    elif "runs" in r:
        for run in r["runs"]:
            print(f"{path.stem:32} {run['videos']:6} videos {run['videos_per_s']:8.2f} videos/s "
                  f"rss {run['peak_rss_mb']} MB cuda {run.get('peak_cuda_mb')} MB")
    elif "loader" in r:
        print(f"{path.stem:32} pack {r['pack_videos_per_s']} v/s loader {r['loader']} rss "
              + str({k: v['main_peak_rss_mb'] for k, v in r['rss'].items()}))
    elif "checks" in r:
        for c in r["checks"]:
            print(f"check {c['cell']} {c['dtype']} cl={c['channels_last']} compile={c['compile']}: "
                  f"out {c['output_rel_err']:.2e} grad {c['grad_rel_err']:.2e} ok={c['ok']}")
EOF
