#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) answer on this machine:
# reuses them when they already run, starts them when they are installed, installs them with the
# system package manager first when they are missing. Safe to run any number of times.
set -euo pipefail

REDIS_PORT=6379
AMQP_PORT=5672

say() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port name seconds
  local deadline=$((SECONDS + $3))
  until port_open "$1"; do
    if ((SECONDS >= deadline)); then
      say "$2 did not open port $1 within $3 s"
      return 1
    fi
    sleep 1
  done
}

# shellcheck source=deploy/local/as-root.sh
. "$(dirname "$0")/as-root.sh"

apt_updated=0
# install_package redis|rabbitmq: the package's name differs between package managers.
install_package() {
  say "installing $1"
  if command -v apt-get >/dev/null 2>&1; then
    if [ "$apt_updated" -eq 0 ]; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1-server"
  elif command -v dnf >/dev/null 2>&1; then
    case "$1" in redis) as_root dnf install -y redis ;; rabbitmq) as_root dnf install -y rabbitmq-server ;; esac
  elif command -v brew >/dev/null 2>&1; then
    brew install "$1"
  else
    say "no known package manager: install $1 yourself"
    return 1
  fi
}

ensure_redis() {
  if port_open "$REDIS_PORT"; then
    say "Redis: already running"
    return
  fi
  command -v redis-server >/dev/null 2>&1 || install_package redis
  # A package install may have started it already.
  if ! port_open "$REDIS_PORT"; then
    say "Redis: starting"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  fi
  wait_for_port "$REDIS_PORT" Redis 30
  say "Redis: ready"
}

ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then
    say "RabbitMQ: already running"
    return
  fi
  command -v rabbitmq-server >/dev/null 2>&1 || install_package rabbitmq
  if ! port_open "$AMQP_PORT"; then
    say "RabbitMQ: starting"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  as_root timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  wait_for_port "$AMQP_PORT" RabbitMQ 120
  say "RabbitMQ: ready"
}

ensure_redis
ensure_rabbitmq
