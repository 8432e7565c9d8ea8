"""Shared configuration and fixtures for the black-box API tests.

Environment:
  API_URL            base URL of the API (default http://127.0.0.1:9000)
  JWT_SECRET         HS256 secret the functions use (needed to forge tokens)
  JWT_ISSUER         `iss` claim (default auth-lambda)
  JWT_AUDIENCE       `aud` claim (default auth-lambda)
  DATABASE_URL       Postgres URL, used through `psql` to disable / delete users
  ACCESS_TOKEN_TTL_SECONDS, PASSWORD_MIN_LENGTH
                     must match the server's settings (defaults 900 and 12)
  E2E_TIMEOUT        per-request timeout in seconds (default 30)
  E2E_WAIT_SECONDS   how long to wait for the API to come up (default 180)
  E2E_USERS_TABLE    table holding the accounts (default users)
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest

API_URL = os.environ.get("API_URL", "http://127.0.0.1:9000").rstrip("/")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "30"))
WAIT_SECONDS = float(os.environ.get("E2E_WAIT_SECONDS", "180"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise AssertionError(f"response body is not JSON ({exc}): {self.body[:500]!r}") from None

    def __repr__(self) -> str:  # shows up in assertion messages
        return f"<Response {self.status} {self.headers!r} {self.body[:800]!r}>"


class Client:
    """Tiny HTTP client on top of http.client; one connection per request."""

    def __init__(self, base_url: str = API_URL, timeout: float = TIMEOUT):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"API_URL must be http(s)://…, got {base_url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        conn = self._connection(timeout or self.timeout)
        try:
            # http.client adds Host, Accept-Encoding: identity and Content-Length (when a
            # body is given) but never a Content-Type, so "no content type" is really none.
            conn.request(method, self.prefix + path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            raw = resp.getheaders()
        finally:
            conn.close()
        merged: dict[str, str] = {}
        for name, value in raw:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Response(resp.status, merged, data, raw)

    def post_json(
        self,
        path: str,
        payload=None,
        *,
        raw: bytes | None = None,
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """POST `payload` serialised as JSON (or `raw` bytes as they are)."""
        if raw is None:
            raw = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        hdrs = dict(headers or {})
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        return self.request("POST", path, body=raw, headers=hdrs, timeout=timeout)

    def register(self, email, password, **kw) -> Response:
        return self.post_json("/auth/register", {"email": email, "password": password}, **kw)

    def login(self, email, password, **kw) -> Response:
        return self.post_json("/auth/login", {"email": email, "password": password}, **kw)

    def me(self, token: str | None = None, *, authorization: str | None = None, **kw) -> Response:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("GET", "/auth/me", headers=headers, **kw)


# Each probe warms one function: under `cargo lambda watch` the first call compiles it.
_PROBES = [
    ("GET", "/auth/me", None, {}),
    ("POST", "/auth/register", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/auth/login", b"{}", {"Content-Type": "application/json"}),
]


@pytest.fixture(scope="session", autouse=True)
def api_ready() -> None:
    """Wait (polling) until every route answers with a non-5xx status, or fail clearly."""
    client = Client()
    deadline = time.monotonic() + WAIT_SECONDS
    pending = list(_PROBES)
    last_error = "no attempt made"
    while pending:
        method, path, body, headers = pending[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(
                f"API at {API_URL} not ready after {WAIT_SECONDS:.0f}s: "
                f"{method} {path} -> {last_error}. Is `cargo lambda watch` running "
                f"(and did the functions compile)?",
                pytrace=False,
            )
        try:
            resp = client.request(method, path, body=body, headers=headers,
                                  timeout=max(1.0, min(TIMEOUT, remaining)))
        except (OSError, http.client.HTTPException) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status < 500:
                pending.pop(0)
                continue
            last_error = f"HTTP {resp.status}: {resp.body[:300]!r}"
        time.sleep(1.0)


@pytest.fixture(scope="session")
def api(api_ready) -> Client:
    return Client()
