#!/usr/bin/env bash
# Mutation testing of the files that carry the paper's mechanics, with cargo-mutants from the
# crate registry (`cargo install cargo-mutants`). Each file's mutants run against the test
# binaries that exercise it, in the `mutants` profile (Cargo.toml: this project's crates
# incremental at opt-level 1, every dependency and the kernels at release speed, so a mutant's
# rebuild takes seconds and the tests that train real models stay fast), in a copy of the tree
# building into one target folder of its own (MUTANTS_TARGET, default ../mutants-target): the
# registry crates are built once, for every later run. Not part of CI:
# run it when these files change; experiments/results/mutants.md records the last run.
#   experiments/mutants.sh                          every file below
#   experiments/mutants.sh src/strategy/fedolf.rs   one file
# Results: mutants.out/<file>/mutants.out/{caught,missed,unviable,timeout}.txt
# --iterate: a run that was stopped (a session ending, Ctrl-C) continues where it stopped when
# started again — the mutants already caught or unviable in that folder are skipped and their
# lists carried on (previously_caught.txt). Start a file over by deleting its folder.
set -euo pipefail
cd "$(dirname "$0")/.."
# Not target/: a mutant's build would overwrite target/release/fedolf with mutated code.
export CARGO_TARGET_DIR=${MUTANTS_TARGET:-$PWD/../mutants-target}
declare -A TESTS=(
  [src/tensor/aggregate.rs]="aggregation strategies engine depth_and_pool_methods submodel"
  [src/compress/toa.rs]="toa"
  [src/strategy/fedolf.rs]="strategies"
  [src/strategy/plan.rs]="strategies depth_and_pool_methods"
  [src/local/roles.rs]="freezing accounting strategies memory_peak"
  [src/local/training.rs]="freezing engine memory_peak"
  [src/accounting/theory.rs]="accounting memory_peak"
  [models/src/slicing.rs]="toa submodel"
)
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=(src/tensor/aggregate.rs src/compress/toa.rs src/strategy/fedolf.rs src/strategy/plan.rs src/local/roles.rs src/local/training.rs src/accounting/theory.rs models/src/slicing.rs)
for f in "${FILES[@]}"; do
  tests=${TESTS[$f]:?"no test binaries listed for $f"}
  args=()
  # --cargo-arg reaches the build as well as the test run: only these binaries are built.
  for t in $tests; do args+=(--cargo-arg=--test="$t"); done
  out="mutants.out/$(echo "$f" | tr / _)"
  mkdir -p "$out"
  echo "== $f against: $tests"
  # The models crate's file is exercised by the root package's tests.
  cargo mutants --file "$f" --package fedolf --package fedolf-models --test-package fedolf \
    --copy-target=false --profile mutants --baseline skip --timeout 600 --build-timeout 3600 --iterate \
    "${args[@]}" --output "$out" || true
  for kind in previously_caught caught missed unviable timeout; do
    printf '  %-9s %s\n' "$kind" "$(wc -l < "$out/mutants.out/$kind.txt" 2>/dev/null || echo 0)"
  done
done
