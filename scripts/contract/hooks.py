"""Schemathesis hooks of make test's contract run (scripts/contract/run.sh).

The bearer routes are reached with real tokens: an auth provider signs up a fresh account and
logs it in, and signs up another whenever a token stops working (401) — the generated requests
log out, change passwords and delete accounts, so a token never lives long.

The fresh accounts take turns at the three states of two-step login — TOTP off, an enrolment
waiting for its first code, TOTP on (enrolled and confirmed here, with a code computed as an
authenticator app does) — so the TOTP routes answer from each state, not only `409` from the
first: no generated request knows the password or a current code.
"""

import base64
import hashlib
import hmac
import itertools
import os
import secrets
import struct
import time

import requests
import schemathesis

API_URL = os.environ["CONTRACT_API_URL"].rstrip("/")
# The operations that take `Authorization: Bearer`, as openapi.yaml's security says.
BEARER = [
    "getMe",
    "deleteMe",
    "logout",
    "changePassword",
    "listSessions",
    "revokeSession",
    "enrolTotp",
    "confirmTotp",
    "disableTotp",
]
TOTP_STATES = itertools.cycle(["off", "pending", "on"])


def totp_code(secret):
    """The current RFC 6238 code of a base32 secret (SHA-1, 6 digits, 30 s), as an app shows it."""
    counter = struct.pack(">Q", int(time.time()) // 30)
    digest = hmac.new(base64.b32decode(secret), counter, hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def fresh_session():
    """An access token of a newly registered account (its own address and a strong password),
    with TOTP off, pending or on, in turn."""
    email = f"contract-{secrets.token_hex(8)}@example.com"
    password = secrets.token_urlsafe(24)
    with requests.Session() as http:
        registered = http.post(f"{API_URL}/auth/register", json={"email": email, "password": password}, timeout=30)
        registered.raise_for_status()
        login = http.post(f"{API_URL}/auth/login", json={"email": email, "password": password}, timeout=30)
        login.raise_for_status()
        token = login.json()["access_token"]
        state = next(TOTP_STATES)
        if state != "off":
            bearer = {"Authorization": f"Bearer {token}"}
            enrolled = http.post(f"{API_URL}/auth/mfa/totp", json={"password": password}, headers=bearer, timeout=30)
            enrolled.raise_for_status()
            if state == "on":
                code = totp_code(enrolled.json()["secret"])
                confirmed = http.post(f"{API_URL}/auth/mfa/totp/confirm", json={"code": code}, headers=bearer, timeout=30)
                confirmed.raise_for_status()
    return token


@schemathesis.auth(refresh_interval=60).apply_to(operation_id=BEARER)
class FreshAccount:
    def get(self, case, ctx):
        return fresh_session()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
