#!/usr/bin/env python3
"""Soak test of ofapi-gateway (run it through benches/soak.sh): DURATION of mixed traffic against
the release gateway in front of a fault-injecting upstream (benches/soak_upstream.py), one restart
of the upstream and one graceful restart of the gateway in the middle, then the reckoning:

- requests sent, answers by status and gateway error code, client-side errors by kind;
- the credit ledger (SQLite) reconciled request by request with what the upstream charged;
- the gateway's RSS, sampled every SAMPLE_EVERY seconds, and whether it stayed flat.

Exit status: 0 when the ledger matches the upstream's charges (see ACCOUNTING below), no request
got an answer it must never get (a bad key forwarded, a gateway key reaching the upstream...),
both gateway stops exited 0 and the RSS stayed flat; 1 otherwise; 2 when the soak could not run.

ACCOUNTING. The upstream charges an answer once it has written its status line and headers (as
the real one debits before answering). Per request id (the gateway forwards `x-request-id`):

  exact        the ledger has one row with exactly the credits the upstream charged (from
               `_meta` or the `x-ofapi-credits-used` header; 0 for cached and free answers).
  cut, unknown the upstream cut the answer (injected reset) before `_meta`, and it carried no
               credit headers: the gateway cannot know the charge and must record it as unknown
               (NULL), not as 0 and not as a guess. Counted and summed apart.
  not read     the answer came after the gateway's upstream timeout (the row says 504), or its
               client had hung up (the gateway finishes and meters such calls, see
               src/layers/meter/detached.rs, but the soak accepts unknown for them): the row
               must exist with unknown credits, if not the right ones. Counted and summed apart.
  no charge    the upstream answered nothing (stall, restart) or answered without a charge (500,
               503, 429, 404): the row, if any, must have unknown credits.

Any other case fails: a row missing, two rows for one request, credits that differ, credits in
the ledger the upstream never charged. Then, exactly:

  upstream charged = ledger credits + cut-unknown credits + not-read credits

Environment: DURATION (600s; "60s", "10m"), CLIENTS (8 threads), SAMPLE_EVERY (5s),
UPSTREAM_DOWN (3s), SEED (1), RSS_TOLERANCE (0.25: last-window max RSS may exceed the first
window's by this share...), RSS_SLACK_MIB (4: ...plus this), RESULTS (target/soak-results.md),
GATEWAY (target/release/ofapi-gateway), KEEP_TMP=1 (keep the scratch folder: config, logs,
ledger, upstream charge logs), RUST_LOG (the gateway's; default warn plus its ready line).
Python standard library only.
"""

import atexit
import collections
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time

from procs import RunError, env, free_port, log, on_signal, spawn, stop, stop_all, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_SCRIPT = os.path.join(ROOT, "benches", "soak_upstream.py")

UPSTREAM_KEY = "soak-upstream-key-7d1e4b"
ACCOUNTS = ["fansly_acct_soak1", "fansly_acct_soak2", "fansly_acct_soak3"]
UPSTREAM_TIMEOUT_S = 2.0  # the gateway's upstream.timeout; the upstream's stall is longer


def seconds(text):
    match = re.fullmatch(r"([\d.]+)\s*(ms|s|m|h)?", text)
    if not match:
        raise SystemExit(f"cannot read the duration {text!r} (like 600s, 60s, 10m)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


DURATION = seconds(env("DURATION", "600s"))
CLIENTS = int(env("CLIENTS", "8"))
SAMPLE_EVERY = seconds(env("SAMPLE_EVERY", "5s"))
UPSTREAM_DOWN = seconds(env("UPSTREAM_DOWN", "3s"))
SEED = int(env("SEED", "1"))
RSS_TOLERANCE = float(env("RSS_TOLERANCE", "0.25"))
RSS_SLACK_MIB = float(env("RSS_SLACK_MIB", "4"))
RESULTS = env("RESULTS", os.path.join(ROOT, "target/soak-results.md"))
GATEWAY = env("GATEWAY", os.path.join(ROOT, "target/release/ofapi-gateway"))
KEEP_TMP = env("KEEP_TMP", "0") not in ("0", "false", "no")
GATEWAY_LOG = env("RUST_LOG", "warn,ofapi_gateway::cli=info")


class SoakError(RunError):
    """The soak could not run (a process did not start, a port did not open)."""


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- the upstream ---------------------------------------------------------------------------------


class Upstream:
    def __init__(self, tmp, port):
        self.tmp, self.port = tmp, port
        self.process = None
        self.incarnation = 0
        self.logs = []

    def start(self):
        self.incarnation += 1
        log_path = os.path.join(self.tmp, f"upstream-{self.incarnation}.jsonl")
        self.logs.append(log_path)
        out = open(os.path.join(self.tmp, f"upstream-{self.incarnation}.out"), "w")
        environment = dict(os.environ, UPSTREAM_KEY=UPSTREAM_KEY,
                           STALL=str(UPSTREAM_TIMEOUT_S + 1.0))
        self.process = spawn([sys.executable, UPSTREAM_SCRIPT, str(self.port), log_path,
                              str(SEED * 1000 + self.incarnation)],
                             stdout=out, stderr=out, env=environment)
        wait_port(self.port, self.process, "the upstream")

    def stop(self):
        code = stop(self.process, grace=UPSTREAM_TIMEOUT_S + 8)
        if code != 0:
            log(f"the upstream exited with {code}")
        return code


# --- the gateway ----------------------------------------------------------------------------------


def client_keys():
    """(name, key) of the soak's clients; the last one is disabled."""
    rng = random.Random(SEED)
    names = ["soak-alpha", "soak-beta", "soak-gamma", "soak-disabled"]
    return [(n, "ofgw_soak_" + "".join(rng.choice("abcdef0123456789") for _ in range(40)))
            for n in names]


class Gateway:
    def __init__(self, tmp, upstream_port):
        self.tmp = tmp
        self.port, self.admin_port = free_port(), free_port()
        self.ledger = os.path.join(tmp, "ledger.sqlite")
        self.config = os.path.join(tmp, "gateway.toml")
        self.process = None
        self.incarnation = 0
        self.exit_codes = []
        clients = ""
        for name, key in client_keys():
            clients += (f'\n[[clients]]\nname = "{name}"\n'
                        f'key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n')
            if name.endswith("disabled"):
                clients += "disabled = true\n"
        with open(self.config, "w") as f:
            f.write(f"""# written by benches/soak.py
[server]
listen = "127.0.0.1:{self.port}"
max_body_bytes = 65536
request_timeout = "15s"
max_concurrent_requests = 512
shutdown_grace = "10s"

[admin]
listen = "127.0.0.1:{self.admin_port}"

[upstream]
base_url = "http://127.0.0.1:{upstream_port}"
api_key_env = "ONLYFANSAPI_API_KEY"
connect_timeout = "1s"
timeout = "{UPSTREAM_TIMEOUT_S:g}s"

[rate_limit]
requests_per_minute = 1000000
headroom = 1.0
max_wait = "1s"

[ledger]
path = "{self.ledger}"
{clients}""")

    def start(self):
        self.incarnation += 1
        stdout_path = os.path.join(self.tmp, f"gateway-{self.incarnation}.jsonl")
        environment = dict(os.environ, ONLYFANSAPI_API_KEY=UPSTREAM_KEY, RUST_LOG=GATEWAY_LOG)
        environment.pop("OFAPI_GATEWAY_CONFIG", None)
        self.process = spawn(
            [GATEWAY, "--config", self.config, "--log-format", "json", "serve"],
            stdout=open(stdout_path, "w"),
            stderr=open(os.path.join(self.tmp, f"gateway-{self.incarnation}.stderr"), "w"),
            env=environment)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(stdout_path) as f:
                if "ofapi-gateway ready" in f.read():
                    return
            if self.process.poll() is not None:
                raise SoakError(f"the gateway exited with {self.process.returncode} before it "
                                f"was ready; see {self.tmp}")
            time.sleep(0.02)
        raise SoakError("the gateway was not ready within 20s")

    def stop(self):
        """A graceful stop: SIGTERM, drain, ledger flushed; the exit code must be 0."""
        started = time.monotonic()
        code = stop(self.process, grace=30)
        self.exit_codes.append(code)
        return code, time.monotonic() - started


# --- traffic --------------------------------------------------------------------------------------

# (operation, weight). Forwarded operations reach the upstream; the others must be answered by the
# gateway itself, with exactly the status and code listed in EXPECTED.
OPERATIONS = [
    ("put", 40),
    ("get_list", 12),
    ("get_stats", 10),
    ("post", 5),
    ("whoami", 3),
    ("bad_key", 6),
    ("disabled_key", 2),
    ("bad_body", 6),
    ("bad_json", 2),
    ("wrong_type", 1),
    ("bad_path", 2),
    ("not_found", 1),
    ("abandon", 4),
    ("abandon_body", 2),
]
FORWARDED = {"put", "get_list", "get_stats", "post", "whoami"}
EXPECTED = {
    "bad_key": (401, "unauthenticated"),
    "disabled_key": (401, "unauthenticated"),
    "bad_body": (422, "validation_failed"),
    "bad_json": (400, "bad_request"),
    "wrong_type": (415, "unsupported_media_type"),
    "bad_path": (400, "bad_request"),
    "not_found": (404, "not_found"),
}
# What a forwarded call may legitimately answer with the upstream's faults: its answer (200/201,
# 500, 503 passed through), or the gateway's 429 (upstream 429 / pause), 502, 503, 504.
FORWARDED_STATUSES = {200, 201, 429, 500, 502, 503, 504}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = collections.Counter()  # op -> requests sent
        self.answers = collections.Counter()  # (status, code) -> n
        self.errors = collections.Counter()  # kind -> n
        self.unexpected = collections.Counter()  # (op, status, code) -> n
        self.unexpected_examples = []
        self.abandoned = set()  # request ids the client gave up on before the answer
        self.by_op = collections.defaultdict(collections.Counter)

    def add(self, op, outcome, rid=None):
        with self.lock:
            self.by_op[op][outcome] += 1
            if isinstance(outcome, tuple):
                self.answers[outcome] += 1
            else:
                self.errors[outcome] += 1


class ClientThread(threading.Thread):
    def __init__(self, index, stats, gateway, stop_event):
        super().__init__(daemon=True, name=f"client-{index}")
        self.index, self.stats, self.gateway, self.stop_event = index, stats, gateway, stop_event
        keys = client_keys()
        self.name_, self.key = keys[index % 3]
        self.disabled_key = keys[3][1]
        self.rng = random.Random(SEED * 7919 + index)
        self.conn = None
        self.seq = 0
        self.ops = [name for name, _ in OPERATIONS]
        self.weights = [weight for _, weight in OPERATIONS]

    def run(self):
        while not self.stop_event.is_set():
            op = self.rng.choices(self.ops, self.weights)[0]
            self.seq += 1
            rid = f"soak-{self.index}-{self.seq}"
            with self.stats.lock:
                self.stats.sent[op] += 1
            try:
                outcome = self.one(op, rid)
            except Exception as error:  # a bug in the soak itself: say so, keep going
                outcome = f"soak error {type(error).__name__}"
            self.stats.add(op, outcome, rid)
            if outcome == "connect error":
                time.sleep(0.05)  # the gateway is restarting: do not spin
            elif isinstance(outcome, tuple) and outcome[0] in (502, 503, 504):
                time.sleep(0.02)  # like an SDK's retry backoff, rather than a tight loop
        if self.conn is not None:
            self.conn.close()

    def request(self, method, path, rid, key=None, body=None, content_type="application/json"):
        headers = {"x-request-id": rid}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if body is not None:
            headers["Content-Type"] = content_type
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.gateway.port, timeout=20)
            try:
                self.conn.connect()
            except ConnectionRefusedError:
                self.conn = None
                return "connect error"
            except OSError as error:
                self.conn = None
                return "timeout" if isinstance(error, TimeoutError) else "connect error"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except TimeoutError:
            self.reset()
            return "timeout"
        except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
            self.reset()
            return "closed before answer"
        try:
            data = response.read()
        except TimeoutError:
            self.reset()
            return "timeout"
        except (http.client.IncompleteRead, ConnectionError):
            self.reset()
            return "cut response"
        if response.will_close:
            self.reset()
        code = "-"
        if response.status >= 400 and data.startswith(b"{"):
            try:
                answer = json.loads(data)
                if isinstance(answer, dict) and "request_id" in answer:
                    code = answer.get("code", "-")
            except ValueError:
                pass
        return (response.status, code)

    def reset(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def abandon(self, rid, half_body):
        """A client that goes away mid-request: after the whole request (the gateway forwards
        it), or halfway through its body (it never gets forwarded whole)."""
        account = self.rng.choice(ACCOUNTS)
        body = json.dumps({"label": f"abandoned {rid}"}).encode()
        path = f"/api/fansly/{account}/tracking-links/100000000000000003"
        method = "PUT"
        if half_body:
            path = f"/api/fansly/{account}/tracking-links"  # not validated: streamed upstream
            method = "POST"
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-request-id: {rid}\r\n"
                f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) + (100 if half_body else 0)}\r\n\r\n").encode()
        try:
            sock = socket.create_connection(("127.0.0.1", self.gateway.port), timeout=5)
        except OSError:
            return "connect error"
        try:
            sock.sendall(head + body)
            if not half_body:
                # Long enough for the gateway to have it on its way upstream, at times answered.
                time.sleep(self.rng.choice([0, 0.0005, 0.002, 0.01]))
        except OSError:
            pass
        finally:
            sock.close()
        with self.stats.lock:
            self.stats.abandoned.add(rid)
        return "abandoned (by design)"

    def one(self, op, rid):
        account = self.rng.choice(ACCOUNTS)
        link = f"/api/fansly/{account}/tracking-links/10000000000000000{self.rng.randint(1, 9)}"
        label = {"label": f"soak {rid}", "description": "soak"}
        if op == "put":
            return self.request("PUT", link, rid, self.key, json.dumps(label))
        if op == "get_list":
            return self.request("GET", f"/api/fansly/{account}/tracking-links?limit=5", rid,
                                self.key)
        if op == "get_stats":
            return self.request("GET", f"{link}/stats", rid, self.key)
        if op == "post":
            return self.request("POST", f"/api/fansly/{account}/tracking-links", rid, self.key,
                                json.dumps(label))
        if op == "whoami":
            return self.request("GET", "/api/whoami", rid, self.key)
        if op == "bad_key":
            key = "ofgw_" + "".join(self.rng.choice("xyz0123456789") for _ in range(43))
            return self.request("PUT", link, rid, key, json.dumps(label))
        if op == "disabled_key":
            return self.request("GET", "/api/whoami", rid, self.disabled_key)
        if op == "bad_body":
            body = self.rng.choice([{"label": ""}, {"label": 5}, {"description": "no label"},
                                    {"label": "x", "description": 7}])
            return self.request("PUT", link, rid, self.key, json.dumps(body))
        if op == "bad_json":
            return self.request("PUT", link, rid, self.key, '{"label": "x",')
        if op == "wrong_type":
            return self.request("PUT", link, rid, self.key, json.dumps(label), "text/plain")
        if op == "bad_path":
            return self.request("GET", self.rng.choice(
                ["/api/fansly/%2e%2e/tracking-links", "/api//whoami", "/api/fansly/a%2Fb/x"]),
                rid, self.key)
        if op == "not_found":
            return self.request("GET", "/not-api/soak", rid, self.key)
        if op == "abandon":
            return self.abandon(rid, half_body=False)
        if op == "abandon_body":
            return self.abandon(rid, half_body=True)
        raise ValueError(op)


def check_expected(stats):
    """Answers a request of its kind must never get."""
    for op, outcomes in stats.by_op.items():
        for outcome, n in outcomes.items():
            if not isinstance(outcome, tuple):
                continue
            status, code = outcome
            if status == 503 and code in ("overloaded", "-"):
                continue  # shutting down, or the upstream's own 503 page
            if op in FORWARDED:
                ok = status in FORWARDED_STATUSES
            else:
                ok = (status, code) == EXPECTED.get(op)
            if not ok:
                stats.unexpected[(op, status, code)] += n


# --- RSS ------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    def __init__(self, gateway, stop_event, t0):
        super().__init__(daemon=True, name="rss")
        self.gateway, self.stop_event, self.t0 = gateway, stop_event, t0
        self.samples = []  # (seconds since start, incarnation, RSS KiB)

    def run(self):
        while not self.stop_event.wait(SAMPLE_EVERY):
            process = self.gateway.process
            if process is None or process.poll() is not None:
                continue
            kib = rss_kib(process.pid)
            if kib is not None:
                self.samples.append((time.monotonic() - self.t0, self.gateway.incarnation, kib))


def rss_verdict(samples, restarted_at):
    """Flat when, for the run and for each gateway process, the largest RSS of the last window
    is at most the first window's largest × (1 + RSS_TOLERANCE) + RSS_SLACK_MIB. The window is a
    minute, or a fifth of the run when shorter."""
    window = min(60.0, DURATION / 5)
    lines, flat = [], True
    if not samples:
        return ["no RSS samples"], False

    def compare(label, first, last):
        nonlocal flat
        if not first or not last:
            lines.append(f"{label}: too few samples")
            return
        a, b = max(first) / 1024, max(last) / 1024
        bound = a * (1 + RSS_TOLERANCE) + RSS_SLACK_MIB
        ok = b <= bound
        flat = flat and ok
        lines.append(f"{label}: first-window max {a:.1f} MiB, last-window max {b:.1f} MiB, "
                     f"bound {bound:.1f} MiB: {'flat' if ok else 'GROWING'}")

    end = samples[-1][0]
    compare("whole run (first window of the first process, last window of the last)",
            [k for t, _, k in samples if t <= window],
            [k for t, _, k in samples if t >= end - window])
    for incarnation in sorted({i for _, i, _ in samples}):
        mine = [(t, k) for t, i, k in samples if i == incarnation]
        start, stop_ = mine[0][0], mine[-1][0]
        compare(f"gateway process {incarnation} ({stop_ - start:.0f} s of samples)",
                [k for t, k in mine if t <= start + window],
                [k for t, k in mine if t >= stop_ - window])
    return lines, flat


# --- the reckoning ---------------------------------------------------------------------------------


def read_upstream(logs):
    entries, summaries = [], []
    for path in logs:
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                (summaries if record.get("summary") else entries).append(record)
    return entries, summaries


def read_ledger(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT request_id, client, method, route, status, credits_used, "
                          "outcome FROM requests").fetchall()


def reconcile(entries, rows, abandoned):
    """Request by request: the ACCOUNTING rules of the module docs. Returns (figures, failures)."""
    ledger = collections.defaultdict(list)
    for row in rows:
        ledger[row[0]].append(row)
    upstream = collections.defaultdict(list)
    for entry in entries:
        upstream[entry["rid"]].append(entry)
    f = collections.Counter()
    failures = []

    def fail(message):
        f["failures"] += 1
        if len(failures) < 20:
            failures.append(message)

    for rid, found in ledger.items():
        if len(found) > 1:
            fail(f"{rid}: {len(found)} ledger rows")
    for rid, seen in upstream.items():
        if len(seen) > 1:
            f["upstream saw a request id twice"] += 1
    for entry in entries:
        rid, credits, expect = entry["rid"], entry["credits"], entry["expect"]
        answered = entry["sent"] != "none"
        row = ledger.get(rid, [None])[0]
        got = row[5] if row else None
        late = entry["ms"] >= UPSTREAM_TIMEOUT_S * 1000 - 250
        gave_up = rid in abandoned or late
        if entry.get("client_key"):
            fail(f"{rid}: a gateway client key reached the upstream")
        if entry["fault"] == "wrong key":
            fail(f"{rid}: reached the upstream without the upstream key")
        if answered:
            f["charged"] += credits
            f["answers charged"] += 1
        if row is None:
            if gave_up:
                f["not read: no ledger row"] += 1
                f["not read: no ledger row, credits"] += credits
                fail(f"{rid}: the upstream answered ({entry['fault']}, {credits} credits, "
                     f"{entry['sent']}) a call the client gave up on, and the ledger has no row")
            else:
                fail(f"{rid}: the upstream saw it ({entry['fault']}, {entry['sent']}, "
                     f"{credits} credits) but the ledger has no row")
            continue
        if not answered or (expect is None and credits == 0):
            if got is not None:
                fail(f"{rid}: the upstream charged nothing ({entry['fault']}) but the ledger "
                     f"says {got}")
            f["no charge"] += 1
            continue
        if got == expect:
            if expect is None:
                f["cut, unknown"] += 1
                f["cut, unknown credits"] += credits
            else:
                f["exact"] += 1
                f["exact credits"] += credits
                if rid in abandoned:
                    f["exact, client hung up"] += 1
                    f["exact, client hung up, credits"] += credits
        elif got is None and (rid in abandoned or (late and row[4] == 504)):
            f["not read, unknown"] += 1
            f["not read, unknown credits"] += credits
        else:
            fail(f"{rid}: the upstream charged {credits} (fault {entry['fault']}, "
                 f"{entry['sent']}, gateway can know: {expect}), the ledger says {got} "
                 f"(status {row[4]}, {row[6]})")
    for rid, found in ledger.items():
        if rid not in upstream:
            f["rows without an upstream answer"] += 1
            if found[0][5] is not None:
                fail(f"{rid}: the ledger has {found[0][5]} credits the upstream never charged "
                     f"(status {found[0][4]})")
    f["ledger rows"] = len(rows)
    f["ledger credits"] = sum(r[5] for r in rows if r[5] is not None)
    f["ledger unknown rows"] = sum(1 for r in rows if r[5] is None)
    return f, failures


def markdown_table(headers, rows, text_columns=1):
    """A Markdown table; the first `text_columns` columns left-aligned, the rest right."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i < text_columns else "---:"
                            for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}"


# --- main -----------------------------------------------------------------------------------------


def main():
    if not os.access(GATEWAY, os.X_OK):
        raise SoakError(f"{GATEWAY} is missing: cargo build --release --locked")
    tmp = tempfile.mkdtemp(prefix="ofgw-soak-")
    if not KEEP_TMP:
        atexit.register(shutil.rmtree, tmp, True)
    atexit.register(stop_all)  # registered last, runs first

    upstream = Upstream(tmp, free_port())
    gateway = Gateway(tmp, upstream.port)
    log(f"soak: DURATION={DURATION:g}s CLIENTS={CLIENTS} SEED={SEED}; gateway 127.0.0.1:"
        f"{gateway.port} (admin {gateway.admin_port}), upstream 127.0.0.1:{upstream.port}; "
        f"scratch {tmp}")
    upstream.start()
    gateway.start()

    stats = Stats()
    stop_traffic = threading.Event()
    t0 = time.monotonic()
    sampler = Sampler(gateway, stop_traffic, t0)
    sampler.start()
    clients = [ClientThread(i, stats, gateway, stop_traffic) for i in range(CLIENTS)]
    for c in clients:
        c.start()

    events = []
    notes = []

    def at(fraction):
        remaining = t0 + DURATION * fraction - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        return time.monotonic() - t0

    def progress():
        with stats.lock:
            sent = sum(stats.sent.values())
        kib = rss_kib(gateway.process.pid) if gateway.process else None
        log(f"  t={time.monotonic() - t0:5.0f}s  {sent} requests sent  "
            f"gateway RSS {kib / 1024 if kib else 0:.1f} MiB")

    for step in range(1, 6):
        at(step * 0.05)
        progress()
    when = at(0.30)
    log(f"t={when:.0f}s: restarting the upstream (down {UPSTREAM_DOWN:g}s)")
    code = upstream.stop()
    time.sleep(UPSTREAM_DOWN)
    upstream.start()
    events.append(f"t={when:.0f}s: upstream restarted (SIGTERM, exit {code}, down "
                  f"{UPSTREAM_DOWN:g}s plus its drain)")
    for step in (0.40, 0.50):
        at(step)
        progress()
    when = at(0.55)
    log(f"t={when:.0f}s: graceful restart of the gateway")
    code, took = gateway.stop()
    gateway.start()
    down = time.monotonic() - t0 - when
    events.append(f"t={when:.0f}s: gateway restarted: SIGTERM, exit {code} after {took:.1f}s of "
                  f"drain, serving again {down:.1f}s after the signal (same ports, same ledger)")
    if code != 0:
        notes.append(f"the gateway exited with {code} on its graceful restart (expected 0)")
    for step in (0.65, 0.75, 0.85, 0.95):
        at(step)
        progress()
    at(1.0)
    log("time is up: stopping the clients")
    stop_traffic.set()
    for c in clients:
        c.join(timeout=30)
    elapsed = time.monotonic() - t0
    code, took = gateway.stop()
    events.append(f"end: gateway stopped: SIGTERM, exit {code} after {took:.1f}s")
    if code != 0:
        notes.append(f"the gateway exited with {code} on its final stop (expected 0)")
    upstream.stop()

    # --- the reckoning ---
    check_expected(stats)
    entries, summaries = read_upstream(upstream.logs)
    rows = read_ledger(gateway.ledger)
    figures, failures = reconcile(entries, rows, stats.abandoned)
    summary_charged = sum(s["charged"] for s in summaries)
    rss_lines, flat = rss_verdict(sampler.samples, None)

    sent_total = sum(stats.sent.values())
    charged = figures["charged"]
    ledger_credits = figures["ledger credits"]
    cut_unknown = figures["cut, unknown credits"]
    not_read = figures["not read, unknown credits"]
    balanced = (charged == ledger_credits + cut_unknown + not_read
                and figures["failures"] == 0
                and summary_charged == charged
                and len(summaries) == len(upstream.logs))
    fault_counts = collections.Counter(e["fault"] for e in entries)

    report = [
        "# ofapi-gateway soak",
        "",
        f"- machine: {machine()}",
        f"- {elapsed:.0f} s of traffic (DURATION={DURATION:g}s), {CLIENTS} keep-alive client "
        f"threads, 3 client keys + 1 disabled, SEED={SEED}; gateway upstream.timeout "
        f"{UPSTREAM_TIMEOUT_S:g}s, upstream stall {UPSTREAM_TIMEOUT_S + 1:g}s",
        f"- command: `DURATION={int(DURATION)}s bash benches/soak.sh`",
        "",
        "Events:",
        "",
    ] + [f"- {e}" for e in events] + [""]

    report += ["## Requests", ""]
    report += markdown_table(
        ["operation", "outcomes", "sent"],
        [(op, ", ".join(
            f"{o[0]} {o[1]}: {n}" if isinstance(o, tuple) else f"{o}: {n}"
            for o, n in sorted(stats.by_op[op].items(), key=lambda kv: -kv[1])), stats.sent[op])
         for op, _ in OPERATIONS], text_columns=2)
    report += ["", f"Total sent: {sent_total} ({sent_total / elapsed:.0f}/s).", ""]
    report += ["### Answers by status and gateway error code", ""]
    report += markdown_table(["status", "code", "answers"],
                             [(s, c, n) for (s, c), n in sorted(stats.answers.items())],
                             text_columns=2)
    report += ["", "`-`: not a gateway error (the upstream's answer passed through).", ""]
    report += ["### Errors seen by the clients", ""]
    report += markdown_table(["kind", "count"], sorted(stats.errors.items()))
    unexpected = sum(stats.unexpected.values())
    report += ["", f"Answers a request of its kind must never get: {unexpected}"]
    for (op, status, code), n in sorted(stats.unexpected.items()):
        report.append(f"- {op}: {status} {code} × {n}")
    report += [""]

    report += ["## Upstream faults injected", ""]
    report += markdown_table(["fault", "requests"], sorted(fault_counts.items()))
    report += ["", "`nometa`: a normal answer with its credits only in the body's `_meta`; "
               "`free`: /api/whoami, 0 credits; `wrong key` must be absent.", ""]

    report += ["## Credits: ledger against the upstream", ""]
    report += markdown_table(["", "calls", "credits"], [
        ("upstream charged (answers whose headers it sent)", figures["answers charged"],
         charged),
        ("upstream's own running total (summary lines)", "", summary_charged),
        ("ledger rows / credits summed from SQLite", figures["ledger rows"], ledger_credits),
        ("matched exactly, request by request", figures["exact"], figures["exact credits"]),
        ("… of which the client had hung up before the answer", figures["exact, client hung up"],
         figures["exact, client hung up, credits"]),
        ("cut before `_meta`, no credit headers: recorded unknown", figures["cut, unknown"],
         cut_unknown),
        ("not read (answer after the gateway's timeout, or client gone): recorded unknown",
         figures["not read, unknown"], not_read),
        ("no charge (stall, restart, 500, 503, 429): recorded unknown", figures["no charge"], 0),
        ("ledger rows with no upstream answer (refused, 502 connect, cut request)",
         figures["rows without an upstream answer"], 0),
        ("ledger rows with unknown credits", figures["ledger unknown rows"], ""),
    ])
    report += [
        "",
        f"charged {charged} = ledger {ledger_credits} + cut-unknown {cut_unknown} + "
        f"not-read {not_read}: **{'EQUAL' if balanced else 'NOT EQUAL'}**; "
        f"per-request failures: {figures['failures']}",
        "",
    ]
    if figures["upstream saw a request id twice"]:
        notes.append(f"{figures['upstream saw a request id twice']} request ids reached the "
                     f"upstream more than once")
    if failures:
        report += ["Failures (first 20):", ""] + [f"- {m}" for m in failures] + [""]

    report += ["## Gateway RSS", ""]
    samples = sampler.samples
    if samples:
        kib = [k for _, _, k in samples]
        report += [f"{len(samples)} samples every {SAMPLE_EVERY:g}s: min {min(kib) / 1024:.1f} "
                   f"MiB, max {max(kib) / 1024:.1f} MiB, last {kib[-1] / 1024:.1f} MiB.", ""]
        by_minute = collections.defaultdict(list)
        for t, i, k in samples:
            by_minute[(int(t // 60), i)].append(k)
        report += markdown_table(
            ["minute", "process", "min MiB", "max MiB"],
            [(m, i, f"{min(v) / 1024:.1f}", f"{max(v) / 1024:.1f}")
             for (m, i), v in sorted(by_minute.items())])
        report += [""]
    report += [f"- {line}" for line in rss_lines]
    report += ["", f"Verdict: RSS **{'flat' if flat else 'GROWING'}**.", ""]
    if notes:
        report += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    stops_ok = all(c == 0 for c in gateway.exit_codes)
    passed = balanced and unexpected == 0 and stops_ok and flat
    report += [f"**Result: {'PASS' if passed else 'FAIL'}** (ledger "
               f"{'equal' if balanced else 'NOT equal'}, unexpected answers {unexpected}, "
               f"gateway exit codes {gateway.exit_codes}, RSS {'flat' if flat else 'growing'})",
               ""]
    text = "\n".join(report)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(RESULTS)), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    log(f"results written to {RESULTS}" + (f"; scratch kept in {tmp}" if KEEP_TMP else ""))
    return 0 if passed else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        sys.exit(main())
    except RunError as error:
        log(f"soak aborted: {error}")
        sys.exit(2)
