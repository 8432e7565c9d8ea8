"""The limits as an attacker meets them from outside (docs/api.md "No stranger can lock an
owner out"): garbage bearer tokens meet the address window, a valid token never does; the lock
after LOGIN_LOCK_AFTER consecutive failures answers 403 account_locked whatever the password,
until an operator's `authctl unlock`."""

from __future__ import annotations

import os
import pathlib
import subprocess

from support import (
    IP_LIMIT,
    assert_json_response,
    assert_problem,
    assert_too_many,
    login_ok,
    register_ok,
    run_sql,
    strong_password,
    token_for,
)

LOCK_AFTER = int(os.environ.get("LOGIN_LOCK_AFTER", "100"))
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_garbage_bearer_tokens_meet_the_window_and_a_valid_token_does_not(new_client):
    owner, flood = new_client(), new_client()
    user = register_ok(owner)
    token = token_for(owner, user)
    for i in range(IP_LIMIT):
        call = flood.me if i % 2 else flood.logout
        assert_problem(call(f"garbage-{i}"), 401, "invalid_token")
    assert_too_many(flood.me("garbage"))
    assert_too_many(flood.logout("garbage"))
    # the same full window: a valid token is never counted nor slowed
    assert_json_response(flood.me(token), 200)


def authctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cargo", "run", "--quiet", "-p", "cli", "--bin", "authctl", "--", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DATABASE_URL": os.environ["DATABASE_URL"]})


def test_the_lock_refuses_every_password_until_an_operator_unlocks(new_client):
    owner = new_client()
    user = register_ok(owner)
    # LOCK_AFTER - 1 failures from many networks, without the hours of waiting in between
    out = run_sql(
        "INSERT INTO login_throttle (account, network, failures, last_attempt, updated_at) "
        "VALUES (sha256(convert_to(:'email', 'UTF8')), '*', :'n', gen_random_uuid(), now()) "
        "RETURNING failures;", email=user.email, n=str(LOCK_AFTER - 1))
    assert out == str(LOCK_AFTER - 1), out
    assert_problem(new_client().login(user.email, strong_password()), 401, "invalid_credentials")
    for password in (user.password, strong_password()):
        body = assert_problem(owner.login(user.email, password), 403, "account_locked")
        assert "reset" in body["detail"], body
    done = authctl("unlock", "--user", user.email.upper())
    assert done.returncode == 0, done.stderr
    login_ok(owner, user.email, user.password)
    events = run_sql("SELECT count(*) FROM auth_events e JOIN users u ON u.id = e.user_id "
                     "WHERE u.email = :'email' AND e.event = 'account.unlocked';",
                     email=user.email)
    assert events == "1", events
