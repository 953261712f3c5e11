#!/usr/bin/env bash
# Fuzzes every target for a fixed number of executions each, one target at a time, from the
# committed corpus of real-shaped payloads (fuzz/corpus/<target>/) plus the inputs that once
# broke a check (fuzz/regressions/<target>/):
#   envelope      webhook bodies: JSON, token check, envelope, call id, then the snapshot's checks
#   call          Aircall's answers to GET /v1/calls/:id and GET /v1/calls, then for every call:
#                 the import rules, the metadata document, its storage keys, the job message
#   admin_bodies  the admin API's request bodies: connect, credentials, paying users, replay
# The checks themselves are in src/fuzzing.rs; tests/it/fuzz_corpus.rs replays the committed
# inputs through them without libFuzzer (CI does not run this script).
#
# Usage: fuzz/run.sh [RUNS]   (default 200000 executions per target)
# Prints one line per target: executions, seconds (wall time of the run, build excluded), exec/s,
# final corpus size (inputs), crashes. A crash stops its target; the input is saved in
# fuzz/artifacts/<target>/ (commit it under fuzz/regressions/<target>/ with the fix) and the
# script exits 1 after the other targets ran. Full libFuzzer output: target/fuzz-logs/<target>.log.
#
# Needs cargo-fuzz (installed here when missing). `-s none`: no sanitizer, so a stable toolchain
# does; `-a`: debug assertions, so an integer overflow is a crash too. Each run starts afresh
# from the committed inputs; new inputs go to target/fuzz-corpus/<target>/, never to fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")"
runs=${1:-200000}
max_len=65536
targets=(envelope call admin_bodies)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fuzz build -s none -a
status=0
for target in "${targets[@]}"; do
  scratch=../target/fuzz-corpus/$target
  log=../target/fuzz-logs/$target.log
  rm -rf "$scratch"
  mkdir -p "$scratch" "$(dirname "$log")" "artifacts/$target"
  inputs=("$scratch" "corpus/$target")
  if [ -d "regressions/$target" ]; then inputs+=("regressions/$target"); fi
  marker=$(mktemp)
  start=$(date +%s.%N)
  ok=1
  cargo fuzz run -s none -a "$target" "${inputs[@]}" -- \
    -runs="$runs" -max_len="$max_len" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || ok=0
  end=$(date +%s.%N)
  crashes=$(find "artifacts/$target" -type f -newer "$marker" | wc -l)
  rm -f "$marker"
  if [ "$ok" = 0 ] && [ "$crashes" = 0 ]; then crashes="? (failed without an artifact: see $log)"; fi
  [ "$ok" = 1 ] || status=1
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1) || true
  corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 | tr -dc '0-9') || true
  seed=$(sed -n 's/.*Seed: \([0-9]*\).*/\1/p' "$log" | head -n 1) || true
  awk -v t="$target" -v n="${executions:-0}" -v s="$start" -v e="$end" -v c="${corpus:-?}" \
      -v x="$crashes" -v seed="${seed:-?}" 'BEGIN {
    secs = e - s
    printf "%-13s %9d executions  %7.1f s  %8.0f exec/s  corpus %5s  crashes %s  (seed %s)\n",
      t, n, secs, (secs > 0 ? n / secs : 0), c, x, seed
  }'
done
exit "$status"
