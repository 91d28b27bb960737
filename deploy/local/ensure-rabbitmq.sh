#!/usr/bin/env bash
# Make sure the machine's RabbitMQ answers on 127.0.0.1:5672; start it if it is down.
set -euo pipefail
if rabbitmqctl status >/dev/null 2>&1; then
  exit 0
fi
echo "RabbitMQ is down; starting it (rabbitmq-server -detached)" >&2
rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 90); do
  if rabbitmqctl await_startup --timeout 5 >/dev/null 2>&1; then
    echo "RabbitMQ is up" >&2
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start within 90 s" >&2
exit 1
