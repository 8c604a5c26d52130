#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go, on a machine with one CUDA device:
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [PART ...]
#
# PARTs: check train layout loader predict compile (default: all; roughly 20-25 minutes on an H100,
# most of it compiling). PYTHON names the interpreter (default: .venv/bin/python when present, else
# python3); it needs a CUDA build of torch. Each benchmark writes OUT_DIR/<name>.json (its stderr to
# OUT_DIR/<name>.log), the last lines printed are a table of the figures, and the exit status is the
# number of benchmarks that failed (out of memory, say), the others running regardless.
set -u
usage="usage: gpu_suite.sh OUT_DIR [check train layout loader predict compile]"
all_parts="check train layout loader predict compile"
out=${1:?$usage}
shift
parts=${*:-$all_parts}
for part in $parts; do  # exit status 64 (EX_USAGE), apart from the count of failed benchmarks
    [[ " $all_parts " == *" $part "* ]] || { echo "unknown part '$part'; $usage" >&2; exit 64; }
done
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 64  # absolute: the benchmarks run from the repository root
cd "$(dirname "$0")/.." || exit 64
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
py=$PYTHON
export PYTHONUNBUFFERED=1
failures=0

bench() {  # bench NAME SECONDS command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.log"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        failures=$((failures + 1))
        echo "   FAILED (exit $rc): $(tail -n 2 "$out/$name.log" | tr '\n' ' ')"
    fi
}

want() { [[ " $parts " == *" $1 "* ]]; }

train() {  # train NAME [bench_train.py arguments...]: the default 160x240 model, batch 8 unless given
    local name=$1
    shift
    bench "$name" 600 $py benchmarks/bench_train.py --batch 8 "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv >"$out/gpu.csv" 2>&1
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" \
    | tee "$out/versions.txt"

if want check; then
    bench check_gpu 900 $py benchmarks/check_gpu.py --compile
fi
if want train; then
    for batch in 4 8 16; do
        train "train_gru_bf16_b$batch" --cell gru --amp bf16 --no-channels-last --batch "$batch"
    done
    train train_lstm_bf16_b8 --cell lstm --amp bf16 --no-channels-last
    train train_gru_tf32_b8 --cell gru --amp off --no-channels-last
    train train_gru_bf16_b8_recompute --cell gru --amp bf16 --no-channels-last --activation-checkpointing
fi
if want layout; then
    train train_gru_bf16_b8_cl --cell gru --amp bf16 --channels-last
    train train_lstm_bf16_b8_cl --cell lstm --amp bf16 --channels-last
fi
if want loader; then
    # Keeps its 160x240 pack in $out/data so the loader-fed training run below can read it.
    bench data_160x240 600 $py benchmarks/bench_data.py --videos 480 --height 160 --width 240 \
        --loader-workers 8 --rss-videos 200 2000 --dir "$out/data"
    train train_gru_bf16_b8_loader --cell gru --amp bf16 --no-channels-last --steps 40 \
        --with-loader "$out/data/train.h5" --workers 8 --prefetch 2
    rm -rf "$out/data"
fi
if want predict; then
    # Enough videos that every loader process has all its prefetched batches in flight at both sizes.
    for prefetch in 2 4; do
        bench "predict_default_prefetch$prefetch" 300 $py benchmarks/bench_predict.py --model default \
            --videos 600 2000 --batch-size 16 --workers 8 --prefetch "$prefetch" --no-channels-last
    done
fi
if want compile; then
    train train_gru_bf16_b8_compile --cell gru --amp bf16 --no-channels-last --compile
    train train_gru_bf16_b8_compile_cl --cell gru --amp bf16 --channels-last --compile
    train train_lstm_bf16_b8_compile --cell lstm --amp bf16 --no-channels-last --compile
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
              f"({r['fraction_of_peak']}) cuda {r['peak_cuda_mb']} MiB rss {r['peak_rss_mb']} MiB")
    elif "runs" in r:
        for run in r["runs"]:
            print(f"{path.stem:32} {run['videos']:6} videos {run['videos_per_s']:8.2f} videos/s "
                  f"rss {run['peak_rss_mb']} MiB cuda {run.get('peak_cuda_mb')} MiB")
    elif "loader" in r:
        print(f"{path.stem:32} pack {r['pack_videos_per_s']} v/s loader {r['loader']} rss "
              + str({k: v['main_peak_rss_mb'] for k, v in r['rss'].items()}))
    elif "checks" in r:
        for c in r["checks"]:
            print(f"check {c['cell']} {c['dtype']} cl={c['channels_last']} compile={c['compile']} "
                  f"recompute={c['activation_checkpointing']}: out {c['output_rel_err']:.2e} "
                  f"grad {c['grad_rel_err']:.2e} ok={c['ok']}")
EOF
echo "$failures benchmark(s) failed"
exit "$failures"
