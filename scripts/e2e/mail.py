"""A small client of MailDev's REST API, for the tests that read the mail the functions send.

Environment:
  MAILDEV_URL   base URL of the MailDev web server, e.g. http://127.0.0.1:1080 (required by every
                test that reads mail: unset, those tests FAIL, they are never skipped)
  MAILDEV_CTL   "NAME SMTP_PORT WEB_PORT", the arguments of `scripts/maildev.sh stop|start` for
                the MailDev the functions deliver to (only the fault test stops and starts it)
  E2E_MAIL_WAIT_SECONDS   how long to wait for a message to arrive (default 20)
  CARGO_LAMBDA, LAMBDA_INVOKE_PORT   how to invoke the mailer function (scripts/test.sh sets
                both; by default .venv's cargo-lambda and the API's port + 1)

A message whose request's own delivery attempt did not finish in time (forgot and resend cut
theirs off at MAIL_ANSWER_MS, which a busy machine can reach) waits for the scheduled mailer,
as in the cloud. No schedule runs during the tests, so a wait that finds nothing after a few
seconds runs the mailer itself, as the schedule would.

MailDev 2.x serves its REST API at /email, MailDev 3.x at /api/email; the client uses whichever
answers, so MAILDEV_URL is the plain base URL for both.

Messages are matched by recipient (every test mails its own fresh addresses), never by
position in the inbox, so tests never depend on what other tests sent.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import re
import subprocess
import time
import urllib.parse
from dataclasses import dataclass

import pytest

MAILDEV_URL = os.environ.get("MAILDEV_URL", "").strip().rstrip("/")
MAILDEV_CTL = os.environ.get("MAILDEV_CTL", "").strip()
MAIL_WAIT = float(os.environ.get("E2E_MAIL_WAIT_SECONDS", "20"))
POLL_INTERVAL = 0.1
# A wait runs the mailer after this long without the message, and then at most this often.
MAILER_AFTER = 3.0
ROOT = pathlib.Path(__file__).resolve().parents[2]


def invoke_mailer() -> str:
    """One scheduled mailer run, as `make dev` and the schedule do it."""
    api_port = urllib.parse.urlsplit(os.environ.get("API_URL", "http://127.0.0.1:9000")).port or 80
    port = os.environ.get("LAMBDA_INVOKE_PORT") or str(api_port + 1)
    cargo_lambda = os.environ.get("CARGO_LAMBDA") or str(ROOT / ".venv" / "bin" / "cargo-lambda")
    done = subprocess.run(
        [cargo_lambda, "lambda", "invoke", "mailer",
         "--invoke-address", "127.0.0.1", "--invoke-port", port, "--data-ascii", "{}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mailer invoke failed: {done.stdout}{done.stderr}"
    return done.stdout

# A link token: at least 256 random bits in base64url (43 characters), no padding.
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class Message:
    raw: dict

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def subject(self) -> str:
        return self.raw.get("subject") or ""

    @property
    def text(self) -> str:
        return self.raw.get("text") or ""

    @property
    def html(self) -> str:
        return self.raw.get("html") or ""

    @property
    def recipients(self) -> set[str]:
        found = set()
        for entry in (self.raw.get("to") or []) + ((self.raw.get("envelope") or {}).get("to") or []):
            if isinstance(entry, dict) and entry.get("address"):
                found.add(entry["address"].lower())
        return found

    @property
    def senders(self) -> set[str]:
        return {e["address"].lower() for e in self.raw.get("from") or []
                if isinstance(e, dict) and e.get("address")}

    def __repr__(self) -> str:
        return (f"<Message {self.id} to {sorted(self.recipients)} {self.subject!r} "
                f"text {self.text[:300]!r}>")


def require_maildev() -> "MailDev":
    if not MAILDEV_URL:
        pytest.fail("MAILDEV_URL is not set: the mail tests read the delivered mail from "
                    "MailDev's REST API (scripts/test.sh sets it)", pytrace=False)
    return MailDev(MAILDEV_URL)


class MailDev:
    def __init__(self, base_url: str, timeout: float = 10.0):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http":
            raise ValueError(f"MAILDEV_URL must be http://…, got {base_url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        self._api: str | None = None

    def _call(self, method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _list_at(self, path: str) -> list | None:
        try:
            status, body = self._call("GET", path)
        except (OSError, http.client.HTTPException) as exc:
            pytest.fail(f"MailDev at {MAILDEV_URL} does not answer ({type(exc).__name__}: {exc})",
                        pytrace=False)
        if status != 200:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, list) else None

    def api(self) -> str:
        """The path of the email collection: /email (MailDev 2) or /api/email (MailDev 3)."""
        if self._api is None:
            for candidate in (f"{self.prefix}/api/email", f"{self.prefix}/email"):
                if self._list_at(candidate) is not None:
                    self._api = candidate
                    break
            else:
                pytest.fail(f"MailDev at {MAILDEV_URL} lists no emails at /api/email or /email",
                            pytrace=False)
        return self._api

    def messages(self, query: str = "") -> list[Message]:
        data = self._list_at(self.api() + (f"?{query}" if query else ""))
        if data is None:
            pytest.fail(f"MailDev at {MAILDEV_URL} stopped listing emails", pytrace=False)
        return [Message(m) for m in data if isinstance(m, dict) and "id" in m]

    def to(self, address: str, where=None) -> list[Message]:
        """The messages to `address` (the server sends to the normalized, lower-case form) that
        satisfy `where`, in arrival order. MailDev filters by recipient itself (both versions
        take `?to.address=`), so a poll does not fetch the whole inbox."""
        address = address.lower()
        query = urllib.parse.urlencode({"to.address": address})
        return [m for m in self.messages(query)
                if address in m.recipients and (where is None or where(m))]

    def wait_for(self, address: str, count: int = 1, where=None,
                 timeout: float | None = None) -> list[Message]:
        """Polls until at least `count` messages to `address` (satisfying `where`) arrived;
        returns them all."""
        wait = MAIL_WAIT if timeout is None else timeout
        started = time.monotonic()
        deadline = started + wait
        mailer_at = started + MAILER_AFTER
        while True:
            found = self.to(address, where)
            if len(found) >= count:
                return found
            if time.monotonic() > mailer_at:
                invoke_mailer()
                mailer_at = time.monotonic() + MAILER_AFTER
                continue
            if time.monotonic() > deadline:
                pytest.fail(f"{len(found)} matching message(s) to {address} after {wait:.0f} s, "
                            f"expected {count}: {self.to(address)!r}", pytrace=False)
            time.sleep(POLL_INTERVAL)

    def wait_for_one(self, address: str, where=None, timeout: float | None = None) -> Message:
        """The one message to `address` satisfying `where`; fails if none comes or more did."""
        found = self.wait_for(address, 1, where, timeout)
        assert len(found) == 1, f"expected one matching message to {address}, got {found!r}"
        return found[0]

    def wait_for_new(self, address: str, seen: list[Message], where=None,
                     timeout: float | None = None) -> Message:
        """The one message to `address` (satisfying `where`) that is not in `seen`."""
        known = {m.id for m in seen}
        found = self.wait_for(address, 1, lambda m: m.id not in known and (where is None or where(m)),
                              timeout)
        assert len(found) == 1, f"expected one new message to {address}, got {found!r}"
        return found[0]

    def assert_none_arrive(self, address: str, seen: list[Message] | None = None,
                           quiet: float = 2.0) -> None:
        """No message to `address` beyond `seen` arrives within `quiet` seconds."""
        self.assert_none_arrive_at([address], seen, quiet)

    def assert_none_arrive_at(self, addresses: list[str], seen: list[Message] | None = None,
                              quiet: float = 2.0) -> None:
        """No message to any of `addresses` beyond `seen` arrives within `quiet` seconds (the
        requests that would have sent one answered after their delivery attempt, so `quiet`
        only covers MailDev's own processing)."""
        known = {m.id for m in seen or []}
        deadline = time.monotonic() + quiet
        while True:
            for address in addresses:
                extra = [m for m in self.to(address) if m.id not in known]
                assert not extra, f"unexpected mail to {address}: {extra!r}"
            if time.monotonic() > deadline:
                return
            time.sleep(POLL_INTERVAL * 3)

    def delete(self, message_id: str) -> None:
        status, body = self._call("DELETE", f"{self.api()}/{urllib.parse.quote(message_id)}")
        assert status == 200, f"MailDev DELETE {message_id}: {status} {body[:200]!r}"


def link_tokens(message: Message, page: str) -> tuple[set[str], set[str]]:
    """The link tokens of `{…}/{page}#token=…` links in the text and in the HTML part."""
    pattern = re.compile(r"(https?://[^\s\"'<>]*?)/" + re.escape(page) + r"#token=([A-Za-z0-9_-]+)")
    text = {m.group(2) for m in pattern.finditer(message.text)}
    html = {m.group(2) for m in pattern.finditer(message.html.replace("&amp;", "&"))}
    return text, html


def links(message: Message, page: str) -> set[str]:
    pattern = re.compile(r"https?://[^\s\"'<>]*?/" + re.escape(page) + r"#token=[A-Za-z0-9_-]+")
    return {m.group(0) for m in pattern.finditer(message.text)} | \
        {m.group(0) for m in pattern.finditer(message.html.replace("&amp;", "&"))}


def token_from(message: Message, page: str) -> str:
    """The one link token of the message's `page` link, the same in both parts."""
    text, html = link_tokens(message, page)
    assert text, f"no {page}#token=… link in the plain-text part: {message!r}"
    assert html, f"no {page}#token=… link in the HTML part: {message.html[:800]!r}"
    assert text == html and len(text) == 1, f"the parts name different tokens: {text} vs {html}"
    token = text.pop()
    assert TOKEN_CHARS.fullmatch(token) and len(token) >= 43, (
        f"link token is not 256+ bits of base64url: {token!r}")
    return token


def is_link(page: str):
    """`where` for messages with a `page#token=…` link (verify-email, reset-password)."""
    return lambda m: bool(links(m, page))


def is_notice(m: Message) -> bool:
    """`where` for a notice: a message with no link token at all."""
    return "#token=" not in m.text and "#token=" not in m.html


VERIFICATION = is_link("verify-email")
RESET_MAIL = is_link("reset-password")
