#!/usr/bin/env bash
# Make a Python environment that can run the fedolf Flower app: Flower 1.42.0 and the fedolf
# bindings built from ../python with maturin. Idempotent; usage: flower/install.sh [VENV]
# (default: .venv-flower at the repository root). Needs python3 (3.9+) with venv, a Rust
# toolchain, and the Python registry.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-flower}"
py="${PYTHON:-python3}"
# Absolute: the wheel is built from another folder.
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import flwr, maturin" >/dev/null 2>&1; then
  "$venv/bin/pip" install -q --upgrade pip
  # flwr 1.42.0 pins certifi>=2026.10.19, which the registry does not serve: install its
  # requirements (certifi held at 2026.10.18) and then flwr without dependencies.
  "$venv/bin/pip" install -q -r "$root/flower/requirements.txt"
  "$venv/bin/pip" install -q --no-deps flwr==1.42.0
fi
# The bindings: rebuilt whenever the Rust sources changed (cargo decides; the build shares
# the workspace's target/ folder). FEDOLF_WHEEL_FEATURES=cuda,wgpu builds them with the
# binary's GPU features, reusing `cargo build --release --features cuda,wgpu`.
features=()
[ -z "${FEDOLF_WHEEL_FEATURES:-}" ] || features=(--features "$FEDOLF_WHEEL_FEATURES")
(cd "$root/python" && "$venv/bin/maturin" build --release --quiet "${features[@]}" -o "$root/target/wheels" -i "$venv/bin/python")
wheel="$(ls -t "$root"/target/wheels/fedolf-*.whl | head -1)"
"$venv/bin/pip" install -q --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -c "import fedolf, flwr; print('fedolf bindings and flwr', flwr.__version__, 'in', '$venv')"
