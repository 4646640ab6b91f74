#!/usr/bin/env python3
"""Proxy throughput benchmark of ofapi-gateway (run it through benches/proxy.sh).

Six targets answer the same tracking-link PUT, all on 127.0.0.1:

  direct       wrk -> upstream nginx (1 worker, a static answer: the fixture + credit headers)
  nginx-1w     wrk -> nginx authenticating proxy, 1 worker  -> upstream
  nginx-2w     wrk -> nginx authenticating proxy, 2 workers -> upstream
  floor        wrk -> benches/hyper_floor.rs, WORKERS threads -> upstream (hyper alone: the key
                      checked and swapped, nothing else; what any hyper-based proxy costs at least)
  gateway      wrk -> ofapi-gateway serve (metering on)     -> upstream
  gateway-nm   wrk -> ofapi-gateway serve --no-metering     -> upstream

Each is checked first (200 with the fixture body for a keyed PUT, 401 without a key), warmed up,
then measured with `wrk --latency` at each concurrency. Per run: requests/s, p50, p99, non-2xx and
socket errors, the proxy's peak RSS (VmHWM) and its CPU time per request (/proc/PID/stat). Then
the ratios and the gateway's time from spawn to its first /healthz 200.

Environment: DURATION (10s), CONNECTIONS ("8 64"), QUICK=1 (2s, "16"), WARMUP (2s), THREADS
(wrk threads, 2), WORKERS (serving threads of the gateway, 2 = nginx-2w), READY_RUNS (5),
ROUNDS (1; more: the median of each figure), RESULTS (target/bench-results.md),
GATEWAY (target/release/ofapi-gateway), FLOOR (target/release/examples/hyper_floor), KEEP_TMP=1 (keep the scratch folder and its logs).
Python standard library only.
"""

import atexit
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from procs import RunError, env, free_port, log, on_signal, spawn, stop, stop_all, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")
FIXTURE = os.path.join(ROOT, "src/sandbox/fixtures/update-tracking-link.200.json")

UPSTREAM_KEY = "bench-upstream-key"
CLIENT_KEY = "ofgw_bench_4f1c9a2e7b6d8035e1a9c4b7d2f0e8a6c3b5d9f1"
PATH = "/api/fansly/fansly_acct_bench/tracking-links/100000000000000003"
BODY = b'{"label":"Twitter bio (updated)","description":"Updated description."}'

CLK_TCK = os.sysconf("SC_CLK_TCK")


QUICK = env("QUICK", "0") not in ("0", "false", "no")
DURATION = env("DURATION", "2s" if QUICK else "10s")
CONNECTIONS = [int(c) for c in env("CONNECTIONS", "16" if QUICK else "8 64").split()]
WARMUP = env("WARMUP", "1s" if QUICK else "2s")
THREADS = int(env("THREADS", "2"))
WORKERS = int(env("WORKERS", "2"))
READY_RUNS = int(env("READY_RUNS", "2" if QUICK else "5"))
ROUNDS = int(env("ROUNDS", "1"))
RESULTS = env("RESULTS", os.path.join(ROOT, "target/bench-results.md"))
GATEWAY = env("GATEWAY", os.path.join(ROOT, "target/release/ofapi-gateway"))
FLOOR = env("FLOOR", os.path.join(ROOT, "target/release/examples/hyper_floor"))
KEEP_TMP = env("KEEP_TMP", "0") not in ("0", "false", "no")


class BenchError(RunError):
    """A target did not behave: the benchmark stops with this message."""


def request(port, method, path, headers=None, body=None, timeout=5.0):
    """One HTTP/1.1 request to 127.0.0.1:port: (status, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def fill(template_name, out_path, fields):
    with open(os.path.join(BENCHES, "nginx", template_name)) as f:
        text = f.read()
    for name, value in fields.items():
        text = text.replace(f"@{name}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError(f"{template_name}: unfilled fields {sorted(set(left))}")
    with open(out_path, "w") as f:
        f.write(text)


def children(pid):
    """Direct children of `pid` (nginx workers of a master)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_ticks(pids):
    """utime + stime of `pids`, in clock ticks."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat(5))
    return total


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_hwm(pids):
    """Resets VmHWM to the current RSS (clear_refs 5, Linux ≥ 4.0), so each run reports its own peak."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


# --- targets --------------------------------------------------------------------------------------


class Target:
    """Something wrk can load: a name, a port, the Authorization it needs, the pids to watch."""

    def __init__(self, name, label, port, auth, process, watch):
        self.name, self.label, self.port, self.auth = name, label, port, auth
        self.process = process
        self.watch = watch  # pids whose CPU counts (master + workers, or the gateway)
        self.rss_pids = watch  # pids whose VmHWM is summed

    def check(self, fixture):
        """200 with the fixture body for a keyed PUT, 401 without a key: else abort."""
        headers = {"Content-Type": "application/json", "Authorization": self.auth}
        try:
            status, body = request(self.port, "PUT", PATH, headers, BODY)
        except OSError as error:
            raise BenchError(f"{self.label}: PUT failed: {error}") from error
        if status != 200:
            raise BenchError(f"{self.label}: PUT answered {status}, not 200: {body[:300]!r}")
        try:
            got = json.loads(body)
        except ValueError as error:
            raise BenchError(f"{self.label}: PUT body is not JSON: {body[:300]!r}") from error
        if got != fixture:
            raise BenchError(f"{self.label}: PUT body differs from the fixture: {body[:300]!r}")
        status, body = request(self.port, "PUT", PATH, {"Content-Type": "application/json"}, BODY)
        if status != 401:
            raise BenchError(f"{self.label}: PUT without a key answered {status}, not 401")
        log(f"  {self.label}: 200 with the fixture, 401 without a key")


def start_nginx(tmp, name, template, fields, workers):
    directory = os.path.join(tmp, name)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    port = free_port()
    conf = os.path.join(directory, "nginx.conf")
    fill(template, conf, dict(fields, DIR=directory, PORT=port, WORKERS=workers))
    errors = open(os.path.join(directory, "stderr.log"), "w")
    process = spawn(
        ["nginx", "-p", directory, "-c", conf, "-e", os.path.join(directory, "error.log")],
        stdout=errors,
        stderr=errors,
    )
    wait_port(port, process, f"nginx {name}")
    deadline = time.monotonic() + 5
    while len(children(process.pid)) < workers:
        if time.monotonic() > deadline:
            raise BenchError(f"nginx {name}: fewer than {workers} workers after 5s")
        time.sleep(0.01)
    return port, process


def gateway_config(tmp, name, upstream_port, listen_port):
    directory = os.path.join(tmp, name)
    os.makedirs(directory, exist_ok=True)
    key_sha256 = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    path = os.path.join(directory, "gateway.toml")
    with open(path, "w") as f:
        f.write(
            f"""# written by benches/proxy.py
[server]
listen = "127.0.0.1:{listen_port}"
max_body_bytes = 1048576
request_timeout = "30s"
max_concurrent_requests = 4096
shutdown_grace = "10s"

[admin]
listen = "127.0.0.1:0"

[upstream]
base_url = "http://127.0.0.1:{upstream_port}"
api_key_env = "ONLYFANSAPI_API_KEY"
connect_timeout = "2s"
timeout = "30s"

[rate_limit]
requests_per_minute = 100000000
headroom = 1.0
max_wait = "2s"

[ledger]
path = "{directory}/ledger.sqlite"

[[clients]]
name = "bench"
key_sha256 = "{key_sha256}"
"""
        )
    return path, directory


def gateway_env():
    environment = dict(os.environ)
    environment.update(
        ONLYFANSAPI_API_KEY=UPSTREAM_KEY,
        RUST_LOG="info",
        # The gateway builds tokio's default multi-thread runtime, which reads this (its own
        # default is one worker per core); it matches nginx-2w's two worker processes.
        TOKIO_WORKER_THREADS=str(WORKERS),
    )
    environment.pop("OFAPI_GATEWAY_CONFIG", None)
    return environment


def spawn_gateway(config, directory, metering):
    args = [GATEWAY, "--config", config, "--log-format", "json", "serve"]
    if not metering:
        args.append("--no-metering")
    stdout_path = os.path.join(directory, "stdout.jsonl")
    stdout = open(stdout_path, "w")
    stderr = open(os.path.join(directory, "stderr.log"), "w")
    process = spawn(args, stdout=stdout, stderr=stderr, env=gateway_env(), cwd=directory)
    return process, stdout_path


def wait_ready_line(process, stdout_path, deadline_s=15.0):
    """The `ofapi-gateway ready` JSON line from the gateway's stdout."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with open(stdout_path) as f:
            for line in f:
                if "ofapi-gateway ready" in line:
                    return json.loads(line)
        if process.poll() is not None:
            raise BenchError(
                f"the gateway exited with {process.returncode} before it was ready; "
                f"see {os.path.dirname(stdout_path)}/stderr.log"
            )
        time.sleep(0.01)
    raise BenchError(f"no 'ofapi-gateway ready' line within {deadline_s}s in {stdout_path}")


def start_gateway(tmp, name, upstream_port, metering):
    config, directory = gateway_config(tmp, name, upstream_port, free_port())
    process, stdout_path = spawn_gateway(config, directory, metering)
    ready = wait_ready_line(process, stdout_path)
    host, _, port = ready["client"].rpartition(":")
    if host != "127.0.0.1":
        raise BenchError(f"{name}: client listener on {ready['client']}, not 127.0.0.1")
    return int(port), process, directory


def ready_to_serve(tmp, upstream_port):
    """Milliseconds from spawning the gateway to its first 200 on the client listener's /healthz,
    polled every 2 ms (fresh ledger each time)."""
    times = []
    for run in range(READY_RUNS):
        port = free_port()
        config, directory = gateway_config(tmp, f"ready-{run}", upstream_port, port)
        started = time.monotonic()
        process, _ = spawn_gateway(config, directory, metering=True)
        deadline = started + 10.0
        elapsed = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, _ = request(port, "GET", "/healthz", timeout=0.5)
                if status == 200:
                    elapsed = (time.monotonic() - started) * 1000
                    break
            except OSError:
                pass
            time.sleep(0.002)
        stop(process)
        if elapsed is None:
            raise BenchError(f"ready-to-serve: no /healthz 200 within 10s (run {run})")
        times.append(elapsed)
    return times


# --- wrk --------------------------------------------------------------------------------------------


def to_ms(value):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise BenchError(f"cannot read wrk latency {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000, "h": 3600000}[unit]


def wrk(target, connections, duration):
    args = ["wrk", f"-t{min(THREADS, connections)}", f"-c{connections}", f"-d{duration}",
            "--latency", "-s", os.path.join(BENCHES, "put.lua"),
            f"http://127.0.0.1:{target.port}"]
    environment = dict(os.environ, BENCH_AUTH=target.auth)
    seconds = float(re.sub(r"[a-z]+$", "", duration)) * (60 if duration.endswith("m") else 1)
    result = subprocess.run(args, env=environment, capture_output=True, text=True,
                            timeout=seconds + 60)
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def parse_wrk(output):
    def find(pattern, default=None):
        match = re.search(pattern, output, re.MULTILINE)
        if match is None and default is None:
            raise BenchError(f"no {pattern!r} in wrk output:\n{output}")
        return match if match else default

    socket_errors = 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errors:
        socket_errors = sum(int(n) for n in errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(find(r"^\s*(\d+) requests in").group(1)),
        "rps": float(find(r"^Requests/sec:\s*([\d.]+)").group(1)),
        "p50": to_ms(find(r"^\s*50%\s+(\S+)").group(1)),
        "p99": to_ms(find(r"^\s*99%\s+(\S+)").group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors,
    }


def measure(target, connections):
    pids = target.watch
    reset_hwm(target.rss_pids)
    before = cpu_ticks(pids)
    output = wrk(target, connections, DURATION)
    after = cpu_ticks(pids)
    row = parse_wrk(output)
    row["rss_mib"] = sum(vm_hwm_kib(pid) for pid in target.rss_pids) / 1024
    cpu_us = (after - before) * 1_000_000 / CLK_TCK
    row["cpu_us_per_req"] = cpu_us / row["requests"] if row["requests"] else float("nan")
    row["target"], row["label"], row["connections"] = target.name, target.label, connections
    log(f"  {target.label:<28} c={connections:<4} {row['rps']:>9.0f} req/s  "
        f"p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms  non-2xx {row['non2xx']}  "
        f"socket errors {row['socket_errors']}  {row['rss_mib']:.1f} MiB  "
        f"{row['cpu_us_per_req']:.1f} µs/req")
    return row


def run_target(target, fixture):
    """Checks, warms up (pools, caches, allocator; not counted), measures: (rows, requests sent)."""
    target.check(fixture)
    warmup = parse_wrk(wrk(target, max(CONNECTIONS), WARMUP))
    rows = [measure(target, c) for c in CONNECTIONS]
    # The check's keyed PUT + the warm-up + the measured runs (the 401 is never forwarded).
    return rows, 1 + warmup["requests"] + sum(r["requests"] for r in rows)


def run_round(tmp, fixture, upstream, upstream_port, notes, round_):
    """All five targets, each at every concurrency; the upstream nginx stays up throughout."""
    rows = []
    direct = Target("direct", "direct (upstream nginx)", upstream_port,
                    f"Bearer {UPSTREAM_KEY}", upstream, [upstream.pid] + children(upstream.pid))
    direct.rss_pids = children(upstream.pid)
    log("direct")
    rows += run_target(direct, fixture)[0]

    for workers in (1, 2):
        name = f"nginx-{workers}w"
        log(name)
        port, process = start_nginx(
            tmp, f"{name}-r{round_}", "proxy.conf.in",
            {"CLIENT_KEY": CLIENT_KEY, "UPSTREAM_KEY": UPSTREAM_KEY,
             "UPSTREAM_PORT": upstream_port}, workers=workers)
        workers_pids = children(process.pid)
        target = Target(name, f"nginx proxy, {workers} worker{'s' if workers > 1 else ''}",
                        port, f"Bearer {CLIENT_KEY}", process, [process.pid] + workers_pids)
        target.rss_pids = workers_pids
        rows += run_target(target, fixture)[0]
        stop(process)

    log("floor")
    port = free_port()
    errors = open(os.path.join(tmp, f"floor-r{round_}.log"), "w")
    process = spawn([FLOOR, f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}", CLIENT_KEY,
                     UPSTREAM_KEY, str(WORKERS)], stdout=errors, stderr=errors)
    wait_port(port, process, "hyper floor")
    target = Target("floor", f"hyper floor, {WORKERS} threads", port, f"Bearer {CLIENT_KEY}",
                    process, [process.pid])
    rows += run_target(target, fixture)[0]
    stop(process)

    for name, label, metering in (("gateway", "ofapi-gateway, metering on", True),
                                  ("gateway-nm", "ofapi-gateway, metering off", False)):
        log(name)
        port, process, directory = start_gateway(tmp, f"{name}-r{round_}", upstream_port, metering)
        target = Target(name, label, port, f"Bearer {CLIENT_KEY}", process, [process.pid])
        measured, sent = run_target(target, fixture)
        rows += measured
        threads = len(os.listdir(f"/proc/{process.pid}/task"))
        stop(process, grace=20.0)
        if process.returncode != 0:
            notes.append(f"{label}: exited with {process.returncode} on SIGTERM")
        ledger_rows, log_lines = metering_check(directory)
        # wrk counts only the answers it read: each wrk run may leave one request per
        # connection in flight when it stops, which the gateway still forwards and records.
        in_flight = max(CONNECTIONS) + sum(CONNECTIONS)
        if metering:
            ok = ledger_rows == log_lines and sent <= ledger_rows <= sent + in_flight
        else:
            ok = ledger_rows == log_lines == 0
        notes.append(
            f"{label}: {sent} answers counted by wrk (+ up to {in_flight} left in flight); "
            f"{log_lines} per-request log lines with credits, {ledger_rows} ledger rows after the "
            f"graceful stop ({'as expected' if ok else 'MISMATCH'}); {threads} threads"
        )
        if not KEEP_TMP:
            shutil.rmtree(directory, ignore_errors=True)  # its log is large; next round anew
    return rows


def medians(rows):
    """One row per (target, connections): the median of each figure over the rounds; errors
    are summed, never hidden."""
    grouped = {}
    for r in rows:
        grouped.setdefault((r["target"], r["connections"]), []).append(r)
    merged = []
    for group in grouped.values():
        row = dict(group[0])
        for key in ("rps", "p50", "p99", "rss_mib", "cpu_us_per_req", "requests"):
            row[key] = statistics.median(r[key] for r in group)
        for key in ("non2xx", "socket_errors"):
            row[key] = sum(r[key] for r in group)
        merged.append(row)
    return merged


# --- report ---------------------------------------------------------------------------------------


def table(rows):
    lines = [
        "| target | connections | req/s | p50 ms | p99 ms | non-2xx | socket errors | peak RSS MiB | CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['connections']} | {r['rps']:.0f} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['non2xx']} | {r['socket_errors']} | {r['rss_mib']:.1f} | "
            f"{r['cpu_us_per_req']:.1f} |"
        )
    return lines


def ratios(rows):
    by = {(r["target"], r["connections"]): r for r in rows}
    lines = [
        "| connections | vs | throughput (gateway ÷ vs) | p99 (gateway ÷ vs) | CPU/req (gateway ÷ vs) |",
        "|---:|---|---:|---:|---:|",
    ]
    cost = []
    for c in CONNECTIONS:
        gateway = by[("gateway", c)]
        for other, label in (("direct", "direct"), ("nginx-1w", "nginx, 1 worker"),
                             ("nginx-2w", "nginx, 2 workers"), ("floor", "hyper floor")):
            o = by[(other, c)]
            lines.append(
                f"| {c} | {label} | {gateway['rps'] / o['rps']:.2f} | "
                f"{gateway['p99'] / o['p99']:.2f} | "
                f"{gateway['cpu_us_per_req'] / o['cpu_us_per_req']:.2f} |"
            )
        off = by[("gateway-nm", c)]
        cost.append(
            f"| {c} | {gateway['rps']:.0f} | {off['rps']:.0f} | "
            f"{(1 - gateway['rps'] / off['rps']) * 100:.1f} % | "
            f"{gateway['cpu_us_per_req'] - off['cpu_us_per_req']:.1f} |"
        )
    lines += [
        "",
        "Metering cost = 1 − (metering on req/s ÷ metering off req/s):",
        "",
        "| connections | metering on req/s | metering off req/s | metering cost | extra CPU µs/req |",
        "|---:|---:|---:|---:|---:|",
    ] + cost
    return lines


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}"


def nginx_version():
    result = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return result.stderr.strip().replace("nginx version: ", "")


def metering_check(directory):
    """After a graceful stop: ledger rows and per-request log lines against requests served."""
    rows = None
    path = os.path.join(directory, "ledger.sqlite")
    if os.path.exists(path):
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT count(*) FROM requests").fetchone()[0]
    lines = 0
    with open(os.path.join(directory, "stdout.jsonl")) as f:
        for line in f:
            if '"credits_used"' in line:
                lines += 1
    return rows, lines


# --- main -----------------------------------------------------------------------------------------


def main():
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (benches/proxy.sh installs it)")
    if not os.access(GATEWAY, os.X_OK):
        raise BenchError(f"{GATEWAY} is missing: cargo build --release --locked")
    if not os.access(FLOOR, os.X_OK):
        raise BenchError(f"{FLOOR} is missing: cargo build --release --locked --example hyper_floor")

    with open(FIXTURE) as f:
        fixture = json.load(f)
    compact = json.dumps(fixture, separators=(",", ":"), ensure_ascii=False)
    if any(c in compact for c in "'$\\"):
        raise BenchError("the fixture holds ' $ or \\, which nginx's return string would mangle")
    balance = fixture["_meta"]["_credits"]["balance"]

    tmp = tempfile.mkdtemp(prefix="ofgw-bench-")
    if not KEEP_TMP:
        atexit.register(shutil.rmtree, tmp, True)
    atexit.register(stop_all)  # registered last, runs first: processes stop before the rmtree
    log(f"proxy benchmark: DURATION={DURATION} CONNECTIONS={' '.join(map(str, CONNECTIONS))} "
        f"WARMUP={WARMUP} wrk -t{THREADS}, gateway serving threads {WORKERS}; scratch {tmp}")

    upstream_port, upstream = start_nginx(
        tmp, "upstream", "upstream.conf.in",
        {"UPSTREAM_KEY": UPSTREAM_KEY, "BALANCE": balance, "BODY": compact}, workers=1)

    rows, notes = [], []
    for round_ in range(1, ROUNDS + 1):
        if ROUNDS > 1:
            log(f"round {round_} of {ROUNDS}")
        rows += run_round(tmp, fixture, upstream, upstream_port, notes, round_)
    if ROUNDS > 1:
        rows = medians(rows)

    log("ready to serve")
    ready = ready_to_serve(tmp, upstream_port)
    stop(upstream)

    report = [
        "# ofapi-gateway proxy benchmark",
        "",
        f"- machine: {machine()}",
        f"- {nginx_version()}; wrk -t{THREADS} -d{DURATION} --latency (after a "
        f"{WARMUP} warm-up per target); gateway serving threads: {WORKERS}; "
        f"{ROUNDS} round{'s' if ROUNDS > 1 else ''}" + (" (medians)" if ROUNDS > 1 else ""),
        f"- `PUT {PATH}` with a {len(BODY)}-byte JSON body; "
        f"answer {len(compact.encode())} bytes of JSON",
        "- CPU µs/req and peak RSS are the proxy's own (nginx: master + workers CPU, workers' "
        "VmHWM summed; direct: the upstream nginx itself); wrk and the upstream share the same "
        "CPUs",
        "",
    ] + table(rows) + [
        "",
        "Ratios, same run (gateway = metering on; above 1 is more for the gateway):",
        "",
    ] + ratios(rows) + [
        "",
        f"Ready to serve (spawn → first 200 on the client listener's `/healthz`, polled every "
        f"2 ms, fresh ledger, {len(ready)} runs): median {statistics.median(ready):.1f} ms, "
        f"min {min(ready):.1f} ms, max {max(ready):.1f} ms.",
        "",
    ]
    if notes:
        report += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(report)
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
        log(f"benchmark aborted: {error}")
        sys.exit(1)
