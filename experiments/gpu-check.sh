#!/usr/bin/env bash
# The GPU check in one call, for a machine with an NVIDIA GPU and no registry access: it runs
# binaries built elsewhere and writes everything into OUT_DIR (one file per step, steps.tsv
# with each step's exit status and seconds, summary.md).
#
#   Build on a CPU machine (the GPU machine needs no Rust, CUDA toolkit or network):
#     cargo build --release --features cuda,wgpu && strip -o fedolf-gpu target/release/fedolf
#     cargo build --release --features cuda,wgpu,gpu-fused && strip -o fedolf-gpu-fused target/release/fedolf
#   Run on the GPU machine, from the repository root (≤ 8 minutes):
#     FEDOLF_BIN=./fedolf-gpu FEDOLF_BIN_FUSED=./fedolf-gpu-fused experiments/gpu-check.sh OUT_DIR
#
# FEDOLF_BIN is Burn's backends as the workspace builds them (autotune and fusion off);
# FEDOLF_BIN_FUSED, when given, is the same code with Burn's `autotune` and `fusion` features,
# timed on the same steps. A step that fails is recorded and the check goes on; the script
# exits 1 if any step failed. Needs python3 (standard library only) for the generated
# CIFAR-100 files. Record the results in experiments/results/gpu-<device>.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: experiments/gpu-check.sh OUT_DIR}
BIN=${FEDOLF_BIN:-target/release/fedolf}
FUSED=${FEDOLF_BIN_FUSED:-}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
failed=0
started=$SECONDS

# step NAME SECONDS CMD...: run CMD under a time limit, its output into OUT/NAME.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/steps.log"
  # SIGTERM lets a run finish its client in flight and checkpoint; KILL 20 s later.
  timeout -k 20 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
  echo "   exit $rc in $((SECONDS - t0)) s (total $((SECONDS - started)) s)" | tee -a "$OUT/steps.log"
  [ "$rc" = 0 ] || failed=$((failed + 1))
  tail -n 3 "$OUT/$name.txt"
}

if [ ! -x "$BIN" ]; then
  echo "no fedolf binary at $BIN (build it with --features cuda,wgpu; see the top of this script)" >&2
  exit 2
fi
SUBSET=datasets/data/fashion-mnist-subset
SMALL=(--quiet --data-dir "$SUBSET" --set data.train_limit=2000 --set data.test_limit=1000
  --set 'data.partition="iid"' --set federation.clients=10 --set federation.clients_per_round=4
  --set federation.eval_every=1 --set federation.rounds=3)

step machine 20 sh -c 'nvidia-smi; uname -a; nproc; free -g'
step list 20 "$BIN" list
# The wgpu tests' checks on each device (same weights and batch as the CPU, one step each).
step parity-cuda 90 "$BIN" bench parity --device cuda
step parity-wgpu 90 "$BIN" bench parity --device wgpu
# Short runs: 3 rounds on 2,000 Fashion-MNIST images (the CPU run for comparison).
step run-cpu 60 "$BIN" run --device cpu --out "$OUT/runs/cpu" "${SMALL[@]}"
step run-cuda 60 "$BIN" run --device cuda --out "$OUT/runs/cuda" "${SMALL[@]}"
step run-wgpu 60 "$BIN" run --device wgpu --out "$OUT/runs/wgpu" "${SMALL[@]}"
# Seconds per step of every model at its paper batch, and per round of the default experiment.
step bench-speed-cuda 90 "$BIN" bench speed --device cuda --repeats 3 --rounds 2
step bench-speed-wgpu 90 "$BIN" bench speed --device wgpu --repeats 3 --rounds 2
# The paper's Fig. 17 on the GPU: ordered vs random vs TinyFEL on ResNet20, batch 128.
step memory-resnet20-cuda 60 "$BIN" memory --device cuda --model resnet20 --dataset cifar100 --batch 128 \
  --frozen 0,2,4,6,8 --draws 2 --csv "$OUT/memory-resnet20-cuda.csv" --svg "$OUT/memory-resnet20-cuda.svg"
# 5 rounds of the ResNet44 paper config (one trial) on generated CIFAR-100 files in the real format.
step cifar100-files 60 python3 experiments/generate_cifar.py --kind cifar100 --train 5000 --test 1000 "$OUT/cifar100"
step resnet44-paper-cuda 120 "$BIN" run --quiet --config experiments/paper-cifar100-resnet44.toml --device cuda --seed 1 \
  --data-dir "$OUT/cifar100" --out "$OUT/runs/resnet44" --set federation.rounds=5 --set federation.eval_every=5
if [ -n "$FUSED" ]; then
  step fused-run-cuda 60 "$FUSED" run --device cuda --out "$OUT/runs/cuda-fused" "${SMALL[@]}"
  step fused-bench-speed-cuda 90 "$FUSED" bench speed --device cuda --repeats 3 --rounds 2
  step fused-bench-speed-wgpu 90 "$FUSED" bench speed --device wgpu --repeats 3 --rounds 2
fi

{
  echo "# GPU check, $(date -u +%F)"
  echo
  echo "Binary: $BIN${FUSED:+; with autotune + fusion: $FUSED}. Total $((SECONDS - started)) s; $failed step(s) failed."
  echo
  echo "| step | exit | seconds |"
  echo "| --- | --- | --- |"
  awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$OUT/steps.tsv"
  for f in parity-cuda parity-wgpu bench-speed-cuda bench-speed-wgpu fused-bench-speed-cuda fused-bench-speed-wgpu memory-resnet20-cuda; do
    [ -f "$OUT/$f.txt" ] || continue
    printf '\n## %s\n\n```\n' "$f"
    cat "$OUT/$f.txt"
    printf '```\n'
  done
  for run in cpu cuda wgpu cuda-fused resnet44; do
    for s in "$OUT"/runs/$run/*/summary.json "$OUT"/runs/$run/*/*/summary.json; do
      [ -f "$s" ] || continue
      printf '\n## run %s\n\n```\n' "$run"
      cat "$s"
      printf '\n```\n'
    done
  done
} > "$OUT/summary.md"
echo "wrote $OUT/summary.md ($failed failed step(s), $((SECONDS - started)) s)"
[ "$failed" = 0 ]
