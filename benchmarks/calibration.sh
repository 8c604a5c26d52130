#!/usr/bin/env bash
# Calibrated uncertainty on the shapes data: an ensemble of UNet seeds, its raw spread, the spread
# rescaled split-conformally, and a scale head (rescaled the same way), each scored on held-out videos.
#
#   bash benchmarks/calibration.sh OUT_DIR [STEPS] [SEEDS]
#
# Data (made once in OUT_DIR/data): shapes at 48x64, 10 -> 10 frames; train/ (256 videos) trains the
# models and the scale head, unlabeled/ (64) is the calibration split, val/ (64) the held-out videos
# every report is scored on. Each seed: the demo's residual UNet (base 16, 3 levels), STEPS (default
# 400) steps of batch 8, one thread. Writes OUT_DIR/{raw,spread,head}.json (evaluate's reports) and
# prints a table of the 90 % intervals' coverage per lead time and the AUROC of the scale.
set -eu
usage="usage: calibration.sh OUT_DIR [STEPS] [SEEDS]"
out=${1:?$usage}
steps=${2:-400}
seeds=${3:-3}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 64
cd "$(dirname "$0")/.." || exit 64
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1}

[ -d "$out/data/train" ] || $py main.py make-data --kind shapes --out "$out/data" --train 256 --val 64 \
    --unlabeled 64 --hidden 0 --height 48 --width 64 --frames 20 --hidden-frames 10 --seed 0
common=(run.out_dir="$out/runs" run.device=cpu data.root="$out/data" data.source=png data.train_splits=[train]
        data.t_in=10 data.t_out=10 data.num_workers=0 model.family=unet model.unet.base_channels=16
        model.unet.levels=3 model.unet.residual=true predict.batch_size=8)
epochs=$(( (steps + 31) / 32 ))  # 256 videos / batch 8 = 32 steps an epoch
for ((seed = 0; seed < seeds; seed++)); do
  [ -f "$out/runs/unet-seed$seed/best.pt" ] || $py main.py train --config configs/demo.yaml "${common[@]}" \
      run.name=unet-seed$seed train.seed=$seed train.epochs=$epochs train.max_steps_per_epoch=32 \
      train.early_stop_patience=0 train.max_val_batches=4
done
members="$out/runs/unet-seed*/best.pt"
cal=(calibrate.split=unlabeled calibrate.fit_split=train calibrate.pixels_per_video=2048)
# (flags before the key=value overrides: argparse takes the overrides as one run of positionals)
$py main.py calibrate --config configs/demo.yaml --checkpoint "$members" --method spread --out "$out/spread.pt" \
    "${common[@]}" run.name=ensemble "${cal[@]}"
$py main.py calibrate --config configs/demo.yaml --checkpoint "$members" --method scale_head --out "$out/head.pt" \
    "${common[@]}" run.name=ensemble "${cal[@]}" calibrate.likelihood=laplace calibrate.head_steps=300
for kind in raw spread head; do
  extra=()
  [ "$kind" = raw ] || extra=(evaluate.calibration="$out/$kind.pt")
  $py main.py evaluate --config configs/demo.yaml --checkpoint "$members" --split val --out "$out/eval-$kind" \
      "${common[@]}" run.name=ensemble evaluate.samples=0 "${extra[@]}" >"$out/$kind.log"
  cp "$out/eval-$kind/report.json" "$out/$kind.json"
done
$py - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for kind in ("raw", "spread", "head"):
    u = json.loads((out / f"{kind}.json").read_text())["uncertainty"]
    for name, levels in u["intervals"].items():
        cov = levels["0.9"]["coverage"]
        print(f"{kind:7s} {name:11s} 90%: coverage {min(cov):.3f}..{max(cov):.3f} (mean {levels['0.9']['coverage_mean']:.3f}), "
              f"width {levels['0.9']['mean_width_mean']:.4f}; 50% {levels['0.5']['coverage_mean']:.3f}, "
              f"80% {levels['0.8']['coverage_mean']:.3f}; AUROC {u['auroc_large_errors_mean']:.3f} "
              f"(min {min(u['auroc_large_errors']):.3f}), Spearman {u['spearman_mean']:.3f}")
EOF
