#!/usr/bin/env bash
# A real Flower federation on this machine: one SuperLink and NODES SuperNodes on 127.0.0.1
# (insecure mode: no TLS, no node authentication; see the README for real deployments),
# running ROUNDS rounds of the fedolf app (FedOLF with TOA on Fashion-MNIST by default).
# Prints the per-round accuracy and `final accuracy: X`; results (rounds.csv, clients.csv,
# summary.json, flower.json) go to OUT.
#
# usage: flower/run-local-federation.sh [--nodes N] [--rounds R] [--out DIR] [--set "k=v; k=v"]
#        [--venv DIR] [--timeout SECONDS] [--no-install]
# Installs what it needs first (flower/install.sh; --no-install uses the venv as it is).
# Every process it starts is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nodes=3 rounds=3 out="" extra="" venv="$root/.venv-flower" timeout=900 install=1
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --set) extra="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || out="$root/runs/flower-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

[ "$install" = 0 ] || "$root/flower/install.sh" "$venv" >&2
export PATH="$venv/bin:$PATH"    # SuperLink and SuperNodes find flower-superexec on PATH
work="$(mktemp -d)"
export FLWR_HOME="$work/flwr-home" FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
mkdir -p "$FLWR_HOME"
pids=()
alive() { for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done; return 1; }
cleanup() {
  # SuperNodes first, then the SuperLink; each was started as its own process group. They
  # get 10 s to stop on SIGTERM, then SIGKILL; the script returns only once all are gone.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM -- "-${pids[i]}" 2>/dev/null || true; done
  for _ in $(seq 1 50); do alive || break; sleep 0.2; done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do alive || break; sleep 0.1; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
link_port="$(free_port)"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:$link_port"
insecure = true
TOML

setsid flower-superlink --insecure --host 127.0.0.1 --port "$link_port" --disable-runtime-dependency-installation \
  > "$out/superlink.log" 2>&1 &
pids+=("$!")
for ((k = 0; k < nodes; k++)); do
  setsid flower-supernode --insecure --superlink "127.0.0.1:$link_port" --port "$(free_port)" \
    --node-config "partition-id=$k num-partitions=$nodes" > "$out/supernode-$k.log" 2>&1 &
  pids+=("$!")
done

echo "${pids[*]}" > "$out/pids.txt"    # process groups, for whoever checks they are gone

overrides="federation.rounds=$rounds"
[ -z "$extra" ] || overrides="$overrides; $extra"
cat > "$work/run-config.toml" <<TOML
out-dir = "$out"
set = "$overrides"
TOML

# The SuperLink takes a moment to listen; `flwr run` is retried until it accepts the run.
run_id=""
for _ in $(seq 1 30); do
  if reply="$(flwr run "$root/flower" local --run-config "$work/run-config.toml" --format json 2>"$work/run.err")"; then
    run_id="$(printf '%s' "$reply" | python3 -c 'import json, sys; print(json.load(sys.stdin)["run-id"])' 2>/dev/null || true)"
    [ -n "$run_id" ] && break
  fi
  sleep 1
done
if [ -z "$run_id" ]; then
  echo "flwr run did not start a run:" >&2; cat "$work/run.err" >&2; exit 1
fi
echo "run $run_id: $nodes nodes, $rounds rounds, results in $out" >&2

# Wait for the run to finish (`flwr run` returns once it is submitted).
status=""
deadline=$((SECONDS + timeout))
while [ $SECONDS -lt $deadline ]; do
  status="$(flwr ls local --run-id "$run_id" --format json 2>/dev/null | python3 -c '
import json, sys
runs = json.load(sys.stdin).get("runs", [])
print(runs[0]["status"] if runs else "")' 2>/dev/null || true)"
  case "$status" in finished:*) break ;; esac
  sleep 2
done
flwr log "$run_id" local --show > "$out/serverapp.log" 2>&1 || true
if [ "$status" != "finished:completed" ]; then
  echo "the run ended as '${status:-unknown}' (see $out/serverapp.log):" >&2
  tail -n 40 "$out/serverapp.log" >&2
  exit 1
fi

python3 - "$out" <<'PY'
import csv, json, os, sys
out = sys.argv[1]
flower = json.load(open(os.path.join(out, "flower.json")))
print(f"initial accuracy: {100 * flower['initial_accuracy']:.2f} %")
for row in csv.DictReader(open(os.path.join(out, "rounds.csv"))):
    acc = row["accuracy"]
    print(f"round {row['round']}: accuracy {100 * float(acc):.2f} %, {int(row['bytes_down']) / 1e6:.3f} MB down, "
          f"{int(row['bytes_up']) / 1e6:.3f} MB up, {float(row['wall_s']):.1f} s" if acc else f"round {row['round']}: (not evaluated)")
print(f"final accuracy: {flower['summary']['final_accuracy']:.4f}")
PY
