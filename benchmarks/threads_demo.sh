#!/usr/bin/env bash
# The local demo's wall time at one run.threads, optionally beside a CPU burner, in a fresh folder.
#
#   bash benchmarks/threads_demo.sh OUT THREADS BURNERS [key=value ...]   # e.g. OUT 0 0, OUT 2 0, OUT 0 2
#
# THREADS: run.threads for every job of the demo (0 = the default: here a local job's
# slurm.cpus_per_task, 1 in configs/demo.yaml). BURNERS: that many busy-looping processes run beside
# it for the whole demo (a loaded machine). Further key=value settings go to the demo (a shorter
# train.epochs). OMP_NUM_THREADS is unset so run.threads decides.
# Prints one JSON line: the settings, wall seconds, the load averages before and after, exit status.
set -uo pipefail
OUT=${1:?OUT folder}
THREADS=${2:?run.threads}
BURNERS=${3:-0}
shift 3
EXTRA=("$@")
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
burners=()
for _ in $(seq 1 "$BURNERS"); do
    "$PY" -c 'while True: pass' &
    burners+=($!)
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s.%N)
(cd "$OUT" && env -u OMP_NUM_THREADS "$PY" "$REPO/main.py" demo --executor local "run.threads=$THREADS" "${EXTRA[@]}" \
    >"$OUT/demo.out" 2>"$OUT/demo.err")
status=$?
end=$(date +%s.%N)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
for pid in "${burners[@]}"; do kill "$pid"; done
"$PY" - "$THREADS" "$BURNERS" "$start" "$end" "$load_before" "$load_after" "$status" "$(nproc)" "${EXTRA[*]}" <<'EOF'
import json, sys
threads, burners, start, end, before, after, status, cpus, extra = sys.argv[1:]
print(json.dumps({"run.threads": int(threads), "burners": int(burners), "settings": extra.split(),
                  "wall_s": round(float(end) - float(start), 1), "load_average_before": before,
                  "load_average_after": after, "exit_status": int(status), "cpus": int(cpus)}))
EOF
