"""Forgot and resend timing over HTTP: an account and an unknown address take the same time.

API.md (Account, "Forgot / resend"): every well-formed email gets `202 {}` with the same
headers, body and timing, so the difference between accounts and unknown addresses is not
measurable from outside. The server holds every answer until MAIL_ANSWER_MS after the request
began (the account's delivery included, or left to the mailer), so both kinds should sit at
about MAIL_ANSWER_MS. Measured from outside, through the local gateway, as an attacker would.

Robust on a busy machine, as test_timing.py: the two kinds are interleaved (each pair in random
order), so a load spike slows both alike, and medians are compared with an absolute and a
relative tolerance. A real leak (an unknown address answered at once) is most of MAIL_ANSWER_MS,
far beyond the tolerance; an account's answer waiting for its delivery is proven absent
deterministically by shared/tests/smtp_faults.rs (a 5 s delivery, a 300 ms answer).

The limits must not answer instead: every request names a fresh address (one requested mail
per recipient and MAIL_RESEND_INTERVAL_SECONDS, forgot and resend together), and every few
requests come from a fresh source address, far below IP_RATE_LIMIT_PER_MINUTE.
"""

import random
import statistics
import time
import support

from support import (
    IP_LIMIT,
    MAIL_ANSWER_MS,
    assert_accepted,
    forgot_password,
    new_email,
    register_ok,
    resend_verification,
)

PAIRS = 32                  # samples of each kind
ABSOLUTE_MS = 10.0          # always allowed, whatever the medians
RELATIVE = 0.05             # of the smaller median
PER_CLIENT = max(2, min(20, (IP_LIMIT or 60) // 3) // 2 * 2)


class Clients:
    """Hands out a client, a fresh one (a fresh source address) every PER_CLIENT requests."""

    def __init__(self, new_client):
        self.new_client = new_client
        self.client, self.used = new_client(), 0

    def next(self):
        if self.used >= PER_CLIENT:
            self.client, self.used = self.new_client(), 0
        self.used += 1
        return self.client


def _timed(client, call, email: str) -> float:
    start = time.perf_counter()
    resp = call(client, email)
    elapsed = (time.perf_counter() - start) * 1000
    assert_accepted(resp)
    return elapsed


def _compare(new_client, call, what: str) -> None:
    clients = Clients(new_client)
    accounts = [register_ok(clients.next()).email for _ in range(PAIRS)]
    unknown = [new_email("timing-unknown") for _ in range(PAIRS)]
    # One request first, not counted: the first call may start the function.
    _timed(clients.next(), call, new_email("timing-warm"))

    rng = random.SystemRandom()
    account_ms, unknown_ms = [], []
    for i in range(PAIRS):
        kinds = [("account", accounts[i]), ("unknown", unknown[i])]
        rng.shuffle(kinds)
        for kind, email in kinds:
            elapsed = _timed(clients.next(), call, email)
            (account_ms if kind == "account" else unknown_ms).append(elapsed)

    account, absent = statistics.median(account_ms), statistics.median(unknown_ms)
    detail = (f"{what}: median {account:.1f} ms for an account vs {absent:.1f} ms for an unknown "
              f"address over {PAIRS} each; account {sorted(round(x, 1) for x in account_ms)}, "
              f"unknown {sorted(round(x, 1) for x in unknown_ms)}")
    # both held until MAIL_ANSWER_MS after the request began
    assert min(account_ms + unknown_ms) >= MAIL_ANSWER_MS - 5, detail
    allowed = max(ABSOLUTE_MS, RELATIVE * min(account, absent))
    support.TIMINGS.append(f"{what}: median {account:.1f} ms (account) vs {absent:.1f} ms "
                           f"(unknown) over {PAIRS} each, ±{allowed:.1f} ms allowed")
    assert abs(account - absent) <= allowed, f"timing tells accounts apart (±{allowed:.1f} ms allowed): {detail}"


def test_forgot_takes_the_same_time_for_an_account_and_an_unknown_address(new_client):
    _compare(new_client, forgot_password, "forgot")


def test_resend_takes_the_same_time_for_an_unverified_account_and_an_unknown_address(new_client):
    _compare(new_client, resend_verification, "resend")
