#!/usr/bin/env bash
# The default experiment run twice with the same seed: once uninterrupted, once stopped by
# SIGINT during round 8 (after round 7's results are written) and resumed with
# `fedolf run --resume`. Prints whether rounds.csv and clients.csv (timing columns aside) and
# the final weights are identical. ROUNDS (default 60) shortens both runs alike.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-60}
OUT=${OUT:-runs/interrupt}
BIN=./target/release/fedolf
cargo build --release --quiet
rm -rf "$OUT" && mkdir -p "$OUT/full" "$OUT/cut"
$BIN run --quiet --out "$OUT/full" --set federation.rounds="$ROUNDS"
$BIN run --quiet --out "$OUT/cut" --set federation.rounds="$ROUNDS" & pid=$!
until [ -f "$OUT"/cut/*/rounds.csv ] && [ "$(wc -l < "$OUT"/cut/*/rounds.csv)" -ge 8 ]; do sleep 0.2; done
kill -INT "$pid"; wait "$pid" || true
dir=$(ls -d "$OUT"/cut/*)
echo "interrupted: $(grep -o '"status": "[a-z]*"' "$dir/summary.json"), checkpoint at round $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["round"])' "$dir/checkpoint/state.json")"
$BIN run --quiet --resume "$dir"
python3 - "$OUT" <<'PY'
import csv, glob, sys
out = sys.argv[1]
timing = {"compute_s", "wall_s", "peak_mem_mb", "peak_extra_mb", "energy_compute_j", "energy_comm_j"}
def rows(run, name):
    return [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(glob.glob(f"{out}/{run}/*/{name}")[0]))]
for name in ["rounds.csv", "clients.csv"]:
    a, b = rows("full", name), rows("cut", name)
    print(f"{name}: {len(a)} rows, {'identical' if a == b else 'DIFFERENT'}")
w = [open(glob.glob(f"{out}/{r}/*/checkpoint/model.safetensors")[0], "rb").read() for r in ("full", "cut")]
print("final weights:", "identical" if w[0] == w[1] else "DIFFERENT")
PY
