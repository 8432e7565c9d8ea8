#!/usr/bin/env python3
"""A thin local stand-in for API Gateway in front of `cargo lambda watch`.

Requests are passed to cargo lambda watch (which routes them with the router in Cargo.toml)
unchanged, with one exception: cargo lambda watch answers a JSON or text body that is not valid
UTF-8 with its own 500 before any function runs, whereas API Gateway hands such a body to the
function base64-encoded. For those requests this script builds the HTTP API (payload 2.0) event
itself and invokes the routed function through the Lambda invoke API, so the function decides,
exactly as it does behind API Gateway.

    gateway.py LISTEN_PORT WATCH_PORT
"""

import base64
import http.client
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


def load_routes():
    """(path, method) -> function, from [workspace.metadata.lambda.watch.router]."""
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    router = manifest["workspace"]["metadata"]["lambda"]["watch"]["router"]
    routes = {}
    for path, entries in router.items():
        for entry in entries if isinstance(entries, list) else [{"method": "*", "function": entries}]:
            routes[(path, entry["method"].upper())] = entry["function"]
    return routes


ROUTES = load_routes()


def is_text(content_type):
    # The same test cargo lambda watch applies before decoding a body as UTF-8.
    return content_type is None or content_type.startswith("text/") or content_type.startswith("application/json")


class Gateway(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "local-gateway"
    sys_version = ""
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
        function = ROUTES.get((url.path, self.command)) or ROUTES.get((url.path, "*"))
        needs_event = False
        if body and function and is_text(self.headers.get("Content-Type")):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                needs_event = True
        try:
            if needs_event:
                status, headers, payload = self.invoke(function, url, body)
            else:
                status, headers, payload = self.forward(body)
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

    def upstream(self, method, path, body, headers):
        # cargo lambda watch may still be starting: wait for it rather than fail the request.
        deadline = time.monotonic() + 60
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.watch_port, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers)
                return conn.getresponse()
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        response = self.upstream(self.command, self.path, body, headers)
        return response.status, response.getheaders(), response.read()

    def invoke(self, function, url, body):
        now = time.time()
        event = {
            "version": "2.0",
            "routeKey": f"{self.command} {url.path}",
            "rawPath": url.path,
            "rawQueryString": url.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "requestContext": {
                "http": {"method": self.command, "path": url.path, "protocol": "HTTP/1.1",
                         "sourceIp": self.client_address[0],
                         "userAgent": self.headers.get("User-Agent", "")},
                "requestId": str(uuid.uuid4()), "routeKey": f"{self.command} {url.path}",
                "stage": "$default", "domainName": "localhost", "domainPrefix": "localhost",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "body": base64.b64encode(body).decode(),
            "isBase64Encoded": True,
        }
        response = self.upstream("POST", f"/2015-03-31/functions/{function}/invocations",
                                 json.dumps(event), {"Content-Type": "application/json"})
        answer = json.loads(response.read())
        payload = answer.get("body") or ""
        payload = base64.b64decode(payload) if answer.get("isBase64Encoded") else payload.encode()
        return int(answer["statusCode"]), list((answer.get("headers") or {}).items()), payload

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


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
