"""End-to-end black-box tests of API.md "Two-step login (TOTP)": enrolment (the QR code read
back to its URI), confirmation, login's second step with a code or a recovery code, turning it
off, the claims and sessions that follow, the limits against guessing codes — over HTTP, with
the notices read from MailDev (mail.py; MAILDEV_URL must be set, else those tests fail).

Run like the rest of the suite (conftest.py), against a server with mail on and the default
settings. Every test registers fresh accounts and has its own source address.

The user's authenticator app is pyotp (authenticator.py), an implementation independent of the
server's. No test waits for a new TOTP step: the server accepts one step either side of its
own, and authenticator.py hands out only codes that stay acceptable for a while, at most two per
enrolment (see there). The only sleeps are the login backoff's own short waits (1-2 s), where a
test checks that wrong codes count against it.

White-box only where the contract's numbers would take minutes (an mfa_token's 5-minute
lifetime: its row is moved back in the database), and to see that no secret is stored or
audited in the clear and that a refused request changed nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import re
import time
import urllib.parse
from dataclasses import dataclass, field

import pyotp
import pytest

from authenticator import RECOVERY_CODE, Authenticator, current_step, read_qr_code
from conftest import BIND_SOURCE
from mail import RESET_MAIL, MailDev, is_notice, token_from
from support import (
    BACKOFF_AFTER,
    MAIL_PRODUCT_NAME,
    MAX_BODY,
    MFA_CONFIRM,
    MFA_TOTP,
    MFA_VERIFY,
    SESSIONS,
    User,
    account_state,
    assert_accepted,
    assert_invalid_token,
    assert_json_response,
    assert_no_content,
    assert_problem,
    assert_token_body,
    assert_too_many,
    assert_user_body,
    b64url,
    b64url_decode,
    confirm_totp,
    decode_jwt,
    disable_totp,
    disable_user,
    enrol_totp,
    forgot_password,
    login_ok,
    nap,
    padded_body,
    register_ok,
    reset_password,
    run_sql,
    send_json,
    strong_password,
    token_for,
    verify_access_token,
    verify_mfa,
)

MFA_METHODS = ["totp", "recovery_code"]
MFA_TOKEN_SECONDS = 300
MAX_WRONG_CODES = 5
RECOVERY_CODES = 10
ON_SUBJECT = f"{MAIL_PRODUCT_NAME}: two-step login is on"
OFF_SUBJECT = f"{MAIL_PRODUCT_NAME}: two-step login is off"
OPAQUE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def claims(token: str) -> dict:
    return decode_jwt(token)[1]


@dataclass
class TotpUser:
    """A user with TOTP on: the account, the session that turned it on (`user.tokens`), the
    authenticator app and the recovery codes not used yet."""
    user: User
    app: Authenticator
    recovery_codes: list[str] = field(default_factory=list)

    def recovery_code(self) -> str:
        return self.recovery_codes.pop(0)


def expected_uri(secret: str, email: str) -> str:
    issuer = urllib.parse.quote(MAIL_PRODUCT_NAME, safe="")
    label = f"{issuer}:{urllib.parse.quote(email, safe='@')}"
    return (f"otpauth://totp/{label}?secret={secret}&issuer={issuer}"
            f"&algorithm=SHA1&digits=6&period=30")


def assert_enrolment(resp, email: str) -> dict:
    """The 200 of POST /auth/mfa/totp: the secret, its otpauth URI, and that URI as a QR code
    that a phone's camera reads back."""
    body = assert_json_response(resp, 200)
    assert isinstance(body, dict) and set(body) == {"secret", "otpauth_uri", "qr_code"}, body
    secret = body["secret"]
    assert isinstance(secret, str) and re.fullmatch(r"[A-Z2-7]{32}", secret), body
    assert len(base64.b32decode(secret)) == 20, "the secret is not 160 bits"
    assert body["otpauth_uri"] == expected_uri(secret, email), body
    # an independent reader of Google Authenticator's Key Uri Format sees the same
    parsed = pyotp.parse_uri(body["otpauth_uri"])
    assert isinstance(parsed, pyotp.TOTP), parsed
    assert (parsed.secret, parsed.name, parsed.issuer) == (secret, email, MAIL_PRODUCT_NAME), parsed
    assert (parsed.digits, parsed.interval, parsed.digest().name) == (6, 30, "sha1"), parsed
    # the QR code is that URI
    assert read_qr_code(body["qr_code"]) == body["otpauth_uri"]
    return body


def enrol(api, user: User) -> Authenticator:
    """Starts an enrolment with the session in `user.tokens`; returns the app holding it."""
    body = assert_enrolment(enrol_totp(api, user.access_token, user.password), user.email)
    return Authenticator(body["secret"])


def assert_recovery_codes(resp) -> list[str]:
    body = assert_json_response(resp, 200)
    assert isinstance(body, dict) and set(body) == {"recovery_codes"}, body
    codes = body["recovery_codes"]
    assert isinstance(codes, list) and len(codes) == RECOVERY_CODES, body
    for code in codes:
        assert isinstance(code, str) and RECOVERY_CODE.fullmatch(code), code
    assert len(set(codes)) == RECOVERY_CODES, f"recovery codes repeat: {codes!r}"
    return codes


def totp_user(api, user: User | None = None) -> TotpUser:
    """A new account (or `user`) logged in, with TOTP turned on from that session (one code of
    the authenticator spent)."""
    user = user or register_ok(api)
    if user.tokens is None:
        token_for(api, user)
    app = enrol(api, user)
    codes = assert_recovery_codes(confirm_totp(api, user.access_token, app.next_code()))
    return TotpUser(user, app, codes)


def assert_mfa_required(resp) -> str:
    """Login's 401 mfa_required with TOTP on: the mfa_token and the methods; no tokens."""
    body = assert_problem(resp, 401, "mfa_required")
    assert set(body) >= {"mfa_token", "methods"}, body
    assert not {"access_token", "refresh_token"} & set(body), body
    assert body["methods"] == MFA_METHODS, body
    token = body["mfa_token"]
    assert isinstance(token, str) and OPAQUE_TOKEN.fullmatch(token), body
    assert len(token) >= 43, f"mfa_token too short for 256 random bits: {token!r}"
    return token


def assert_refused_mfa_token(resp) -> dict:
    """401 invalid_token for an mfa_token that is malformed, unknown, used, expired or ended
    (a 401, so with a Bearer challenge; the mfa_token is no bearer token, so RFC 6750's
    error="invalid_token" is not asked for)."""
    return assert_problem(resp, 401, "invalid_token")


def mfa_login(client, user: User, password: str | None = None) -> str:
    """The password step of a login with TOTP on; returns the mfa_token."""
    return assert_mfa_required(client.login(user.email, password or user.password))


def assert_claims(access_token: str, user: User, amr: list[str], aal: str) -> dict:
    """Verified with PyJWT against the configured key: the user's token with `amr` and `aal`."""
    _, verified = verify_access_token(access_token)
    assert verified["sub"] == user.id, verified
    assert verified.get("amr") == amr, verified
    assert verified.get("aal") == aal, verified
    return verified


def sessions_of(client, access_token: str) -> dict[str, dict]:
    """The caller's live sessions by id."""
    body = assert_json_response(send_json(client, "GET", SESSIONS, token=access_token), 200)
    return {s["id"]: s for s in body["sessions"]}


def me_body(client, access_token: str) -> dict:
    return assert_json_response(client.me(access_token), 200)


def assert_live(client, tokens: dict) -> dict:
    """The session's access token works and its refresh token rotates; returns the new tokens."""
    assert_json_response(client.me(tokens["access_token"]), 200)
    return assert_token_body(client.refresh(tokens["refresh_token"]))


def assert_ended(client, tokens: dict) -> None:
    assert_invalid_token(client.me(tokens["access_token"]))
    assert_invalid_token(client.refresh(tokens["refresh_token"]))


def events(user_id: str, since: float = 0.0) -> list[tuple[str, str, str, str, int]]:
    """The user's audit rows: (event, reason, source_ip, user_agent, count), oldest first."""
    out = run_sql("SELECT coalesce(json_agg(json_build_array(event, coalesce(reason, ''), "
                  "coalesce(source_ip, ''), coalesce(user_agent, ''), count) ORDER BY id), '[]') "
                  "FROM auth_events WHERE user_id = :'id' AND occurred_at >= to_timestamp(:'t');",
                  id=user_id, t=str(since))
    return [tuple(row) for row in json.loads(out)]


def count_events(user_id: str, event: str, reason: str | None = None, since: float = 0.0) -> int:
    return sum(row[4] for row in events(user_id, since)
               if row[0] == event and (reason is None or row[1] == reason))


def mfa_state(user_id: str, throttle: bool = True) -> str:
    """What the database holds of the user's second factor (and, with `throttle`, of the
    account's login backoff), as JSON text: equal before and after means a request changed
    none of it."""
    return run_sql(
        "SELECT json_build_object("
        "'totp', (SELECT json_build_object('sealed', encode(t.sealed_secret, 'hex'), "
        "         'last_step', t.last_step) FROM user_totp t WHERE t.user_id = :'id'), "
        "'recovery', (SELECT json_agg(encode(r.hash, 'hex') || coalesce(r.used_at::text, '') "
        "             ORDER BY r.hash) FROM recovery_codes r WHERE r.user_id = :'id'), "
        "'challenges', (SELECT json_agg(json_build_array(encode(c.hash, 'hex'), c.failures, "
        "               c.used_at) ORDER BY c.hash) FROM mfa_challenges c WHERE c.user_id = :'id'), "
        "'throttle', (SELECT json_agg(json_build_array(l.network, l.failures, l.blocked_until) "
        "             ORDER BY l.network) FROM login_throttle l "
        "             WHERE :'throttle' = 'on' AND l.account = sha256(convert_to(u.email, 'UTF8')))"
        ")::text FROM users u WHERE u.id = :'id';", id=user_id, throttle="on" if throttle else "off")


def hold_the_wait(user: User) -> int:
    """The backoff's wait that the last failure started (1 s after LOGIN_BACKOFF_AFTER
    failures) lasts an hour more, so a busy machine cannot let it pass before the next request
    meets it; returns the failures counted on that row (white-box: login_throttle, migrations
    V3)."""
    out = run_sql("UPDATE login_throttle SET blocked_until = blocked_until + interval '1 hour' "
                  "WHERE account = sha256(convert_to(:'email', 'UTF8')) AND blocked_until IS NOT NULL "
                  "RETURNING failures;", email=user.email)
    assert out and "\n" not in out, f"expected one waiting backoff row of {user.email}, got {out!r}"
    return int(out)


def end_the_wait(user: User) -> None:
    out = run_sql("UPDATE login_throttle SET blocked_until = now() - interval '1 second' "
                  "WHERE account = sha256(convert_to(:'email', 'UTF8')) AND blocked_until IS NOT NULL "
                  "RETURNING failures;", email=user.email)
    assert out, f"no waiting backoff row of {user.email}"


def state_of(user: User) -> str:
    return account_state(user.id) + mfa_state(user.id)


def waiting_out_backoff(call, tries: int = 6):
    """call() again after each 429's Retry-After (the login backoff's short waits), at most
    `tries` times; returns the first answer that is not a 429."""
    for _ in range(tries):
        resp = call()
        if resp.status != 429:
            return resp
        nap(assert_too_many(resp) + 0.2)
    pytest.fail(f"still 429 after {tries} waits: {resp!r}", pytrace=False)


def notice(md: MailDev, user: User, subject: str):
    message = md.wait_for_one(user.email, lambda m: m.subject == subject)
    assert is_notice(message), f"the notice carries a link token: {message!r}"
    return message


# --------------------------------------------------------------------------------------------
# the whole flow
# --------------------------------------------------------------------------------------------


def test_enrol_confirm_login_with_a_code_and_a_recovery_code_then_turn_it_off(api, new_client, maildev):
    started = time.time()
    other = new_client()
    user = register_ok(api)
    caller = login_ok(api, user.email, user.password)
    user.tokens = caller
    bystander = login_ok(other, user.email, user.password)      # another session of the user

    # enrolment: the secret, its URI and QR code; nothing is on yet
    body = assert_enrolment(enrol_totp(api, caller["access_token"], user.password), user.email)
    app = Authenticator(body["secret"])
    assert_user_body(me_body(api, caller["access_token"]), user.email, mfa_enabled=False)
    assert_token_body(api.login(user.email, user.password))    # a pending enrolment asks nothing
    assert_live(other, bystander)

    # confirmed with a code as an app shows it (a space in the middle): on, ten recovery codes
    code = app.next_code()
    codes = assert_recovery_codes(confirm_totp(api, caller["access_token"], f"{code[:3]} {code[3:]}"))
    # every other session ended; the caller's lives on, still a password-only session
    assert_ended(other, bystander)
    assert_user_body(me_body(api, caller["access_token"]), user.email, mfa_enabled=True)
    caller = assert_live(api, caller)
    assert_claims(caller["access_token"], user, ["pwd"], "aal1")

    # login: the right password asks for the second step and starts no session
    sessions_before = set(sessions_of(api, caller["access_token"]))
    mfa_token = mfa_login(api, user)
    assert set(sessions_of(api, caller["access_token"])) == sessions_before
    # ... a wrong password is still just invalid_credentials, with no mfa_token
    wrong = assert_problem(api.login(user.email, strong_password()), 401, "invalid_credentials")
    assert "mfa_token" not in wrong, wrong

    # the second step with a code: a session with both tokens, amr pwd+otp, aal2
    second = assert_token_body(verify_mfa(api, mfa_token, code=app.next_code()))
    assert_claims(second["access_token"], user, ["pwd", "otp"], "aal2")
    assert claims(second["access_token"])["email_verified"] is False
    assert_user_body(me_body(api, second["access_token"]), user.email, mfa_enabled=True)
    # refresh keeps the session's methods and level
    second = assert_token_body(api.refresh(second["refresh_token"]))
    assert_claims(second["access_token"], user, ["pwd", "otp"], "aal2")
    # the sessions list shows each session's level
    listed = sessions_of(api, second["access_token"])
    assert set(listed) == sessions_before | {claims(second["access_token"])["sid"]}, listed
    assert listed[claims(second["access_token"])["sid"]]["aal"] == "aal2", listed
    assert listed[claims(caller["access_token"])["sid"]]["aal"] == "aal1", listed
    # the mfa_token was used up, whatever comes with it
    assert_refused_mfa_token(verify_mfa(api, mfa_token, recovery_code=codes[5]))

    # a recovery code instead of a code: amr pwd+mfa, aal2 — and each works once
    third = assert_token_body(verify_mfa(api, mfa_login(api, user), recovery_code=codes[0]))
    assert_claims(third["access_token"], user, ["pwd", "mfa"], "aal2")
    third = assert_token_body(api.refresh(third["refresh_token"]))
    assert_claims(third["access_token"], user, ["pwd", "mfa"], "aal2")
    assert sessions_of(api, third["access_token"])[claims(third["access_token"])["sid"]]["aal"] == "aal2"
    again = mfa_login(api, user)
    assert_problem(verify_mfa(api, again, recovery_code=codes[0]), 401, "invalid_code",
                   not_echoed=(codes[0],))
    fourth = assert_token_body(verify_mfa(api, again, recovery_code=codes[1]))
    assert_claims(fourth["access_token"], user, ["pwd", "mfa"], "aal2")

    notice(maildev, user, ON_SUBJECT)

    # turning it off needs the password (or a code): a wrong one is 403 and changes nothing
    assert_problem(disable_totp(api, caller["access_token"], password=strong_password()),
                   403, "wrong_password")
    assert_user_body(me_body(api, caller["access_token"]), user.email, mfa_enabled=True)
    pending = mfa_login(api, user)                      # a second step still open at that time
    assert_no_content(disable_totp(api, caller["access_token"], password=user.password))
    # every other session ended (the second-step ones), the caller's lives on
    for tokens in (second, third, fourth):
        assert_ended(api, tokens)
    caller = assert_live(api, caller)
    assert_user_body(me_body(api, caller["access_token"]), user.email, mfa_enabled=False)
    # the open second step died with it, and login needs the password alone again
    assert_refused_mfa_token(verify_mfa(api, pending, recovery_code=codes[2]))
    plain = login_ok(api, user.email, user.password)
    assert_claims(plain["access_token"], user, ["pwd"], "aal1")
    notice(maildev, user, OFF_SUBJECT)
    # off: nothing to turn off or confirm; the old recovery codes are gone with the secret
    assert_problem(disable_totp(api, caller["access_token"], password=user.password), 409,
                   "mfa_not_enabled")
    assert_problem(confirm_totp(api, caller["access_token"], app.wrong_code()), 409, "mfa_not_pending")
    assert run_sql("SELECT count(*) FROM recovery_codes WHERE user_id = :'id';", id=user.id) == "0"
    assert run_sql("SELECT count(*) FROM user_totp WHERE user_id = :'id';", id=user.id) == "0"

    # the audit trail, from this test's address and user agent, without a secret
    rows = events(user.id, started - 5)
    for event, expected in (("mfa.enrolment_started", 1), ("mfa.enrolled", 1),
                            ("mfa.challenge_started", 4), ("mfa.recovery_code_used", 2),
                            ("mfa.disabled", 1)):
        assert count_events(user.id, event, since=started - 5) == expected, (event, rows)
    assert count_events(user.id, "login.succeeded", "otp", started - 5) == 1, rows
    assert count_events(user.id, "login.succeeded", "mfa", started - 5) == 2, rows
    assert count_events(user.id, "mfa.challenge_failed", "bad_recovery_code", started - 5) == 1, rows
    for event, reason, source_ip, user_agent, _ in rows:
        if event.startswith("mfa.") or (event == "login.succeeded" and reason in ("otp", "mfa")):
            assert user_agent == api.user_agent, (event, user_agent)
            if BIND_SOURCE:
                assert source_ip == api.source_address, (event, source_ip)
    needles = [body["secret"], body["otpauth_uri"], mfa_token, again, pending,
               user.password, *codes, *(c.replace("-", "") for c in codes)]
    hits = run_sql(
        "SELECT count(*) FROM auth_events e, json_array_elements_text(:'needles'::json) AS n "
        "WHERE e.user_id = :'id' AND strpos(concat_ws(' ', e.event, e.session_id::text, "
        "e.source_ip, e.user_agent, e.reason), n) > 0;", id=user.id, needles=json.dumps(needles))
    assert hits == "0", "auth_events holds a secret, a code or an mfa_token"


def test_turning_it_off_with_a_code_refuses_a_used_code(api, new_client, maildev):
    t = totp_user(api)
    user = t.user
    # the code that turned it on (its step still inside the window) is used: refused
    used = t.app.at_step(t.app.last_step)
    since = time.time() - 1
    factor = mfa_state(user.id, throttle=False)
    assert_problem(disable_totp(api, user.access_token, code=used), 401, "invalid_code",
                   not_echoed=(used,))
    assert count_events(user.id, "mfa.challenge_failed", "replayed", since) == 1, events(user.id, since)
    assert_problem(disable_totp(api, user.access_token, code=t.app.wrong_code()), 401, "invalid_code")
    assert mfa_state(user.id, throttle=False) == factor, "a refused code changed the second factor"
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=True)
    # another session, established with a recovery code
    other = new_client()
    elsewhere = assert_token_body(verify_mfa(other, mfa_login(other, user), recovery_code=t.recovery_code()))
    # a fresh code turns it off: the other session ends, the caller's lives on
    assert_no_content(disable_totp(api, user.access_token, code=t.app.next_code()))
    assert_ended(other, elsewhere)
    user.tokens = assert_live(api, user.tokens)
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=False)
    assert_claims(login_ok(api, user.email, user.password)["access_token"], user, ["pwd"], "aal1")
    notice(maildev, user, ON_SUBJECT)
    notice(maildev, user, OFF_SUBJECT)
    assert count_events(user.id, "mfa.disabled", "code") == 1


# --------------------------------------------------------------------------------------------
# codes: once each, five wrong ones end the attempt, all of them count against the backoff
# --------------------------------------------------------------------------------------------


def test_a_code_is_accepted_once_even_inside_its_window(api):
    t = totp_user(api)
    user = t.user
    # the latest step the server takes (acceptable for a minute yet): a login with it
    latest = t.app.latest_code()
    latest_step = t.app.last_step
    assert_token_body(verify_mfa(api, mfa_login(api, user), code=latest))
    # the same code again, and the code of the step before it (still inside the window): refused
    token = mfa_login(api, user)
    since = time.time() - 1
    assert_problem(verify_mfa(api, token, code=latest), 401, "invalid_code", not_echoed=(latest,))
    assert_problem(verify_mfa(api, token, code=t.app.at_step(latest_step - 1)), 401, "invalid_code")
    # both matched a step of the window and were refused as used, not as wrong
    assert count_events(user.id, "mfa.challenge_failed", "replayed", since) == 2, events(user.id, since)
    # the attempt lives on (two wrong codes of five) and finishes with a recovery code
    tokens = assert_token_body(verify_mfa(api, token, recovery_code=t.recovery_code()))
    assert_claims(tokens["access_token"], user, ["pwd", "mfa"], "aal2")


def test_five_wrong_codes_end_the_mfa_token(api, new_client):
    t = totp_user(api)
    user = t.user
    token = mfa_login(api, user)
    since = time.time() - 1
    for i in range(MAX_WRONG_CODES):
        # the login and the wrong codes reach the backoff (LOGIN_BACKOFF_AFTER failures) on the
        # way: its short waits are waited out, they are not what this test is about
        resp = waiting_out_backoff(lambda: verify_mfa(api, token, code=t.app.wrong_code()))
        assert_problem(resp, 401, "invalid_code")
    # dead now: a right code, or a recovery code, is refused as for an unknown token
    right = t.app.peek_code()
    assert_refused_mfa_token(waiting_out_backoff(lambda: verify_mfa(api, token, code=right)))
    recovery = t.recovery_codes[0]
    assert_refused_mfa_token(waiting_out_backoff(lambda: verify_mfa(api, token, recovery_code=recovery)))
    assert count_events(user.id, "mfa.challenge_failed", "bad_code", since) == MAX_WRONG_CODES
    assert count_events(user.id, "mfa.challenge_failed", "too_many_wrong_codes", since) >= 2
    # the account is not locked out: a new login (from another network, whose backoff is its
    # own) finishes with a right code, and the recovery code was not used up
    elsewhere = new_client()
    tokens = assert_token_body(verify_mfa(elsewhere, mfa_login(elsewhere, user), code=t.app.next_code()))
    assert_claims(tokens["access_token"], user, ["pwd", "otp"], "aal2")
    assert_token_body(verify_mfa(elsewhere, mfa_login(elsewhere, user), recovery_code=t.recovery_code()))


def test_wrong_codes_count_against_the_login_backoff(api, new_client):
    t = totp_user(api)
    user = t.user
    # the login whose password was right counts until its second step succeeds: with
    # LOGIN_BACKOFF_AFTER - 1 wrong codes the backoff starts its wait
    token = mfa_login(api, user)
    for _ in range(BACKOFF_AFTER - 1):
        assert_problem(verify_mfa(api, token, code=t.app.wrong_code()), 401, "invalid_code")
    assert hold_the_wait(user) == BACKOFF_AFTER
    state = mfa_state(user.id)
    # during the wait nothing is checked: a right code, a recovery code, the password
    assert assert_too_many(verify_mfa(api, token, code=t.app.peek_code())) > 60
    assert assert_too_many(verify_mfa(api, token, recovery_code=t.recovery_codes[0])) > 60
    assert assert_too_many(api.login(user.email, user.password)) > 60
    assert mfa_state(user.id) == state, "a refused attempt changed the second factor or the backoff"
    # another network is not held back by this one's wait
    assert_mfa_required(new_client().login(user.email, user.password))
    # once the wait is over, the attempt (4 wrong codes of 5) finishes, and that clears the backoff
    end_the_wait(user)
    tokens = assert_token_body(verify_mfa(api, token, code=t.app.next_code()))
    assert_claims(tokens["access_token"], user, ["pwd", "otp"], "aal2")
    # cleared: this attempt counted too, and without the clearing the next login would wait
    assert_mfa_required(api.login(user.email, user.password))


def test_wrong_codes_when_confirming_count_against_the_backoff(api):
    user = register_ok(api)
    token_for(api, user)
    app = enrol(api, user)
    for _ in range(BACKOFF_AFTER):
        assert_problem(confirm_totp(api, user.access_token, app.wrong_code()), 401, "invalid_code")
    assert hold_the_wait(user) == BACKOFF_AFTER
    assert assert_too_many(confirm_totp(api, user.access_token, app.peek_code())) > 60
    assert assert_too_many(api.login(user.email, user.password)) > 60
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=False)
    end_the_wait(user)
    assert_recovery_codes(confirm_totp(api, user.access_token, app.next_code()))
    assert_mfa_required(api.login(user.email, user.password))       # and the backoff is cleared


def test_enrolling_needs_the_password_and_wrong_ones_count_against_the_backoff(api):
    user = register_ok(api)
    access = token_for(api, user)
    for _ in range(BACKOFF_AFTER):
        wrong = strong_password()
        assert_problem(enrol_totp(api, access, wrong), 403, "wrong_password", not_echoed=(wrong,))
    assert run_sql("SELECT count(*) FROM user_totp WHERE user_id = :'id';", id=user.id) == "0"
    assert hold_the_wait(user) == BACKOFF_AFTER
    assert assert_too_many(enrol_totp(api, access, user.password)) > 60   # not even checked
    assert assert_too_many(api.login(user.email, user.password)) > 60
    end_the_wait(user)
    enrol(api, user)
    login_ok(api, user.email, user.password)                            # the backoff is cleared


def test_turning_it_off_with_wrong_codes_or_passwords_counts_against_the_backoff(api):
    t = totp_user(api)
    user = t.user
    for i in range(BACKOFF_AFTER):
        if i % 2:
            assert_problem(disable_totp(api, user.access_token, code=t.app.wrong_code()), 401,
                           "invalid_code")
        else:
            assert_problem(disable_totp(api, user.access_token, password=strong_password()), 403,
                           "wrong_password")
    assert hold_the_wait(user) == BACKOFF_AFTER
    assert assert_too_many(disable_totp(api, user.access_token, password=user.password)) > 60
    assert assert_too_many(disable_totp(api, user.access_token, code=t.app.peek_code())) > 60
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=True)
    end_the_wait(user)
    assert_no_content(disable_totp(api, user.access_token, code=t.app.next_code()))
    login_ok(api, user.email, user.password)


# --------------------------------------------------------------------------------------------
# enrolment states
# --------------------------------------------------------------------------------------------


def test_enrolling_again_before_confirming_replaces_the_pending_secret(api):
    user = register_ok(api)
    token_for(api, user)
    first = enrol(api, user)
    second = enrol(api, user)
    assert first.secret != second.secret
    # the first secret's code (one the second's window does not hold) is now wrong
    now = current_step()
    near = {second.at_step(s) for s in range(now - 2, now + 3)}
    stale = next(first.at_step(s) for s in (now, now + 1, now - 1) if first.at_step(s) not in near)
    assert_problem(confirm_totp(api, user.access_token, stale), 401, "invalid_code")
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=False)
    assert_recovery_codes(confirm_totp(api, user.access_token, second.next_code()))
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=True)
    assert count_events(user.id, "mfa.enrolment_started") == 2


def test_each_route_refuses_the_wrong_enrolment_state_with_409_and_counts_nothing(api):
    user = register_ok(api)
    access = token_for(api, user)
    # nothing enrolled
    assert_problem(confirm_totp(api, access, "123456"), 409, "mfa_not_pending")
    assert_problem(disable_totp(api, access, password=user.password), 409, "mfa_not_enabled")
    assert_problem(disable_totp(api, access, code="123456"), 409, "mfa_not_enabled")
    # pending
    app = enrol(api, user)
    assert_problem(disable_totp(api, access, password=user.password), 409, "mfa_not_enabled")
    assert_problem(disable_totp(api, access, code=app.peek_code()), 409, "mfa_not_enabled")
    assert_recovery_codes(confirm_totp(api, access, app.next_code()))
    # on
    state = mfa_state(user.id)
    for _ in range(BACKOFF_AFTER):
        assert_problem(enrol_totp(api, access, user.password), 409, "mfa_already_enabled")
        assert_problem(confirm_totp(api, access, app.wrong_code()), 409, "mfa_already_enabled")
    assert mfa_state(user.id) == state, "a 409 changed the second factor"
    assert_user_body(me_body(api, access), user.email, mfa_enabled=True)
    # none of them counted against the backoff: the password is checked at once
    assert_no_content(disable_totp(api, access, password=user.password))


# --------------------------------------------------------------------------------------------
# the mfa_token
# --------------------------------------------------------------------------------------------


def test_an_mfa_token_is_single_use_and_lives_five_minutes(api):
    t = totp_user(api)
    user = t.user
    token = mfa_login(api, user)
    lifetime = run_sql("SELECT extract(epoch FROM expires_at - created_at)::int FROM mfa_challenges "
                       "WHERE user_id = :'id';", id=user.id)
    assert lifetime == str(MFA_TOKEN_SECONDS), lifetime
    assert_token_body(verify_mfa(api, token, code=t.app.next_code()))
    # used: refused even with a right recovery code, which stays unused
    kept = t.recovery_code()
    assert_refused_mfa_token(verify_mfa(api, token, recovery_code=kept))
    # past its lifetime (moved back in the database rather than waited for): refused
    expired = mfa_login(api, user)
    out = run_sql("UPDATE mfa_challenges SET created_at = created_at - interval '301 seconds', "
                  "expires_at = expires_at - interval '301 seconds' "
                  "WHERE user_id = :'id' AND used_at IS NULL RETURNING failures;", id=user.id)
    assert out == "0", out
    assert_refused_mfa_token(verify_mfa(api, expired, recovery_code=kept))
    assert count_events(user.id, "mfa.challenge_failed", "expired") >= 1
    # the recovery code was used by neither
    tokens = assert_token_body(verify_mfa(api, mfa_login(api, user), recovery_code=kept))
    assert_claims(tokens["access_token"], user, ["pwd", "mfa"], "aal2")


def test_mfa_tokens_and_access_tokens_are_not_interchangeable(api):
    t = totp_user(api)
    user = t.user
    token = mfa_login(api, user)
    # an mfa_token is no bearer token ...
    assert_invalid_token(api.me(token))
    assert_invalid_token(send_json(api, "GET", SESSIONS, token=token))
    assert_invalid_token(enrol_totp(api, token, user.password))
    assert_invalid_token(confirm_totp(api, token, t.app.wrong_code()))
    assert_invalid_token(disable_totp(api, token, password=user.password))
    assert_invalid_token(api.logout(token))
    # ... nor a refresh token
    assert_invalid_token(api.refresh(token))
    # and neither an access token nor a refresh token is an mfa_token
    assert_refused_mfa_token(verify_mfa(api, user.access_token, recovery_code=t.recovery_codes[0]))
    assert_refused_mfa_token(verify_mfa(api, user.refresh_token, recovery_code=t.recovery_codes[0]))
    # the session and the attempt are as they were
    assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=True)
    tokens = assert_token_body(verify_mfa(api, token, recovery_code=t.recovery_code()))
    assert_claims(tokens["access_token"], user, ["pwd", "mfa"], "aal2")


def test_malformed_or_unknown_mfa_tokens_are_401_invalid_token_and_change_nothing(api):
    t = totp_user(api)
    user = t.user
    token = mfa_login(api, user)
    state = state_of(user)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    hostile = {
        "empty": "", "blank": "   ", "garbage": "not a token!", "10 KB": "A" * 10_240,
        "unknown, 256 random bits": b64url(secrets.token_bytes(32)),
        "its last character changed": flipped, "plus a character": token + "A",
        "less its last character": token[:-1], "standard base64": token.replace("-", "+") + "=",
        "NUL": token + "\x00", "unicode": "tökén" * 9,
    }
    for name, bad in hostile.items():
        resp = verify_mfa(api, bad, recovery_code=t.recovery_codes[0])
        try:
            assert_refused_mfa_token(resp)
        except AssertionError as exc:
            raise AssertionError(f"mfa_token {name!r}: {exc}") from None
    assert state_of(user) == state, "a refused mfa_token changed the account"
    tokens = assert_token_body(verify_mfa(api, token, code=t.app.next_code()))
    assert_claims(tokens["access_token"], user, ["pwd", "otp"], "aal2")


# --------------------------------------------------------------------------------------------
# bad input on every new route: 400 / 413 / 415, and nothing changes
# --------------------------------------------------------------------------------------------

NOT_A_STRING = {"null": None, "number": 123456, "list": ["123456"], "object": {"code": "123456"},
                "bool": True}
BAD_CODES = {
    "5 digits": "12345", "7 digits": "1234567", "8 digits": "12345678", "letters": "abcdef",
    "a letter": "12345a", "empty": "", "spaces only": "      ", "a hyphen": "123-456",
    "a tab": "123\t456", "a newline": "123456\n", "a sign": "+12345", "a dot": "12345.",
    "arabic-indic digits": "١٢٣٤٥٦", "fullwidth digits": "１２３４５６", "NUL": "123456\x00",
}
BAD_RECOVERY_CODES = {
    "empty": "", "short": "ABCD-EFGH-IJKL", "long": "ABCD-EFGH-IJKL-MNOP-Q",
    "not base32": "ABCD-EFGH-IJKL-MN01", "punctuation": "ABCD.EFGH.IJKL.MNOP",
    "a six-digit code": "123456", "unicode": "ÄBCD-EFGH-IJKL-MNOP",
}


@dataclass(frozen=True)
class MfaRoute:
    method: str
    path: str

    @property
    def id(self) -> str:
        return f"{self.method}-{self.path.removeprefix('/auth/mfa/').replace('/', '-')}"


ENROL = MfaRoute("POST", MFA_TOTP)
CONFIRM = MfaRoute("POST", MFA_CONFIRM)
DISABLE = MfaRoute("DELETE", MFA_TOTP)
VERIFY = MfaRoute("POST", MFA_VERIFY)
ROUTES = [ENROL, CONFIRM, DISABLE, VERIFY]


@dataclass
class Setup:
    """A user in the state a route needs (nothing / pending / on / a login at its second
    step), the bearer token it is called with, a body it would accept, and how to see
    afterwards that nothing changed and the route still works."""
    user: User
    bearer: str | None
    good: dict
    app: Authenticator | None = None
    mfa_token: str | None = None
    recovery_codes: list[str] = field(default_factory=list)
    state: str = ""


def setup_for(api, route: MfaRoute) -> Setup:
    if route is ENROL:
        user = register_ok(api)
        token_for(api, user)
        setup = Setup(user, user.access_token, {"password": user.password})
    elif route is CONFIRM:
        user = register_ok(api)
        token_for(api, user)
        app = enrol(api, user)
        setup = Setup(user, user.access_token, {"code": app.peek_code()}, app)
    elif route is DISABLE:
        t = totp_user(api)
        setup = Setup(t.user, t.user.access_token, {"password": t.user.password}, t.app,
                      recovery_codes=t.recovery_codes)
    else:
        t = totp_user(api)
        token = mfa_login(api, t.user)
        setup = Setup(t.user, None, {"mfa_token": token, "code": t.app.peek_code()}, t.app, token,
                      t.recovery_codes)
    setup.state = state_of(setup.user)
    return setup


def call(api, route: MfaRoute, setup: Setup, **kw):
    return send_json(api, route.method, route.path, token=setup.bearer, **kw)


def assert_unchanged_and_working(api, route: MfaRoute, setup: Setup) -> None:
    """The refusals changed nothing (no enrolment started or ended, no code or attempt
    counted), and the route then does its work with a right body."""
    assert state_of(setup.user) == setup.state, "a refused request changed the account"
    user = setup.user
    if route is ENROL:
        assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=False)
        assert_enrolment(call(api, route, setup, payload=setup.good), user.email)
    elif route is CONFIRM:
        assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=False)
        assert_recovery_codes(confirm_totp(api, user.access_token, setup.app.next_code()))
    elif route is DISABLE:
        assert_user_body(me_body(api, user.access_token), user.email, mfa_enabled=True)
        assert_no_content(call(api, route, setup, payload=setup.good))
        login_ok(api, user.email, user.password)
    else:
        tokens = assert_token_body(verify_mfa(api, setup.mfa_token, code=setup.app.next_code()))
        assert_claims(tokens["access_token"], user, ["pwd", "otp"], "aal2")


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_other_content_types_invalid_json_and_big_bodies_are_refused(api, route):
    setup = setup_for(api, route)
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", ""):
        resp = call(api, route, setup, payload=setup.good, content_type=content_type)
        try:
            assert_problem(resp, 415, "unsupported_media_type")
        except AssertionError as exc:
            raise AssertionError(f"content type {content_type!r}: {exc}") from None
    for raw in (b"", b"{", b"not json", b"[]", b"null", b'"x"', b"42",
                b'{"password": "\xff\xfe", "code": "\xc0\xaf", "mfa_token": "\xff"}'):
        resp = call(api, route, setup, raw=raw)
        try:
            assert_problem(resp, 400, "invalid_json")
        except AssertionError as exc:
            raise AssertionError(f"body {raw!r}: {exc}") from None
    for size in (MAX_BODY + 1, 256 * 1024):
        assert_problem(call(api, route, setup, raw=padded_body(setup.good, size)), 413,
                       "payload_too_large")
    assert_unchanged_and_working(api, route, setup)


def _field_cases(route: MfaRoute, setup: Setup) -> dict[str, dict]:
    good = setup.good
    cases: dict[str, dict] = {"empty": {}}
    if route is ENROL:
        fields = {"password": NOT_A_STRING}
        cases["PASSWORD"] = {"PASSWORD": good["password"]}
    elif route is CONFIRM:
        fields = {"code": {**NOT_A_STRING, **BAD_CODES}}
        cases["CODE"] = {"CODE": good["code"]}
    elif route is DISABLE:
        fields = {"code": {**NOT_A_STRING, **BAD_CODES}, "password": NOT_A_STRING}
        # exactly one of the two: both (each right on its own) or neither is a 400
        cases["both"] = {"password": good["password"], "code": setup.app.peek_code()}
        cases["unknown field only"] = {"pass": good["password"]}
    else:
        fields = {"mfa_token": NOT_A_STRING, "code": {**NOT_A_STRING, **BAD_CODES},
                  "recovery_code": {**NOT_A_STRING, **BAD_RECOVERY_CODES}}
        cases["no mfa_token"] = {"code": good["code"]}
        cases["no code or recovery_code"] = {"mfa_token": good["mfa_token"]}
        cases["both code and recovery_code"] = {**good, "recovery_code": "ABCD-EFGH-IJKL-MNOP"}
        cases["CODE"] = {"mfa_token": good["mfa_token"], "CODE": good["code"]}
    for name, values in fields.items():
        for label, bad in values.items():
            if route is VERIFY and name == "recovery_code":
                payload = {"mfa_token": good["mfa_token"], "recovery_code": bad}
            elif route is VERIFY:
                payload = {**good, name: bad}
            else:
                payload = {name: bad}
            cases[f"{name} {label}"] = payload
    return cases


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_missing_mistyped_or_malformed_fields_are_400_invalid_request(api, route):
    setup = setup_for(api, route)
    cases = _field_cases(route, setup)
    for name, payload in cases.items():
        resp = call(api, route, setup, payload=payload)
        try:
            assert_problem(resp, 400, "invalid_request",
                           not_echoed=tuple(v for v in payload.values() if isinstance(v, str) and len(v) > 3))
        except AssertionError as exc:
            raise AssertionError(f"case {name!r} ({payload!r}): {exc}") from None
    assert_unchanged_and_working(api, route, setup)


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNzd29yZA==", ""],
                         ids=["no-header", "Basic", "empty"])
@pytest.mark.parametrize("route", [ENROL, CONFIRM, DISABLE], ids=lambda r: r.id)
def test_the_bearer_routes_without_a_token_are_401_missing_token(api, route, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = send_json(api, route.method, route.path, {"password": strong_password()}, headers=headers)
    assert_problem(resp, 401, "missing_token")


@pytest.mark.parametrize("route", [ENROL, CONFIRM, DISABLE], ids=lambda r: r.id)
def test_the_bearer_routes_with_a_bad_or_ended_token_are_401_invalid_token(api, route):
    setup = setup_for(api, route)
    user = setup.user
    # a session of the user that has ended
    if route is DISABLE:
        ended = assert_token_body(verify_mfa(api, mfa_login(api, user),
                                             recovery_code=setup.recovery_codes.pop()))
    else:
        ended = login_ok(api, user.email, user.password)
    assert_no_content(api.logout(ended["access_token"]))
    setup.state = state_of(user)
    header, body, _ = user.access_token.split(".")
    for name, bad in {"bad signature": f"{header}.{body}.{b64url(secrets.token_bytes(256))}",
                      "a refresh token": user.refresh_token, "garbage": "garbage",
                      "an ended session's": ended["access_token"]}.items():
        resp = call(api, route, Setup(user, bad, {}), payload=setup.good)
        try:
            assert_invalid_token(resp)
        except AssertionError as exc:
            raise AssertionError(f"token {name!r}: {exc}") from None
    assert_unchanged_and_working(api, route, setup)


# --------------------------------------------------------------------------------------------
# with the other flows
# --------------------------------------------------------------------------------------------


def test_a_password_reset_keeps_totp_on(api, new_client, maildev):
    other = new_client()
    t = totp_user(api)
    user = t.user
    elsewhere = assert_token_body(verify_mfa(other, mfa_login(other, user), recovery_code=t.recovery_code()))
    open_step = mfa_login(api, user)                 # a login at its second step meanwhile
    seen = maildev.to(user.email, RESET_MAIL)
    assert_accepted(forgot_password(api, user.email))
    reset_token = token_from(maildev.wait_for_new(user.email, seen, RESET_MAIL), "reset-password")
    new_password = strong_password()
    assert_no_content(reset_password(api, reset_token, new_password))
    # the reset ended every session and the attempt made with the old password
    assert_ended(api, user.tokens)
    assert_ended(other, elsewhere)
    assert_refused_mfa_token(verify_mfa(api, open_step, recovery_code=t.recovery_codes[0]))
    # TOTP is still on: the new password asks for the second step
    assert_problem(api.login(user.email, user.password), 401, "invalid_credentials")
    user.password = new_password
    tokens = assert_token_body(verify_mfa(api, mfa_login(api, user), code=t.app.next_code()))
    assert_claims(tokens["access_token"], user, ["pwd", "otp"], "aal2")
    assert_user_body(me_body(api, tokens["access_token"]), user.email, verified=True, mfa_enabled=True)
    assert_token_body(verify_mfa(api, mfa_login(api, user), recovery_code=t.recovery_code()))


def test_a_disabled_account_is_refused_before_the_second_step(api):
    t = totp_user(api)
    user = t.user
    open_step = mfa_login(api, user)
    disable_user(user.id)
    assert_problem(api.login(user.email, user.password), 403, "account_disabled")
    assert_problem(api.login(user.email, strong_password()), 401, "invalid_credentials")
    assert_refused_mfa_token(verify_mfa(api, open_step, recovery_code=t.recovery_codes[0]))


def test_the_secret_and_the_recovery_codes_are_not_stored_in_the_clear(api):
    user = register_ok(api)
    token_for(api, user)
    body = assert_enrolment(enrol_totp(api, user.access_token, user.password), user.email)
    app = Authenticator(body["secret"])
    codes = assert_recovery_codes(confirm_totp(api, user.access_token, app.next_code()))
    raw_secret = base64.b32decode(body["secret"])
    sealed = bytes.fromhex(run_sql("SELECT encode(sealed_secret, 'hex') FROM user_totp "
                                   "WHERE user_id = :'id';", id=user.id))
    assert raw_secret not in sealed and body["secret"].encode() not in sealed, "the secret is stored in the clear"
    assert len(sealed) > len(raw_secret), "the sealed secret has no room for a nonce and a tag"
    stored = run_sql("SELECT json_agg(encode(hash, 'hex')) FROM recovery_codes WHERE user_id = :'id';",
                     id=user.id)
    hashes = set(json.loads(stored))
    assert len(hashes) == RECOVERY_CODES, stored
    for code in codes:
        for form in (code, code.replace("-", ""), code.lower()):
            assert form.encode().hex() not in stored, "a recovery code is stored in the clear"
            assert hashlib.sha256(form.encode()).hexdigest() not in hashes, \
                "a recovery code is stored as a plain hash, which the database alone can test"
    # and the database's copy of the secret opens nothing: the mfa_token is only a hash there
    token = mfa_login(api, user)
    assert b64url_decode(token).hex() not in run_sql(
        "SELECT string_agg(encode(hash, 'hex'), ',') FROM mfa_challenges WHERE user_id = :'id';", id=user.id)
