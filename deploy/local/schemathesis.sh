#!/usr/bin/env bash
# Property-based tests of the admin API against its own OpenAPI document (schemathesis): the
# simulator and `serve` run locally, a connection is made, then schemathesis sends what the
# document allows (and what it does not) to every operation. It fails on any 5xx, and on any
# answer the document does not describe (status, content type, headers, body).
#
#   deploy/local/schemathesis.sh [EXAMPLES]     (default 25 per operation)
#
# Needs RabbitMQ and Redis running (deploy/local/services.sh) and Python 3 (schemathesis is
# installed with pip when missing). Leaves no queue or Redis key behind.
set -euo pipefail
cd "$(dirname "$0")/../.."

examples=${1:-25}
# pip --user puts `st` here, which may not be on PATH yet.
PATH="$PATH:$(python3 -m site --user-base)/bin"
if ! command -v st >/dev/null 2>&1; then
  echo "[schemathesis] installing schemathesis" >&2
  python3 -m pip install --quiet --user schemathesis \
    || python3 -m pip install --quiet --user --break-system-packages schemathesis
fi
cargo build --locked --quiet
bin=target/debug/aircall-ingest

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sim_addr=127.0.0.1:$(free_port)
serve_addr=127.0.0.1:$(free_port)
prefix=schemathesis-$$
logs=$(mktemp -d)
token=schemathesis-admin-token-$$

export AIRCALL_INGEST_MODE=development
export AIRCALL_INGEST_ADMIN_TOKEN=$token
export AIRCALL_INGEST_AIRCALL_BASE_URL=http://$sim_addr
export AIRCALL_INGEST_PUBLIC_URL=http://$serve_addr
export AIRCALL_INGEST_REDIS_KEY_PREFIX=$prefix
export AIRCALL_INGEST_QUEUE__PREFIX=$prefix
export AIRCALL_INGEST_IMPORT__RECORDING_HOSTS=127.0.0.1
export AIRCALL_INGEST_STORAGE__ROOT=$logs/data

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli --scan --pattern "$prefix:*" | xargs -r redis-cli del >/dev/null || true
  for queue in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$prefix\." || true); do
    rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
  done
  for exchange in "$prefix.events" "$prefix.events.unrouted"; do
    rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"cli\">>)." >/dev/null 2>&1 || true
  done
  rm -rf "$logs"
}
trap cleanup EXIT INT TERM

"$bin" simulate --listen "$sim_addr" --api-id st-api-id --api-token st-api-token >"$logs/sim.log" 2>&1 &
pids+=($!)
"$bin" serve --listen "$serve_addr" >"$logs/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://$serve_addr/healthz" >/dev/null 2>&1 && curl -fsS "http://$sim_addr/_sim/companies" >/dev/null 2>&1 && break
  sleep 0.2
done

users=$(curl -fsS "http://$sim_addr/_sim/companies" | python3 -c 'import json,sys; print(json.dumps([a["email"] for a in json.load(sys.stdin)[0]["agents"] if a["paying"]]))')
curl -fsS -o /dev/null -X POST "http://$serve_addr/api/connections" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"id\":\"acme\",\"api_id\":\"st-api-id\",\"api_token\":\"st-api-token\",\"users\":$users}"

status=0
st --config-file deploy/local/schemathesis.toml run "http://$serve_addr/api/openapi.json" \
  -H "Authorization: Bearer $token" --checks all --max-examples "$examples" \
  --exclude-checks positive_data_acceptance --phases examples,coverage,fuzzing --seed "${SCHEMATHESIS_SEED:-1}" || status=$?
echo "[schemathesis] connections disconnected during the run: $(grep -c 'disconnected an Aircall company' "$logs/serve.log" || true)"
exit "$status"
