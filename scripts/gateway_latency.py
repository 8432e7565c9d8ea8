#!/usr/bin/env python3
"""Latency of `GET /auth/me` through the local gateway and straight to cargo lambda watch.

Registers and logs in one throwaway user, then times N authenticated requests against each
target, once over one kept-alive connection and once with a new connection per request, and
prints p50/p90/p99/max in milliseconds. A tail far above the median through the gateway only
is the gateway's own stall (the ~40 ms of Nagle's algorithm meeting a delayed ACK, say).

    scripts/gateway_latency.py [GATEWAY_URL [WATCH_URL [N]]]
    (defaults: http://127.0.0.1:9000, the gateway's port + 1, 300)

Not a test: it only reports. Run it against `make dev` or a stack of your own.
"""

import http.client
import json
import secrets
import statistics
import sys
import time
import urllib.parse


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def call(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def login(host, port):
    email = f"latency-{secrets.token_hex(6)}@example.com"
    password = secrets.token_urlsafe(24)
    body = json.dumps({"email": email, "password": password})
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection(host, port, timeout=60)
    status, _ = call(conn, "POST", "/auth/register", body, headers)
    if status != 201:
        sys.exit(f"register answered {status}")
    status, answer = call(conn, "POST", "/auth/login", body, headers)
    if status != 200:
        sys.exit(f"login answered {status}")
    conn.close()
    return json.loads(answer)["access_token"]


def measure(host, port, token, n, keep_alive):
    headers = {"Authorization": f"Bearer {token}"}
    samples = []
    conn = http.client.HTTPConnection(host, port, timeout=60) if keep_alive else None
    for _ in range(n):
        start = time.perf_counter()
        if not keep_alive:
            conn = http.client.HTTPConnection(host, port, timeout=60)
        status, _ = call(conn, "GET", "/auth/me", headers=headers)
        if not keep_alive:
            conn.close()
        samples.append((time.perf_counter() - start) * 1000)
        if status != 200:
            sys.exit(f"GET /auth/me on :{port} answered {status}")
    if conn is not None:
        conn.close()
    return samples


def main():
    gateway = urllib.parse.urlsplit(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9000")
    host, port = gateway.hostname, gateway.port or 80
    watch = urllib.parse.urlsplit(sys.argv[2] if len(sys.argv) > 2 else f"http://{host}:{port + 1}")
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    token = login(host, port)
    print(f"{'target':<28}{'n':>5}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   (ms)")
    for name, target in (("gateway", (host, port)), ("cargo lambda watch", (watch.hostname, watch.port))):
        for keep_alive in (True, False):
            samples = measure(*target, token, n, keep_alive)
            label = f"{name}, {'kept-alive' if keep_alive else 'new conns'}"
            print(f"{label:<28}{n:>5}{statistics.median(samples):>8.1f}{percentile(samples, 90):>8.1f}"
                  f"{percentile(samples, 99):>8.1f}{max(samples):>8.1f}")


if __name__ == "__main__":
    main()
