#!/usr/bin/env bash
# The benchmarks, with RabbitMQ and Redis started first. Usage: deploy/local/bench.sh [BENCH...]
# (default: every benchmark: intake, import). Results are printed as Markdown tables for
# BENCHMARKS.md. The import benchmark also starts the release `aircall-ingest worker`, which
# cargo builds with it, and writes up to a few GB under target/tmp (removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
if [ "$#" -eq 0 ]; then
  cargo bench --locked
else
  for bench in "$@"; do cargo bench --locked --bench "$bench"; done
fi
