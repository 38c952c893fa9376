#!/usr/bin/env bash
# A real Flower federation on this machine: one SuperLink and NODES SuperNodes on 127.0.0.1
# (insecure mode: no TLS, no node authentication; see the README for real deployments),
# running ROUNDS rounds of the fedolf app (FedOLF with TOA on Fashion-MNIST by default).
# Prints the per-round accuracy and `final accuracy: X`; results (rounds.csv, clients.csv,
# summary.json, flower.json, checkpoint/) go to OUT.
#
# usage: flower/run-local-federation.sh [--nodes N] [--rounds R] [--out DIR] [--set "k=v; k=v"]
#        [--devices cpu,wgpu,...] [--memory-mb MB,MB,...] [--round-timeout SECONDS]
#        [--resume DIR] [--venv DIR] [--timeout SECONDS] [--no-install]
#   --devices: one device per node (cpu, wgpu, cuda), node k trains on the k-th; sets N.
#   --memory-mb: one budget per node (empty: none), e.g. "300,," ; with
#                --set "federation.capacity=\"memory\"" each such node calibrates on its own
#                device and is planned from its budget.
#   --resume DIR: continue the run in DIR (stopped server) from its checkpoint, with its config.
# Installs what it needs first (flower/install.sh; --no-install uses the venv as it is).
# Every process it starts is stopped on exit; if the SuperLink dies, it says so and exits 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nodes="" rounds=3 out="" extra="" venv="$root/.venv-flower" timeout=900 install=1
devices="" memory="" round_timeout="" resume=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --set) extra="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --memory-mb) memory="$2"; shift 2 ;;
    --round-timeout) round_timeout="$2"; shift 2 ;;
    --resume) resume="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a device_list <<< "$devices"
IFS=, read -r -a memory_list <<< "$memory"
if [ -n "$devices" ] && [ -n "$nodes" ] && [ "${#device_list[@]}" != "$nodes" ]; then
  echo "--nodes $nodes but --devices names ${#device_list[@]} devices: give one device per node" >&2; exit 2
fi
[ -n "$nodes" ] || nodes=${#device_list[@]}
[ "$nodes" -gt 0 ] 2>/dev/null || nodes=3
if [ -n "$memory" ] && [ "${#memory_list[@]}" -gt "$nodes" ]; then
  echo "--memory-mb names ${#memory_list[@]} budgets for $nodes nodes" >&2; exit 2
fi
if [ -n "$resume" ]; then
  [ -f "$resume/checkpoint/state.json" ] || { echo "--resume $resume: no checkpoint there ($resume/checkpoint/state.json is missing)" >&2; exit 2; }
  [ -z "$out" ] || [ "$out" = "$resume" ] || { echo "--resume writes into the run's own folder; drop --out" >&2; exit 2; }
  out="$resume"
fi
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
  node_config="partition-id=$k num-partitions=$nodes"
  [ -z "${device_list[k]:-}" ] || node_config="$node_config device='${device_list[k]}'"
  [ -z "${memory_list[k]:-}" ] || node_config="$node_config memory-mb=${memory_list[k]}"
  setsid flower-supernode --insecure --superlink "127.0.0.1:$link_port" --port "$(free_port)" \
    --node-config "$node_config" > "$out/supernode-$k.log" 2>&1 &
  pids+=("$!")
done

echo "${pids[*]}" > "$out/pids.txt"    # process groups, for whoever checks they are gone

overrides="federation.rounds=$rounds"
[ -z "$extra" ] || overrides="$overrides; $extra"
[ -z "$resume" ] || overrides=""    # a resumed run keeps its own config
{
  echo "out-dir = \"$out\""
  # TOML basic string: the overrides may hold quotes (federation.capacity="memory").
  echo "set = \"${overrides//\"/\\\"}\""
  [ -z "$round_timeout" ] || echo "round-timeout = $round_timeout"
  [ -z "$resume" ] || echo "resume = \"$out\""
} > "$work/run-config.toml"

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
echo "run $run_id: $nodes nodes${devices:+ ($devices)}, ${resume:+resuming }results in $out" >&2

# Wait for the run to finish (`flwr run` returns once it is submitted).
status=""
deadline=$((SECONDS + timeout))
while [ $SECONDS -lt $deadline ]; do
  status="$(flwr ls local --run-id "$run_id" --format json 2>/dev/null | python3 -c '
import json, sys
runs = json.load(sys.stdin).get("runs", [])
print(runs[0]["status"] if runs else "")' 2>/dev/null || true)"
  case "$status" in finished:*) break ;; esac
  if ! kill -0 -- "-${pids[0]}" 2>/dev/null; then
    echo "the SuperLink stopped during run $run_id; the run's last checkpoint is in $out/checkpoint (continue it with --resume $out)" >&2
    exit 1
  fi
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
if flower.get("resumed_after_round"):
    print(f"resumed after round {flower['resumed_after_round']}")
elif flower["initial_accuracy"] is not None:
    print(f"initial accuracy: {100 * flower['initial_accuracy']:.2f} %")
for pid, node in sorted(flower.get("nodes", {}).items(), key=lambda kv: int(kv[0])):
    memory = f", declares {node['memory-mb']:g} MB" if node.get("memory-mb") else ""
    print(f"client {pid}: node {node['node']} on {node['device']}{memory}")
for node in flower.get("lost_nodes", []):
    print(f"lost node {node} (missed a round; not sampled again)")
for row in csv.DictReader(open(os.path.join(out, "rounds.csv"))):
    acc = row["accuracy"]
    print(f"round {row['round']}: accuracy {100 * float(acc):.2f} %, {int(row['bytes_down']) / 1e6:.3f} MB down, "
          f"{int(row['bytes_up']) / 1e6:.3f} MB up, {float(row['wall_s']):.1f} s" if acc else f"round {row['round']}: (not evaluated)")
print(f"final accuracy: {flower['summary']['final_accuracy']:.4f}")
PY
