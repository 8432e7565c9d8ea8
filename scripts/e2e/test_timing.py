"""Login timing over HTTP: a wrong password and an unknown email take the same time.

API.md (Login input): any well-formed email/password pair that matches no account is
`401 invalid_credentials` with the same body and the same timing, so response time cannot tell
which accounts exist. Measured from outside, through the local gateway, as an attacker would.

Robust on a busy machine: the two kinds are interleaved (each pair in random order), so a load
spike slows both alike, and medians are compared with an absolute and a relative tolerance. A
real leak (an unknown email answered without hashing a password) is most of a login's time,
far beyond the tolerance.

The limits must not answer instead: every email gets fewer than LOGIN_BACKOFF_AFTER failures,
and every few requests come from a fresh source address, far below IP_RATE_LIMIT_PER_MINUTE.
"""

import random
import statistics
import time
import support

from support import BACKOFF_AFTER, IP_LIMIT, assert_problem, new_email, register_ok

PAIRS = 48                                  # samples of each kind
TRIES_PER_EMAIL = max(1, min(4, BACKOFF_AFTER - 1))
ABSOLUTE_MS = 10.0                          # always allowed, whatever the medians
RELATIVE = 0.25                             # of the smaller median


def _timed_login(client, email: str, password: str) -> float:
    start = time.perf_counter()
    resp = client.login(email, password)
    elapsed = (time.perf_counter() - start) * 1000
    assert_problem(resp, 401, "invalid_credentials", not_echoed=(password,))
    return elapsed


def test_wrong_password_and_unknown_email_take_the_same_time(api, new_client):
    accounts = max(1, -(-PAIRS // TRIES_PER_EMAIL))
    users = [register_ok(api, email=new_email("timing")) for _ in range(accounts)]
    unknown = [new_email("timing-unknown") for _ in range(accounts)]

    # One login first, not counted: the first call may start the function.
    warm = new_client()
    _timed_login(warm, new_email("timing-warm"), "Wrong horse battery 1")

    # Each client makes at most this many requests: well inside one address window.
    per_client = max(2, min(20, (IP_LIMIT or 60) // 3) // 2 * 2)
    client = new_client()
    used = 0
    rng = random.SystemRandom()
    wrong_ms, unknown_ms = [], []
    for i in range(PAIRS):
        user, stranger = users[i // TRIES_PER_EMAIL], unknown[i // TRIES_PER_EMAIL]
        password = f"Not the password {i} {rng.random()}"
        kinds = [("wrong", user.email), ("unknown", stranger)]
        rng.shuffle(kinds)
        for kind, email in kinds:
            if used >= per_client:
                client, used = new_client(), 0
            elapsed = _timed_login(client, email, password)
            used += 1
            (wrong_ms if kind == "wrong" else unknown_ms).append(elapsed)

    wrong, absent = statistics.median(wrong_ms), statistics.median(unknown_ms)
    allowed = max(ABSOLUTE_MS, RELATIVE * min(wrong, absent))
    support.TIMINGS.append(f"login: median {wrong:.1f} ms (wrong password) vs {absent:.1f} ms "
                           f"(unknown email) over {PAIRS} each, ±{allowed:.1f} ms allowed")
    assert abs(wrong - absent) <= allowed, (
        f"login timing tells accounts apart: median {wrong:.1f} ms for a wrong password vs "
        f"{absent:.1f} ms for an unknown email over {PAIRS} each (allowed ±{allowed:.1f} ms); "
        f"wrong {sorted(round(x, 1) for x in wrong_ms)}, unknown "
        f"{sorted(round(x, 1) for x in unknown_ms)}"
    )
