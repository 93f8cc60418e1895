#!/usr/bin/env bash
# Installs, from Debian, the tools the operations tests need when they are
# missing: prometheus and promtool (package prometheus: `promtool` checks
# and unit-tests deploy/prometheus, and cmd/groupmatch's Prometheus test
# runs a real server), docker-compose (validates docker-compose.yml
# offline; no Docker engine is needed) and kcat (a librdkafka client: the
# feed tests publish requests and read events with it). Tests never skip
# for them.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

echo "ensure-tools: installing ${missing[*]} from Debian" >&2
apt-get update -qq
# No recommends (prometheus would pull node-exporter), and no service start:
# the tests start their own Prometheus on a free loopback port.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null || { echo "ensure-tools: prometheus still missing" >&2; exit 1; }
command -v kcat >/dev/null || { echo "ensure-tools: kcat still missing" >&2; exit 1; }
