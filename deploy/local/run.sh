#!/usr/bin/env bash
# The local demo, end to end on this machine: RabbitMQ and Redis (started, or installed and
# started), the bundled Aircall simulator with a demo company, and the service against it.
#
#   deploy/local/run.sh           run until Ctrl-C
#   deploy/local/run.sh --once    show what there is to see, then stop (used to check the demo)
#
# What runs: `all` (webhook intake, admin API, the import worker and the reconciler in one
# process); the demo company is connected through the admin API (its webhook registered on the
# simulator, its paying agents set), then the `probe` and `status` tools. Recordings and metadata land under
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

api="http://$SERVE_ADDR/api"
# Development mode's admin token (set AIRCALL_INGEST_ADMIN_TOKEN for any other).
token=${AIRCALL_INGEST_ADMIN_TOKEN:-dev-admin-token-not-for-production}
# admin METHOD PATH [BODY]: the admin API, as an operator would call it.
admin() {
  curl -sS -X "$1" "$api$2" -H "Authorization: Bearer $token" -H 'content-type: application/json' ${3:+-d "$3"}
}
# json EXPRESSION: evaluates a Python expression on the JSON read from stdin (bound to `d`).
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "[demo] checking the demo company's credentials and its last 14 days:"
AIRCALL_API_ID=demo-api-id AIRCALL_API_TOKEN=demo-api-token \
  "$bin" probe --days 14 2>>.local/probe.log | sed 's/^/[demo]   /'
# The simulator prints the agents the scenario made paying users of the platform.
paying=$(sed -n 's/.*paying agents: //p' .local/simulator.log | head -n 1)
agent=${paying%%,*}
echo "[demo] connecting it through the admin API, with its paying users ($paying):"
users=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1].split(",")))' "$paying")
admin POST /connections "{\"id\":\"demo\",\"api_id\":\"demo-api-id\",\"api_token\":\"demo-api-token\",\"users\":$users}" \
  | json '"connection {0[id]}: {0[status]}, webhook at {0[webhook][url]}; first import {1}".format(d["connection"], d["first_import"])' \
  | sed 's/^/[demo]   /'

echo "[demo] the first import: the last 14 days, at most the 200 most recent eligible calls…"
for _ in $(seq 1 150); do
  admin GET /connections/demo | json 'd["sync"]["last_report"] is not None and not d["sync"]["running"]' | grep -q True && break
  sleep 0.2
done
admin GET /connections/demo | json '"{r[calls_seen]} calls listed, {r[queued]} queued, skipped: {r[skipped]}, {r[aircall_requests]} Aircall requests".format(r=d["sync"]["last_report"])' \
  | sed 's/^/[demo]   /'

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
# decided ID: the call's outcome and why, once decided (the per-call answer of the admin API).
decided() {
  admin GET "/connections/demo/calls?limit=500" \
    | json "next(('call {0[call_id]}: {0[outcome]}{1} — {0[explanation]}'.format(c, ' (' + c['reason'] + ')' if c.get('reason') else '') for c in d['items'] if c['call_id'] == $1 and c['outcome'] != 'pending'), '')"
}
for _ in $(seq 1 100); do
  done_count=0
  for id in "${ids[@]}"; do [ -n "$(decided "$id")" ] && done_count=$((done_count + 1)); done
  [ "$done_count" -ge 4 ] && break
  sleep 0.3
done
echo "[demo] the four calls (GET /api/connections/demo/calls):"
for id in "${ids[@]}"; do
  decided "$id" | sed 's/^/[demo]   /'
  find data/demo -name "$id.*" | sort | sed 's/^/[demo]     stored: /'
done
echo "[demo] stored under ./data/demo: $(find data/demo -name '*.mp3' | wc -l) recordings, $(du -sh data/demo | cut -f1)"
echo "[demo] the connection (GET /api/connections/demo):"
admin GET /connections/demo | json '"{0[status]}: {0[calls]}, {0[pending][count]} pending".format(d)' | sed 's/^/[demo]   /'
echo "[demo] status:"
"$bin" status 2>>.local/status.log | sed 's/^/[demo]   /'

if [ "$once" -eq 1 ]; then
  exit 0
fi
echo "[demo] running (a live call every ~30 s); try:"
echo "[demo]   the operator console: http://$SERVE_ADDR/console (admin token: $token)"
echo "[demo]   curl -H 'Authorization: Bearer $token' $api/connections/demo/calls"
echo "[demo]   curl $api/openapi.json"
echo "[demo]   curl -X POST http://$SIM_ADDR/_sim/companies/1/calls -H 'content-type: application/json' -d '{}'"
echo "[demo]   AIRCALL_INGEST_MODE=development AIRCALL_INGEST_QUEUE__PREFIX=$PREFIX AIRCALL_INGEST_REDIS_KEY_PREFIX=$PREFIX $bin status"
echo "[demo]   ls -R data/demo"
echo "[demo] Ctrl-C stops everything."
wait
