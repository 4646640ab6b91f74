#!/usr/bin/env python3
"""A static upstream for benchmarks on machines without nginx (benches/callgrind.py starts it).

It does what benches/nginx/upstream.conf.in does, byte for byte in the headers the gateway reads:
every /api/ request, of any method, gets the compact fixture of
`PUT /api/fansly/{account}/tracking-links/{id}` (src/sandbox/fixtures/update-tracking-link.200.json)
with OnlyFansAPI's credit and rate-limit headers, in nginx's order; 401 without
`Authorization: Bearer UPSTREAM_KEY`; 404 outside /api/. HTTP/1.1 keep-alive, a thread per
connection, 127.0.0.1 only. It is no load generator's match (a few thousand answers a second),
which is enough for a gateway running under valgrind.

Usage: fixture_upstream.py PORT (environment: UPSTREAM_KEY). Python standard library only.
Stops on SIGTERM.
"""

import email.utils
import json
import os
import socket
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "src/sandbox/fixtures/update-tracking-link.200.json")


def answers(upstream_key):
    """(key_ok header value, the 200's body and extra headers, the 401 body, the 404 body)."""
    with open(FIXTURE) as f:
        fixture = json.load(f)
    # Compacted exactly as benches/proxy.py does for nginx's `return 200 '...'`.
    body = json.dumps(fixture, separators=(",", ":"), ensure_ascii=False).encode()
    extra = (
        "x-ofapi-credits-used: 1\r\n"
        f"x-ofapi-credits-balance: {fixture['_meta']['_credits']['balance']}\r\n"
        "x-ofapi-is-cached: false\r\n"
        "x-rate-limit-limit-minute: 100000000\r\n"
        "x-rate-limit-remaining-minute: 99999999\r\n"
    )
    return f"Bearer {upstream_key}".encode(), body, extra


def response(status, body, extra=""):
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Server: nginx\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n"
        f"{extra}\r\n"
    )
    return head.encode() + body


def read_body(reader, headers):
    """Reads (and drops) the request body: Content-Length or chunked."""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
            reader.read(size + 2)  # the chunk and its CRLF (the last: only the CRLF)
            if size == 0:
                return
    length = int(headers.get(b"content-length", b"0"))
    if length:
        reader.read(length)


def serve_connection(conn, key, ok_body, ok_extra):
    try:
        answer_requests(conn, key, ok_body, ok_extra)
    except (OSError, ValueError):
        pass  # a peer that hung up or sent something unreadable: drop the connection
    finally:
        conn.close()


def answer_requests(conn, key, ok_body, ok_extra):
    with conn.makefile("rb") as reader:
        while True:
            request_line = reader.readline()
            if not request_line:
                return
            headers = {}
            while True:
                line = reader.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            read_body(reader, headers)
            parts = request_line.split()
            path = parts[1] if len(parts) > 1 else b"/"
            if not path.startswith(b"/api/"):
                answer = response("404 Not Found", b'{"error":"Not found."}')
            elif headers.get(b"authorization") != key:
                answer = response("401 Unauthorized", b'{"error":"Unauthorized."}')
            else:
                answer = response("200 OK", ok_body, ok_extra)
            conn.sendall(answer)
            if headers.get(b"connection", b"").lower() == b"close":
                return


def main():
    port = int(sys.argv[1])
    key, ok_body, ok_extra = answers(os.environ.get("UPSTREAM_KEY", "bench-upstream-key"))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(512)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(
            target=serve_connection, args=(conn, key, ok_body, ok_extra), daemon=True
        ).start()


if __name__ == "__main__":
    main()
