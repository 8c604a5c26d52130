#!/usr/bin/env bash
# Every family for the same training budget on the same generated data, one JSON each:
#
#   bash benchmarks/quality_suite.sh OUT_DIR [MINUTES] [FAMILY ...]
#
# The shapes data set at 48x64, 10 -> 10 frames, 512 training and 64 validation videos (made once in
# OUT_DIR/data and reused), each family at a small size that trains on a CPU, residual where the
# family has the option, `MINUTES` (default 10) of training with `bench_quality.py --minutes`, then the
# evaluate stage on val against copy-last and mean-of-inputs. OUT_DIR/<name>.json per run (stderr in
# OUT_DIR/<name>.log); the last lines printed are a table. THREADS (default 1) compute threads: on a
# shared machine one thread per run is what measures the same whatever else runs on the other core.
set -u
usage="usage: quality_suite.sh OUT_DIR [MINUTES] [NAME ...]"
out=${1:?$usage}
minutes=${2:-10}
shift $(( $# > 1 ? 2 : 1 ))
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 64
cd "$(dirname "$0")/.." || exit 64
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1}

options=(--data shapes --height 48 --width 64 --t-in 10 --t-out 10 --train-videos 512 --val-videos 64
         --reuse-data "$out/data" --minutes "$minutes")
settings=(train.batch_size=8 train.lr=3e-3 data.num_workers=1)
# Each run: its family (the options above and --family come before any KEY=VALUE), then its settings.
declare -A runs=(
  [encoder_forecaster]="--family encoder_forecaster model.encoder_forecaster.residual=true
      model.encoder_forecaster.stem_channels=16 model.encoder_forecaster.hidden_channels=[32,32]
      model.encoder_forecaster.strides=[1,2] model.encoder_forecaster.kernel_size=3
      model.encoder_forecaster.norm_groups=8"
  [convlstm]="--family convlstm model.convlstm.residual=true model.convlstm.hidden_channels=[32,32]
      model.convlstm.kernel_size=3 model.convlstm.patch_size=2 model.convlstm.sampling_stop_step=400"
  [predrnn]="--family predrnn model.predrnn.residual=true model.predrnn.hidden_channels=[32,32]
      model.predrnn.kernel_size=3 model.predrnn.patch_size=4 model.predrnn.reverse_start_step=50
      model.predrnn.reverse_stop_step=400 model.predrnn.reverse_exp_alpha=100"
  [simvp_gsta]="--family simvp model.simvp.residual=true model.simvp.spatial_channels=16
      model.simvp.temporal_channels=128 model.simvp.spatial_layers=2 model.simvp.temporal_layers=2
      model.simvp.mlp_ratio=4"
  [simvp_tau]="--family simvp model.simvp.translator=tau model.simvp.residual=true
      model.simvp.spatial_channels=16 model.simvp.temporal_channels=128 model.simvp.spatial_layers=2
      model.simvp.temporal_layers=2 model.simvp.mlp_ratio=4"
  [unet]="--family unet model.unet.residual=true model.unet.base_channels=16 model.unet.levels=3"
  [phydnet]="--family phydnet train.loss=mse+l1 model.phydnet.residual=true model.phydnet.encoder_channels=32
      model.phydnet.convlstm_channels=[32] model.phydnet.sampling_stop_step=500"
  [attention_gru]="--family attention_gru model.attention_gru.residual=true
      model.attention_gru.hidden_channels=[16,32] model.attention_gru.patch_size=2"
)
names=${*:-encoder_forecaster convlstm predrnn simvp_gsta simvp_tau unet phydnet attention_gru}
failures=0
for name in $names; do
  [ -n "${runs[$name]:-}" ] || { echo "unknown run '$name'; $usage" >&2; exit 64; }
  echo "== $name"
  # shellcheck disable=SC2086  # the settings are a word list on purpose
  read -r -a run <<<"$(echo ${runs[$name]})"
  if ! $py -m benchmarks.bench_quality "${options[@]}" "${run[@]:0:2}" "${settings[@]}" "${run[@]:2}" \
      >"$out/$name.json" 2>"$out/$name.log"; then
    failures=$((failures + 1))
    echo "   FAILED: $(tail -n 2 "$out/$name.log" | tr '\n' ' ')"
  fi
done
$py - "$out" $names <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'run':20s} {'steps':>6s} {'MSE/copy':>9s} {'SSIM':>7s} {'copy':>7s} {'mean-in':>8s}")
for name in sys.argv[2:]:
    try:
        r = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        print(f"{name:20s} (no result)")
        continue
    m, c, a = (r["scores"][k]["mean"] for k in ("model", "copy_last_frame", "mean_of_inputs"))
    print(f"{name:20s} {r['steps']:6d} {m['mse_per_frame_sum'] / c['mse_per_frame_sum']:9.3f} "
          f"{m['ssim']:7.4f} {c['ssim']:7.4f} {a['ssim']:8.4f}")
EOF
exit "$failures"
