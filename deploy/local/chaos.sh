#!/usr/bin/env bash
# The chaos run: the real `serve`, two `worker`s and `reconcile` against the bundled Aircall
# simulator (20% of webhooks dropped, 5% of API answers 5xx, 5% 429, 5% of downloads cut short)
# while RabbitMQ is restarted twice, a worker is killed twice, Redis and `serve` are restarted;
# then the simulator's truth is compared with what was stored and announced, and a report is
# printed (and written to target/tmp/chaos-report.md). Fails unless nothing is missing,
# duplicated, corrupt or partial.
#
#   deploy/local/chaos.sh [SECONDS] [CALLS_PER_MINUTE]   (default: 600 s at 60 calls a minute)
#
# It restarts this machine's RabbitMQ: nothing else should be using it meanwhile. It starts a
# Redis of its own (redis-server must be installed: deploy/local/services.sh does it).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
CHAOS_SECONDS=${1:-${CHAOS_SECONDS:-600}} CHAOS_CALLS_PER_MINUTE=${2:-${CHAOS_CALLS_PER_MINUTE:-60}} \
  cargo test --locked --test it -- --ignored --exact --nocapture \
  chaos::under_chaos_every_eligible_call_is_imported_once_and_whole
