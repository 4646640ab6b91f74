#!/usr/bin/env python3
"""A fault-injecting stand-in for OnlyFansAPI, for the soak (benches/soak.py starts and restarts it).

It answers the Fansly tracking-link routes and /api/whoami like the upstream (SPEC §2, §9): JSON
shaped like src/sandbox/fixtures/update-tracking-link.200.json, `_meta` last, with `_credits.used`
and `balance`, and the same figures as `x-ofapi-*` / `x-rate-limit-*` headers. Each answer costs
a random number of credits, and at random it misbehaves instead:

  reset      status line and headers, part of the body, then a TCP reset (SO_LINGER 0). Half of
             them carry the credit headers; the other half do not, and are cut before `_meta`.
  stall      reads the request, says nothing for STALL seconds (longer than the gateway's upstream
             timeout), closes.
  error500   500 with an upstream-style {"error": ...} body, no credit headers.
  html503    503 text/html from a "load balancer": not JSON, no credit headers.
  badjson    200, application/json, credit headers, a body that is not JSON.
  cached     200 answered from the cache: 0 credits, is_cached true (GETs only).
  throttle   429 with retry-after-ms / retry-after, at most once per THROTTLE_EVERY seconds.
  nometa     (not a fault) a normal answer whose credits are only in the body's `_meta`.

Accounting. The upstream charges an answer once its status line and headers are written: the
real upstream debits the credits before it answers, and from then on a broken connection does not
refund them. Every request it reads gets one JSON line in LOG (flushed as written):

  {"rid", "method", "path", "fault", "status", "credits" (charged), "sent": "full"|"cut"|"none",
   "expect": what the gateway can know of the charge (the credits, or null when the answer was cut
   before `_meta` and had no credit headers, or carried no charge at all), "ms" (request read to
   headers written), "client_key": true if a gateway key reached us (must never happen)}

and on exit a {"summary": true, "charged": total, "answers": n} line. SIGTERM is a restart: stop
accepting, close idle keep-alive connections, let answers being written finish (stalls are cut),
write the summary, exit 0.

Python standard library only. Usage: soak_upstream.py PORT LOG SEED
Environment: STALL (3.0 s), THROTTLE_EVERY (15 s), UPSTREAM_KEY.
"""

import json
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time

UPSTREAM_KEY = os.environ.get("UPSTREAM_KEY", "soak-upstream-key")
STALL = float(os.environ.get("STALL", "3.0"))
THROTTLE_EVERY = float(os.environ.get("THROTTLE_EVERY", "15"))
LIMIT_MINUTE = 1_000_000  # reported, so the gateway's limiter never throttles the soak itself

# Fault weights for a route that charges; the rest of the time the answer is normal.
FAULTS = [
    ("reset", 0.04),
    ("stall", 0.01),
    ("error500", 0.03),
    ("html503", 0.02),
    ("badjson", 0.02),
    ("throttle", 0.01),
]


class Upstream:
    def __init__(self, port, log_path, seed):
        self.port = port
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.log = open(log_path, "a", buffering=1)
        self.log_lock = threading.Lock()
        self.balance = 50_000_000
        self.charged = 0
        self.answers = 0
        self.minute = int(time.time() // 60)
        self.in_minute = 0
        self.last_throttle = 0.0
        self.stopping = threading.Event()
        self.conns = {}  # socket -> "idle" | "busy"
        self.conns_lock = threading.Lock()
        self.threads = []

    # --- randomness and shared counters -------------------------------------------------------

    def pick(self, method, path):
        with self.rng_lock:
            r = self.rng.random()
            fault = "ok"
            acc = 0.0
            for name, weight in FAULTS:
                acc += weight
                if r < acc:
                    fault = name
                    break
            if fault == "throttle":
                now = time.monotonic()
                if now - self.last_throttle < THROTTLE_EVERY:
                    fault = "ok"
                else:
                    self.last_throttle = now
            if fault == "ok" and method == "GET" and self.rng.random() < 0.3:
                fault = "cached"
            headers = self.rng.random() >= 0.25  # else: credits only in the body ("nometa")
            if fault == "reset":
                headers = self.rng.random() < 0.5
            credits = self.rng.randint(1, 5)
            cut = self.rng.random()
            return fault, headers, credits, cut

    def charge(self, credits):
        """Debits `credits`; the balance and rate-limit figures to report."""
        with self.rng_lock:
            self.balance -= credits
            minute = int(time.time() // 60)
            if minute != self.minute:
                self.minute, self.in_minute = minute, 0
            self.in_minute += 1
            return self.balance, max(0, LIMIT_MINUTE - self.in_minute)

    def record(self, entry):
        with self.log_lock:
            if entry["sent"] != "none":
                self.charged += entry["credits"]
                self.answers += 1
            self.log.write(json.dumps(entry, separators=(",", ":")) + "\n")

    # --- serving --------------------------------------------------------------------------------

    def serve(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(512)
        print(f"soak upstream listening on 127.0.0.1:{self.port}", flush=True)
        while not self.stopping.is_set():
            ready, _, _ = select.select([listener], [], [], 0.1)
            if not ready:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.conns_lock:
                self.conns[conn] = "idle"
            thread = threading.Thread(target=self.connection, args=(conn,), daemon=True)
            thread.start()
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        listener.close()
        # A restart: idle keep-alive connections go at once; answers being written finish.
        with self.conns_lock:
            for conn, state in self.conns.items():
                if state == "idle":
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        deadline = time.monotonic() + STALL + 2
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.log_lock:
            self.log.write(json.dumps({"summary": True, "charged": self.charged,
                                       "answers": self.answers}) + "\n")
            self.log.close()

    def set_state(self, conn, state):
        with self.conns_lock:
            if state is None:
                self.conns.pop(conn, None)
            else:
                self.conns[conn] = state

    def connection(self, conn):
        buffer = b""
        try:
            while not self.stopping.is_set():
                request, buffer = read_request(conn, buffer, self.stopping)
                if request is None:
                    break
                self.set_state(conn, "busy")
                keep = self.answer(conn, request)
                if not keep or self.stopping.is_set():
                    break
                self.set_state(conn, "idle")
        except OSError:
            pass
        finally:
            self.set_state(conn, None)
            try:
                conn.close()
            except OSError:
                pass

    def answer(self, conn, request):
        """Answers one request; False when the connection must not be reused."""
        method, path, headers, _body, received = request
        rid = headers.get("x-request-id", "-")
        auth = headers.get("authorization", "")
        entry = {"rid": rid, "method": method, "path": path, "fault": "-", "status": 0,
                 "credits": 0, "sent": "none", "expect": None, "ms": 0,
                 "client_key": "ofgw_" in auth or "ofgw_" in json.dumps(headers)}
        if auth != f"Bearer {UPSTREAM_KEY}":
            entry["fault"] = "wrong key"
            return self.send_simple(conn, entry, received, 401,
                                    {"error": "Unauthorized. Please provide a valid API key."})
        route_path = path.split("?", 1)[0]
        parts = route_path.strip("/").split("/")
        if route_path == "/api/whoami" and method == "GET":
            entry["fault"] = "free"
            balance, remaining = self.charge(0)
            return self.send_json(conn, entry, received, 200,
                                  {"id": "team_soak", "name": "Soak"}, 0, balance, remaining,
                                  headers_credits=True, cached=False, fault="free")
        charged_route = (
            len(parts) >= 4 and parts[0] == "api" and parts[1] == "fansly" and parts[3] == "tracking-links"
            and (
                (len(parts) == 4 and method in ("GET", "POST"))
                or (len(parts) == 5 and method == "PUT")
                or (len(parts) == 6 and parts[5] == "stats" and method == "GET")
            )
        )
        if not charged_route:
            entry["fault"] = "unknown route"
            return self.send_simple(conn, entry, received, 404,
                                    {"error": f"Not Found. The route {route_path} could not be found."})

        fault, with_headers, credits, cut = self.pick(method, path)
        entry["fault"] = fault
        if fault == "stall":
            entry["fault"] = "stall"
            self.stopping.wait(STALL)
            self.record(entry)
            return False
        if fault == "error500":
            return self.send_simple(conn, entry, received, 500,
                                    {"error": "Internal Server Error. Please try again later."})
        if fault == "throttle":
            return self.send_simple(conn, entry, received, 429,
                                    {"error": "Too Many Requests."},
                                    extra=[("retry-after-ms", "400"), ("retry-after", "1")])
        if fault == "html503":
            body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            return self.send_raw(conn, entry, received, 503, "text/html", body, [], credits=0,
                                 expect=None)
        if fault == "cached":
            credits = 0
        balance, remaining = self.charge(credits)
        data = self.data(method, parts)
        if fault == "badjson":
            body = b'{"data": {"id": "1"' + b"<!-- truncated by a proxy -->"
            extra = credit_headers(credits, balance, remaining, cached=False)
            return self.send_raw(conn, entry, received, 200, "application/json", body, extra,
                                 credits=credits, expect=credits)
        if not with_headers and fault == "ok":
            entry["fault"] = "nometa"
        return self.send_json(conn, entry, received, 201 if method == "POST" else 200, data,
                              credits, balance, remaining, headers_credits=with_headers,
                              cached=(fault == "cached"), fault=fault, cut=cut)

    def data(self, method, parts):
        account = parts[2]
        if len(parts) == 6:
            return {"id": parts[4], "accountId": account,
                    "days": [{"date": "2026-11-01", "clicks": 3, "subscriptions": 1}]}
        if len(parts) == 5:
            return {"id": parts[4], "accountId": account, "internalId": "1002", "type": 1000,
                    "status": 1, "label": "Twitter bio (updated)",
                    "description": "Updated description.", "metadata": "{}",
                    "createdAt": 1780512430000, "clicks": None, "claims": None, "follows": None,
                    "subscriptions": None, "totalNet": None, "totalGross": None}
        if method == "POST":
            return {"id": "100000000000000099", "accountId": account, "label": "new"}
        return {"list": [{"id": f"10000000000000000{i}", "label": f"link {i}"} for i in range(5)],
                "hasMore": False}

    # --- writing answers -----------------------------------------------------------------------

    def send_simple(self, conn, entry, received, status, payload, extra=()):
        body = json.dumps(payload).encode()
        return self.send_raw(conn, entry, received, status, "application/json", body, list(extra),
                             credits=0, expect=None)

    def send_json(self, conn, entry, received, status, data, credits, balance, remaining,
                  headers_credits, cached, fault, cut=0.0):
        meta = {
            "_credits": {"used": credits, "balance": balance,
                         "note": "Cache HIT. No credits debited" if cached else "Always"},
            "_cache": {"is_cached": cached, "note": "Cache disabled for this endpoint"},
            "_rate_limits": {"limit_minute": LIMIT_MINUTE, "limit_day": None,
                             "remaining_minute": remaining, "remaining_day": None,
                             "notice": "We have decided to remove our daily rate limits."},
        }
        body = json.dumps({"data": data, "_meta": meta}).encode()
        extra = [("x-rate-limit-limit-minute", str(LIMIT_MINUTE)),
                 ("x-rate-limit-remaining-minute", str(remaining))]
        if headers_credits:
            extra = credit_headers(credits, balance, remaining, cached)
        if fault != "reset":
            return self.send_raw(conn, entry, received, status, "application/json", body, extra,
                                 credits=credits, expect=credits)
        # Cut: with the credit headers anywhere in the body; without them, before `_meta`, so
        # the gateway cannot know the charge.
        limit = len(body) - 1 if headers_credits else body.index(b'"_meta"')
        at = max(1, int(limit * cut))
        return self.send_raw(conn, entry, received, status, "application/json", body, extra,
                             credits=credits, expect=credits if headers_credits else None,
                             cut_at=at)

    def send_raw(self, conn, entry, received, status, content_type, body, extra, credits, expect,
                 cut_at=None):
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
                f"content-type: {content_type}", f"content-length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in extra]
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
        entry.update(status=status, credits=credits, expect=expect,
                     ms=round((time.monotonic() - received) * 1000, 1))
        try:
            conn.sendall(head_bytes)
        except OSError:
            self.record(entry)  # nothing reached the gateway: no charge
            return False
        entry["sent"] = "cut"  # the headers are out: the credits are spent
        try:
            if cut_at is not None:
                conn.sendall(body[:cut_at])
                time.sleep(0.005)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.record(entry)
                return False  # the caller closes: a reset
            conn.sendall(body)
            entry["sent"] = "full"
        except OSError:
            # The body did not get out whole: without credit headers the gateway cannot know.
            if not any(name == "x-ofapi-credits-used" for name, _ in extra):
                entry["expect"] = None
        self.record(entry)
        return entry["sent"] == "full"


REASONS = {200: "OK", 201: "Created", 401: "Unauthorized", 404: "Not Found",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def credit_headers(credits, balance, remaining, cached):
    return [
        ("x-ofapi-credits-used", str(credits)),
        ("x-ofapi-credits-balance", str(balance)),
        ("x-ofapi-is-cached", "true" if cached else "false"),
        ("x-rate-limit-limit-minute", str(LIMIT_MINUTE)),
        ("x-rate-limit-remaining-minute", str(remaining)),
    ]


def read_request(conn, buffer, stopping):
    """One HTTP/1.1 request: ((method, path, headers, body, received_at), rest) or (None, b"")."""
    while b"\r\n\r\n" not in buffer:
        if stopping.is_set():
            return None, b""
        ready, _, _ = select.select([conn], [], [], 0.2)
        if not ready:
            continue
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    received = time.monotonic()
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, rest = read_chunked(conn, rest)
    else:
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""  # the request body never arrived whole: no answer
            rest += chunk
        body, rest = rest[:length], rest[length:]
    if body is None:
        return None, b""
    return (method, path, headers, body, received), rest


def read_chunked(conn, rest):
    body = b""
    while True:
        while b"\r\n" not in rest:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""
            rest += chunk
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""
            rest += chunk
        body += rest[:size]
        rest = rest[size + 2:]
        if size == 0:
            return body, rest


def main():
    port, log_path, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    upstream = Upstream(port, log_path, seed)
    signal.signal(signal.SIGTERM, lambda *_: upstream.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: upstream.stopping.set())
    upstream.serve()


if __name__ == "__main__":
    main()
