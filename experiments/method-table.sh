#!/usr/bin/env bash
# Every method on the default experiment, three trials each (seeds 1, 2, 3), ROUNDS rounds
# (default 30), two runs at a time with one thread each (on 2 cores that finishes sooner
# than one run with two threads). Methods whose run in OUT already completed are skipped, so
# an interrupted table resumes; METHODS="depthfl nefl" runs only those.
# Then: python3 experiments/method_table.py runs/table
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-30}
OUT=${OUT:-runs/table}
BIN=./target/release/fedolf
cargo build --release --quiet
mkdir -p "$OUT"
METHODS=${METHODS:-fedolf fedavg heterofl tinyfel random-freeze cocofl slt fjord feddrop fedavg-drop depthfl scalefl adaptivefl nefl}
for m in $METHODS; do
  grep -qs '"status": "completed"' "$OUT/$m"-2*/summary.json || echo "$m"
done |
  RAYON_NUM_THREADS=1 xargs -P 2 -I{} sh -c \
    "$BIN run --quiet --out $OUT --seeds 1,2,3 --set method={} --set name={} --set federation.rounds=$ROUNDS > $OUT/{}.log 2>&1 && echo done {} || echo FAILED {}"
