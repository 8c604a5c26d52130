#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go, on a machine with one CUDA device:
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [PART ...]
#
# PARTs (default: all):
#   check          check_gpu.py vs float64: the encoder-forecaster (compiled too) and every other family
#   train          the default encoder-forecaster at 160x240: batch 4/8/16, LSTM cell, TF32, recompute
#   layout         channels_last rows
#   loader         the loader at 160x240, and the default model fed by it
#   predict        bench_predict.py, prefetch 2 and 4
#   compile        compiled training rows, and check_gpu.py --compile for the other families
#   families       every family (ConvGRU encoder-forecaster, ConvLSTM, PredRNN-V2, SimVP-gSTA, TAU) in
#                  bf16 at 64x64 (the published Moving-MNIST configurations, --preset mmnist, batch 16)
#                  and at 160x240 (each family's defaults, --preset default, batch 8; at most ~2 GB of
#                  saved bf16 activations per video, counted on the meta device)
#   family_loader  the loader's videos/s from an HDF5 pack at both sizes, and each family trained from
#                  it; the table at the end gives the loader's margin over each family's consumption
# The first six took roughly 20-25 minutes on an H100, most of it compiling; families and
# family_loader (about 20 short runs) have not been timed yet. PYTHON names the interpreter (default:
# .venv/bin/python when present, else python3); it needs a CUDA build of torch. Each benchmark writes
# OUT_DIR/<name>.json (its stderr to OUT_DIR/<name>.log), the last lines printed are a table of the
# figures, and the exit status is the number of benchmarks that failed (out of memory, say), the
# others running regardless.
set -u
all_parts="check train layout loader predict compile families family_loader"
usage="usage: gpu_suite.sh OUT_DIR [$all_parts]"
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
    bench "$name" 600 $py -m benchmarks.bench_train --batch 8 "$@"
}

# The families' models: name -> bench_train.py arguments (config overrides last, after every option).
family_names="encoder_forecaster convlstm predrnn simvp_gsta simvp_tau"
family_args() {
    case $1 in
        simvp_gsta) echo "--family simvp model.simvp.translator=gsta" ;;
        simvp_tau) echo "--family simvp model.simvp.translator=tau" ;;
        *) echo "--family $1" ;;
    esac
}
# preset:batch:height:width:frames (the frames of each video in the loader's pack)
family_sizes="mmnist:16:64:64:20 default:8:160:240:22"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv >"$out/gpu.csv" 2>&1
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" \
    | tee "$out/versions.txt"

if want check; then
    bench check_gpu 900 $py -m benchmarks.check_gpu --compile --families encoder_forecaster
    bench check_gpu_families 900 $py -m benchmarks.check_gpu --families convlstm predrnn simvp
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
    bench data_160x240 600 $py -m benchmarks.bench_data --videos 480 --height 160 --width 240 \
        --loader-workers 8 --rss-videos 200 2000 --dir "$out/data"
    train train_gru_bf16_b8_loader --cell gru --amp bf16 --no-channels-last --steps 40 \
        --with-loader "$out/data/train.h5" --workers 8 --prefetch 2
    rm -rf "$out/data"
fi
if want predict; then
    # Enough videos that every loader process has all its prefetched batches in flight at both sizes.
    for prefetch in 2 4; do
        bench "predict_default_prefetch$prefetch" 300 $py -m benchmarks.bench_predict --preset default \
            --videos 600 2000 --batch-size 16 --workers 8 --prefetch "$prefetch" --no-channels-last
    done
fi
if want compile; then
    train train_gru_bf16_b8_compile --cell gru --amp bf16 --no-channels-last --compile
    train train_gru_bf16_b8_compile_cl --cell gru --amp bf16 --channels-last --compile
    train train_lstm_bf16_b8_compile --cell lstm --amp bf16 --no-channels-last --compile
    bench check_gpu_families_compile 1800 $py -m benchmarks.check_gpu --compile --families convlstm predrnn simvp
fi
if want families; then
    for size in $family_sizes; do
        IFS=: read -r preset batch _ _ _ <<<"$size"
        for name in $family_names; do
            # shellcheck disable=SC2046  # family_args is meant to split into words
            bench "family_${name}_${preset}" 600 $py -m benchmarks.bench_train --preset "$preset" --amp bf16 \
                --no-channels-last --batch "$batch" $(family_args "$name")
        done
    done
fi
if want family_loader; then
    for size in $family_sizes; do
        IFS=: read -r preset batch height width frames <<<"$size"
        data="$out/data_${height}x${width}"
        # The loader alone (8 workers, the families' batch); its pack stays for the runs below.
        bench "loader_${height}x${width}" 600 $py -m benchmarks.bench_data --videos 480 --height "$height" \
            --width "$width" --frames "$frames" --loader-workers 8 --batch-size "$batch" --rss-videos --dir "$data"
        for name in $family_names; do
            # shellcheck disable=SC2046
            bench "family_loader_${name}_${preset}" 600 $py -m benchmarks.bench_train --preset "$preset" \
                --amp bf16 --no-channels-last --batch "$batch" --steps 40 --with-loader "$data/train.h5" \
                --workers 8 --prefetch 2 $(family_args "$name")
        done
        rm -rf "$data"
    done
fi

$py - "$out" <<'EOF'
import json, pathlib, sys
results = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        results[path.stem] = json.loads(path.read_text())
    except ValueError:
        continue
loader = {}  # (height, width) -> what the loader delivered from an HDF5 pack, videos/s
for name, r in results.items():
    if "achieved_tflops" in r:
        print(f"{name:44} {r.get('family', ''):18} {r['videos_per_s']:8.2f} videos/s {r['achieved_tflops']:8.1f} "
              f"TFLOP/s ({r['fraction_of_peak']}) cuda {r['peak_cuda_mb']} MiB rss {r['peak_rss_mb']} MiB")
    elif "runs" in r:
        for run in r["runs"]:
            print(f"{name:44} {run['videos']:6} videos {run['videos_per_s']:8.2f} videos/s "
                  f"rss {run['peak_rss_mb']} MiB cuda {run.get('peak_cuda_mb')} MiB")
    elif "loader" in r:
        loader[tuple(r["frames"][1:])] = r["loader"]["h5_videos_per_s"]
        print(f"{name:44} pack {r['pack_videos_per_s']} v/s loader {r['loader']} rss "
              + str({k: v['main_peak_rss_mb'] for k, v in r['rss'].items()}))
    elif "checks" in r:
        for c in r["checks"]:
            print(f"check {c['family']} {c['variant']} {c['dtype']} cl={c['channels_last']} compile={c['compile']} "
                  f"recompute={c['activation_checkpointing']}: out {c['output_rel_err']:.2e} "
                  f"grad {c['grad_rel_err']:.2e} ok={c['ok']}")
# The loader's margin over each family's consumption at that frame size (loader videos/s / training
# videos/s when fed by it), and whether the loader slowed the step (loader-fed / in-memory videos/s).
for name, r in results.items():
    if name.startswith("family_loader_") and "videos_per_s" in r:
        delivered = loader.get(tuple(r["size"]))
        in_memory = results.get("family_" + name[len("family_loader_"):], {}).get("videos_per_s")
        margin = f"{delivered / r['videos_per_s']:.1f}x" if delivered else "n/a"
        fed = f"{r['videos_per_s'] / in_memory:.2f}" if in_memory else "n/a"
        print(f"margin {name[len('family_loader_'):]:32} loader {delivered} v/s, trains at {r['videos_per_s']:.2f} "
              f"v/s from it: {margin}; loader-fed / in-memory {fed}")
EOF
echo "$failures benchmark(s) failed"
exit "$failures"
