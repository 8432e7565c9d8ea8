#!/usr/bin/env python3
"""A thin local stand-in for API Gateway (HTTP API) in front of `cargo lambda watch`.

It routes each request with the router table in Cargo.toml, builds the HTTP API payload 2.0
event as API Gateway does, and invokes the function through cargo lambda watch's Lambda invoke
API. Two things make it worth having over cargo lambda watch's own HTTP front:
- `requestContext.http.sourceIp` is the real client address (cargo lambda watch always says
  127.0.0.1), so the per-address limits behave locally as in AWS — a client can use several
  loopback addresses (127.0.0.0/8) to act as several users;
- a JSON body that is not valid UTF-8 reaches the function base64-encoded, as API Gateway
  passes it, instead of cargo lambda watch's own 500.
Requests no route takes go to the `$default` route's function; without one they get API
Gateway's `404 {"message":"Not Found"}`.

Routes match as API Gateway's do: a path segment `{name}` matches one segment (its value in
`pathParameters`), a last segment `{name+}` the rest of the path; a route without parameters
wins over one with, a method over `*` (ANY); `routeKey` names the matched route, e.g.
`DELETE /auth/sessions/{id}`.

    gateway.py LISTEN_PORT WATCH_PORT
"""

import base64
import http.client
import socket
import http.server
import json
import sys
import time
import tomllib
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOP_BY_HOP = {"date", "server", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length"}


def load_routes(manifest=None):
    """(route path, method) -> function, from [workspace.metadata.lambda.watch.router]."""
    if manifest is None:
        manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    router = manifest["workspace"]["metadata"]["lambda"]["watch"]["router"]
    routes = {}
    for path, entries in router.items():
        for entry in entries if isinstance(entries, list) else [{"method": "*", "function": entries}]:
            routes[(path, entry["method"].upper())] = entry["function"]
    return routes


def match_template(template, path):
    """The path parameters when `path` matches the route `template`, else None."""
    # No slash is trimmed: `/auth/sessions/x/` is not `/auth/sessions/{id}` (an empty last segment).
    want, have = template.split("/"), path.split("/")
    params = {}
    for i, segment in enumerate(want):
        if segment.startswith("{") and segment.endswith("+}"):  # greedy: the rest, at least one segment
            if i != len(want) - 1 or i >= len(have) or not "".join(have[i:]):
                return None
            params[segment[1:-2]] = "/".join(have[i:])
            return params
        if i >= len(have):
            return None
        if segment.startswith("{") and segment.endswith("}"):
            if not have[i]:
                return None
            params[segment[1:-1]] = urllib.parse.unquote(have[i])
        elif segment != have[i]:
            return None
    return params if len(want) == len(have) else None


def route(routes, method, path):
    """(function, routeKey, pathParameters or None) for a request, or None when unrouted.

    Exact routes first, then templates with the most literal segments first (API Gateway
    prefers the most specific route); at each step a route of the request's method over `*`;
    last the `$default` route, if the table has one.
    """
    for candidate in (method, "*"):
        function = routes.get((path, candidate))
        if function and "{" not in path:  # a template's own text is no exact route
            return function, f"{'ANY' if candidate == '*' else candidate} {path}", None
    templated = [(p, m, f) for (p, m), f in routes.items() if "{" in p]
    # Ties between as many literal segments go to the one whose literal comes first.
    templated.sort(key=lambda r: (-sum(1 for s in r[0].split("/") if s and not s.startswith("{")),
                                  "+}" in r[0], [s.startswith("{") for s in r[0].split("/")], r[1] == "*"))
    for template, candidate, function in templated:
        if candidate not in (method, "*"):
            continue
        params = match_template(template, path)
        if params is not None:
            return function, f"{'ANY' if candidate == '*' else candidate} {template}", params
    function = routes.get(("$default", "*"))
    return (function, "$default", None) if function else None


ROUTES = load_routes()


class Gateway(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "local-gateway"
    sys_version = ""
    # A buffered wfile (flushed after each request) sends a response's head and body in one
    # write, and TCP_NODELAY sends it at once: a head and a body in separate segments would let
    # Nagle's algorithm and the client's delayed ACK hold the body ~40 ms.
    wbufsize = -1
    disable_nagle_algorithm = True
    watch_port = 0

    def log_message(self, *args):  # the functions log each outcome; no access log here
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def handle_any(self):
        body = self.read_body()
        url = urllib.parse.urlsplit(self.path)
        matched = route(ROUTES, self.command, url.path)
        try:
            if matched:
                status, headers, payload = self.invoke(*matched, url, body)
            else:
                status, headers, payload = 404, [("Content-Type", "application/json")], b'{"message":"Not Found"}'
        except (OSError, http.client.HTTPException, ValueError) as error:
            status, headers = 502, [("Content-Type", "text/plain")]
            payload = f"local gateway: cargo lambda watch did not answer ({error})".encode()
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def upstream(self, path, body):
        """POSTs `body` to cargo lambda watch's invoke API; returns the answer's body.

        The request's head and body leave in one write, on purpose. cargo lambda watch streams
        the body it receives into the function's pending `/runtime/invocation/next` answer: when
        the body arrives as a segment of its own (as http.client sends it), watch writes that
        answer's head first and its body a moment later, and on that connection (no
        TCP_NODELAY on watch's side) Nagle's algorithm holds the body until the function's
        delayed ACK, ~40 ms later, on a large share of requests. TCP_NODELAY on our own socket
        cannot help: the stall is on a connection we do not own.
        """
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.watch_port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        # cargo lambda watch may still be starting: wait for it rather than fail the request.
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.watch_port), timeout=120)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(head + body)
                response = http.client.HTTPResponse(sock, method="POST")
                response.begin()
                return response.read()

    def invoke(self, function, route_key, path_parameters, url, body):
        now = time.time()
        event = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": url.path,
            "rawQueryString": url.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "queryStringParameters": {k: ",".join(v) for k, v in urllib.parse.parse_qs(url.query).items()} or None,
            "requestContext": {
                "http": {"method": self.command, "path": url.path, "protocol": "HTTP/1.1",
                         "sourceIp": self.client_address[0],
                         "userAgent": self.headers.get("User-Agent", "")},
                "requestId": str(uuid.uuid4()), "routeKey": route_key,
                "stage": "$default", "domainName": "localhost", "domainPrefix": "localhost",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
        }
        if path_parameters:  # API Gateway leaves the key out when the route has none
            event["pathParameters"] = path_parameters
        if body:
            try:
                event["body"], event["isBase64Encoded"] = body.decode("utf-8"), False
            except UnicodeDecodeError:
                event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
        else:
            event["isBase64Encoded"] = False
        answer = json.loads(self.upstream(f"/2015-03-31/functions/{function}/invocations",
                                          json.dumps(event).encode()))
        payload = answer.get("body") or ""
        payload = base64.b64decode(payload) if answer.get("isBase64Encoded") else payload.encode()
        if "statusCode" not in answer:  # the function failed (init error, panic): API Gateway says 500
            return 500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}'
        headers = list((answer.get("headers") or {}).items())
        for name, values in (answer.get("multiValueHeaders") or {}).items():
            headers.extend((name, v) for v in values)
        headers.extend(("Set-Cookie", c) for c in answer.get("cookies") or [])
        return int(answer["statusCode"]), headers, payload

    def __getattr__(self, name):
        # http.server looks up do_<METHOD> and answers 501 (an HTML page) when there is none:
        # API Gateway routes any method (TRACE, QUERY, ...), so every one goes through routing.
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)


def main():
    listen_port, watch_port = int(sys.argv[1]), int(sys.argv[2])
    Gateway.watch_port = watch_port
    # The default listen backlog (5) resets bursts of concurrent clients.
    http.server.ThreadingHTTPServer.request_queue_size = 256
    server = http.server.ThreadingHTTPServer(("127.0.0.1", listen_port), Gateway)
    server.daemon_threads = True
    print(f"local gateway on http://localhost:{listen_port} -> cargo lambda watch on :{watch_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
