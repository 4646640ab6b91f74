#!/usr/bin/env bash
# Instructions per request of ofapi-gateway under callgrind (metering on and off, and the hyper
# floor): installs valgrind if missing, builds the release binary and the floor, then runs
# benches/callgrind.py, which starts a static upstream and each target under valgrind on
# 127.0.0.1, drives keyed PUTs from Python, and prints (and writes as Markdown to RESULTS,
# default target/callgrind-results.md) the instructions per request.
#   bash benches/callgrind.sh                       # one round, under a minute once built
#   ROUNDS=3 bash benches/callgrind.sh              # medians of 3 rounds
#   TARGETS="on off" RESULTS=/tmp/cg.md bash benches/callgrind.sh
# Honours CARGO_TARGET_DIR. Python 3 standard library only. Stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }
if ! command -v valgrind >/dev/null; then
    echo "installing valgrind" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends valgrind
fi

cargo build --release --locked --bin ofapi-gateway --example hyper_floor
target_dir="${CARGO_TARGET_DIR:-target}"
export GATEWAY="${GATEWAY:-$target_dir/release/ofapi-gateway}"
export FLOOR="${FLOOR:-$target_dir/release/examples/hyper_floor}"

# The driver stops its children itself (atexit, and on SIGTERM/SIGINT/SIGHUP); this trap only
# forwards a signal sent to this script to that one process, and never to anything else.
driver=""
trap '[ -n "$driver" ] && kill -TERM "$driver" 2>/dev/null; wait "$driver" 2>/dev/null; exit 130' INT TERM HUP
python3 benches/callgrind.py &
driver=$!
set +e
wait "$driver"
status=$?
set -e
driver=""
exit "$status"
