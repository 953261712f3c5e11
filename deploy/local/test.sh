#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: RabbitMQ and Redis first (started, or installed
# and started), Chromium, Node.js and Playwright for the console's browser tests and moto (an S3
# server the storage tests start) installed when missing; then every test against them and the
# bundled Aircall simulator, then schemathesis against the admin API (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/services.sh
# Chromium, Node.js and Playwright for the console's browser tests (tests/it/console.rs).
deploy/local/browser.sh
# pip --user puts moto_server here, which may not be on PATH yet.
PATH="$PATH:$(python3 -m site --user-base)/bin"
if ! command -v moto_server >/dev/null 2>&1; then
  echo "[test] installing moto (S3 server for the storage tests)" >&2
  python3 -m pip install --quiet --user 'moto[server]' \
    || python3 -m pip install --quiet --user --break-system-packages 'moto[server]'
fi
cargo test --locked "$@"
# Then, alone, the tests that stop the real RabbitMQ (they would disturb the others)…
cargo test --locked --test it -- --ignored --test-threads=1 --skip chaos::
# …and a shortened chaos run (150 s of traffic; deploy/local/chaos.sh runs the full one), its
# report printed.
CHAOS_SECONDS=${CHAOS_SECONDS:-150} cargo test --locked --test it chaos:: -- --ignored --nocapture
# Finally the admin API against its own OpenAPI document: no 5xx, every answer as documented.
deploy/local/schemathesis.sh 50
# And the deployment files: Kubernetes schemas, the overlays, every variable a real setting.
deploy/check-manifests.sh
