#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: RabbitMQ and Redis first (started, or installed
# and started), then every test against them and the bundled Aircall simulator.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/services.sh
cargo test --locked "$@"
# Then, alone, the tests that stop the real RabbitMQ (they would disturb the others).
cargo test --locked --test it -- --ignored --test-threads=1
