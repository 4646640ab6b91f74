#!/usr/bin/env python3
"""Instructions per request of ofapi-gateway under callgrind (run it through benches/callgrind.sh).

Timings move with the machine's load; instruction counts hardly do. Each target runs under
`valgrind --tool=callgrind` twice, serving first SHORT and then LONG keyed tracking-link PUTs over
CONNECTIONS keep-alive connections, and is stopped with SIGTERM; callgrind's total for the whole
process (every thread) is read from its output file. Start-up, warm-up and shutdown are the same
in both runs, so

    instructions per request = (total after LONG - total after SHORT) / (LONG - SHORT)

Targets, all on 127.0.0.1, all in front of the same upstream:

  on      ofapi-gateway serve                 (metering on: ledger, log line, `_meta` scan, ...)
  off     ofapi-gateway serve --no-metering
  floor   benches/hyper_floor.rs              (hyper and tokio doing the nginx proxy's job only)

The upstream is benches/fixture_upstream.py (the fixture answer with nginx's headers), or with
UPSTREAM=nginx the proxy benchmark's upstream nginx (benches/nginx/upstream.conf.in). It is not
under valgrind, so its cost is not counted either way.

Environment: ROUNDS (1; more: every measurement repeated, the median reported), REQUESTS
("400 2400": SHORT and LONG), CONNECTIONS (4), WORKERS (the gateway's and the floor's serving
threads, 1), TARGETS ("on off floor"), UPSTREAM (python), RESULTS (target/callgrind-results.md),
GATEWAY (target/release/ofapi-gateway), FLOOR (target/release/examples/hyper_floor), TIMEOUT
(seconds one valgrind run may take from spawn to exit, 300), KEEP_TMP=1 (keep the scratch folder:
configs, logs, callgrind.out files for callgrind_annotate).
Python standard library only.
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from procs import RunError, env, free_port, log, on_signal, spawn, stop, stop_all, wait_port
from proxy import (
    BODY,
    CLIENT_KEY,
    FIXTURE,
    PATH,
    UPSTREAM_KEY,
    Target,
    gateway_config,
    machine,
    start_nginx,
    wait_ready_line,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")

ROUNDS = int(env("ROUNDS", "1"))
SHORT, LONG = (int(n) for n in env("REQUESTS", "400 2400").split())
CONNECTIONS = int(env("CONNECTIONS", "4"))
WORKERS = int(env("WORKERS", "1"))
TARGETS = env("TARGETS", "on off floor").split()
UPSTREAM = env("UPSTREAM", "python")
RESULTS = env("RESULTS", os.path.join(ROOT, "target/callgrind-results.md"))
GATEWAY = os.path.abspath(env("GATEWAY", os.path.join(ROOT, "target/release/ofapi-gateway")))
FLOOR = os.path.abspath(env("FLOOR", os.path.join(ROOT, "target/release/examples/hyper_floor")))
TIMEOUT = float(env("TIMEOUT", "300"))
KEEP_TMP = env("KEEP_TMP", "0") not in ("0", "false", "no")

LABELS = {"on": "metering on", "off": "metering off", "floor": "hyper floor"}


class BenchError(RunError):
    """A target did not behave: the run stops with this message."""


# --- the client -----------------------------------------------------------------------------------


def drive(port, requests, deadline):
    """`requests` keyed PUTs over CONNECTIONS keep-alive connections (one thread each); every answer
    must be a 200 with the same body as the first. Returns the answers counted."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
    shares = [requests // CONNECTIONS + (i < requests % CONNECTIONS) for i in range(CONNECTIONS)]
    expected = []  # the first answer's body, which every other must equal
    errors, counts = [], [0] * CONNECTIONS
    lock = threading.Lock()

    def connection(index):
        timeout = max(1.0, deadline - time.monotonic())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            for _ in range(shares[index]):
                if errors or time.monotonic() > deadline:
                    return
                conn.request("PUT", PATH, body=BODY, headers=headers)
                response = conn.getresponse()
                body = response.read()
                with lock:
                    if not expected:
                        expected.append(body)
                if response.status != 200 or body != expected[0]:
                    errors.append(f"answer {response.status}: {body[:200]!r}")
                    return
                if response.getheader("connection", "").lower() == "close":
                    errors.append("the target closed a keep-alive connection")
                    return
                counts[index] += 1
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            conn.close()

    threads = [threading.Thread(target=connection, args=(i,)) for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    if errors:
        raise BenchError(f"port {port}: {errors[0]}")
    if sum(counts) != requests:
        raise BenchError(f"port {port}: {sum(counts)} of {requests} answers within the time limit")
    return sum(counts)


# --- one measurement: a target under callgrind serving n requests --------------------------------


def valgrind(out_dir):
    return [
        "valgrind", "--tool=callgrind",
        f"--callgrind-out-file={out_dir}/callgrind.out",
        f"--log-file={out_dir}/valgrind.log",
    ]


def gateway_env():
    environment = dict(os.environ)
    environment.update(
        ONLYFANSAPI_API_KEY=UPSTREAM_KEY,
        RUST_LOG="info",  # the per-request access line is part of what metering costs
        TOKIO_WORKER_THREADS=str(WORKERS),
    )
    environment.pop("OFAPI_GATEWAY_CONFIG", None)
    return environment


def start(target, tmp, name, upstream_port):
    """Spawns `target` under callgrind; returns (process, its client port, its folder)."""
    if target == "floor":
        directory = os.path.join(tmp, name)
        os.makedirs(directory)
        port = free_port()
        output = open(os.path.join(directory, "stderr.log"), "w")
        process = spawn(
            valgrind(directory) + [FLOOR, f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}",
                                   CLIENT_KEY, UPSTREAM_KEY, str(WORKERS)],
            stdout=output, stderr=output)
        wait_port(port, process, "hyper floor (callgrind)", deadline_s=TIMEOUT / 2)
        return process, port, directory
    config, directory = gateway_config(tmp, name, upstream_port, free_port())
    args = [GATEWAY, "--config", config, "--log-format", "json", "serve"]
    if target == "off":
        args.append("--no-metering")
    stdout_path = os.path.join(directory, "stdout.jsonl")
    stdout = open(stdout_path, "w")
    stderr = open(os.path.join(directory, "stderr.log"), "w")
    process = spawn(valgrind(directory) + args, stdout=stdout, stderr=stderr, env=gateway_env(),
                    cwd=directory)
    ready = wait_ready_line(process, stdout_path, deadline_s=TIMEOUT / 2)
    host, _, port = ready["client"].rpartition(":")
    if host != "127.0.0.1":
        raise BenchError(f"{name}: client listener on {ready['client']}, not 127.0.0.1")
    return process, int(port), directory


def callgrind_total(directory):
    """The `summary:` (or `totals:`) line of callgrind's output: instructions of the whole run."""
    path = os.path.join(directory, "callgrind.out")
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    except OSError as error:
        raise BenchError(f"no callgrind output ({error}); see {directory}/valgrind.log") from error
    raise BenchError(f"no summary line in {path}")


def measure(target, requests, tmp, name, upstream_port, fixture):
    """Total instructions of `target` from spawn to exit, having answered `requests` PUTs (after
    the check's keyed PUT and its unkeyed 401, the same in every run)."""
    started = time.monotonic()
    deadline = started + TIMEOUT
    process, port, directory = start(target, tmp, name, upstream_port)
    auth = f"Bearer {CLIENT_KEY}"
    Target(name, LABELS[target], port, auth, process, [process.pid]).check(fixture)
    drive(port, requests, deadline)
    code = stop(process, grace=max(10.0, deadline - time.monotonic()))
    # The gateway drains and exits 0; the floor has no signal handler and dies of the SIGTERM.
    expected = -signal.SIGTERM if target == "floor" else 0
    if code != expected:
        raise BenchError(f"{name}: exited with {code} on SIGTERM (expected {expected}); "
                         f"see {directory}")
    total = callgrind_total(directory)
    log(f"  {name:<18} {requests:>5} requests  {total:>14,} instructions  "
        f"{time.monotonic() - started:5.1f} s")
    return total


# --- report ---------------------------------------------------------------------------------------


def kilo(n):
    return f"{n / 1000:.1f}k"


def git_describe():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def valgrind_version():
    result = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    return result.stdout.strip()


def report(per_request, totals):
    """Markdown: the per-request medians, each round's figure, the raw totals."""
    rounds = ROUNDS > 1
    lines = [
        "# ofapi-gateway instructions per request (callgrind)",
        "",
        f"- commit {git_describe()}; {valgrind_version()}; {machine()}",
        f"- `PUT {PATH}` with a {len(BODY)}-byte JSON body, keyed, over {CONNECTIONS} keep-alive "
        f"connections; per request = (total after {LONG} − total after {SHORT}) ÷ {LONG - SHORT}",
        f"- serving threads: {WORKERS}; upstream: "
        + ("nginx (benches/nginx/upstream.conf.in)" if UPSTREAM == "nginx"
           else "benches/fixture_upstream.py")
        + f"; {ROUNDS} round{'s' if rounds else ''}" + (" (medians)" if rounds else ""),
        "",
        "| instructions per request | " + ("median | rounds |" if rounds else "|"),
        "|---|---:|" + ("---|" if rounds else ""),
    ]
    for target in TARGETS:
        values = per_request[target]
        row = f"| {LABELS[target]} | {kilo(statistics.median(values))} |"
        if rounds:
            row += " " + ", ".join(kilo(v) for v in values) + " |"
        lines.append(row)
    if "on" in TARGETS and "off" in TARGETS:
        added = statistics.median(per_request["on"]) - statistics.median(per_request["off"])
        lines.append(f"| what metering adds | {kilo(added)} |" + (" |" if rounds else ""))
    lines += [
        "",
        "Totals (instructions from spawn to exit, every thread):",
        "",
        "| target | round | " + f"{SHORT} requests | {LONG} requests |",
        "|---|---:|---:|---:|",
    ]
    for (target, round_), (short, long_) in totals.items():
        lines.append(f"| {LABELS[target]} | {round_} | {short:,} | {long_:,} |")
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------


def main():
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind is not installed (benches/callgrind.sh installs it)")
    unknown = [t for t in TARGETS if t not in LABELS]
    if unknown:
        raise BenchError(f"TARGETS: unknown {unknown}; known: {' '.join(LABELS)}")
    if not 0 < SHORT < LONG:
        raise BenchError(f"REQUESTS: two counts, the first smaller, not {SHORT} {LONG}")
    if UPSTREAM not in ("python", "nginx"):
        raise BenchError(f"UPSTREAM: python or nginx, not {UPSTREAM!r}")
    if UPSTREAM == "nginx" and shutil.which("nginx") is None:
        raise BenchError("UPSTREAM=nginx but nginx is not installed")
    if {"on", "off"} & set(TARGETS) and not os.access(GATEWAY, os.X_OK):
        raise BenchError(f"{GATEWAY} is missing: cargo build --release --locked")
    if "floor" in TARGETS and not os.access(FLOOR, os.X_OK):
        raise BenchError(f"{FLOOR} is missing: "
                         "cargo build --release --locked --example hyper_floor")

    with open(FIXTURE) as f:
        fixture = json.load(f)

    tmp = tempfile.mkdtemp(prefix="ofgw-callgrind-")
    if not KEEP_TMP:
        atexit.register(shutil.rmtree, tmp, True)
    atexit.register(stop_all)  # registered last, runs first: processes stop before the rmtree
    log(f"callgrind: REQUESTS={SHORT} {LONG} CONNECTIONS={CONNECTIONS} WORKERS={WORKERS} "
        f"TARGETS={' '.join(TARGETS)} ROUNDS={ROUNDS} UPSTREAM={UPSTREAM}; scratch {tmp}")

    if UPSTREAM == "nginx":
        compact = json.dumps(fixture, separators=(",", ":"), ensure_ascii=False)
        upstream_port, upstream = start_nginx(
            tmp, "upstream", "upstream.conf.in",
            {"UPSTREAM_KEY": UPSTREAM_KEY, "BALANCE": fixture["_meta"]["_credits"]["balance"],
             "BODY": compact}, workers=1)
    else:
        upstream_port = free_port()
        errors = open(os.path.join(tmp, "upstream.log"), "w")
        upstream = spawn([sys.executable, os.path.join(BENCHES, "fixture_upstream.py"),
                          str(upstream_port)], stdout=errors, stderr=errors,
                         env=dict(os.environ, UPSTREAM_KEY=UPSTREAM_KEY))
        wait_port(upstream_port, upstream, "fixture upstream")

    per_request = {target: [] for target in TARGETS}
    totals = {}
    for round_ in range(1, ROUNDS + 1):
        if ROUNDS > 1:
            log(f"round {round_} of {ROUNDS}")
        for target in TARGETS:
            short = measure(target, SHORT, tmp, f"{target}-{SHORT}-r{round_}", upstream_port,
                            fixture)
            long_ = measure(target, LONG, tmp, f"{target}-{LONG}-r{round_}", upstream_port,
                            fixture)
            totals[(target, round_)] = (short, long_)
            per_request[target].append((long_ - short) / (LONG - SHORT))
            log(f"  {LABELS[target]}: {kilo(per_request[target][-1])} instructions per request")
    stop(upstream)

    text = report(per_request, totals)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(RESULTS)), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    log(f"results written to {RESULTS}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        main()
    except RunError as error:
        log(f"callgrind benchmark aborted: {error}")
        sys.exit(1)
