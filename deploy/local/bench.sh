#!/usr/bin/env bash
# The benchmarks, with RabbitMQ and Redis started first. Usage: deploy/local/bench.sh [BENCH...]
# (default: every benchmark). Results are printed as Markdown tables for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
if [ "$#" -eq 0 ]; then
  cargo bench --locked
else
  for bench in "$@"; do cargo bench --locked --bench "$bench"; done
fi
