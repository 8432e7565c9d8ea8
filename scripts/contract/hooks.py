"""Schemathesis hooks of make test's contract run (scripts/contract/run.sh).

The bearer routes are reached with real tokens: an auth provider signs up a fresh account and
logs it in, and signs up another whenever a token stops working (401) — the generated requests
log out, change passwords and delete accounts, so a token never lives long.
"""

import os
import secrets

import requests
import schemathesis

API_URL = os.environ["CONTRACT_API_URL"].rstrip("/")
# The operations that take `Authorization: Bearer`, as openapi.yaml's security says.
BEARER = ["getMe", "deleteMe", "logout", "changePassword", "listSessions", "revokeSession"]


def fresh_session():
    """An access token of a newly registered account (its own address and a strong password)."""
    email = f"contract-{secrets.token_hex(8)}@example.com"
    password = secrets.token_urlsafe(24)
    with requests.Session() as http:
        registered = http.post(f"{API_URL}/auth/register", json={"email": email, "password": password}, timeout=30)
        registered.raise_for_status()
        login = http.post(f"{API_URL}/auth/login", json={"email": email, "password": password}, timeout=30)
        login.raise_for_status()
    return login.json()["access_token"]


@schemathesis.auth(refresh_interval=60).apply_to(operation_id=BEARER)
class FreshAccount:
    def get(self, case, ctx):
        return fresh_session()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
