#!/usr/bin/env bash
# The benchmarks, with RabbitMQ and Redis started first. Usage: deploy/local/bench.sh [BENCH...]
# (default: every benchmark in Cargo.toml: intake, import, reconcile). Results are printed as
# Markdown tables for BENCHMARKS.md. The import benchmark also starts the release
# `aircall-ingest worker`, which cargo builds with it, and writes up to a few GB under target/tmp
# (removed afterwards). The reconcile benchmark counts Aircall requests against the bundled
# simulator (about 4 minutes, one of them waiting on a real 60-a-minute budget) and writes a few
# hundred MB under target/tmp (removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
if [ "$#" -eq 0 ]; then
  cargo bench --locked
else
  for bench in "$@"; do cargo bench --locked --bench "$bench"; done
fi
