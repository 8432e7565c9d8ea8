"""End-to-end black-box tests of API.md "Mail" and of forgot / resend in "Account": what the
messages look like, that forgot and resend answer every email alike, the per-recipient limits,
and the faults (the mail server down or silent) — over HTTP, reading the delivered mail from
MailDev's REST API (mail.py; MAILDEV_URL must be set, else these tests fail).

The fault test stops the MailDev every mail test reads (MAILDEV_CTL, through
scripts/maildev.sh), listens on its SMTP port itself for a while, starts it again and runs the
mailer (`cargo lambda invoke mailer` against the watch on the API's port + 1). The suite runs
serially (no pytest-xdist), so nothing else reads mail meanwhile; the test is marked
`stops_maildev` and is the last of this module.

Forgot and resend share one per-recipient limit (one requested mail per
MAIL_RESEND_INTERVAL_SECONDS), so every test asks for mail to fresh addresses only.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import API_URL, Client
from mail import (
    MAILDEV_CTL,
    invoke_mailer,
    RESET_MAIL,
    VERIFICATION,
    Message,
    is_notice,
    links,
    require_maildev,
    token_from,
)
from support import (
    APP_URL,
    MAIL_ANSWER_MS,
    MAIL_FROM,
    MAIL_PRODUCT_NAME,
    MAIL_RESEND_INTERVAL,
    SMTP_TIMEOUT_MS,
    User,
    assert_accepted,
    assert_json_response,
    assert_no_content,
    assert_too_many,
    change_password,
    comparable_headers,
    disable_user,
    forgot_password,
    login_ok,
    new_email,
    register_ok,
    resend_verification,
    reset_password,
    run_sql,
    strong_password,
    token_for,
    uniq,
    verify_email,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERIFY_PAGE = "verify-email"
RESET_PAGE = "reset-password"
ANSWER_S = MAIL_ANSWER_MS / 1000


def timed(call):
    start = time.perf_counter()
    resp = call()
    return resp, time.perf_counter() - start


def from_address(value: str) -> str:
    match = re.search(r"<([^>]+)>", value)
    return (match.group(1) if match else value).strip().lower()


def assert_well_formed(message: Message, email: str, page: str | None) -> str | None:
    """Both parts, the product name, the sender; with `page`, exactly one link token, in the
    fragment of `{APP_URL}/{page}`, the same in both parts. Returns that token."""
    assert message.recipients == {email.lower()}, message
    assert from_address(MAIL_FROM) in message.senders, (message.raw.get("from"), MAIL_FROM)
    assert message.text.strip(), f"no plain-text part: {message!r}"
    assert message.html.strip(), f"no HTML part: {message!r}"
    assert MAIL_PRODUCT_NAME in message.subject, message.subject
    assert MAIL_PRODUCT_NAME in message.text, message.text
    assert html.escape(MAIL_PRODUCT_NAME) in message.html, message.html
    if page is None:
        assert is_notice(message), f"a notice carries a link token: {message!r}"
        return None
    token = token_from(message, page)
    link = f"{APP_URL}/{page}#token={token}"
    assert links(message, page) == {link}, (links(message, page), link)
    assert re.search(r"""href\s*=\s*["']""" + re.escape(link) + r"""["']""",
                     message.html.replace("&amp;", "&")), message.html
    # the token travels in the fragment only: never in a query, the subject or a second link
    for part in (message.text, message.html):
        assert part.count(token) == part.count(link), "the token appears outside its link"
        assert "?token=" not in part and "&token=" not in part, part
    assert token not in message.subject
    return token


# --------------------------------------------------------------------------------------------
# the messages
# --------------------------------------------------------------------------------------------


def test_the_verification_mail(api, maildev):
    user = register_ok(api)
    message = maildev.wait_for_one(user.email, VERIFICATION)
    token = assert_well_formed(message, user.email, VERIFY_PAGE)
    assert_json_response(verify_email(api, token), 200)


def test_the_reset_mail(api, maildev):
    user = register_ok(api)
    seen = [maildev.wait_for_one(user.email, VERIFICATION)]
    assert_accepted(forgot_password(api, user.email.upper()))   # any spelling of the address
    message = maildev.wait_for_new(user.email, seen)
    token = assert_well_formed(message, user.email, RESET_PAGE)
    assert_no_content(reset_password(api, token, strong_password()))


def test_the_password_changed_notices(api, maildev):
    user = register_ok(api)
    access = token_for(api, user)
    seen = [maildev.wait_for_one(user.email, VERIFICATION)]
    new_password = strong_password()
    assert_no_content(change_password(api, access, user.password, new_password))
    notice = maildev.wait_for_new(user.email, seen)
    assert_well_formed(notice, user.email, None)
    assert notice.subject != seen[0].subject


def test_notices_and_the_registration_mail_are_never_held_back(api, maildev):
    # the registration's verification mail does not count against the per-recipient limit,
    # and neither do the notices after a reset and a change, one right after the other
    user = register_ok(api)
    maildev.wait_for_one(user.email, VERIFICATION)
    seen = maildev.to(user.email)
    assert_accepted(forgot_password(api, user.email))
    token = token_from(maildev.wait_for_new(user.email, seen, RESET_MAIL), RESET_PAGE)
    seen = maildev.to(user.email)
    password = strong_password()
    assert_no_content(reset_password(api, token, password))
    first = maildev.wait_for_new(user.email, seen, is_notice)
    access = login_ok(api, user.email, password)["access_token"]
    seen = maildev.to(user.email)
    assert_no_content(change_password(api, access, password, strong_password()))
    second = maildev.wait_for_new(user.email, seen, is_notice)
    assert first.id != second.id


# --------------------------------------------------------------------------------------------
# forgot and resend answer every email alike
# --------------------------------------------------------------------------------------------


def _accounts(client, maildev) -> dict[str, User]:
    """Fresh accounts in every state: unverified, verified, disabled."""
    unverified, verified, disabled = (register_ok(client) for _ in range(3))
    token = token_from(maildev.wait_for_one(verified.email, VERIFICATION), VERIFY_PAGE)
    assert_json_response(verify_email(client, token), 200)
    disable_user(disabled.id)
    for user in (unverified, disabled):
        maildev.wait_for_one(user.email, VERIFICATION)
    return {"unverified": unverified, "verified": verified, "disabled": disabled}


def _ask_all(client, route_call, emails: dict[str, str]) -> dict[str, tuple]:
    answers = {}
    for name, email in emails.items():
        answers[name] = timed(lambda: route_call(client, email))
    return answers


def _assert_alike(answers: dict[str, tuple]) -> None:
    base, _ = answers["unknown"]
    for name, (resp, elapsed) in answers.items():
        assert resp.status == 202, (name, resp)
        assert_accepted(resp)
        assert resp.body == base.body, (name, resp, base)
        assert comparable_headers(resp) == comparable_headers(base), (name, resp, base)
        # held until MAIL_ANSWER_MS after the request began, whatever the path
        assert elapsed >= ANSWER_S - 0.005, f"{name}: answered after {elapsed * 1000:.0f} ms"


def _emails(accounts: dict[str, User]) -> dict[str, str]:
    u = uniq()
    return {
        **{name: user.email for name, user in accounts.items()},
        "unknown": f"nobody-{u}@example.com",
        "malformed": f"not-an-email-{u}",
        "too long": f"{u}{'a' * 32}@{'b' * 63}.{'c' * 63}.{'d' * 63}.{'e' * 63}.example.com",
        "typed with capitals and spaces": None,   # filled below: an account of its own
    }


def test_forgot_answers_every_email_alike_and_mails_only_active_accounts(new_client, maildev):
    setup = new_client()
    accounts = _accounts(setup, maildev)
    typed = register_ok(setup)
    maildev.wait_for_one(typed.email, VERIFICATION)
    emails = _emails(accounts)
    emails["typed with capitals and spaces"] = f"  {typed.email.upper()}\t"
    before = {e: maildev.to(e) for e in [u.email for u in accounts.values()] + [typed.email,
                                                                                   emails["unknown"]]}
    answers = _ask_all(new_client(), forgot_password, emails)
    _assert_alike(answers)
    # only an active account's own mailbox learns anything: a reset link
    for user in (accounts["unverified"], accounts["verified"], typed):
        message = maildev.wait_for_new(user.email, before[user.email])
        assert_well_formed(message, user.email, RESET_PAGE)
    disabled = accounts["disabled"].email
    maildev.assert_none_arrive_at([disabled, emails["unknown"]],
                                  before[disabled] + before[emails["unknown"]])


def test_resend_answers_every_email_alike_and_mails_only_unverified_accounts(new_client, maildev):
    setup = new_client()
    accounts = _accounts(setup, maildev)
    typed = register_ok(setup)
    maildev.wait_for_one(typed.email, VERIFICATION)
    emails = _emails(accounts)
    emails["typed with capitals and spaces"] = f"  {typed.email.upper()}\t"
    quiet = [accounts["verified"].email, accounts["disabled"].email, emails["unknown"]]
    before = {e: maildev.to(e) for e in quiet + [accounts["unverified"].email, typed.email]}
    since = time.time()
    answers = _ask_all(new_client(), resend_verification, emails)
    _assert_alike(answers)
    for user in (accounts["unverified"], typed):
        message = maildev.wait_for_new(user.email, before[user.email])
        assert_well_formed(message, user.email, VERIFY_PAGE)
    maildev.assert_none_arrive_at(quiet, [m for e in quiet for m in before[e]])
    sent = run_sql("SELECT count(*) FROM auth_events WHERE event = 'email.verification_sent' "
                   "AND user_id IN (:'a', :'b') AND occurred_at >= to_timestamp(:'t');",
                   a=accounts["verified"].id, b=accounts["disabled"].id, t=str(since))
    assert sent == "0", "a verification was sent to a verified or disabled account"


# --------------------------------------------------------------------------------------------
# per-recipient limits
# --------------------------------------------------------------------------------------------


def _second_request_is_limited(new_client, maildev, call, account: User, kind) -> None:
    unknown = new_email("limited")
    first, second = new_client(), new_client()
    seen = [maildev.wait_for_one(account.email, VERIFICATION)]   # the registration's
    for email in (account.email, unknown):
        assert_accepted(call(first, email))
    delivered = maildev.wait_for_new(account.email, seen, kind)
    limited = {}
    # from another source address and spelled otherwise: the same recipient, still limited
    for email in (account.email, unknown):
        resp = call(second, f" {email.upper()} ")
        retry_after = assert_too_many(resp)
        assert retry_after <= MAIL_RESEND_INTERVAL, resp
        limited[email] = resp
    a, b = limited[account.email], limited[unknown]
    assert a.body == b.body, (a, b)
    assert [h for h in comparable_headers(a) if h[0] != "retry-after"] == \
        [h for h in comparable_headers(b) if h[0] != "retry-after"], (a, b)
    assert abs(int(a.header("retry-after")) - int(b.header("retry-after"))) <= 2, (a, b)
    maildev.assert_none_arrive(account.email, seen + [delivered])


def test_a_second_forgot_within_the_interval_is_429_for_an_account_and_an_unknown_address(
        api, new_client, maildev):
    _second_request_is_limited(new_client, maildev, forgot_password, register_ok(api), RESET_MAIL)


def test_a_second_resend_within_the_interval_is_429_for_an_account_and_an_unknown_address(
        api, new_client, maildev):
    user = register_ok(api)
    maildev.wait_for_one(user.email, VERIFICATION)
    _second_request_is_limited(new_client, maildev, resend_verification, user, VERIFICATION)


def test_forgot_and_resend_share_the_per_recipient_limit(api, maildev):
    user = register_ok(api)
    maildev.wait_for_one(user.email, VERIFICATION)
    assert_accepted(forgot_password(api, user.email))
    maildev.wait_for_one(user.email, RESET_MAIL)
    assert_too_many(resend_verification(api, user.email))
    maildev.assert_none_arrive(user.email, maildev.to(user.email))
    assert len(maildev.to(user.email, VERIFICATION)) == 1


# --------------------------------------------------------------------------------------------
# faults: the mail server down, then silent; the mailer delivers afterwards, each message once
# (last in this module: it stops the MailDev the other tests read)
# --------------------------------------------------------------------------------------------


def maildev_ctl(command: str) -> None:
    args = MAILDEV_CTL.split()
    if len(args) != 3:
        pytest.fail(f"MAILDEV_CTL must be 'NAME SMTP_PORT WEB_PORT' (scripts/maildev.sh's "
                    f"arguments), got {MAILDEV_CTL!r}", pytrace=False)
    done = subprocess.run([str(ROOT / "scripts" / "maildev.sh"), command, *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"maildev.sh {command}: {done.stdout}{done.stderr}"


class SilentSmtp:
    """A mail server that accepts connections and never says a word (not even its greeting)."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        # shutdown wakes the blocked accept (a bare close would leave the port listening)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(timeout=5)


def outbox_of(user_id: str) -> list[tuple[str, str, int]]:
    out = run_sql("SELECT kind || ' ' || status || ' ' || attempts FROM outbox "
                  "WHERE user_id = :'id' ORDER BY created_at;", id=user_id)
    return [tuple(line.split(" ")) for line in out.splitlines() if line]


@pytest.mark.stops_maildev
def test_mail_server_faults_lose_no_mail_and_the_mailer_delivers_each_message_once(new_client):
    maildev = require_maildev()
    if len(MAILDEV_CTL.split()) != 3:
        maildev_ctl("status")  # fails with the explanation
    smtp_port = int(MAILDEV_CTL.split()[1])
    client = new_client()
    down, silent = register_ok(client), register_ok(client)
    for user in (down, silent):
        maildev.wait_for_one(user.email, VERIFICATION)
    # the usual time of a forgot, MailDev up (accounts and unknown addresses alike)
    usual = max(timed(lambda: forgot_password(client, new_email("usual")))[1] for _ in range(3))

    maildev_ctl("stop")
    silent_server = None
    try:
        # MailDev down: forgot still answers 202 in its usual time, register still 201
        resp, elapsed = timed(lambda: forgot_password(client, down.email))
        assert_accepted(resp)
        assert ANSWER_S - 0.005 <= elapsed <= usual + 0.5, f"{elapsed * 1000:.0f} ms while down"
        newcomer, elapsed = timed(lambda: register_ok(client))
        assert elapsed <= SMTP_TIMEOUT_MS / 1000 + 2, f"register took {elapsed:.1f} s while down"
        # the messages wait in the outbox
        # (the registration's verification, delivered, then the reset link, waiting)
        assert len(outbox_of(down.id)) == 2 and outbox_of(down.id)[-1][1] == "pending", \
            outbox_of(down.id)
        assert [r[1] for r in outbox_of(newcomer.id)] == ["pending"], outbox_of(newcomer.id)

        # a server that accepts and never answers: forgot still answers in its usual time,
        # register within SMTP_TIMEOUT_MS and a little
        silent_server = SilentSmtp(smtp_port)
        resp, elapsed = timed(lambda: forgot_password(client, silent.email))
        assert_accepted(resp)
        assert ANSWER_S - 0.005 <= elapsed <= usual + 0.5, f"{elapsed * 1000:.0f} ms while silent"
        stalled, elapsed = timed(lambda: register_ok(client))
        assert elapsed <= SMTP_TIMEOUT_MS / 1000 + 2, f"register took {elapsed:.1f} s while silent"
        assert silent_server.held, "the functions never reached the silent server"
        assert len(outbox_of(silent.id)) == 2 and outbox_of(silent.id)[-1][1] == "pending", \
            outbox_of(silent.id)
        assert [r[1] for r in outbox_of(stalled.id)] == ["pending"], outbox_of(stalled.id)
    finally:
        if silent_server is not None:
            silent_server.close()
        maildev_ctl("start")

    maildev = require_maildev()   # the new server: nothing in its inbox yet
    waiting = {down.email: RESET_MAIL, silent.email: RESET_MAIL,
               newcomer.email: VERIFICATION, stalled.email: VERIFICATION}
    # nothing arrives by itself: the messages wait for the mailer
    maildev.assert_none_arrive_at(list(waiting))
    # the mailer delivers each (a request cut off at its answer leaves its message leased for
    # twice SMTP_TIMEOUT_MS, so this can take a few runs)
    deadline = time.monotonic() + 30 + 60
    while True:
        invoke_mailer()
        if all(maildev.to(email, kind) for email, kind in waiting.items()):
            break
        assert time.monotonic() < deadline, {e: maildev.to(e) for e in waiting}
        time.sleep(2)
    # and never again: further runs send nothing more
    for _ in range(2):
        invoke_mailer()
    maildev.assert_none_arrive_at(list(waiting), [m for e in waiting for m in maildev.to(e)])
    for email, kind in waiting.items():
        assert len(maildev.to(email)) == 1, (email, maildev.to(email))
        assert len(maildev.to(email, kind)) == 1
    for user in (down, silent, newcomer, stalled):
        assert all(r[1] == "sent" for r in outbox_of(user.id)), outbox_of(user.id)
    # the delayed links work
    for user in (down, silent):
        token = token_from(maildev.to(user.email, RESET_MAIL)[0], RESET_PAGE)
        assert_no_content(reset_password(Client(), token, strong_password()))
    for user in (newcomer, stalled):
        token = token_from(maildev.to(user.email, VERIFICATION)[0], VERIFY_PAGE)
        assert_json_response(verify_email(Client(), token), 200)
