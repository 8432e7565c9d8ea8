"""End-to-end black-box tests of API.md "Account": email verification, forgot / reset, change
password, delete account, the sessions list — over HTTP, reading the mail the functions send
from MailDev (mail.py; MAILDEV_URL must be set, else these tests fail).

Run like the rest of the suite (conftest.py), against a server with mail on (SMTP_URL pointing
at that MailDev) and the default settings. Every test registers fresh accounts and has its own
source address; every message is found by its recipient, never by its place in the inbox.

White-box only where the contract's numbers would take hours: the login backoff and the lock
(LOGIN_LOCK_AFTER consecutive failures) are put in place through the login_throttle table, as
test_sessions.py and test_limits.py do. The one unavoidable wait (a second reset request for one
address must be MAIL_RESEND_INTERVAL_SECONDS after the first) starts when this module starts and
its test runs last, so the other tests run during it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass

import pytest

from conftest import BIND_SOURCE, Client
from mail import RESET_MAIL, VERIFICATION, MailDev, Message, is_notice, links, require_maildev, token_from
from support import (
    APP_URL,
    BACKOFF_AFTER,
    CHANGE,
    FORGOT,
    LOCK_AFTER,
    MAIL_RESEND_INTERVAL,
    MAX_BODY,
    ME,
    RESEND,
    RESET,
    RFC3339,
    SESSION_IDLE,
    SESSION_MAX,
    SESSIONS,
    VERIFY,
    User,
    account_state,
    assert_accepted,
    assert_bearer_challenge,
    assert_invalid_token,
    assert_json_response,
    assert_no_content,
    assert_problem,
    assert_token_body,
    assert_too_many,
    assert_user_body,
    b64url,
    b64url_decode,
    change_password,
    decode_jwt,
    delete_account,
    end_session,
    forgot_password,
    login_ok,
    nap,
    new_email,
    padded_body,
    register_ok,
    resend_verification,
    reset_password,
    run_sql,
    send_json,
    strong_password,
    token_for,
    uniq,
    verify_email,
)

VERIFY_PAGE = "verify-email"
RESET_PAGE = "reset-password"
WEAK = "password1234"          # 12 characters, in every common-password list
TOO_SHORT = "Sh0rt!"           # under PASSWORD_MIN_LENGTH: invalid_password, before strength


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def claims(token: str) -> dict:
    return decode_jwt(token)[1]


def registered(api, md: MailDev) -> tuple[User, str]:
    """A new account and the token of the verification mail its registration sent."""
    user = register_ok(api)
    message = md.wait_for_one(user.email, VERIFICATION)
    return user, token_from(message, VERIFY_PAGE)


def request_reset(api, md: MailDev, user: User) -> tuple[Message, str]:
    """forgot → 202 {}; returns the one new reset message and its token."""
    seen = md.to(user.email, RESET_MAIL)
    assert_accepted(forgot_password(api, user.email))
    message = md.wait_for_new(user.email, seen, RESET_MAIL)
    return message, token_from(message, RESET_PAGE)


def new_session(client, user: User) -> dict:
    return login_ok(client, user.email, user.password)


def assert_session_live(api, tokens: dict) -> dict:
    """The session's access token works and its refresh token rotates; returns the new tokens."""
    assert_json_response(api.me(tokens["access_token"]), 200)
    return assert_token_body(api.refresh(tokens["refresh_token"]))


def assert_session_ended(api, tokens: dict) -> None:
    assert_invalid_token(api.me(tokens["access_token"]))
    assert_invalid_token(api.refresh(tokens["refresh_token"]))


def me_body(api, access_token: str) -> dict:
    return assert_json_response(api.me(access_token), 200)


def throttle_key_sql() -> str:
    return "sha256(convert_to(:'email', 'UTF8'))"


def block_logins_for_an_hour(user: User) -> None:
    """The account's backoff rows (from every network) wait an hour more, as if the failures had
    kept coming: only a reset may lift that at once."""
    out = run_sql(f"UPDATE login_throttle SET blocked_until = now() + interval '1 hour' "
                  f"WHERE account = {throttle_key_sql()} RETURNING failures;", email=user.email)
    assert out, f"no backoff row for {user.email}"


def end_the_wait(user: User) -> None:
    out = run_sql(f"UPDATE login_throttle SET blocked_until = now() - interval '1 second' "
                  f"WHERE account = {throttle_key_sql()} RETURNING failures;", email=user.email)
    assert out, f"no backoff row for {user.email}"


def lock_account(user: User, client) -> None:
    """LOCK_AFTER - 1 failures from many networks put in place, then one real failure: locked."""
    out = run_sql(
        "INSERT INTO login_throttle (account, network, failures, last_attempt, updated_at) "
        f"VALUES ({throttle_key_sql()}, '*', :'n', gen_random_uuid(), now()) "
        "ON CONFLICT (account, network) DO UPDATE SET failures = excluded.failures "
        "RETURNING failures;", email=user.email, n=str(LOCK_AFTER - 1))
    assert out == str(LOCK_AFTER - 1), out
    assert_problem(Client().login(user.email, strong_password()), 401, "invalid_credentials")
    assert_problem(client.login(user.email, user.password), 403, "account_locked")


def audit_events(user_id: str, event: str, since: float) -> int:
    return int(run_sql("SELECT count(*) FROM auth_events WHERE user_id = :'id' AND event = :'e' "
                       "AND occurred_at >= to_timestamp(:'t');",
                       id=user_id, e=event, t=str(since)))


# --------------------------------------------------------------------------------------------
# the module-long wait: a reset link replaced by a newer one needs two forgot requests for one
# address MAIL_RESEND_INTERVAL_SECONDS apart; the first is made when the module starts
# --------------------------------------------------------------------------------------------


@dataclass
class EarlyReset:
    client: object
    user: User
    token: str
    asked_at: float


@pytest.fixture(scope="module", autouse=True)
def early_reset(new_client) -> EarlyReset:
    md = require_maildev()
    client = new_client()
    user = register_ok(client)
    _, token = request_reset(client, md, user)
    return EarlyReset(client, user, token, time.monotonic())


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def test_register_mails_a_verification_link_and_verify_proves_the_email(api, maildev):
    user = register_ok(api)
    assert user.body["email_verified"] is False
    before = token_for(api, user)
    assert claims(before)["email_verified"] is False, claims(before)
    assert me_body(api, before)["email_verified"] is False

    message = maildev.wait_for_one(user.email, VERIFICATION)
    token = token_from(message, VERIFY_PAGE)
    for link in links(message, VERIFY_PAGE):
        assert link == f"{APP_URL}/{VERIFY_PAGE}#token={token}", link

    resp = verify_email(api, token)
    body = assert_json_response(resp, 200)
    assert_user_body(body, user.email, verified=True)
    assert {k: v for k, v in body.items() if k != "email_verified"} == \
        {k: v for k, v in user.body.items() if k != "email_verified"}, (body, user.body)

    # me shows it at once, also for the session from before; a new login's token claims it
    assert me_body(api, before) == body
    after = login_ok(api, user.email, user.password)["access_token"]
    assert claims(after)["email_verified"] is True, claims(after)
    assert me_body(api, after) == body


def test_a_get_never_consumes_a_verification_token(api, maildev):
    # mail scanners open links: no GET, wherever it is sent, uses the token
    user, token = registered(api, maildev)
    for path in (f"{VERIFY}?token={token}", f"/{VERIFY_PAGE}?token={token}"):
        resp = api.request("GET", path)
        assert resp.status != 200 or b"email_verified" not in resp.body, resp
    assert_user_body(assert_json_response(verify_email(api, token), 200), user.email, verified=True)


def test_a_verification_token_is_single_use(api, maildev):
    user, token = registered(api, maildev)
    assert_json_response(verify_email(api, token), 200)
    assert_problem(verify_email(api, token), 400, "link_invalid", not_echoed=(token,))


def test_resend_mails_a_new_link_that_replaces_the_older(api, maildev):
    user, first = registered(api, maildev)
    seen = maildev.to(user.email)
    assert_accepted(resend_verification(api, user.email))
    second = token_from(maildev.wait_for_new(user.email, seen, VERIFICATION), VERIFY_PAGE)
    assert second != first
    assert_problem(verify_email(api, first), 400, "link_invalid")
    assert_user_body(assert_json_response(verify_email(api, second), 200), user.email, verified=True)


def test_resend_for_a_verified_account_sends_nothing(api, maildev):
    user, token = registered(api, maildev)
    assert_json_response(verify_email(api, token), 200)
    seen = maildev.to(user.email)
    since = time.time()
    assert_accepted(resend_verification(api, user.email))
    maildev.assert_none_arrive(user.email, seen)
    assert audit_events(user.id, "email.verification_sent", since) == 0


def test_tokens_are_refused_for_the_other_purpose(api, maildev):
    user, verify_token = registered(api, maildev)
    _, reset_token = request_reset(api, maildev, user)
    state = account_state(user.id)
    assert_problem(reset_password(api, verify_token, strong_password()), 400, "link_invalid")
    assert_problem(verify_email(api, reset_token), 400, "link_invalid")
    assert account_state(user.id) == state, "a refused token changed the account"
    # neither was used up by the wrong route
    assert_user_body(assert_json_response(verify_email(api, verify_token), 200), user.email,
                     verified=True)
    assert_no_content(reset_password(api, reset_token, strong_password()))


def expire_links(user: User) -> None:
    """As if the account's link tokens' lifetimes had passed (white-box: link_tokens of
    migrations/V4; the TTLs are a day and half an hour)."""
    out = run_sql("UPDATE link_tokens SET created_at = created_at - interval '2 days', "
                  "expires_at = now() - interval '1 second' WHERE user_id = :'id' RETURNING purpose;",
                  id=user.id)
    assert out, f"no link token of {user.email}"


def test_an_expired_link_is_link_expired(api, maildev):
    user, verify_token = registered(api, maildev)
    _, reset_token = request_reset(api, maildev, user)
    expire_links(user)
    state = account_state(user.id)
    assert_problem(verify_email(api, verify_token), 400, "link_expired")
    assert_problem(reset_password(api, reset_token, strong_password()), 400, "link_expired")
    assert account_state(user.id) == state, "an expired token changed the account"
    login_ok(api, user.email, user.password)


def _hostile_tokens(user: User, real: str) -> dict[str, str]:
    flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
    return {
        "empty": "",
        "blank": "   ",
        "10 KB": "A" * 10_240,
        "non-base64url": "not a token!",
        "standard base64": b64url(secrets.token_bytes(32)).replace("-", "+").replace("_", "/") + "+/=",
        "percent-encoded": "%41%42%43" * 15,
        "unicode": "tökén-" + "é" * 40,
        "NUL": real + "\x00",
        "unknown, 256 random bits": b64url(secrets.token_bytes(32)),
        "real with its last character changed": flipped,
        "real plus a character": real + "A",
        "real without its last character": real[:-1],
        "a refresh token": user.refresh_token,
        "an access token": user.access_token,
    }


def test_hostile_verification_tokens_are_link_invalid_and_change_nothing(api, maildev):
    user, token = registered(api, maildev)
    token_for(api, user)
    state = account_state(user.id)
    for name, hostile in _hostile_tokens(user, token).items():
        resp = verify_email(api, hostile)
        try:
            assert_problem(resp, 400, "link_invalid", not_echoed=(hostile,) if len(hostile) > 3 else ())
        except AssertionError as exc:
            raise AssertionError(f"token {name!r}: {exc}") from None
    assert account_state(user.id) == state, "a refused token changed the account"
    assert_user_body(assert_json_response(verify_email(api, token), 200), user.email, verified=True)


def test_hostile_reset_tokens_are_link_invalid_and_change_nothing(api, new_client, maildev):
    user = register_ok(api)
    token_for(api, user)
    _, token = request_reset(api, maildev, user)
    state = account_state(user.id)
    password = strong_password()
    for name, hostile in _hostile_tokens(user, token).items():
        resp = reset_password(api, hostile, password)
        try:
            assert_problem(resp, 400, "link_invalid",
                           not_echoed=((hostile,) if len(hostile) > 3 else ()) + (password,))
        except AssertionError as exc:
            raise AssertionError(f"token {name!r}: {exc}") from None
    assert account_state(user.id) == state, "a refused token changed the account"
    assert_session_live(api, user.tokens)
    login_ok(new_client(), user.email, user.password)       # the password is unchanged
    assert_no_content(reset_password(api, token, password))  # and the real token still works


# --------------------------------------------------------------------------------------------
# reset
# --------------------------------------------------------------------------------------------


def test_reset_sets_the_password_ends_every_session_and_clears_the_backoff(api, new_client, maildev):
    user, _ = registered(api, maildev)                      # unverified
    other = new_client()
    sessions = [new_session(api, user), new_session(other, user), new_session(api, user)]
    sessions[1] = assert_token_body(other.refresh(sessions[1]["refresh_token"]))  # a rotated one
    bystander = register_ok(other)
    bystander_tokens = new_session(other, bystander)

    # failed logins up to the backoff, then an hour of waiting on top
    for _ in range(BACKOFF_AFTER):
        assert_problem(api.login(user.email, strong_password()), 401, "invalid_credentials")
    block_logins_for_an_hour(user)
    assert assert_too_many(api.login(user.email, user.password)) > 60

    message, token = request_reset(api, maildev, user)
    for link in links(message, RESET_PAGE):
        assert link == f"{APP_URL}/{RESET_PAGE}#token={token}", link

    # a password the registration rules refuse: 422, and the token stays usable
    assert_problem(reset_password(api, token, WEAK), 422, "weak_password", not_echoed=(WEAK,))
    assert_problem(reset_password(api, token, TOO_SHORT), 422, "invalid_password")
    assert_problem(reset_password(api, token, user.email), 422, "weak_password")
    assert_session_live(api, sessions[0])                   # nothing ended yet

    seen = maildev.to(user.email)
    new_password = strong_password()
    resp = reset_password(api, token, new_password)
    assert_no_content(resp)                                 # no tokens: a reset does not log in

    # every session of the user ended at once; another user's lives on
    for tokens in sessions:
        assert_session_ended(api, tokens)
    assert_session_live(other, bystander_tokens)
    # the backoff is cleared: the new password logs in at once, from the blocked network too
    fresh = login_ok(api, user.email, new_password)
    assert_problem(api.login(user.email, user.password), 401, "invalid_credentials")
    # the mailbox was proven: the email is verified
    assert claims(fresh["access_token"])["email_verified"] is True
    assert me_body(api, fresh["access_token"])["email_verified"] is True
    # a "password changed" notice went out, and the link is used up
    notice = maildev.wait_for_new(user.email, seen)
    assert is_notice(notice), f"the notice carries a link token: {notice!r}"
    assert_problem(reset_password(api, token, strong_password()), 400, "link_invalid")
    login_ok(api, user.email, new_password)


def test_reset_lifts_the_lock(api, maildev):
    user = register_ok(api)
    lock_account(user, api)
    _, token = request_reset(api, maildev, user)
    new_password = strong_password()
    assert_no_content(reset_password(api, token, new_password))
    login_ok(api, user.email, new_password)


# --------------------------------------------------------------------------------------------
# change password
# --------------------------------------------------------------------------------------------


def test_change_password_keeps_the_calling_session_and_ends_the_others(api, new_client, maildev):
    user, _ = registered(api, maildev)
    other = new_client()
    caller = new_session(api, user)
    others = [new_session(other, user), new_session(api, user)]
    seen = maildev.to(user.email)
    new_password = strong_password()
    assert_no_content(change_password(api, caller["access_token"], user.password, new_password))
    # the calling session lives on, access and refresh alike; every other one ended at once
    assert_session_live(api, caller)
    for tokens in others:
        assert_session_ended(api, tokens)
    assert_problem(api.login(user.email, user.password), 401, "invalid_credentials")
    login_ok(api, user.email, new_password)
    notice = maildev.wait_for_new(user.email, seen)
    assert is_notice(notice), f"the notice carries a link token: {notice!r}"


def test_change_password_with_the_wrong_current_is_403_and_counted_by_the_backoff(api, new_client):
    user = register_ok(api)
    access = token_for(api, user)
    new_password = strong_password()
    for _ in range(BACKOFF_AFTER):
        wrong = strong_password()
        assert_problem(change_password(api, access, wrong, new_password), 403, "wrong_password",
                       not_echoed=(wrong, new_password))
    # the 5th failure started a (1 s) wait: the right password is not even checked now
    assert_too_many(change_password(api, access, user.password, new_password))
    # the wait is the login's too (same account, same network): an hour of it, to see that
    block_logins_for_an_hour(user)
    assert assert_too_many(api.login(user.email, user.password)) > 60
    assert assert_too_many(change_password(api, access, user.password, new_password)) > 60
    # once it is over, the right current password changes it
    end_the_wait(user)
    assert_no_content(change_password(api, access, user.password, new_password))
    login_ok(new_client(), user.email, new_password)


@pytest.mark.parametrize("new,code", [(WEAK, "weak_password"), (TOO_SHORT, "invalid_password"),
                                      ("a" * 129, "invalid_password"), (None, "weak_password")],
                         ids=["weak", "short", "long", "the-email"])
def test_change_password_to_a_refused_password_is_422_and_changes_nothing(api, new, code):
    user = register_ok(api)
    access = token_for(api, user)
    other = new_session(api, user)
    new = user.email if new is None else new
    assert_problem(change_password(api, access, user.password, new), 422, code, not_echoed=(user.password,))
    assert_session_live(api, other)
    login_ok(api, user.email, user.password)


# --------------------------------------------------------------------------------------------
# delete account
# --------------------------------------------------------------------------------------------


def test_delete_account_with_the_wrong_password_is_403_and_counted_by_the_backoff(api):
    user = register_ok(api)
    access = token_for(api, user)
    for _ in range(BACKOFF_AFTER):
        assert_problem(delete_account(api, access, strong_password()), 403, "wrong_password")
    assert_too_many(delete_account(api, access, user.password))
    block_logins_for_an_hour(user)
    assert assert_too_many(api.login(user.email, user.password)) > 60
    assert_json_response(api.me(access), 200)               # still there


def test_delete_account_ends_everything_and_frees_the_email(api, new_client, maildev):
    user, _ = registered(api, maildev)
    since = time.time()
    other = new_client()
    caller = new_session(api, user)
    second = new_session(other, user)
    resp = delete_account(api, caller["access_token"], user.password)
    assert_no_content(resp)
    # the same token is refused at once, every other session too
    assert_invalid_token(api.me(caller["access_token"]))
    assert_invalid_token(delete_account(api, caller["access_token"], user.password))
    assert_session_ended(api, caller)
    assert_session_ended(other, second)
    assert_problem(api.login(user.email, user.password), 401, "invalid_credentials")
    # the user row goes, and with it its sessions, link tokens and mail
    for table in ("users", "sessions", "link_tokens", "outbox"):
        column = "id" if table == "users" else "user_id"
        left = run_sql(f"SELECT count(*) FROM {table} WHERE {column} = :'id';", id=user.id)
        assert left == "0", f"{left} row(s) of the deleted user left in {table}"
    # audit rows keep the user id
    assert audit_events(user.id, "user.deleted", since) == 1
    assert audit_events(user.id, "user.registered", since - 600) == 1
    # the email can be registered again, as a new, unverified account
    again = register_ok(new_client(), user.email)
    assert again.id != user.id and again.body["email_verified"] is False
    token_from(maildev.wait_for(user.email, 2, VERIFICATION)[-1], VERIFY_PAGE)


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------

SESSION_FIELDS = {"id", "created_at", "last_used_at", "expires_at", "user_agent", "source_ip",
                  "current", "aal"}


def parse_time(value: str) -> float:
    assert isinstance(value, str) and RFC3339.match(value), f"not RFC 3339: {value!r}"
    import datetime as dt  # noqa: PLC0415
    return dt.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T")).timestamp()


def sessions_of(client, access_token: str) -> list[dict]:
    resp = send_json(client, "GET", SESSIONS, token=access_token)
    body = assert_json_response(resp, 200)
    assert isinstance(body, dict) and set(body) == {"sessions"}, body
    assert isinstance(body["sessions"], list), body
    for s in body["sessions"]:
        assert isinstance(s, dict) and set(s) == SESSION_FIELDS, s
        assert s["aal"] in ("aal1", "aal2"), s
    return body["sessions"]


def test_sessions_lists_the_live_sessions_newest_first(new_client):
    clients = [Client(user_agent=f"e2e-sessions/{uniq()} (device {i})") for i in range(3)]
    user = register_ok(clients[0])
    started = time.time()
    logins = []
    for c in clients:
        logins.append(new_session(c, user))
    ended = new_session(clients[0], user)
    assert_no_content(clients[0].logout(ended["access_token"]))
    bystander = register_ok(clients[0])
    token_for(clients[0], bystander)

    caller = clients[1]
    listed = sessions_of(caller, logins[1]["access_token"])
    sids = [claims(t["access_token"])["sid"] for t in logins]
    assert [s["id"] for s in listed] == list(reversed(sids)), (listed, sids)
    for s, c, tokens in zip(reversed(listed), clients, logins):
        assert s["user_agent"] == c.user_agent, s
        if BIND_SOURCE:
            assert s["source_ip"] == c.source_address, s
        else:
            assert isinstance(s["source_ip"], str) and s["source_ip"], s
        assert s["current"] is (c is caller), s
        assert s["aal"] == "aal1", s          # a password alone (API.md "Two-step login")
        created, used, expires = (parse_time(s[k]) for k in ("created_at", "last_used_at", "expires_at"))
        assert started - 5 <= created <= time.time() + 5, s
        assert created - 1 <= used <= time.time() + 5, s
        # the earlier of the idle and the absolute limit
        assert abs(expires - min(used + SESSION_IDLE, created + SESSION_MAX)) <= 5, s
    # a refresh is a use of its session
    assert_token_body(clients[2].refresh(logins[2]["refresh_token"]))
    again = {s["id"]: s for s in sessions_of(caller, logins[1]["access_token"])}
    assert parse_time(again[sids[2]]["last_used_at"]) >= parse_time(listed[0]["last_used_at"])


def test_ending_a_session_refuses_its_tokens_at_once(api, new_client):
    user = register_ok(api)
    other = new_client()
    mine, victim = new_session(api, user), new_session(other, user)
    sid = claims(victim["access_token"])["sid"]
    assert_no_content(end_session(api, mine["access_token"], sid))
    assert_session_ended(other, victim)
    assert sid not in [s["id"] for s in sessions_of(api, mine["access_token"])]
    assert_session_live(api, mine)
    # ended already: nothing tells it apart from an unknown id
    assert_problem(end_session(api, mine["access_token"], sid), 404, "session_not_found")


@pytest.mark.parametrize("session_id", [
    "not-a-uuid", "123", str(uuid.uuid4()), str(uuid.uuid4()).upper(), "%00", "x" * 300,
], ids=["word", "number", "unknown-uuid", "upper-uuid", "nul", "long"])
def test_ending_an_unknown_or_malformed_session_is_404(api, session_id):
    user = register_ok(api)
    tokens = new_session(api, user)
    assert_problem(end_session(api, tokens["access_token"], session_id), 404, "session_not_found")
    assert_session_live(api, tokens)


def test_ending_another_users_session_is_404_and_ends_nothing(api, new_client):
    other = new_client()
    me, them = register_ok(api), register_ok(other)
    mine, theirs = new_session(api, me), new_session(other, them)
    their_sid = claims(theirs["access_token"])["sid"]
    unknown = str(uuid.uuid4())
    a = end_session(api, mine["access_token"], their_sid)
    b = end_session(api, mine["access_token"], unknown)
    assert_problem(a, 404, "session_not_found")
    # nothing tells another user's session from an unknown id
    assert a.body == b.body and a.status == b.status
    assert_session_live(other, theirs)
    assert their_sid not in [s["id"] for s in sessions_of(api, mine["access_token"])]


# --------------------------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------------------------

ACCOUNT_EVENTS = ("email.verification_sent", "email.verified", "password.reset_requested",
                  "password.reset", "password.changed", "session.revoked", "user.deleted")


def test_the_account_events_are_audited_without_secrets(api, new_client, maildev):
    user, verify_token = registered(api, maildev)
    assert_json_response(verify_email(api, verify_token), 200)
    _, reset_token = request_reset(api, maildev, user)
    reset_to = strong_password()
    assert_no_content(reset_password(api, reset_token, reset_to))
    first = login_ok(api, user.email, reset_to)
    changed_to = strong_password()
    assert_no_content(change_password(api, first["access_token"], reset_to, changed_to))
    second = login_ok(api, user.email, changed_to)
    assert_no_content(end_session(api, first["access_token"], claims(second["access_token"])["sid"]))
    assert_no_content(delete_account(api, first["access_token"], changed_to))

    out = run_sql("SELECT json_agg(json_build_array(event, coalesce(session_id::text, ''), "
                  "coalesce(source_ip, ''), coalesce(user_agent, '')) ORDER BY id) "
                  "FROM auth_events WHERE user_id = :'id' AND event = ANY(string_to_array(:'events', ','));",
                  id=user.id, events=",".join(ACCOUNT_EVENTS))
    rows = json.loads(out or "null") or []
    # one row each, in the order of the actions (the registration's first: it is one statement
    # with user.registered, whose order among the two is not the point)
    assert [r[0] for r in rows] == list(ACCOUNT_EVENTS), rows
    for event, session_id, source_ip, user_agent in rows:
        assert user_agent == api.user_agent, (event, user_agent)
        if BIND_SOURCE:
            assert source_ip == api.source_address, (event, source_ip)
    revoked = rows[ACCOUNT_EVENTS.index("session.revoked")]
    assert revoked[1] == claims(second["access_token"])["sid"], revoked
    # every message the account was sent is audited as sent: the verification, the reset link
    # and the two notices
    sent = run_sql("SELECT count(*) FROM auth_events WHERE user_id = :'id' AND event = 'mail.sent';",
                   id=user.id)
    assert sent == "4", sent
    # never a password, a link token or a hash of one
    needles = [verify_token, reset_token, user.password, reset_to, changed_to]
    for token in (verify_token, reset_token):
        raw = b64url_decode(token)
        needles += [hashlib.sha256(raw).hexdigest(), hashlib.sha256(token.encode()).hexdigest()]
    hits = run_sql(
        "SELECT count(*) FROM auth_events e, json_array_elements_text(:'needles'::json) AS n "
        "WHERE e.user_id = :'id' AND strpos(concat_ws(' ', e.event, e.session_id::text, "
        "e.source_ip, e.user_agent, e.reason), n) > 0;", id=user.id, needles=json.dumps(needles))
    assert hits == "0", "auth_events holds a password or a link token"


# --------------------------------------------------------------------------------------------
# bad input on every Account route
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    bearer: bool
    fields: tuple[str, ...]

    def payload(self, user: User | None) -> dict:
        values = {
            "token": b64url(secrets.token_bytes(32)),
            "email": new_email("bad-input"),
            "password": user.password if user and self.path == ME else strong_password(),
            "current_password": user.password if user else strong_password(),
            "new_password": strong_password(),
        }
        return {f: values[f] for f in self.fields}


BODY_ROUTES = [
    Route("POST", VERIFY, False, ("token",)),
    Route("POST", RESEND, False, ("email",)),
    Route("POST", FORGOT, False, ("email",)),
    Route("POST", RESET, False, ("token", "password")),
    Route("POST", CHANGE, True, ("current_password", "new_password")),
    Route("DELETE", ME, True, ("password",)),
]
UNKNOWN_SID = "9b1f6a2e-0c4d-4e8f-9a7b-3c2d1e0f4a5b"   # never issued (a fixed id keeps test ids stable)
BEARER_ROUTES = [("POST", CHANGE), ("DELETE", ME), ("GET", SESSIONS),
                 ("DELETE", f"{SESSIONS}/{UNKNOWN_SID}")]


def _route_id(route: Route) -> str:
    return f"{route.method}-{route.path.rsplit('/', 2)[-2]}-{route.path.rsplit('/', 1)[-1]}"


def _caller(api, route: Route) -> tuple[User | None, str | None]:
    if not route.bearer:
        return None, None
    user = register_ok(api)
    return user, token_for(api, user)


def _call(api, route: Route, token, **kw):
    return send_json(api, route.method, route.path, token=token, **kw)


def _still_fine(api, route: Route, user: User | None) -> None:
    if user is not None:       # the account and its password are as they were
        assert_json_response(api.me(user.access_token), 200)
        login_ok(api, user.email, user.password)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", ""],
                         ids=["none", "text", "form", "jsonx", "empty"])
@pytest.mark.parametrize("route", BODY_ROUTES, ids=_route_id)
def test_other_content_type_is_415(api, route, content_type):
    user, token = _caller(api, route)
    resp = _call(api, route, token, payload=route.payload(user), content_type=content_type)
    assert_problem(resp, 415, "unsupported_media_type")
    _still_fine(api, route, user)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[]", b"null", b'"x"', b"42",
                                 b'{"token": "\xff\xfe", "email": "\xc0\xaf"}'],
                         ids=["empty", "open-brace", "text", "array", "null", "string", "number",
                              "invalid-utf8"])
@pytest.mark.parametrize("route", BODY_ROUTES, ids=_route_id)
def test_invalid_json_is_400_invalid_json(api, route, raw):
    user, token = _caller(api, route)
    assert_problem(_call(api, route, token, raw=raw), 400, "invalid_json")
    _still_fine(api, route, user)


def _field_cases(route: Route) -> list[tuple[str, dict]]:
    good = {f: "x" * 20 for f in route.fields}
    cases = [("empty", {})]
    for f in route.fields:
        cases.append((f"no-{f}", {k: v for k, v in good.items() if k != f}))
        for name, bad in (("null", None), ("number", 12345), ("list", ["x"]), ("object", {"v": "x"}),
                          ("bool", True)):
            cases.append((f"{f}-{name}", {**good, f: bad}))
        cases.append((f"{f}-case", {**{k: v for k, v in good.items() if k != f}, f.upper(): "x" * 20}))
    return cases


FIELD_CASES = [(route, name, payload) for route in BODY_ROUTES for name, payload in _field_cases(route)]


@pytest.mark.parametrize("route,name,payload", FIELD_CASES,
                         ids=[f"{_route_id(r)}-{n}" for r, n, _ in FIELD_CASES])
def test_missing_or_mistyped_field_is_400_invalid_request(api, route, name, payload):
    user, token = _caller(api, route)
    if user is not None:   # the right password where a field is right, so only the shape is wrong
        payload = {k: (user.password if isinstance(v, str) and k != "new_password" else v)
                   for k, v in payload.items()}
    assert_problem(_call(api, route, token, payload=payload), 400, "invalid_request")
    _still_fine(api, route, user)


@pytest.mark.parametrize("size", [MAX_BODY + 1, 256 * 1024])
@pytest.mark.parametrize("route", BODY_ROUTES, ids=_route_id)
def test_body_over_16k_is_413(api, route, size):
    user, token = _caller(api, route)
    raw = padded_body(route.payload(user), size)
    assert_problem(_call(api, route, token, raw=raw), 413, "payload_too_large")
    _still_fine(api, route, user)


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNzd29yZA==", ""],
                         ids=["no-header", "Basic", "empty"])
@pytest.mark.parametrize("method,path", BEARER_ROUTES, ids=lambda v: str(v).replace("/", "_"))
def test_bearer_routes_without_a_token_are_401_missing_token(api, method, path, authorization):
    payload = {"current_password": strong_password(), "new_password": strong_password(),
               "password": strong_password()} if path in (CHANGE, ME) else None
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = send_json(api, method, path, payload, headers=headers,
                     content_type="application/json" if payload else None)
    assert_problem(resp, 401, "missing_token")
    assert_bearer_challenge(resp, error=None)


@pytest.mark.parametrize("method,path", BEARER_ROUTES, ids=lambda v: str(v).replace("/", "_"))
def test_bearer_routes_with_a_bad_token_are_401_invalid_token(api, method, path):
    user = register_ok(api)
    tokens = new_session(api, user)
    payload = {"current_password": user.password, "new_password": strong_password(),
               "password": user.password} if path in (CHANGE, ME) else None
    header, body, _ = tokens["access_token"].split(".")
    for bad in (f"{header}.{body}.{b64url(secrets.token_bytes(32))}", tokens["refresh_token"],
                "garbage"):
        resp = send_json(api, method, path, payload, token=bad,
                         content_type="application/json" if payload else None)
        assert_invalid_token(resp)
    assert_session_live(api, tokens)
    login_ok(api, user.email, user.password)


# --------------------------------------------------------------------------------------------
# last: a newer reset link replaces the older (the second request MAIL_RESEND_INTERVAL_SECONDS
# after the module's first)
# --------------------------------------------------------------------------------------------


def test_a_newer_reset_link_replaces_the_older(maildev, early_reset):
    er = early_reset
    nap(er.asked_at + MAIL_RESEND_INTERVAL + 1.0 - time.monotonic())
    client = Client()
    _, newer = request_reset(client, maildev, er.user)
    assert newer != er.token
    assert_problem(reset_password(client, er.token, strong_password()), 400, "link_invalid")
    new_password = strong_password()
    assert_no_content(reset_password(client, newer, new_password))
    login_ok(client, er.user.email, new_password)
