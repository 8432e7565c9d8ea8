"""Helpers shared by the black-box tests (test_api.py, test_sessions.py): settings, response
assertions, access tokens (decode, verify, forge — HS256 or RS256, like the server), the
database (through psql) and accounts."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

import jwt  # PyJWT: an independent implementation to verify the server's tokens with
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# --- settings (must match the server's) -------------------------------------------------------

JWT_SECRET = os.environ.get("JWT_SECRET", "")
# One-line forms carry the PEM's newlines as "\n", as the server accepts.
JWT_PRIVATE_KEY = os.environ.get("JWT_PRIVATE_KEY", "").replace("\\n", "\n").strip()
# The server's choice: RS256 when a private key is set, else HS256 with the secret.
ALG = "RS256" if JWT_PRIVATE_KEY else "HS256"
JWT_ISSUER = os.environ.get("JWT_ISSUER", "auth-lambda")
JWT_AUDIENCE = os.environ.get("JWT_AUDIENCE", "auth-lambda")
ACCESS_TOKEN_TTL = int(os.environ.get("ACCESS_TOKEN_TTL_SECONDS", "900"))
PASSWORD_MIN = int(os.environ.get("PASSWORD_MIN_LENGTH", "12"))
PASSWORD_MAX = 128
REFRESH_GRACE = float(os.environ.get("REFRESH_REUSE_GRACE_SECONDS", "10"))
IP_LIMIT = int(os.environ.get("IP_RATE_LIMIT_PER_MINUTE", "60"))
BACKOFF_AFTER = int(os.environ.get("LOGIN_BACKOFF_AFTER", "5"))
BACKOFF_MAX = int(os.environ.get("LOGIN_BACKOFF_MAX_SECONDS", "900"))
SESSION_IDLE = int(os.environ.get("SESSION_IDLE_SECONDS", "604800"))
SESSION_MAX = int(os.environ.get("SESSION_MAX_SECONDS", "2592000"))
USERS_TABLE = os.environ.get("E2E_USERS_TABLE", "users")
SESSIONS_TABLE = os.environ.get("E2E_SESSIONS_TABLE", "sessions")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "30"))
MAX_BODY = 16 * 1024
ACCESS_TOKEN_TYP = "at+jwt"
LOCK_AFTER = int(os.environ.get("LOGIN_LOCK_AFTER", "100"))
# Mail and Account (API.md): must match the server's settings too.
MAIL_RESEND_INTERVAL = int(os.environ.get("MAIL_RESEND_INTERVAL_SECONDS", "60"))
MAIL_MAX_PER_HOUR = int(os.environ.get("MAIL_MAX_PER_HOUR", "5"))
SMTP_TIMEOUT_MS = int(os.environ.get("SMTP_TIMEOUT_MS", "3000"))
MAIL_ANSWER_MS = int(os.environ.get("MAIL_ANSWER_MS", str(min(500, SMTP_TIMEOUT_MS))))
MAIL_PRODUCT_NAME = os.environ.get("MAIL_PRODUCT_NAME", "Auth").strip()
MAIL_FROM = os.environ.get("MAIL_FROM", "no-reply@localhost").strip()


def _app_url() -> str:
    """The base of the mail links: APP_URL, else JWT_ISSUER when it is an http(s) URL, else
    http://localhost:9000 (as the server decides)."""
    for value in (os.environ.get("APP_URL", ""), JWT_ISSUER):
        value = value.strip()
        if re.match(r"https?://[^/?#]+", value):
            return value.rstrip("/")
    return "http://localhost:9000"


APP_URL = _app_url()

REGISTER = "/auth/register"
LOGIN = "/auth/login"
REFRESH = "/auth/refresh"
LOGOUT = "/auth/logout"
JWKS = "/.well-known/jwks.json"
DISCOVERY = "/.well-known/openid-configuration"
ME = "/auth/me"
VERIFY = "/auth/email/verify"
RESEND = "/auth/email/verify/resend"
FORGOT = "/auth/password/forgot"
RESET = "/auth/password/reset"
CHANGE = "/auth/password/change"
SESSIONS = "/auth/sessions"
MFA_TOTP = "/auth/mfa/totp"
MFA_CONFIRM = "/auth/mfa/totp/confirm"
MFA_VERIFY = "/auth/mfa/verify"

# Text that would betray internals (library error text, stack traces, config) in an error body.
LEAK_PATTERNS = re.compile(
    r"sql|postgres|panick|argon2|serde|tokio|deadpool|backtrace|jsonwebtoken|hyper::"
    r"|line \d+ column \d+|\.rs:\d+|RUST_|JWT_SECRET|JWT_PRIVATE_KEY|PRIVATE KEY|DATABASE_URL"
    r"|unwrap\(",
    re.IGNORECASE,
)

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


# --- small things -----------------------------------------------------------------------------


def uniq() -> str:
    return uuid.uuid4().hex


def new_email(prefix: str = "e2e") -> str:
    return f"{prefix}-{uniq()}@example.com"


def strong_password() -> str:
    # ~144 random bits, only printable ASCII: strong for any estimator, never in a list.
    return "E2e " + secrets.token_urlsafe(18)


def rand_chars(alphabet: str, n: int) -> str:
    rng = random.SystemRandom()
    return "".join(rng.choice(alphabet) for _ in range(n))


ALNUM = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


SLEPT = [0.0]  # seconds the tests slept, reported at the end of the run (conftest.py)
TIMINGS: list[str] = []  # the timing tests' medians, reported at the end of the run


def nap(seconds: float) -> None:
    """time.sleep, counted."""
    if seconds > 0:
        time.sleep(seconds)
        SLEPT[0] += seconds


def padded_body(payload: dict, size: int) -> bytes:
    """`payload` plus an unknown `pad` field, serialised to exactly `size` bytes."""
    base = json.dumps({**payload, "pad": ""}).encode()
    assert len(base) <= size
    data = json.dumps({**payload, "pad": "x" * (size - len(base))}).encode()
    assert len(data) == size
    return data


# --- response assertions ----------------------------------------------------------------------


def media_type(resp) -> str:
    ct = resp.header("content-type") or ""
    return ct.split(";", 1)[0].strip().lower()


def assert_json_response(resp, status: int):
    assert resp.status == status, resp
    assert media_type(resp) == "application/json", resp
    return resp.json()


def assert_problem(resp, status: int, code: str, *, not_echoed: tuple[str, ...] = ()) -> dict:
    """RFC 9457 problem document with a stable code and a detail that leaks nothing."""
    assert resp.status == status, resp
    assert media_type(resp) == "application/problem+json", resp
    body = resp.json()
    assert isinstance(body, dict), resp
    for key in ("type", "title", "status", "code", "detail"):
        assert key in body, f"problem document lacks {key!r}: {resp!r}"
    assert isinstance(body["type"], str) and body["type"], resp
    assert isinstance(body["title"], str) and body["title"].strip(), resp
    assert type(body["status"]) is int and body["status"] == status, resp
    assert body["code"] == code, resp
    assert isinstance(body["detail"], str) and body["detail"].strip(), resp
    text = resp.body.decode("utf-8")
    leak = LEAK_PATTERNS.search(text)
    assert leak is None, f"error body leaks internals ({leak.group(0)!r}): {resp!r}"
    if JWT_SECRET:
        assert JWT_SECRET not in text, "error body contains the JWT secret"
    for secret in not_echoed:
        assert secret not in text, f"error body echoes {secret!r}: {resp!r}"
    if status == 401:
        assert_bearer_challenge(resp)
    if status in (429, 503):
        assert_retry_after(resp)
    return body


def assert_bearer_challenge(resp, *, error: str | None | bool = False) -> str:
    """Every 401 carries `WWW-Authenticate: Bearer …`.

    error=False: don't care; error=None: no `error=` parameter; error="x": `error="x"`.
    """
    challenge = resp.header("www-authenticate")
    assert challenge, f"401 without WWW-Authenticate: {resp!r}"
    assert re.match(r"\s*bearer(\s|,|$)", challenge, re.IGNORECASE), (
        f"WWW-Authenticate is not a Bearer challenge: {challenge!r}"
    )
    if error is None:
        assert not re.search(r"\berror\s*=", challenge, re.IGNORECASE), (
            f"challenge must name no error: {challenge!r}"
        )
    elif error:
        assert re.search(rf'\berror\s*=\s*"{re.escape(error)}"', challenge), (
            f'challenge lacks error="{error}": {challenge!r}'
        )
    return challenge


def assert_invalid_token(resp) -> dict:
    """401 invalid_token with an RFC 6750 challenge naming error="invalid_token"."""
    body = assert_problem(resp, 401, "invalid_token")
    assert_bearer_challenge(resp, error="invalid_token")
    return body


def assert_retry_after(resp) -> int:
    """`Retry-After` in delay-seconds form (RFC 9110 §10.2.3): a positive integer."""
    value = resp.header("retry-after")
    assert value is not None, f"{resp.status} without Retry-After: {resp!r}"
    assert re.fullmatch(r"\d+", value.strip()), f"Retry-After is not delay-seconds: {value!r}"
    seconds = int(value)
    assert seconds >= 1, f"Retry-After must be at least 1 s: {resp!r}"
    return seconds


def assert_too_many(resp) -> int:
    """429 too_many_requests with Retry-After; returns the seconds."""
    assert_problem(resp, 429, "too_many_requests")
    return assert_retry_after(resp)


USER_FIELDS = {"id", "email", "is_active", "created_at", "email_verified", "mfa_enabled"}


def assert_user_body(body, email: str, verified: bool = False, mfa_enabled: bool = False) -> None:
    """The user body of register, me and verify (API.md "Responses", "Account", "Two-step
    login")."""
    assert isinstance(body, dict), body
    assert set(body) == USER_FIELDS, body
    assert body["email_verified"] is verified, body
    assert body["mfa_enabled"] is mfa_enabled, body
    assert isinstance(body["id"], str), body
    assert str(uuid.UUID(body["id"])) == body["id"], f"id is not a canonical uuid: {body!r}"
    assert body["email"] == email, body
    assert body["is_active"] is True, body
    created = body["created_at"]
    assert isinstance(created, str) and RFC3339.match(created), f"created_at not RFC 3339: {body!r}"
    parsed = dt.datetime.fromisoformat(created.replace("z", "Z").replace("t", "T"))
    assert parsed.tzinfo is not None
    skew = abs((dt.datetime.now(dt.timezone.utc) - parsed).total_seconds())
    assert skew < 600, f"created_at {created} is {skew:.0f}s away from now"


REFRESH_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def assert_token_body(resp) -> dict:
    """The 200 of login and refresh: an access token, its type and lifetime, a refresh token."""
    body = assert_json_response(resp, 200)
    cache_control = resp.header("cache-control") or ""
    assert "no-store" in [d.strip().lower() for d in cache_control.split(",")], resp
    assert isinstance(body, dict), body
    assert isinstance(body.get("access_token"), str) and body["access_token"], body
    assert body.get("token_type") == "Bearer", body
    assert type(body.get("expires_in")) is int and body["expires_in"] == ACCESS_TOKEN_TTL, body
    refresh = body.get("refresh_token")
    assert isinstance(refresh, str), f"no refresh_token string: {body!r}"
    # opaque, at least 256 random bits: no shorter than 256 bits in base64url (43 characters)
    assert len(refresh) >= 43, f"refresh token too short for 256 random bits: {refresh!r}"
    assert REFRESH_TOKEN_CHARS.fullmatch(refresh), f"refresh token is not a plain token: {refresh!r}"
    assert refresh.count(".") != 2, f"refresh token looks like a JWT: {refresh!r}"
    assert refresh != body["access_token"]
    return body


# --- access tokens ----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def decode_jwt(token: str) -> tuple[dict, dict]:
    """Header and claims of a compact JWS, unverified."""
    parts = token.split(".")
    assert len(parts) == 3, f"not a JWS compact token: {token!r}"
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    return header, claims


def require_signing_key() -> None:
    if not (JWT_SECRET or JWT_PRIVATE_KEY):
        pytest.fail("neither JWT_SECRET (HS256) nor JWT_PRIVATE_KEY (RS256) is set; the token "
                    "tests need the server's signing key", pytrace=False)


def server_secret() -> bytes:
    if ALG != "HS256" or not JWT_SECRET:
        pytest.fail("JWT_SECRET is not set (or the server signs RS256)", pytrace=False)
    return JWT_SECRET.encode("utf-8")


@functools.cache
def server_private_key() -> rsa.RSAPrivateKey:
    if ALG != "RS256":
        pytest.fail("JWT_PRIVATE_KEY is not set (the server signs HS256)", pytrace=False)
    key = serialization.load_pem_private_key(JWT_PRIVATE_KEY.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey), "JWT_PRIVATE_KEY is not an RSA key"
    return key


@functools.cache
def attacker_private_key() -> rsa.RSAPrivateKey:
    """A key the server has never seen."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def public_jwk(key: rsa.RSAPrivateKey, kid: str | None = None) -> dict:
    numbers = key.public_key().public_numbers()
    jwk_ = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    if kid is not None:
        jwk_["kid"] = kid
    return jwk_


def rfc7638_thumbprint(key: rsa.RSAPrivateKey) -> str:
    members = public_jwk(key)
    canonical = json.dumps({"e": members["e"], "kty": "RSA", "n": members["n"]},
                           separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@functools.cache
def server_kid() -> str:
    """The `kid` the server names its key with: JWT_KEY_ID, else the RFC 7638 thumbprint."""
    return os.environ.get("JWT_KEY_ID", "").strip() or rfc7638_thumbprint(server_private_key())


def confusable_hmac_key() -> bytes:
    """What an attacker would HMAC with: the real secret under HS256 (then the alg is what is
    wrong), the server's public key PEM under RS256 (the classic key-confusion attack)."""
    return server_secret() if ALG == "HS256" else public_pem(server_private_key())


_HASHES = {"256": (hashlib.sha256, hashes.SHA256), "384": (hashlib.sha384, hashes.SHA384),
           "512": (hashlib.sha512, hashes.SHA512)}


def sign(signing_input: str, alg: str, key=None) -> str:
    """The JWS signature of `signing_input`: HMAC (key: bytes, default the server's secret) or
    RSA PKCS#1 v1.5 (key: a private key, default the server's)."""
    data = signing_input.encode("ascii")
    bits = alg[2:]
    if alg.startswith("HS") and bits in _HASHES:
        secret = key if key is not None else server_secret()
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        return b64url(hmac.new(secret, data, _HASHES[bits][0]).digest())
    if alg.startswith("RS") and bits in _HASHES:
        private = key if key is not None else server_private_key()
        return b64url(private.sign(data, padding.PKCS1v15(), _HASHES[bits][1]()))
    raise ValueError(f"cannot sign {alg}")


def default_header(alg: str | None = None) -> dict:
    """The header the server puts on access tokens: alg, typ at+jwt and (RS256) kid."""
    header = {"alg": alg or ALG, "typ": ACCESS_TOKEN_TYP}
    if ALG == "RS256":
        header["kid"] = server_kid()
    return header


def forge(claims: dict, *, alg: str | None = None, key=None, header: dict | None = None,
          signature: str | None = None) -> str:
    """A compact JWS of `claims`. By default exactly what the server would issue: its header
    and its algorithm and key. `alg` picks the signing algorithm (and the header's alg, unless
    `header` is given); `key` another key; `signature` a literal signature."""
    require_signing_key()
    sign_alg = alg or ALG
    hdr = header if header is not None else default_header(sign_alg)
    signing_input = f"{b64json(hdr)}.{b64json(claims)}"
    if signature is None:
        signature = sign(signing_input, sign_alg, key)
    return f"{signing_input}.{signature}"


def signed_with_header(claims: dict, header: dict, alg: str | None = None, key=None) -> str:
    """`claims` under a literal `header`, signed with `alg` (default: the server's) and `key`."""
    return forge(claims, alg=alg, key=key, header=header)


def verify_access_token(token: str) -> tuple[dict, dict]:
    """Verifies an access token with PyJWT (not with our own code) against the configured key;
    returns (header, claims)."""
    require_signing_key()
    header = jwt.get_unverified_header(token)
    key = server_secret() if ALG == "HS256" else server_private_key().public_key()
    claims = jwt.decode(token, key, algorithms=[ALG], audience=JWT_AUDIENCE, issuer=JWT_ISSUER,
                        options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]})
    return header, claims


DROP = object()  # as a good_claims() override: remove the claim


# --- database (through psql) ------------------------------------------------------------------


def run_sql(sql: str, **variables: str) -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.fail("DATABASE_URL is not set; this test reads or changes the database",
                    pytrace=False)
    if shutil.which("psql") is None:
        pytest.fail("psql is not installed", pytrace=False)
    args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    # SQL on stdin (not -c) so psql interpolates :'var' safely.
    proc = subprocess.run(args, input=sql, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"psql failed ({proc.returncode}): {proc.stderr.strip()}", pytrace=False)
    return proc.stdout.strip()


def disable_user(user_id: str) -> None:
    out = run_sql(f"UPDATE {USERS_TABLE} SET is_active = false WHERE id = :'id' RETURNING id;",
                  id=str(uuid.UUID(user_id)))
    assert out == user_id, f"expected to disable exactly user {user_id}, psql said {out!r}"


def delete_user(user_id: str) -> None:
    out = run_sql(f"DELETE FROM {USERS_TABLE} WHERE id = :'id' RETURNING id;",
                  id=str(uuid.UUID(user_id)))
    assert out == user_id, f"expected to delete exactly user {user_id}, psql said {out!r}"


# --- accounts ---------------------------------------------------------------------------------


@dataclass
class User:
    email: str      # normalized (as returned)
    password: str
    body: dict      # the 201 register body
    tokens: dict | None = field(default=None)  # the latest login's 200 body

    @property
    def id(self) -> str:
        return self.body["id"]

    @property
    def access_token(self) -> str:
        assert self.tokens, "log this user in first (token_for / login_ok)"
        return self.tokens["access_token"]

    @property
    def refresh_token(self) -> str:
        assert self.tokens, "log this user in first (token_for / login_ok)"
        return self.tokens["refresh_token"]

    @property
    def sid(self) -> str:
        return decode_jwt(self.access_token)[1]["sid"]


def register_ok(api, email: str | None = None, password: str | None = None,
                expected_email: str | None = None) -> User:
    email = email or new_email()
    password = password or strong_password()
    resp = api.register(email, password)
    body = assert_json_response(resp, 201)
    assert_user_body(body, expected_email or email)
    return User(body["email"], password, body)


def login_ok(api, email: str, password: str) -> dict:
    resp = api.login(email, password)
    return assert_token_body(resp)


def token_for(api, user: User) -> str:
    """Logs `user` in (a new session), remembers the tokens on it, returns the access token."""
    user.tokens = login_ok(api, user.email, user.password)
    return user.tokens["access_token"]


def good_claims(user: User, /, **overrides) -> dict:
    """Claims the server accepts for `user`: those of its latest real access token (so `sid`
    names a live session of its own), issued now, with a fresh `jti`. An override of DROP
    removes a claim."""
    _, claims = decode_jwt(user.access_token)
    now = int(time.time())
    claims = {**claims, "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())}
    for key, value in overrides.items():
        if value is DROP:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def at_once(n: int, call, *, wait: float = 60, join: float = 180) -> list:
    """Runs call(i) for i in range(n) on n threads released together by a barrier; returns the
    results in order and fails the test if any call raised or never finished."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=wait)
            results[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=join)
    assert not any(t.is_alive() for t in threads), "some requests never finished"
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"requests failed: {errors!r}"
    return results


# --- the Account routes (API.md "Mail", "Account") --------------------------------------------


def send_json(client, method: str, path: str, payload=None, *, token: str | None = None,
              raw: bytes | None = None, content_type: str | None = "application/json",
              headers: dict[str, str] | None = None, **kw):
    """`method path` with `payload` as JSON (or `raw` bytes), and a bearer token when given."""
    if raw is None and payload is not None:
        raw = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    hdrs = dict(headers or {})
    if content_type is not None and raw is not None:
        hdrs["Content-Type"] = content_type
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    return client.request(method, path, body=raw, headers=hdrs, **kw)


def assert_no_content(resp) -> None:
    """204 with no body and no Content-Type."""
    assert resp.status == 204, resp
    assert resp.body == b"", resp
    assert resp.header("content-type") is None, f"204 with a Content-Type: {resp!r}"


def assert_accepted(resp) -> None:
    """The 202 {} of forgot and resend."""
    assert assert_json_response(resp, 202) == {}, resp


def comparable_headers(resp) -> list[tuple[str, str]]:
    """The response's headers as a client sees them, less Date (the clock's, not the server's)."""
    return sorted((k.lower(), v) for k, v in resp.raw_headers if k.lower() != "date")


def account_state(user_id: str) -> str:
    """What the database holds about one account — its user row, sessions, refresh tokens, link
    tokens and queued mail — as JSON text: equal before and after means a request changed none
    of it."""
    return run_sql(
        f"SELECT json_build_object("
        f"'user', (SELECT row_to_json(u) FROM {USERS_TABLE} u WHERE u.id = :'id'), "
        f"'sessions', (SELECT json_agg(s ORDER BY s.id) FROM {SESSIONS_TABLE} s "
        f"             WHERE s.user_id = :'id'), "
        f"'refresh_tokens', (SELECT json_agg(encode(r.hash, 'hex') || coalesce(r.rotated_at::text, '') "
        f"                   ORDER BY r.hash) FROM refresh_tokens r "
        f"                   JOIN {SESSIONS_TABLE} s ON s.id = r.session_id WHERE s.user_id = :'id'), "
        # link tokens and queued mail (migrations/V4): a delivery may finish meanwhile, so of
        # the outbox only how many messages there are
        f"'link_tokens', (SELECT json_agg(t ORDER BY t.hash) FROM link_tokens t WHERE t.user_id = :'id'), "
        f"'outbox', (SELECT count(*) FROM outbox o WHERE o.user_id = :'id')"
        f")::text;",
        id=str(uuid.UUID(user_id)))


def verify_email(client, token, **kw):
    return client.post_json(VERIFY, {"token": token}, **kw)


def resend_verification(client, email, **kw):
    return client.post_json(RESEND, {"email": email}, **kw)


def forgot_password(client, email, **kw):
    return client.post_json(FORGOT, {"email": email}, **kw)


def reset_password(client, token, password, **kw):
    return client.post_json(RESET, {"token": token, "password": password}, **kw)


def change_password(client, access_token, current, new, **kw):
    return send_json(client, "POST", CHANGE, {"current_password": current, "new_password": new},
                     token=access_token, **kw)


def delete_account(client, access_token, password, **kw):
    return send_json(client, "DELETE", ME, {"password": password}, token=access_token, **kw)


def list_sessions(client, access_token, **kw):
    return send_json(client, "GET", SESSIONS, token=access_token, **kw)


def end_session(client, access_token, session_id: str, **kw):
    return send_json(client, "DELETE", f"{SESSIONS}/{session_id}", token=access_token, **kw)


# --- two-step login (API.md "Two-step login (TOTP)") ------------------------------------------


def enrol_totp(client, access_token, password, **kw):
    return send_json(client, "POST", MFA_TOTP, {"password": password}, token=access_token, **kw)


def confirm_totp(client, access_token, code, **kw):
    return send_json(client, "POST", MFA_CONFIRM, {"code": code}, token=access_token, **kw)


def disable_totp(client, access_token, *, code=None, password=None, **kw):
    payload = {"code": code} if code is not None else {"password": password}
    return send_json(client, "DELETE", MFA_TOTP, payload, token=access_token, **kw)


def verify_mfa(client, mfa_token, *, code=None, recovery_code=None, **kw):
    payload = {"mfa_token": mfa_token}
    if code is not None:
        payload["code"] = code
    if recovery_code is not None:
        payload["recovery_code"] = recovery_code
    return client.post_json(MFA_VERIFY, payload, **kw)
