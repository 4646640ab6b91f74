#!/usr/bin/env bash
# Soak test of ofapi-gateway: builds the release binary, then runs benches/soak.py, which starts
# a fault-injecting upstream (benches/soak_upstream.py) and the gateway on free 127.0.0.1 ports,
# drives mixed traffic for DURATION with an upstream restart and a graceful gateway restart in
# the middle, reconciles the SQLite ledger with what the upstream charged, samples the gateway's
# RSS, prints the results and writes them as Markdown to target/soak-results.md.
# Exits non-zero when the ledger and the upstream disagree, or on any other failed check.
#   bash benches/soak.sh                 # DURATION=600s
#   DURATION=60s bash benches/soak.sh    # a quick run
# Python 3 standard library only. Stops only the processes it started (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }
cargo build --release --locked

# The driver stops its children itself (atexit, and on SIGTERM/SIGINT/SIGHUP); this trap only
# forwards a signal sent to this script to that one process, and never to anything else.
driver=""
trap '[ -n "$driver" ] && kill -TERM "$driver" 2>/dev/null; wait "$driver" 2>/dev/null; exit 130' INT TERM HUP
python3 benches/soak.py &
driver=$!
set +e
wait "$driver"
status=$?
set -e
driver=""
exit "$status"
