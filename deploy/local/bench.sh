#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, rerun: RabbitMQ and Redis are started first, then each named
# benchmark in turn. Usage: deploy/local/bench.sh [NAME...]; with no name, all of them, in this
# order (about 85 minutes on a 2-core machine):
#
#   intake      benches/intake.rs: webhook intake against raw-broker and bare-HTTP baselines
#   import      benches/import.rs: recording imports against raw downloads; the release worker's
#               memory (writes up to a few GB under target/tmp, removed afterwards)
#   reconcile   benches/reconcile.rs: Aircall requests per pass and per busy day (about 4 min, one
#               of them waiting on a real 60-a-minute budget)
#   scale       benches/scale.rs: 1,000 and 10,000 connected companies (BENCH_SCALE_COMPANIES):
#               the simulator's memory per company, connecting them, one full reconcile cycle on
#               one replica (concurrency 16 and 1, with and without 150 ms of Aircall latency),
#               Aircall requests and Redis memory per connection, intake with N connections vs
#               10 (about 5 min)
#   load        benches/load.rs: the release serve and worker; the intake's peak, then half of it
#               for 10 min (LOAD_SECONDS) while live calls' small recordings are imported: latency,
#               memory trends, backlog (about 12 min, both cores; Redis grows by several hundred
#               MB meanwhile, removed afterwards)
#   chaos       deploy/local/chaos.sh: 600 s of traffic through faults and restarts, the truth
#               compared with what was stored (restarts this machine's RabbitMQ)
#   outage      a 60 s RabbitMQ outage under 200 webhooks/s: answers per phase, spool drain time
#               (stops this machine's RabbitMQ)
#
# Results are printed as Markdown tables; BENCHMARKS.md says which machine and commit each
# figure came from.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
if [ "$#" -eq 0 ]; then
  set -- intake import reconcile scale load chaos outage
fi
# Every benchmark runs, even after one that failed (a benchmark fails when its run shows a
# problem, and its figures are still printed); the exit status says whether any failed.
failed=()
for bench in "$@"; do
  echo "[bench] $bench" >&2
  case "$bench" in
    chaos) deploy/local/chaos.sh "${CHAOS_SECONDS:-600}" || failed+=("$bench") ;;
    outage)
      OUTAGE_SECONDS=${OUTAGE_SECONDS:-60} cargo test --locked --test it -- --ignored --exact \
        --nocapture disruptive::a_broker_outage_under_steady_webhook_traffic_is_answered_2xx_throughout \
        || failed+=("$bench")
      ;;
    *) cargo bench --locked --bench "$bench" || failed+=("$bench") ;;
  esac
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "[bench] failed: ${failed[*]}" >&2
  exit 1
fi
