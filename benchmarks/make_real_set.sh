#!/usr/bin/env bash
# A real-footage data set from the clips Debian's opencv-doc package ships (no one here made them):
#
#   apt-get install -y opencv-doc
#   bash benchmarks/make_real_set.sh OUT_DIR [HEIGHT WIDTH]      # default 48 64; 160 240 for full size
#
# vtest.avi (pedestrians, fixed camera, 795 frames), Megamind.avi (animation, 270 frames) and the
# tracking demos box.mp4 and cup.mp4 (hand-held camera, 455 and 217 frames; gzipped in the package).
# tree.avi is left out (68 frames: too short for a window on each side of the time split);
# Megamind_bugy.avi is the same footage as Megamind.avi. 22-frame windows every 4 frames (overlapping: more training windows from little footage), each clip's
# last quarter held out for val/hidden: OUT_DIR/windows.json records every window's source frames.
set -eu
usage="usage: make_real_set.sh OUT_DIR [HEIGHT WIDTH]"
out=${1:?$usage}
height=${2:-48}
width=${3:-64}
cd "$(dirname "$0")/.." || exit 64
py=${PYTHON:-.venv/bin/python}
clips=$(dpkg -L opencv-doc 2>/dev/null | grep -E '/(vtest|Megamind)\.avi$|/(box|cup)\.mp4\.gz$' || true)
if [ "$(echo "$clips" | grep -c .)" != 4 ]; then
    echo "error: the clips of Debian's opencv-doc package were not found (apt-get install -y opencv-doc)" >&2
    exit 1
fi
work=$out/sources  # the unpacked clips stay beside the set, so windows.json's paths stay valid
mkdir -p "$work"
videos=()
for clip in $clips; do
    case $clip in
        *.gz) name=$(basename "$clip" .gz); gzip -dc "$clip" > "$work/$name"; videos+=("$work/$name") ;;
        *) videos+=("$clip") ;;
    esac
done
"$py" main.py make-data --from-video "${videos[@]}" --out "$out" --height "$height" --width "$width" \
    --frames 22 --stride 4 --hidden-frames 11 --overwrite
