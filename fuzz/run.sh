#!/usr/bin/env bash
# Fuzzes webhook envelope parsing and verification for a fixed number of executions, starting
# from the committed corpus of real-shaped payloads. Usage: fuzz/run.sh [RUNS] (default 200000).
# Needs cargo-fuzz (installed here when missing); `-s none` lets it run on a stable toolchain.
set -euo pipefail
cd "$(dirname "$0")"
runs=${1:-200000}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# The committed corpus stays pristine: new inputs go to a scratch directory.
mkdir -p ../target/fuzz-corpus/envelope
cargo fuzz run -s none envelope ../target/fuzz-corpus/envelope corpus/envelope -- -runs="$runs" -max_len=65536
