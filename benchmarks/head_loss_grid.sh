#!/usr/bin/env bash
# Which head and which loss: the demo's UNet with head {residual, warp} x loss {mse,
# mse+ssim, mse+gdl} for one step budget on one data set, one JSON each (bench_quality.py: the train
# and evaluate stages, against copy-last and mean-of-inputs, MSE and SSIM per lead time):
#
#   bash benchmarks/head_loss_grid.sh OUT_DIR shapes|REAL_SET_DIR [STEPS] [CELL ...]
#
# shapes: the generated set at 48x64 (made once in OUT_DIR/data); REAL_SET_DIR: a set made by
# benchmarks/make_real_set.sh at 48x64 (trained on its train/ and unlabeled/ windows). 11 -> 11
# frames, batch 8, lr 3e-3, one-cycle over STEPS (default 300) steps and no early stop, as configs/demo.yaml.
# CELL names (default all six): residual-mse residual-ssim residual-gdl warp-mse warp-ssim warp-gdl.
# SSIM_WEIGHT (default 0.1) and GDL_WEIGHT (default 0.5) set the structure terms' weights.
set -u
usage="usage: head_loss_grid.sh OUT_DIR shapes|REAL_SET_DIR [STEPS] [CELL ...]"
out=${1:?$usage}
data=${2:?$usage}
steps=${3:-300}
shift $(( $# > 2 ? 3 : 2 ))
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 64
cd "$(dirname "$0")/.." || exit 64
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1}
if [ "$data" = shapes ]; then
    source_options=(--data shapes --train-videos 256 --val-videos 64 --reuse-data "$out/data")
    splits=()
else
    source_options=(--reuse-data "$data")
    splits=("data.train_splits=[train,unlabeled]")
fi
options=(--family unet --height 48 --width 64 --t-in 11 --t-out 11 --steps "$steps" "${source_options[@]}")
settings=(train.batch_size=8 train.lr=3e-3 train.early_stop_patience=0 data.num_workers=1 model.unet.base_channels=16
          model.unet.levels=3 model.unet.norm_groups=8 model.unet.residual=true "${splits[@]}")
declare -A losses=([mse]="train.loss=mse" [ssim]="train.ssim_weight=${SSIM_WEIGHT:-0.1}"
                   [gdl]="train.gdl_weight=${GDL_WEIGHT:-0.5}")
cells=${*:-residual-mse residual-ssim residual-gdl warp-mse warp-ssim warp-gdl}
failures=0
for cell in $cells; do
    head=${cell%%-*}
    loss=${losses[${cell#*-}]:-}
    [ -n "$loss" ] || { echo "unknown cell '$cell'; $usage" >&2; exit 64; }
    echo "== $cell"
    if ! $py -m benchmarks.bench_quality "${options[@]}" "${settings[@]}" "model.unet.head=$head" $loss \
        >"$out/$cell.json" 2>"$out/$cell.log"; then
        failures=$((failures + 1))
        echo "   FAILED: $(tail -n 2 "$out/$cell.log" | tr '\n' ' ')"
    fi
done
exit "$failures"
