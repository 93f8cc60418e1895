#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers on 127.0.0.1:5432: starts
# the machine's cluster if it is down, installs PostgreSQL from Debian if it
# is missing, and fails loudly if it still does not answer. Tests never skip
# for a missing database.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: installing PostgreSQL from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ready; then exit 0; fi

echo "ensure-postgres: PostgreSQL is down; starting it" >&2
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for v in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  done
fi
for _ in $(seq 1 30); do
  if ready; then exit 0; fi
  sleep 1
done
echo "ensure-postgres: PostgreSQL does not answer on 127.0.0.1:5432; the tests need it" >&2
exit 1
