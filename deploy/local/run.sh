#!/usr/bin/env bash
# The local demo, end to end on this machine: RabbitMQ and Redis (started, or installed and
# started), the bundled Aircall simulator with a demo company, and the service against it.
#
#   deploy/local/run.sh           run until Ctrl-C
#   deploy/local/run.sh --once    show what there is to see, then stop (used to check the demo)
#
# What runs: `all` (webhook intake, the import worker and the reconciler in one process), the
# `connect` and `users` commands (the demo company's webhook registered on the simulator, its
# paying agents set) and the `probe` and `status` tools. Recordings and metadata land under
# ./data/demo. Logs go to .local/*.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

once=0
[ "${1:-}" = "--once" ] && once=1

SIM_ADDR=${SIM_ADDR:-127.0.0.1:8090}
SERVE_ADDR=${SERVE_ADDR:-127.0.0.1:8080}
PREFIX=aircall-ingest-demo
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

# start NAME LOG COMMAND...: starts a process, waits until LOG says it serves.
start() {
  local name=$1 ready=$2 log=$3
  shift 3
  : >"$log"
  "$@" >>"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  until grep -q "$ready" "$log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "[demo] $name did not start; $log says:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

export AIRCALL_INGEST_MODE=development
export AIRCALL_INGEST_AIRCALL_BASE_URL="http://$SIM_ADDR"
export AIRCALL_INGEST_PUBLIC_URL="http://$SERVE_ADDR"
export AIRCALL_INGEST_REDIS_KEY_PREFIX=$PREFIX
export AIRCALL_INGEST_QUEUE__PREFIX=$PREFIX
export AIRCALL_INGEST_LOG__FORMAT=json
# The simulator serves recordings itself, over plain HTTP (development mode allows it).
export AIRCALL_INGEST_IMPORT__RECORDING_HOSTS=127.0.0.1
export AIRCALL_INGEST_STORAGE__ROOT=./data

# A fresh demo each time: the simulator forgets its webhooks when it stops.
if command -v redis-cli >/dev/null 2>&1; then
  redis-cli --scan --pattern "$PREFIX:*" | xargs -r redis-cli del >/dev/null
fi
rm -rf data/demo
# …and so do its queues (jobs left by an earlier demo name calls this simulator has not made yet).
if command -v rabbitmqctl >/dev/null 2>&1; then
  for queue in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$PREFIX\." || true); do
    rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
  done
fi

start simulator "serving" .local/simulator.log \
  "$bin" simulate --listen "$SIM_ADDR" --webhook-delay-secs 5
echo "[demo] simulated Aircall:"
grep -v '^{' .local/simulator.log | sed 's/^/[demo]   /'

start all "serving webhooks" .local/serve.log "$bin" all --listen "$SERVE_ADDR"
echo "[demo] webhooks answered at http://$SERVE_ADDR/webhooks/aircall/{connection}; the worker imports"

export AIRCALL_API_ID=demo-api-id AIRCALL_API_TOKEN=demo-api-token
echo "[demo] checking the demo company's credentials and its last 14 days:"
"$bin" probe --days 14 2>>.local/probe.log | sed 's/^/[demo]   /'
echo "[demo] connecting it (webhook registered on the simulated Aircall):"
"$bin" connect --id demo 2>>.local/connect.log | sed 's/^/[demo]   /'
# The simulator prints the agents the scenario made paying users of the platform.
paying=$(sed -n 's/.*paying agents: //p' .local/simulator.log | head -n 1)
echo "[demo] paying users of the demo account: $paying"
"$bin" users --id demo --email "$paying" 2>>.local/users.log | sed 's/^/[demo]   /'
agent=${paying%%,*}

echo "[demo] the reconciler runs the first import: the last 14 days, at most the 200 most recent eligible calls…"
for _ in $(seq 1 150); do
  "$bin" status 2>/dev/null | grep -q 'last sync: FirstImport' && break
  sleep 0.2
done
"$bin" status 2>/dev/null | grep 'last sync' | sed 's/^ */[demo]   /'

echo "[demo] four calls end now; Aircall posts call.ended about 5 s later:"
echo "[demo]   two by $agent with recordings, one by an agent who does not pay, one unanswered"
# sim_call SPEC: a call that ends now; prints its id.
sim_call() {
  curl -fsS -X POST "http://$SIM_ADDR/_sim/companies/1/calls" -H 'content-type: application/json' -d "$1" \
    | sed -E 's/.*"id":([0-9]+).*/\1/'
}
ids=(
  "$(sim_call "{\"agent_email\":\"$agent\",\"recording_bytes\":480000,\"with_contact\":true}")"
  "$(sim_call "{\"agent_email\":\"$agent\",\"recording_bytes\":1920000,\"direction\":\"outbound\"}")"
  "$(sim_call '{"agent_email":"someone.else@demo.example","recording_bytes":64000}')"
  "$(sim_call "{\"agent_email\":\"$agent\",\"answered\":false,\"recording_bytes\":null}")"
)
# Wait until the worker has decided all four (status lists the latest decisions).
for _ in $(seq 1 100); do
  decided=0
  listing=$("$bin" status 2>/dev/null)
  for id in "${ids[@]}"; do grep -q "^  call $id " <<<"$listing" && decided=$((decided + 1)); done
  [ "$decided" -ge 4 ] && break
  sleep 0.3
done
echo "[demo] the four calls:"
for id in "${ids[@]}"; do
  "$bin" status 2>/dev/null | grep "^  call $id " | sed 's/^ */[demo]   /'
  find data/demo -name "$id.*" | sort | sed 's/^/[demo]     stored: /'
done
echo "[demo] stored under ./data/demo: $(find data/demo -name '*.mp3' | wc -l) recordings, $(du -sh data/demo | cut -f1)"
echo "[demo] status:"
"$bin" status 2>>.local/status.log | sed 's/^/[demo]   /'

if [ "$once" -eq 1 ]; then
  exit 0
fi
echo "[demo] running (a live call every ~30 s); try:"
echo "[demo]   curl -X POST http://$SIM_ADDR/_sim/companies/1/calls -H 'content-type: application/json' -d '{}'"
echo "[demo]   AIRCALL_INGEST_MODE=development AIRCALL_INGEST_QUEUE__PREFIX=$PREFIX AIRCALL_INGEST_REDIS_KEY_PREFIX=$PREFIX $bin status"
echo "[demo]   ls -R data/demo"
echo "[demo] Ctrl-C stops everything."
wait
