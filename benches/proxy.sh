#!/usr/bin/env bash
# Proxy throughput benchmark of ofapi-gateway: installs nginx and wrk if missing, builds the
# release binary, then runs benches/proxy.py (which starts and stops everything it needs on
# 127.0.0.1). Options via the environment, e.g.
#   bash benches/proxy.sh                       # DURATION=10s CONNECTIONS="8 64"
#   QUICK=1 bash benches/proxy.sh               # a short smoke run
#   DURATION=30s CONNECTIONS="8 64 256" RESULTS=/tmp/r.md bash benches/proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "installing nginx and wrk" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends nginx wrk
fi

cargo build --release --locked --bin ofapi-gateway --example hyper_floor

exec python3 benches/proxy.py
