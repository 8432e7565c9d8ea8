"""End-to-end black-box tests of the HTTP contract in docs/api.md ("Routes": register, login, me;
the token rules of "Tokens" and "Sessions" as they apply to access tokens).

Run against a live API (e.g. `cargo lambda watch` behind scripts/gateway.py), with the server's
signing key — JWT_SECRET (HS256) or JWT_PRIVATE_KEY and JWT_KEY_ID (RS256):

    API_URL=http://127.0.0.1:9000 JWT_SECRET=… DATABASE_URL=… .venv/bin/pytest -q scripts/e2e

Every test works on accounts with fresh random emails and its own source address (see
conftest.py), so the suite can be re-run against the same database with the default limits on.
Refresh, logout, keys, limits and audit are covered in test_sessions.py.
"""

from __future__ import annotations

import json
import secrets
import time
import unicodedata
import uuid

import jwt
import pytest

from support import (
    at_once,
    ACCESS_TOKEN_TTL,
    ACCESS_TOKEN_TYP,
    ALG,
    ALNUM,
    DROP,
    JWT_AUDIENCE,
    JWT_ISSUER,
    LOGIN,
    MAX_BODY,
    PASSWORD_MAX,
    PASSWORD_MIN,
    REGISTER,
    TIMEOUT,
    User,
    assert_bearer_challenge,
    assert_json_response,
    assert_problem,
    assert_token_body,
    assert_user_body,
    attacker_private_key,
    b64json,
    confusable_hmac_key,
    decode_jwt,
    default_header,
    delete_user,
    disable_user,
    forge,
    good_claims,
    login_ok,
    new_email,
    padded_body,
    public_jwk,
    public_pem,
    rand_chars,
    register_ok,
    run_sql,
    server_kid,
    server_private_key,
    signed_with_header,
    strong_password,
    token_for,
    uniq,
    verify_access_token,
)

POST_ROUTES = [REGISTER, LOGIN]


@pytest.fixture(scope="session")
def account(new_client) -> User:
    """A read-only account shared by tests that don't change it (keeps argon2 work down),
    logged in once so that forged tokens can name its live session."""
    client = new_client()
    user = register_ok(client)
    token_for(client, user)
    return user


# --------------------------------------------------------------------------------------------
# requests: content type, JSON, fields, size (both POST routes)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", POST_ROUTES)
def test_missing_content_type_is_415(api, route):
    resp = api.post_json(route, {"email": new_email(), "password": strong_password()},
                         content_type=None)   # http.client adds no Content-Type itself
    assert_problem(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "application/octet-stream",
    "application/jsonx",
    "",
])
@pytest.mark.parametrize("route", POST_ROUTES)
def test_other_content_type_is_415(api, route, content_type):
    resp = api.post_json(route, {"email": new_email(), "password": strong_password()},
                         content_type=content_type)
    assert_problem(resp, 415, "unsupported_media_type")


JSON_CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    "Application/JSON",
]


@pytest.mark.parametrize("content_type", JSON_CONTENT_TYPES)
def test_register_accepts_json_content_types(api, content_type):
    email = new_email()
    resp = api.post_json(REGISTER, {"email": email, "password": strong_password()},
                         content_type=content_type)
    assert_user_body(assert_json_response(resp, 201), email)


@pytest.mark.parametrize("content_type", JSON_CONTENT_TYPES)
def test_login_accepts_json_content_types(api, account, content_type):
    resp = api.post_json(LOGIN, {"email": account.email, "password": account.password},
                         content_type=content_type)
    assert_json_response(resp, 200)


@pytest.mark.parametrize("raw", [
    b"",
    b"{",
    b"{\"email\": ",
    b"not json",
    b"{'email': 'a@example.com', 'password': 'x'}",
    b"{\"email\": \"a@example.com\", \"password\": \"x\",}",
    b"{\"email\": \"a@example.com\", \"password\": \"x\"} trailing",
    b"{\"email\": \"a@example.com\"}}",
], ids=lambda raw: repr(raw)[:40])
@pytest.mark.parametrize("route", POST_ROUTES)
def test_invalid_json_is_400(api, route, raw):
    assert_problem(api.post_json(route, raw=raw), 400, "invalid_json")


@pytest.mark.parametrize("raw", [
    b"[]",
    b"[{\"email\": \"a@example.com\", \"password\": \"Correct-Horse-9f3k\"}]",
    b"\"a string\"",
    b"null",
    b"42",
    b"true",
], ids=lambda raw: raw.decode()[:20])
@pytest.mark.parametrize("route", POST_ROUTES)
def test_non_object_json_is_400_invalid_json(api, route, raw):
    assert_problem(api.post_json(route, raw=raw), 400, "invalid_json")


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"],
                         ids=["ff", "overlong", "surrogate", "truncated"])
@pytest.mark.parametrize("route", POST_ROUTES)
def test_invalid_utf8_is_400_invalid_json(api, route, bad):
    raw = b'{"email": "e2e-' + uniq().encode() + bad + b'@example.com", "password": "' + \
        strong_password().encode() + b'"}'
    assert_problem(api.post_json(route, raw=raw), 400, "invalid_json")


def _field_cases():
    e, p = "someone@example.com", "E2e Str0ng-Passphrase!"
    return [
        ("empty object", {}),
        ("no password", {"email": e}),
        ("no email", {"password": p}),
        ("keys are case-sensitive", {"Email": e, "Password": p}),
        ("email number", {"email": 1, "password": p}),
        ("email null", {"email": None, "password": p}),
        ("email list", {"email": [e], "password": p}),
        ("email object", {"email": {"address": e}, "password": p}),
        ("email bool", {"email": True, "password": p}),
        ("password number", {"email": e, "password": 123456789012345}),
        ("password null", {"email": e, "password": None}),
        ("password list", {"email": e, "password": [p]}),
        ("password bool", {"email": e, "password": False}),
        ("bad email, no password", {"email": "not-an-email"}),
    ]


@pytest.mark.parametrize("payload", [c[1] for c in _field_cases()],
                         ids=[c[0] for c in _field_cases()])
@pytest.mark.parametrize("route", POST_ROUTES)
def test_missing_or_mistyped_field_is_400_invalid_request(api, route, payload):
    assert_problem(api.post_json(route, payload), 400, "invalid_request")


@pytest.mark.parametrize("size", [MAX_BODY + 1, 64 * 1024, 1024 * 1024])
@pytest.mark.parametrize("route", POST_ROUTES)
def test_body_over_16k_is_413(api, route, size):
    raw = padded_body({"email": new_email(), "password": strong_password()}, size)
    assert_problem(api.post_json(route, raw=raw), 413, "payload_too_large")


def test_register_body_of_exactly_16k_is_accepted(api):
    email, password = new_email(), strong_password()
    raw = padded_body({"email": email, "password": password}, MAX_BODY)
    assert_user_body(assert_json_response(api.post_json(REGISTER, raw=raw), 201), email)


def test_login_body_of_exactly_16k_is_accepted(api, account):
    raw = padded_body({"email": account.email, "password": account.password}, MAX_BODY)
    assert_json_response(api.post_json(LOGIN, raw=raw), 200)


def test_register_ignores_unknown_fields(api):
    email, forced_id = new_email(), str(uuid.uuid4())
    resp = api.post_json(REGISTER, {
        "email": email, "password": strong_password(),
        "id": forced_id, "is_active": False, "created_at": "2000-01-01T00:00:00Z",
        "role": "admin", "password_hash": "$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA",
        "nested": {"a": [1, 2, {"b": None}]},
    })
    body = assert_json_response(resp, 201)
    assert_user_body(body, email)   # is_active stays true, created_at is now
    assert body["id"] != forced_id


def test_login_ignores_unknown_fields(api, account):
    resp = api.post_json(LOGIN, {"email": account.email, "password": account.password,
                                 "remember_me": True, "scope": ["admin"], "grant_type": None})
    assert_json_response(resp, 200)


# --------------------------------------------------------------------------------------------
# register: success, duplicates, concurrency
# --------------------------------------------------------------------------------------------


def test_register_201_body_and_headers(api):
    email, password = new_email(), strong_password()
    resp = api.register(email, password)
    body = assert_json_response(resp, 201)
    assert_user_body(body, email)
    assert password.encode() not in resp.body
    assert b"argon2" not in resp.body.lower()


def test_register_two_accounts_get_different_ids(api):
    a, b = register_ok(api), register_ok(api)
    assert a.id != b.id


@pytest.mark.parametrize("variant", [
    lambda e: e,
    lambda e: e.upper(),
    lambda e: e[0].upper() + e[1:].replace("@example.com", "@Example.COM"),
    lambda e: "  " + e.upper() + "\u00a0\t",
], ids=["same", "upper", "mixed", "upper+whitespace"])
def test_register_duplicate_is_409_email_taken(api, variant):
    user = register_ok(api)
    password = strong_password()
    resp = api.register(variant(user.email), password)
    assert_problem(resp, 409, "email_taken", not_echoed=(password,))
    # the original account still logs in with its own password, not the second one
    login_ok(api, user.email, user.password)
    assert_problem(api.login(user.email, password), 401, "invalid_credentials")


def test_concurrent_registration_of_one_email_creates_one_account(api):
    base = f"e2e-race-{uniq()}@example.com"
    n = 20

    def variant(i: int) -> str:
        mixed = "".join(c.upper() if (j + i) % 3 == 0 else c for j, c in enumerate(base))
        return (" " * (i % 3)) + mixed + ("\t" if i % 2 else "")

    password = strong_password()
    # 20 requests at once may all hash before one insert wins: allow more than TIMEOUT.
    results = at_once(n, lambda i: api.register(variant(i), password, timeout=max(TIMEOUT, 120)))
    statuses = sorted(r.status for r in results)
    assert statuses.count(201) == 1 and statuses.count(409) == n - 1, (
        f"expected one 201 and {n - 1} 409, got {statuses}: "
        f"{[r for r in results if r.status not in (201, 409)]!r}"
    )
    for r in results:
        if r.status == 201:
            assert_user_body(r.json(), base)
        else:
            assert_problem(r, 409, "email_taken")
    login_ok(api, base, password)


# --------------------------------------------------------------------------------------------
# email rules
# --------------------------------------------------------------------------------------------

# (input, stored) with "{u}" replaced by a fresh 32-hex token per run.
VALID_EMAILS = [
    ("E2E-{u}@Example.COM", "e2e-{u}@example.com"),
    (" \t{u}@example.com\n ", "{u}@example.com"),
    ("\u00a0\u2003{u}@example.com\u2003\u00a0", "{u}@example.com"),
    ("\u3000\u2028\u205f{u}@example.com\u0085\u1680\r\n", "{u}@example.com"),
    ("a!#$%&'*+/=?^_`{|}~-{u}@example.com", "a!#$%&'*+/=?^_`{|}~-{u}@example.com"),
    ("First.Last.{u}@example.com", "first.last.{u}@example.com"),
    ("{u}@sub-1.ex-ample.co.uk", "{u}@sub-1.ex-ample.co.uk"),
    ("{u}@123.example.com", "{u}@123.example.com"),
    ("{u}@example.x1", "{u}@example.x1"),
    ("{u}@münchen.de", "{u}@xn--mnchen-3ya.de"),
    ("{u}@MÜNCHEN.DE", "{u}@xn--mnchen-3ya.de"),
    ("{u}@XN--MNCHEN-3YA.DE", "{u}@xn--mnchen-3ya.de"),
    ("{u}@faß.de", "{u}@xn--fa-hia.de"),  # non-transitional: ß is kept, not mapped to "ss"
]


@pytest.mark.parametrize("raw,stored", VALID_EMAILS, ids=[repr(v[0]) for v in VALID_EMAILS])
def test_register_normalizes_valid_email(api, raw, stored):
    u = uniq()
    user = register_ok(api, raw.replace("{u}", u), expected_email=stored.replace("{u}", u))
    # the normalized form logs in
    login_ok(api, user.email, user.password)


INVALID_EMAILS = [
    "",
    "   ",
    "plainaddress{u}",
    "@example.com",
    "{u}@",
    "{u}@@example.com",
    "a@{u}@example.com",
    ".{u}@example.com",
    "{u}.@example.com",
    "a..{u}@example.com",
    '"{u}"@example.com',
    '"a b {u}"@example.com',
    'a"{u}@example.com',
    "jöhn{u}@example.com",
    "ü{u}@example.com",
    "用户{u}@example.com",
    "{u}(comment)@example.com",
    "<{u}@example.com>",
    "Name <{u}@example.com>",
    "{u}@example.com,other@example.com",
    "{u}@example",
    "{u}@localhost",
    "{u}@.example.com",
    "{u}@example..com",
    "{u}@example.com.",
    "{u}@-example.com",
    "{u}@example-.com",
    "{u}@example.-com",
    "{u}@exa_mple.com",
    "{u}@exa%mple.com",
    "{u}@example!.com",
    "{u}@example.123",
    "{u}@example.0",
    "{u}@1.2.3.4",
    "{u}@[127.0.0.1]",
    "a b{u}@example.com",
    "{u} @example.com",
    "{u}@ example.com",
    "{u}@exam ple.com",
    "a\t{u}@example.com",
    "a\n{u}@example.com",
    "a\u00a0{u}@example.com",
    "a\u2003{u}@example.com",
    "{u}@exam\u3000ple.com",
    "a\x00{u}@example.com",
    "a\x01{u}@example.com",
    "a\x7f{u}@example.com",
    "a\x85{u}@example.com",
    "{u}@exam\x00ple.com",
    "{u}@example.com\x00",
    "\x00{u}@example.com",
]


@pytest.mark.parametrize("template", INVALID_EMAILS, ids=[repr(e) for e in INVALID_EMAILS])
def test_register_rejects_invalid_email(api, template):
    password = strong_password()
    resp = api.register(template.replace("{u}", uniq()), password)
    assert_problem(resp, 422, "invalid_email", not_echoed=(password,))


def _local(n: int) -> str:
    local = "e2e" + uniq()
    assert n >= len(local)
    return local + "x" * (n - len(local))


def _domain(n: int) -> str:
    """An ASCII domain of exactly n characters, labels ≤ 63, ending in .com."""
    labels, left = [], n - len(".com")
    while left > 0:
        take = min(63, left)
        if left - take == 1:   # a dot with nothing after it: shorten this label instead
            take -= 1
        labels.append("abcdefgh"[len(labels)] * take)
        left -= take
        if left:
            left -= 1          # the dot before the next label
    domain = ".".join(labels) + ".com"
    assert len(domain) == n and all(len(label) <= 63 for label in labels), (n, domain)
    return domain


def test_email_local_part_of_64_is_accepted(api):
    email = f"{_local(64)}@example.com"
    register_ok(api, email)


def test_email_local_part_of_65_is_rejected(api):
    assert_problem(api.register(f"{_local(65)}@example.com", strong_password()), 422, "invalid_email")


def test_email_of_254_is_accepted(api):
    email = f"{_local(64)}@{_domain(189)}"
    assert len(email) == 254
    register_ok(api, email)


def test_email_of_255_is_rejected(api):
    email = f"{_local(64)}@{_domain(190)}"
    assert len(email) == 255
    assert_problem(api.register(email, strong_password()), 422, "invalid_email")


def test_email_length_is_measured_after_trimming_and_lowercasing(api):
    email = f"{_local(64)}@{_domain(189)}"
    register_ok(api, "\u2003  " + email.upper() + " \u00a0\n", expected_email=email)


def test_email_label_of_63_is_accepted(api):
    register_ok(api, f"{_local(40)}@{'a' * 63}.example.com")


def test_email_label_of_64_is_rejected(api):
    assert_problem(api.register(f"{_local(40)}@{'a' * 64}.example.com", strong_password()),
                   422, "invalid_email")


def test_email_length_limit_applies_to_punycode_form(api):
    label = "ü" * 20                                  # stored as xn--tdaaa… (26 chars)
    domain = ".".join([label] * 8) + ".de"
    email = f"{_local(64)}@{domain}"
    ascii_label = "xn--" + label.encode("punycode").decode()
    ascii_len = len(f"{_local(64)}@" + ".".join([ascii_label] * 8) + ".de")
    assert len(email) <= 254 < ascii_len
    assert_problem(api.register(email, strong_password()), 422, "invalid_email")


def test_email_label_limit_applies_to_punycode_form(api):
    label = "ü" * 60                                  # 60 characters, 66 as xn--…
    assert len("xn--" + label.encode("punycode").decode()) > 63
    assert_problem(api.register(f"{_local(40)}@{label}.de", strong_password()), 422, "invalid_email")


@pytest.mark.parametrize("first,second", [
    ("{u}@münchen.de", "{u}@xn--mnchen-3ya.de"),
    ("{u}@xn--mnchen-3ya.de", "{u}@münchen.de"),
    ("{u}@münchen.de", "{U}@MÜNCHEN.DE"),
], ids=["unicode-then-punycode", "punycode-then-unicode", "unicode-then-upper"])
def test_idn_forms_are_one_account(api, first, second):
    u = uniq()
    user = register_ok(api, first.replace("{u}", u), expected_email=f"{u}@xn--mnchen-3ya.de")
    resp = api.register(second.replace("{u}", u).replace("{U}", u.upper()), strong_password())
    assert_problem(resp, 409, "email_taken")
    # either spelling logs in to the same account
    for spelling in (f"{u}@münchen.de", f"{u}@xn--mnchen-3ya.de", f"{u.upper()}@MÜNCHEN.de"):
        token = login_ok(api, spelling, user.password)["access_token"]
        assert decode_jwt(token)[1]["sub"] == user.id


# --------------------------------------------------------------------------------------------
# password rules
# --------------------------------------------------------------------------------------------


def test_password_of_min_length_is_accepted(api):
    register_ok(api, password=rand_chars(ALNUM, PASSWORD_MIN))


def test_password_one_below_min_length_is_rejected(api):
    password = rand_chars(ALNUM, PASSWORD_MIN - 1)
    assert_problem(api.register(new_email(), password), 422, "invalid_password", not_echoed=(password,))


def test_password_of_128_is_accepted(api):
    user = register_ok(api, password=rand_chars(ALNUM + " -_.", PASSWORD_MAX))
    login_ok(api, user.email, user.password)


@pytest.mark.parametrize("length", [PASSWORD_MAX + 1, 1000])
def test_password_over_128_is_rejected(api, length):
    password = rand_chars(ALNUM, length)
    assert_problem(api.register(new_email(), password), 422, "invalid_password", not_echoed=(password,))


CJK = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 2000))
EMOJI = "".join(chr(c) for c in range(0x1F600, 0x1F650))
LATIN_ACCENTED = "áéíóúàèìòùâêîôûäëïöüñçåøæœß"


def test_password_length_counts_code_points_not_bytes(api):
    # MIN code points of 3 UTF-8 bytes each: long enough
    password = rand_chars(CJK, PASSWORD_MIN)
    assert unicodedata.normalize("NFKC", password) == password
    user = register_ok(api, password=password)
    login_ok(api, user.email, password)


def test_password_below_min_in_code_points_is_rejected_even_if_many_bytes(api):
    password = rand_chars(EMOJI, PASSWORD_MIN - 1)          # 4 bytes each
    assert len(password.encode()) > PASSWORD_MIN   # more bytes than needed, too few code points
    assert_problem(api.register(new_email(), password), 422, "invalid_password")


def test_password_of_128_multibyte_code_points_is_accepted(api):
    password = rand_chars(LATIN_ACCENTED + ALNUM, PASSWORD_MAX)
    assert unicodedata.normalize("NFKC", password) == password
    register_ok(api, password=password)


def test_password_length_counts_code_points_not_graphemes(api):
    # each letter carries a combining mark that never composes: MIN code points, MIN/2 graphemes
    password = "".join(rand_chars("bdfhjqtvxBDFHJQTVX", 1) + "\u0334" for _ in range(PASSWORD_MIN // 2))
    password += rand_chars(ALNUM, PASSWORD_MIN - len(password))
    assert len(unicodedata.normalize("NFKC", password)) == PASSWORD_MIN
    register_ok(api, password=password)


def test_password_length_is_counted_after_nfkc_composition(api):
    # MIN code points as sent, one less after NFKC composes e + U+0301 into é
    password = rand_chars(ALNUM, PASSWORD_MIN - 2) + "e\u0301"
    assert len(password) == PASSWORD_MIN
    assert len(unicodedata.normalize("NFKC", password)) == PASSWORD_MIN - 1
    assert_problem(api.register(new_email(), password), 422, "invalid_password")


def test_password_length_is_counted_after_nfkc_expansion(api):
    # MIN-1 code points as sent, MIN after NFKC expands the ﬀ ligature to "ff"
    password = rand_chars(ALNUM, PASSWORD_MIN - 2) + "\ufb00"
    assert len(password) == PASSWORD_MIN - 1
    assert len(unicodedata.normalize("NFKC", password)) == PASSWORD_MIN
    user = register_ok(api, password=password)
    login_ok(api, user.email, unicodedata.normalize("NFKC", password))


def test_password_too_long_after_nfkc_is_rejected(api):
    # ﷺ (U+FDFA) is one code point that NFKC expands to 18
    password = rand_chars(ALNUM, 4) + "\ufdfa" * 8
    assert len(password) <= PASSWORD_MAX < len(unicodedata.normalize("NFKC", password))
    assert_problem(api.register(new_email(), password), 422, "invalid_password")


def test_password_nfkc_register_fullwidth_login_ascii(api):
    tail = rand_chars(ALNUM, 10)
    fullwidth = "Ｆｕｌｌｗｉｄｔｈ－" + tail
    ascii_form = unicodedata.normalize("NFKC", fullwidth)
    assert ascii_form == "Fullwidth-" + tail
    user = register_ok(api, password=fullwidth)
    login_ok(api, user.email, ascii_form)
    login_ok(api, user.email, fullwidth)


def test_password_nfkc_register_ascii_login_fullwidth(api):
    tail = rand_chars(ALNUM, 10)
    fullwidth = "Ｆｕｌｌｗｉｄｔｈ－" + tail
    ascii_form = unicodedata.normalize("NFKC", fullwidth)
    user = register_ok(api, password=ascii_form)
    login_ok(api, user.email, fullwidth)
    # and the decomposed spelling of an accented password too
    user2 = register_ok(api, password="Caf\u00e9-" + rand_chars(ALNUM, 10))
    login_ok(api, user2.email, unicodedata.normalize("NFD", user2.password))


def test_password_is_not_trimmed_or_case_folded(api):
    password = "  " + rand_chars(ALNUM, 6) + " " + rand_chars(ALNUM, 6) + "  "
    user = register_ok(api, password=password)
    login_ok(api, user.email, password)
    assert_problem(api.login(user.email, password.strip()), 401, "invalid_credentials")
    assert_problem(api.login(user.email, password.swapcase()), 401, "invalid_credentials")


def test_password_with_printable_unicode_is_accepted(api):
    password = "Pässwörd ✓ " + rand_chars(EMOJI, 3) + " " + rand_chars(CJK, 4)
    user = register_ok(api, password=password)
    login_ok(api, user.email, password)


@pytest.mark.parametrize("ctrl", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"],
                         ids=lambda c: f"U+{ord(c):04X}")
def test_password_with_control_character_is_rejected(api, ctrl):
    base = strong_password()
    password = base[:6] + ctrl + base[6:]
    assert_problem(api.register(new_email(), password), 422, "invalid_password",
                   not_echoed=(base[6:],))


@pytest.mark.parametrize("password", [
    "",
    "password",
    "123456",
    "qwerty",
    "letmein",
    "a" * (PASSWORD_MAX + 1),
    "password" * 17,
    "password1234\x00",
    "qwertyuiopasdf\n",
], ids=["empty", "password", "123456", "qwerty", "letmein", "a*129", "password*17",
        "common+NUL", "common+LF"])
def test_length_and_control_checks_come_before_strength(api, password):
    assert_problem(api.register(new_email(), password), 422, "invalid_password")


@pytest.mark.parametrize("password", [
    "password1234",
    "qwertyuiopasdf",
    "Password1234",
    "passwordpassword",
    "aaaaaaaaaaaaaaaa",
    "123456789012",
    "abcdefghijklmnop",
])
def test_common_or_guessable_password_is_weak(api, password):
    if len(password) < PASSWORD_MIN:
        pytest.skip("shorter than the configured PASSWORD_MIN_LENGTH")
    assert_problem(api.register(new_email(), password), 422, "weak_password")


@pytest.mark.parametrize("derive", [
    lambda email: email,
    lambda email: email.upper(),
    lambda email: email.split("@")[0],
    lambda email: email.split("@")[0].upper(),
], ids=["email", "EMAIL", "local", "LOCAL"])
def test_password_equal_to_email_or_local_part_is_weak(api, derive):
    email = f"{secrets.token_hex(8)}-{uniq()}@example.com"   # random, so only equality is weak
    password = derive(email)
    assert len(password) >= PASSWORD_MIN
    assert_problem(api.register(email, password), 422, "weak_password")


def test_password_equal_to_normalized_email_is_weak(api):
    u = uniq()
    # typed with spaces and capitals; the password equals the stored form
    email = f"  X{u}@Example.com "
    assert_problem(api.register(email, f"x{u}@example.com"), 422, "weak_password")


# --------------------------------------------------------------------------------------------
# login
# --------------------------------------------------------------------------------------------


def test_login_200_body_headers_and_claims(api):
    user = register_ok(api)
    before = int(time.time())
    resp = api.login(user.email, user.password)
    after = int(time.time())
    body = assert_token_body(resp)   # 200, no-store, token_type, expires_in, refresh_token
    assert user.password not in resp.body.decode()

    token = body["access_token"]
    header, claims = decode_jwt(token)
    assert header.get("alg") == ALG, header
    assert str(header.get("typ", "")).lower() == ACCESS_TOKEN_TYP, f"typ is not at+jwt: {header!r}"
    if ALG == "RS256":
        assert header.get("kid") == server_kid(), f"kid is not the configured key's: {header!r}"
    # verified by PyJWT with the configured secret / public key
    try:
        verify_access_token(token)
    except jwt.PyJWTError as exc:
        raise AssertionError(f"access token does not verify with the configured {ALG} key: "
                             f"{exc}") from None
    for claim in ("sub", "sid", "iat", "exp", "iss", "aud", "jti"):
        assert claim in claims, f"token lacks {claim!r}: {claims!r}"
    assert claims["sub"] == user.id
    assert str(uuid.UUID(claims["sid"])) == claims["sid"], f"sid is not a uuid: {claims!r}"
    assert claims["iss"] == JWT_ISSUER
    assert claims["aud"] == JWT_AUDIENCE, claims   # one audience, as a string (RFC 7519 §4.1.3)
    assert type(claims["iat"]) is int and type(claims["exp"]) is int, claims
    assert before - 60 <= claims["iat"] <= after + 60, claims
    assert abs((claims["exp"] - claims["iat"]) - ACCESS_TOKEN_TTL) <= 1, claims
    assert isinstance(claims["jti"], str) and claims["jti"], claims
    # a password alone: RFC 8176's "pwd", assurance level aal1 (API.md "Two-step login")
    assert claims.get("amr") == ["pwd"], claims
    assert claims.get("aal") == "aal1", claims
    assert "password" not in json.dumps(claims).lower()
    assert body["refresh_token"] not in json.dumps(claims)


def test_login_tokens_have_distinct_jti(api, account):
    first = decode_jwt(token_for(api, account))[1]
    second = decode_jwt(token_for(api, account))[1]
    assert first["jti"] != second["jti"]


@pytest.mark.parametrize("spell", [
    lambda e: e.upper(),
    lambda e: " " + e + " ",
    lambda e: "\u00a0\u2003" + e.title() + "\t\n",
], ids=["upper", "spaces", "unicode-ws+title"])
def test_login_normalizes_email(api, account, spell):
    token = login_ok(api, spell(account.email), account.password)["access_token"]
    assert decode_jwt(token)[1]["sub"] == account.id


def test_login_failures_are_identical_401s(api):
    user = register_ok(api)
    other = register_ok(api)
    u = uniq()
    # The per-account backoff is keyed by the (normalized or trimmed, lower-cased) email, for
    # unknown and malformed ones too; a fixed input would collect one failure per run of the
    # suite against the same database and end up throttled. So every email here is fresh but
    # the empty one, whose few failures per run are cleared first.
    run_sql("DELETE FROM login_throttle WHERE account = sha256(''::bytea);")
    attempts = {
        # at most four failures on `user`, so the per-account backoff stays out of the way
        "wrong password": (user.email, user.password + "x"),
        "other account's password": (user.email, other.password),
        "empty password": (user.email, ""),
        "password with NUL": (user.email, user.password[:5] + "\x00"),
        "unknown email": (new_email(), user.password),
        "unknown email, other case": (new_email().upper(), strong_password()),
        "malformed email": (f"not-an-email-{u}", strong_password()),
        "malformed email (quotes)": (f'"a b {u}"@example.com', strong_password()),
        "empty email": ("", strong_password()),
        "very long email": (u + "a" * 300 + "@example.com", strong_password()),
        "overlong password, unknown email": (new_email(), "p" * 500),
        "email with control char": (f"a\x00b{u}@example.com", strong_password()),
    }
    responses = {}
    for name, (email, password) in attempts.items():
        resp = api.login(email, password)
        assert_problem(resp, 401, "invalid_credentials",
                       not_echoed=tuple(p for p in (password,) if len(p) >= 8))
        responses[name] = resp
    reference_name, reference = next(iter(responses.items()))
    for name, resp in responses.items():
        assert resp.body == reference.body, (
            f"body for {name!r} differs from {reference_name!r}: {resp.body!r} vs {reference.body!r}")
        assert resp.header("content-type") == reference.header("content-type"), name
        assert resp.header("www-authenticate") == reference.header("www-authenticate"), name
    # the account is unharmed
    login_ok(api, user.email, user.password)


# --------------------------------------------------------------------------------------------
# me
# --------------------------------------------------------------------------------------------


def test_me_returns_the_registered_user(api):
    user = register_ok(api)
    resp = api.me(token_for(api, user))
    body = assert_json_response(resp, 200)
    assert body == user.body


def test_me_returns_the_token_owner(api):
    a, b = register_ok(api), register_ok(api)
    assert assert_json_response(api.me(token_for(api, b)), 200) == b.body
    assert assert_json_response(api.me(token_for(api, a)), 200) == a.body


def test_me_accepts_case_insensitive_scheme(api, account):
    # RFC 9110 §11.1: the auth scheme is case-insensitive
    resp = api.me(authorization="bearer " + token_for(api, account))
    assert assert_json_response(resp, 200) == account.body


def test_me_without_authorization_is_missing_token(api):
    resp = api.me()
    assert_problem(resp, 401, "missing_token")
    assert_bearer_challenge(resp, error=None)


@pytest.mark.parametrize("authorization", [
    "Basic dXNlcjpwYXNzd29yZA==",
    "Token abc.def.ghi",
    "Digest username=\"a\"",
    "",
], ids=["Basic", "Token", "Digest", "empty-header"])
def test_me_with_other_scheme_is_missing_token(api, authorization):
    resp = api.me(authorization=authorization)
    assert_problem(resp, 401, "missing_token")
    assert_bearer_challenge(resp, error=None)


def test_me_basic_with_valid_token_is_still_missing_token(api, account):
    resp = api.me(authorization="Basic " + token_for(api, account))
    assert_problem(resp, 401, "missing_token")
    assert_bearer_challenge(resp, error=None)


@pytest.mark.parametrize("authorization", [
    "Bearer ",
    "Bearer",
    "Bearer garbage",
    "Bearer a.b.c",
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30",
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.e30.e30",
    "Bearer ....",
    "Bearer " + "A" * 4000,
], ids=["empty-with-space", "empty", "garbage", "a.b.c", "two-parts", "four-parts", "dots", "long"])
def test_me_with_malformed_bearer_is_invalid_token(api, authorization):
    resp = api.me(authorization=authorization)
    assert_problem(resp, 401, "invalid_token")
    assert_bearer_challenge(resp, error="invalid_token")


def test_me_with_token_plus_junk_is_invalid_token(api, account):
    token = token_for(api, account)
    for authorization in (f"Bearer {token}x", f"Bearer {token[:-2]}", f"Bearer {token}.{token}"):
        resp = api.me(authorization=authorization)
        assert_problem(resp, 401, "invalid_token")
        assert_bearer_challenge(resp, error="invalid_token")


def test_me_with_forged_valid_token_is_200(api, account):
    # proves the signing key (JWT_SECRET, or JWT_PRIVATE_KEY and its kid), JWT_ISSUER and
    # JWT_AUDIENCE match the server and that a re-signed copy of a real token's claims (its
    # live `sid` included) passes, so the 401s below are caused by the one thing each changes
    resp = api.me(forge(good_claims(account)))
    assert assert_json_response(resp, 200) == account.body


def test_me_with_expired_token_is_token_expired(api, account):
    now = int(time.time())
    for exp in (now - 120, now - 3600):
        resp = api.me(forge(good_claims(account, iat=exp - ACCESS_TOKEN_TTL, exp=exp)))
        assert_problem(resp, 401, "token_expired")
        assert_bearer_challenge(resp, error="invalid_token")


def _tampered(account: User) -> str:
    header, payload, signature = forge(good_claims(account)).split(".")
    other = b64json(good_claims(account, sub=str(uuid.uuid4())))
    return f"{header}.{other}.{signature}"


def _wrong_key():
    """A key the server does not accept, of the kind it uses."""
    if ALG == "HS256":
        return (confusable_hmac_key().decode() + "-not").encode()
    return attacker_private_key()


def public_pem_for_confusion() -> bytes:
    """The server's public key PEM under RS256; under HS256 some public key (a wrong secret)."""
    return public_pem(server_private_key() if ALG == "RS256" else attacker_private_key())


def _header(**changes) -> dict:
    """The server's access-token header with `changes` (None removes a member)."""
    header = default_header()
    for name, value in changes.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return header


INVALID_TOKENS = {
    "wrong secret or key": lambda a: forge(good_claims(a), key=_wrong_key()),
    "tampered payload": _tampered,
    "no signature": lambda a: forge(good_claims(a)).rsplit(".", 1)[0] + ".",
    "alg none": lambda a: forge(good_claims(a), header=_header(alg="none"), signature=""),
    "alg None": lambda a: forge(good_claims(a), header={"alg": "None"}, signature=""),
    "alg none with a valid signature": lambda a: signed_with_header(good_claims(a),
                                                                    _header(alg="none")),
    "alg HS384": lambda a: forge(good_claims(a), alg="HS384", key=confusable_hmac_key()),
    "alg HS512": lambda a: forge(good_claims(a), alg="HS512", key=confusable_hmac_key()),
    "alg RS256 with HMAC sig": lambda a: signed_with_header(
        good_claims(a), _header(alg="RS256"), alg="HS256", key=confusable_hmac_key()),
    # RS256: the classic key confusion (HMAC keyed with the public key); HS256: a wrong secret
    "alg HS256 keyed with a public key": lambda a: signed_with_header(
        good_claims(a), _header(alg="HS256"), alg="HS256",
        key=public_pem_for_confusion()),
    "no alg": lambda a: signed_with_header(good_claims(a), _header(alg=None)),
    # RFC 9068: access tokens carry typ at+jwt and are refused without it
    "no typ": lambda a: signed_with_header(good_claims(a), _header(typ=None)),
    "typ JWT": lambda a: signed_with_header(good_claims(a), _header(typ="JWT")),
    "typ id_token": lambda a: signed_with_header(good_claims(a), _header(typ="id_token+jwt")),
    "wrong iss": lambda a: forge(good_claims(a, iss=JWT_ISSUER + "-evil")),
    "wrong aud": lambda a: forge(good_claims(a, aud=JWT_AUDIENCE + "-evil")),
    "missing iss": lambda a: forge(good_claims(a, iss=DROP)),
    "missing aud": lambda a: forge(good_claims(a, aud=DROP)),
    "missing sub": lambda a: forge(good_claims(a, sub=DROP)),
    "missing exp": lambda a: forge(good_claims(a, exp=DROP)),
    "sub unknown uuid": lambda a: forge(good_claims(a, sub=str(uuid.uuid4()))),
    "sub not a uuid": lambda a: forge(good_claims(a, sub="admin")),
    "sub empty": lambda a: forge(good_claims(a, sub="")),
    "sub is the email": lambda a: forge(good_claims(a, sub=a.email)),
    # Sessions: access tokens without a live `sid` are refused
    "missing sid": lambda a: forge(good_claims(a, sid=DROP)),
    "sid unknown uuid": lambda a: forge(good_claims(a, sid=str(uuid.uuid4()))),
    "sid not a uuid": lambda a: forge(good_claims(a, sid="session")),
    "sid empty": lambda a: forge(good_claims(a, sid="")),
    "sid null": lambda a: forge(good_claims(a, sid=None)),
    "expired and wrong secret or key": lambda a: forge(
        good_claims(a, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        key=_wrong_key()),
}

if ALG == "RS256":
    INVALID_TOKENS.update({
        # the key is named by kid: a token must name one the server has
        "unknown kid": lambda a: forge(good_claims(a), header=_header(kid="not-" + server_kid())),
        "no kid": lambda a: forge(good_claims(a), header=_header(kid=None)),
        "kid of the key, signed by another key": lambda a: forge(good_claims(a),
                                                                 key=attacker_private_key()),
        # keys named in the token itself are never trusted
        "embedded jwk of the signing key": lambda a: forge(
            good_claims(a), key=attacker_private_key(),
            header=_header(jwk=public_jwk(attacker_private_key(), server_kid()))),
        "jku to another key set": lambda a: forge(
            good_claims(a), key=attacker_private_key(),
            header=_header(kid="attacker", jku="https://attacker.example/jwks.json")),
    })


@pytest.mark.parametrize("make_token", list(INVALID_TOKENS.values()), ids=list(INVALID_TOKENS))
def test_me_with_bad_token_is_invalid_token(api, account, make_token):
    resp = api.me(make_token(account))
    assert_problem(resp, 401, "invalid_token")
    assert_bearer_challenge(resp, error="invalid_token")


# --------------------------------------------------------------------------------------------
# accounts changed in the database (need DATABASE_URL and psql)
# --------------------------------------------------------------------------------------------


def test_disabled_account(api):
    user = register_ok(api)
    token = token_for(api, user)
    assert_json_response(api.me(token), 200)
    disable_user(user.id)

    # right password → 403; wrong password → the ordinary 401
    assert_problem(api.login(user.email, user.password), 403, "account_disabled",
                   not_echoed=(user.password,))
    wrong = api.login(user.email, user.password + "x")
    assert_problem(wrong, 401, "invalid_credentials")
    unknown = api.login(new_email(), user.password + "x")
    assert wrong.body == unknown.body

    # tokens issued before stop working at once
    for t in (token, forge(good_claims(user))):
        resp = api.me(t)
        assert_problem(resp, 401, "invalid_token")
        assert_bearer_challenge(resp, error="invalid_token")


def test_deleted_account(api):
    user = register_ok(api)
    token = token_for(api, user)
    assert_json_response(api.me(token), 200)
    delete_user(user.id)

    for t in (token, forge(good_claims(user))):
        resp = api.me(t)
        assert_problem(resp, 401, "invalid_token")
        assert_bearer_challenge(resp, error="invalid_token")
    assert_problem(api.login(user.email, user.password), 401, "invalid_credentials")
