#!/usr/bin/env bash
# The local demo, end to end on this machine: RabbitMQ and Redis (started, or installed and
# started), the bundled Aircall simulator with a demo company, and the service against it.
#
#   deploy/local/run.sh           run until Ctrl-C
#   deploy/local/run.sh --once    show what there is to see, then stop (used to check the demo)
#
# Logs go to .local/*.log. Today the service side is the `probe` operator command: the import
# pipeline (serve, worker, reconcile) arrives with its issues and will be started here.
set -euo pipefail
cd "$(dirname "$0")/../.."

once=0
[ "${1:-}" = "--once" ] && once=1

SIM_ADDR=${SIM_ADDR:-127.0.0.1:8090}
mkdir -p .local

deploy/local/services.sh
echo "[demo] building aircall-ingest"
cargo build --locked --quiet
bin=target/debug/aircall-ingest

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

: >.local/simulator.out
"$bin" simulate --listen "$SIM_ADDR" --webhook-delay-secs 5 >.local/simulator.out 2>.local/simulator.log &
sim_pid=$!
pids+=("$sim_pid")
until grep -q "serving" .local/simulator.out 2>/dev/null; do
  if ! kill -0 "$sim_pid" 2>/dev/null; then
    echo "[demo] the simulator did not start; .local/simulator.log says:" >&2
    tail -n 20 .local/simulator.log >&2
    exit 1
  fi
  sleep 0.2
done
echo "[demo] simulated Aircall:"
sed 's/^/[demo]   /' .local/simulator.out

export AIRCALL_INGEST_MODE=development
export AIRCALL_INGEST_AIRCALL_BASE_URL="http://$SIM_ADDR"
export AIRCALL_INGEST_REDIS_KEY_PREFIX=aircall-ingest-demo
echo "[demo] checking the demo company's credentials and its last 14 days through the service's client:"
AIRCALL_API_ID=demo-api-id AIRCALL_API_TOKEN=demo-api-token "$bin" probe --days 14 2>>.local/probe.log | sed 's/^/[demo]   /'

if [ "$once" -eq 1 ]; then
  exit 0
fi
echo "[demo] the simulator keeps running (live calls every ~30 s); try:"
echo "[demo]   curl -u demo-api-id:demo-api-token 'http://$SIM_ADDR/v1/calls?per_page=5&order=desc'"
echo "[demo]   curl 'http://$SIM_ADDR/_sim/companies'"
echo "[demo] Ctrl-C stops everything."
wait
