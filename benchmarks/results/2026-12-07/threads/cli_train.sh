#!/usr/bin/env bash
# framecast train (CLI) on the demo data for 16 steps at run.threads=$1; prints the load and videos/s.
# Run from the repository root: DEMO_DIR=<a folder holding datasets/demo> bash <this file> THREADS
REPO=$(pwd)
cd "${DEMO_DIR:?set DEMO_DIR to a folder holding datasets/demo (a main.py demo run)}"
T=$1
rm -rf runs/cli-t$T
before=$(cut -d' ' -f1-3 /proc/loadavg); start=$(date +%s.%N)
env -u OMP_NUM_THREADS timeout 400 "$REPO/.venv/bin/python" "$REPO/main.py" train --config configs/demo.yaml \
  run.name=cli-t$T run.threads=$T train.epochs=1 train.max_steps_per_epoch=16 train.log_every_steps=4 data.source=h5 \
  > runs-cli-t$T.log 2>&1
status=$?; end=$(date +%s.%N); after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$T" "$start" "$end" "$before" "$after" "$status" <<'PY'
import json, sys, statistics
t, start, end, before, after, status = sys.argv[1:]
try:
    recs = [json.loads(l) for l in open(f"runs/cli-t{t}/metrics.jsonl")]
except OSError:
    recs = []
v = [r["videos_per_s"] for r in recs if r.get("kind") == "train"]
print(json.dumps({"command": f"main.py train --config configs/demo.yaml run.threads={t} train.epochs=1 train.max_steps_per_epoch=16 train.log_every_steps=4 data.source=h5",
                  "run.threads": int(t), "wall_s": round(float(end) - float(start), 1), "exit_status": int(status),
                  "load_average_before": before, "load_average_after": after,
                  "videos_per_s": v, "videos_per_s_median": statistics.median(v) if v else None}))
PY
