"""Shared configuration and fixtures for the black-box API tests.

Environment:
  API_URL            base URL of the API (default http://127.0.0.1:9000)
  JWT_SECRET         HS256 secret the functions use (HS256 mode), or
  JWT_PRIVATE_KEY    the PEM private key the functions sign with (RS256 mode; wins when both
                     are set, as on the server), with JWT_KEY_ID (default: RFC 7638 thumbprint)
  JWT_ISSUER         `iss` claim (default auth-lambda)
  JWT_AUDIENCE       `aud` claim (default auth-lambda)
  DATABASE_URL       Postgres URL, used through `psql` to disable / delete users and to read
                     the audit table
  ACCESS_TOKEN_TTL_SECONDS, PASSWORD_MIN_LENGTH, REFRESH_REUSE_GRACE_SECONDS,
  IP_RATE_LIMIT_PER_MINUTE, LOGIN_BACKOFF_AFTER
                     must match the server's settings (defaults 900, 12, 10, 60, 5)
  E2E_TIMEOUT        per-request timeout in seconds (default 30)
  E2E_WAIT_SECONDS   how long to wait for the API to come up (default 180)
  E2E_USERS_TABLE    table holding the accounts (default users)
  E2E_BIND_SOURCE    1/0: give every client its own loopback source address (default: on when
                     API_URL's host is a loopback address)
  MAILDEV_URL, MAILDEV_CTL
                     the MailDev the functions deliver to, and how to stop and start it (see
                     mail.py); MAIL_RESEND_INTERVAL_SECONDS, MAIL_ANSWER_MS, APP_URL, … must
                     match the server's settings (support.py)

Per-address limits: the server allows IP_RATE_LIMIT_PER_MINUTE requests per source address
(`requestContext.http.sourceIp`, which the local gateway sets to the TCP peer address). The suite
makes far more requests than that, so every test's client binds its own random loopback address
(127.A.B.C, never 127.0.0.1; any address in 127.0.0.0/8 works on Linux) and appears as its own
user.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import random
import socket
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

import pytest

API_URL = os.environ.get("API_URL", "http://127.0.0.1:9000").rstrip("/")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "30"))
WAIT_SECONDS = float(os.environ.get("E2E_WAIT_SECONDS", "180"))


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _bind_source() -> bool:
    setting = os.environ.get("E2E_BIND_SOURCE", "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    return _is_loopback_host(urllib.parse.urlsplit(API_URL).hostname or "127.0.0.1")


BIND_SOURCE = _bind_source()
_used_addresses: set[str] = set()


def fresh_source_address() -> str:
    """A loopback address no other client of this run has used: 127.A.B.C with A ≥ 1."""
    rng = random.SystemRandom()
    while True:
        address = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if address not in _used_addresses:
            _used_addresses.add(address)
            return address


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
    """Tiny HTTP client on top of http.client; one connection per request.

    Each client has its own source address (when BIND_SOURCE) and its own User-Agent, so the
    server's per-address limits and audit rows can tell clients apart.
    """

    def __init__(self, base_url: str = API_URL, timeout: float = TIMEOUT, *,
                 source_address: str | None = None, user_agent: str | None = None):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"API_URL must be http(s)://…, got {base_url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        if source_address is None and BIND_SOURCE:
            source_address = fresh_source_address()
        self.source_address = source_address
        self.user_agent = user_agent or f"auth-e2e/1.0 ({uuid.uuid4().hex})"

    def __repr__(self) -> str:
        return f"<Client from {self.source_address or 'default address'}>"

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        source = (self.source_address, 0) if self.source_address else None
        return cls(self.host, self.port, timeout=timeout, source_address=source)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        conn = self._connection(timeout or self.timeout)
        hdrs = {"User-Agent": self.user_agent}
        hdrs.update(headers or {})
        try:
            # http.client adds Host, Accept-Encoding: identity and Content-Length (when a
            # body is given) but never a Content-Type, so "no content type" is really none.
            conn.request(method, self.prefix + path, body=body, headers=hdrs)
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

    def refresh(self, refresh_token, **kw) -> Response:
        return self.post_json("/auth/refresh", {"refresh_token": refresh_token}, **kw)

    @staticmethod
    def _auth_headers(token: str | None, authorization: str | None,
                      headers: dict[str, str] | None) -> dict[str, str]:
        hdrs = dict(headers or {})
        if authorization is not None:
            hdrs["Authorization"] = authorization
        elif token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return hdrs

    def me(self, token: str | None = None, *, authorization: str | None = None,
           headers: dict[str, str] | None = None, **kw) -> Response:
        return self.request("GET", "/auth/me",
                            headers=self._auth_headers(token, authorization, headers), **kw)

    def logout(self, token: str | None = None, *, authorization: str | None = None,
               query: str | None = None, body: bytes | None = None,
               headers: dict[str, str] | None = None, **kw) -> Response:
        """POST /auth/logout: by default no body and no Content-Type."""
        path = "/auth/logout" + (f"?{query}" if query is not None else "")
        return self.request("POST", path, body=body,
                            headers=self._auth_headers(token, authorization, headers), **kw)


# Each probe warms one function: under `cargo lambda watch` the first call may start it.
_PROBES = [
    ("GET", "/auth/me", None, {}),
    ("POST", "/auth/register", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/auth/login", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/auth/refresh", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/auth/logout", None, {}),
    ("GET", "/.well-known/jwks.json", None, {}),
    ("POST", "/auth/email/verify", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/auth/password/reset", b"{}", {"Content-Type": "application/json"}),
    ("GET", "/auth/sessions", None, {}),
    ("POST", "/auth/mfa/totp", b"{}", {"Content-Type": "application/json"}),
]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "stops_maildev: stops and restarts the MailDev every mail test reads (the "
        "suite runs serially, no pytest-xdist; such a test must never run beside another)")


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


@pytest.fixture
def api(api_ready) -> Client:
    """A client of its own for each test: its own source address, so its own rate window."""
    return Client()


@pytest.fixture(scope="session")
def new_client(api_ready):
    """Factory of further clients, each with its own source address (for session fixtures
    and for tests that act as several users)."""
    return Client


@pytest.fixture
def maildev(api_ready):
    """The MailDev the functions deliver to (MAILDEV_URL; the test fails when it is unset)."""
    import mail  # noqa: PLC0415 - only the mail tests need it
    return mail.require_maildev()


def pytest_terminal_summary(terminalreporter):
    import support  # noqa: PLC0415 - only for the summary line
    terminalreporter.write_line(f"e2e: the tests slept {support.SLEPT[0]:.1f} s in all")
    for line in support.TIMINGS:
        terminalreporter.write_line(f"e2e timing: {line}")
