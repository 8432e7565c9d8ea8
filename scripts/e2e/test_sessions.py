"""End-to-end black-box tests of docs/api.md "Sessions" (refresh, logout, keys), "Limits against
guessing" and "Audit".

Run like test_api.py, against a server with the default settings (REFRESH_REUSE_GRACE_SECONDS
10, LOGIN_BACKOFF_AFTER 5, IP_RATE_LIMIT_PER_MINUTE 60) in either signing mode. The audit tests
read the table `auth_events` through psql (DATABASE_URL).

Every test has its own source address (conftest.py). Waiting is kept short: the one
unavoidable wait (a rotated refresh token presented after the grace window) starts when this
module starts and its tests run last, so the other tests run during it; the backoff test waits
3 s; the per-address tests never wait (a burst that straddles a clock minute is repeated once
from a fresh address). Rules that take days (idle and absolute session limits, the 15-minute
backoff cap) move time forward in the database instead (white-box, see that section).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
import pytest

from conftest import API_URL, BIND_SOURCE, fresh_source_address
from support import (
    at_once,
    ACCESS_TOKEN_TYP,
    ALG,
    BACKOFF_AFTER,
    BACKOFF_MAX,
    DISCOVERY,
    IP_LIMIT,
    JWKS,
    JWT_AUDIENCE,
    JWT_ISSUER,
    LOGIN,
    MAX_BODY,
    REFRESH,
    REFRESH_GRACE,
    REGISTER,
    SESSION_IDLE,
    SESSION_MAX,
    SESSIONS_TABLE,
    User,
    assert_bearer_challenge,
    assert_invalid_token,
    assert_json_response,
    assert_problem,
    assert_token_body,
    assert_too_many,
    attacker_private_key,
    b64url,
    b64url_decode,
    decode_jwt,
    delete_user,
    disable_user,
    forge,
    good_claims,
    login_ok,
    nap,
    new_email,
    padded_body,
    public_jwk,
    register_ok,
    run_sql,
    server_kid,
    server_private_key,
    server_secret,
    strong_password,
    token_for,
    uniq,
    verify_access_token,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def claims(token: str) -> dict:
    return decode_jwt(token)[1]


def logged_in_user(api) -> User:
    user = register_ok(api)
    token_for(api, user)
    return user


def new_session(api, user: User) -> dict:
    """Another login of `user` (another session); `user.tokens` is left alone."""
    return login_ok(api, user.email, user.password)


def assert_session_live(api, user: User, tokens: dict) -> dict:
    """The session's access token works and its refresh token rotates; returns the new tokens."""
    assert assert_json_response(api.me(tokens["access_token"]), 200) == user.body
    return assert_token_body(api.refresh(tokens["refresh_token"]))


def assert_session_ended(api, tokens: dict) -> None:
    assert_invalid_token(api.me(tokens["access_token"]))
    assert_invalid_token(api.refresh(tokens["refresh_token"]))


def cache_directives(resp) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in (resp.header("cache-control") or "").split(","):
        name, _, value = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip().strip('"') or None
    return out


# --------------------------------------------------------------------------------------------
# the reuse scenario: a refresh token rotated when the module starts, presented again after
# the grace window by the tests that need it (so the wait overlaps the other tests)
# --------------------------------------------------------------------------------------------


@dataclass
class ReuseScenario:
    client: object
    user: User
    first: dict          # session 1, as logged in
    rotated: dict        # session 1 after refreshing first["refresh_token"]
    second: dict         # session 2 of the same user
    rotated_at: float    # wall clock when the rotation's answer arrived
    _reuse: object = None

    @property
    def sid(self) -> str:
        return claims(self.first["access_token"])["sid"]

    def reuse(self):
        """Presents the rotated token once the grace window has passed (once per module)."""
        if self._reuse is None:
            nap(self.rotated_at + REFRESH_GRACE + 1.0 - time.time())
            self._reuse = self.client.refresh(self.first["refresh_token"])
        return self._reuse


@pytest.fixture(scope="module", autouse=True)
def reuse_scenario(new_client) -> ReuseScenario:
    client = new_client()
    user = register_ok(client)
    first = login_ok(client, user.email, user.password)
    second = login_ok(client, user.email, user.password)
    user.tokens = second
    rotated = assert_token_body(client.refresh(first["refresh_token"]))
    return ReuseScenario(client, user, first, rotated, second, time.time())


# --------------------------------------------------------------------------------------------
# sessions and refresh
# --------------------------------------------------------------------------------------------


def test_each_login_starts_its_own_session(api):
    user = register_ok(api)
    a, b = new_session(api, user), new_session(api, user)
    ca, cb = claims(a["access_token"]), claims(b["access_token"])
    assert ca["sid"] != cb["sid"]
    for c in (ca, cb):
        assert str(uuid.UUID(c["sid"])) == c["sid"], c
        assert c["sub"] == user.id
    assert a["refresh_token"] != b["refresh_token"]
    for tokens in (a, b):
        assert assert_json_response(api.me(tokens["access_token"]), 200) == user.body


def test_refresh_rotates_both_tokens(api):
    user = register_ok(api)
    first = new_session(api, user)
    resp = api.refresh(first["refresh_token"])
    second = assert_token_body(resp)   # same shape as login, no-store
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    header, new = verify_access_token(second["access_token"])
    assert header.get("alg") == ALG and str(header.get("typ")).lower() == ACCESS_TOKEN_TYP, header
    old = claims(first["access_token"])
    assert new["sub"] == user.id and new["sid"] == old["sid"], (old, new)
    # the session's authentication methods and level travel with it
    assert (new["amr"], new["aal"]) == (old["amr"], old["aal"]) == (["pwd"], "aal1"), (old, new)
    assert new["jti"] != old["jti"]
    assert new["iat"] >= old["iat"]
    assert assert_json_response(api.me(second["access_token"]), 200) == user.body
    # the earlier access token of the live session keeps working until it expires
    assert assert_json_response(api.me(first["access_token"]), 200) == user.body
    # and the new refresh token rotates in turn
    third = assert_token_body(api.refresh(second["refresh_token"]))
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    assert claims(third["access_token"])["sid"] == old["sid"]


def test_refresh_token_is_single_use_and_a_repeat_in_the_grace_window_gets_the_same_successor(api):
    user = register_ok(api)
    first = new_session(api, user)
    second = assert_token_body(api.refresh(first["refresh_token"]))
    # presented again at once (inside the grace window): the same successor, a fresh access token
    again = assert_token_body(api.refresh(first["refresh_token"]))
    assert again["refresh_token"] == second["refresh_token"], "a repeat minted another token"
    assert again["access_token"] != second["access_token"]
    a, b = claims(second["access_token"]), claims(again["access_token"])
    assert a["jti"] != b["jti"] and a["sid"] == b["sid"] == claims(first["access_token"])["sid"]
    assert assert_json_response(api.me(again["access_token"]), 200) == user.body
    # the successor rotates once too, and its repeat gets its one successor
    third = assert_token_body(api.refresh(second["refresh_token"]))
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    assert assert_token_body(api.refresh(second["refresh_token"]))["refresh_token"] == \
        third["refresh_token"]
    assert assert_json_response(api.me(third["access_token"]), 200) == user.body


def test_parallel_refreshes_of_one_token_get_the_same_successor(api):
    user = register_ok(api)
    first = new_session(api, user)
    n = 4
    results = at_once(n, lambda i: api.refresh(first["refresh_token"]), wait=30, join=120)
    bodies = [assert_token_body(r) for r in results]
    successors = {b["refresh_token"] for b in bodies}
    assert len(successors) == 1, f"racing refreshes got different successors: {successors}"
    assert first["refresh_token"] not in successors
    jtis = {claims(b["access_token"])["jti"] for b in bodies}
    assert len(jtis) == n, "each refresh must issue a fresh access token"
    sid = claims(first["access_token"])["sid"]
    for b in bodies:
        assert claims(b["access_token"])["sid"] == sid
        assert assert_json_response(api.me(b["access_token"]), 200) == user.body
    # the one successor rotates on
    assert_token_body(api.refresh(successors.pop()))


def _malformed_refresh_tokens(real: str) -> dict[str, str]:
    flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
    return {
        "empty": "",
        "one character": "x",
        "blank": "   ",
        "unknown, 256 random bits base64url": b64url(secrets.token_bytes(32)),
        "unknown, 256 random bits hex": secrets.token_hex(32),
        "real with its last character changed": flipped,
        "real plus a character": real + "A",
        "real without its last character": real[:-1],
        "real upper-cased": real.upper() if real.upper() != real else real.lower(),
        "real with a NUL": real + "\x00",
        "a JWT": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "long": "A" * 10_000,
    }


def test_malformed_or_unknown_refresh_token_is_invalid_token(api):
    user = logged_in_user(api)
    for name, token in _malformed_refresh_tokens(user.refresh_token).items():
        resp = api.refresh(token)
        try:
            assert_invalid_token(resp)
        except AssertionError as exc:
            raise AssertionError(f"refresh token {name!r}: {exc}") from None
        assert token not in resp.body.decode() or len(token) < 2, name
    # none of these touched the real session
    assert_session_live(api, user, user.tokens)


@pytest.mark.parametrize("payload", [
    {},
    {"refresh_token": None},
    {"refresh_token": 12345},
    {"refresh_token": True},
    {"refresh_token": ["tok"]},
    {"refresh_token": {"value": "tok"}},
    {"Refresh_Token": "tok"},
    {"refreshToken": "tok"},
    {"token": "tok"},
], ids=["empty", "null", "number", "bool", "list", "object", "case", "camel", "other-name"])
def test_refresh_without_string_field_is_400_invalid_request(api, payload):
    assert_problem(api.post_json(REFRESH, payload), 400, "invalid_request")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", ""])
def test_refresh_with_other_content_type_is_415(api, content_type):
    resp = api.post_json(REFRESH, {"refresh_token": b64url(secrets.token_bytes(32))},
                         content_type=content_type)
    assert_problem(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[]", b"null", b'"tok"', b"42",
                                 b'{"refresh_token": "\xff\xfe"}'],
                         ids=["empty", "open-brace", "text", "array", "null", "string", "number",
                              "invalid-utf8"])
def test_refresh_with_invalid_json_is_400_invalid_json(api, raw):
    assert_problem(api.post_json(REFRESH, raw=raw), 400, "invalid_json")


def test_refresh_body_over_16k_is_413(api):
    user = logged_in_user(api)
    raw = padded_body({"refresh_token": user.refresh_token}, MAX_BODY + 1)
    assert_problem(api.post_json(REFRESH, raw=raw), 413, "payload_too_large")
    # it was not acted on
    assert_session_live(api, user, user.tokens)


def test_refresh_body_of_exactly_16k_with_unknown_fields_is_accepted(api):
    user = logged_in_user(api)
    raw = padded_body({"refresh_token": user.refresh_token, "grant_type": "refresh_token"},
                      MAX_BODY)
    assert_token_body(api.post_json(REFRESH, raw=raw, content_type="application/json; charset=utf-8"))


def test_access_token_is_not_a_refresh_token(api):
    user = logged_in_user(api)
    assert_invalid_token(api.refresh(user.access_token))
    assert_session_live(api, user, user.tokens)


def test_refresh_token_is_not_an_access_token(api):
    user = logged_in_user(api)
    assert_invalid_token(api.me(user.refresh_token))
    assert_invalid_token(api.logout(user.refresh_token))
    assert_session_live(api, user, user.tokens)


def test_refresh_of_a_disabled_user_is_invalid_token(api):
    user = logged_in_user(api)
    disable_user(user.id)
    assert_invalid_token(api.refresh(user.refresh_token))


def test_refresh_of_a_deleted_user_is_invalid_token(api):
    user = logged_in_user(api)
    delete_user(user.id)
    assert_invalid_token(api.refresh(user.refresh_token))


def test_access_token_naming_an_ended_session_is_refused(api):
    user = register_ok(api)
    ended = new_session(api, user)
    live = new_session(api, user)
    assert api.logout(ended["access_token"]).status == 204
    user.tokens = ended
    assert_invalid_token(api.me(forge(good_claims(user))))      # re-signed, fresh exp and jti
    user.tokens = live
    assert assert_json_response(api.me(forge(good_claims(user))), 200) == user.body


def test_access_token_naming_another_users_session_is_refused(api):
    a, b = logged_in_user(api), logged_in_user(api)
    assert_invalid_token(api.me(forge(good_claims(a, sid=b.sid))))
    assert_invalid_token(api.me(forge(good_claims(b, sid=a.sid))))
    assert assert_json_response(api.me(forge(good_claims(b))), 200) == b.body


# --------------------------------------------------------------------------------------------
# logout
# --------------------------------------------------------------------------------------------


def assert_no_content(resp) -> None:
    assert resp.status == 204, resp
    assert resp.body == b"", resp
    assert resp.header("content-type") is None, f"204 with a Content-Type: {resp!r}"


def test_logout_ends_the_session_and_only_it(api):
    user = register_ok(api)
    ended, other = new_session(api, user), new_session(api, user)
    # no body, no Content-Type
    assert_no_content(api.logout(ended["access_token"]))
    assert_session_ended(api, ended)
    # a second logout with the same token is refused
    assert_invalid_token(api.logout(ended["access_token"]))
    assert_session_live(api, user, other)


def test_logout_with_a_json_body_is_fine_too(api):
    user = logged_in_user(api)
    resp = api.logout(user.access_token, body=b"{}", headers={"Content-Type": "application/json"})
    assert_no_content(resp)
    assert_session_ended(api, user.tokens)


def test_logout_global_ends_every_session_of_the_user(api):
    user = register_ok(api)
    sessions = [new_session(api, user) for _ in range(3)]
    sessions[1] = assert_token_body(api.refresh(sessions[1]["refresh_token"]))  # rotated one too
    bystander = logged_in_user(api)
    assert_no_content(api.logout(sessions[2]["access_token"], query="scope=global"))
    for tokens in sessions:
        assert_session_ended(api, tokens)
    assert_invalid_token(api.logout(sessions[0]["access_token"], query="scope=global"))
    assert_session_live(api, bystander, bystander.tokens)
    # logging out is not a lock-out
    assert_session_live(api, user, new_session(api, user))


@pytest.mark.parametrize("query", ["scope=other", "scope=GLOBAL", "scope=all", "scope=",
                                   "scope=global%20"],
                         ids=["other", "GLOBAL", "all", "empty", "global-space"])
def test_logout_with_another_scope_is_400_invalid_request(api, query):
    user = logged_in_user(api)
    assert_problem(api.logout(user.access_token, query=query), 400, "invalid_request")
    # nothing was ended
    assert_session_live(api, user, user.tokens)


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNzd29yZA==", "Token abc", ""],
                         ids=["no-header", "Basic", "Token", "empty-header"])
def test_logout_without_bearer_token_is_missing_token(api, authorization):
    resp = api.logout(authorization=authorization)
    assert_problem(resp, 401, "missing_token")
    assert_bearer_challenge(resp, error=None)


def test_logout_with_a_bad_token_is_invalid_token(api):
    user = logged_in_user(api)
    header, payload, _ = user.access_token.split(".")
    for authorization in ("Bearer ", "Bearer garbage", "Bearer a.b.c",
                          f"Bearer {header}.{payload}.",
                          "Bearer " + forge(good_claims(user), key=(
                              attacker_private_key() if ALG == "RS256"
                              else server_secret() + b"-not"))):
        assert_invalid_token(api.logout(authorization=authorization))
    assert_session_live(api, user, user.tokens)


def test_logout_with_an_expired_token_is_token_expired(api):
    user = logged_in_user(api)
    now = int(time.time())
    resp = api.logout(forge(good_claims(user, iat=now - 3600, exp=now - 120)))
    assert_problem(resp, 401, "token_expired")
    assert_bearer_challenge(resp, error="invalid_token")
    assert_session_live(api, user, user.tokens)


# --------------------------------------------------------------------------------------------
# keys: JWKS and discovery
# --------------------------------------------------------------------------------------------


def assert_cacheable_json(resp) -> dict:
    body = assert_json_response(resp, 200)
    directives = cache_directives(resp)
    assert "public" in directives, f"not Cache-Control: public: {resp!r}"
    max_age = directives.get("max-age")
    assert max_age is not None and max_age.isdigit() and int(max_age) > 0, \
        f"no positive max-age: {resp!r}"
    assert not {"no-store", "no-cache", "private"} & set(directives), resp
    assert isinstance(body, dict), body
    return body


def test_jwks_publishes_the_public_keys(api):
    body = assert_cacheable_json(api.request("GET", JWKS))
    assert isinstance(body.get("keys"), list), body
    if ALG == "HS256":
        assert body == {"keys": []}, "under HS256 the key set is empty"
        return
    keys = body["keys"]
    kids = [k.get("kid") for k in keys]
    assert len(kids) == len(set(kids)), f"kids repeat: {kids}"
    current = [k for k in keys if k.get("kid") == server_kid()]
    assert len(current) == 1, f"no key with kid {server_kid()!r}: {body!r}"
    key = current[0]
    expected = public_jwk(server_private_key())
    assert key.get("kty") == "RSA" and key.get("n") == expected["n"] and key.get("e") == expected["e"], key
    assert key.get("use", "sig") == "sig" and key.get("alg", "RS256") == "RS256", key
    for k in keys:
        leaked = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(k)
        assert not leaked, f"a published key holds private members {leaked}: {k!r}"


def test_discovery_document(api):
    body = assert_cacheable_json(api.request("GET", DISCOVERY))
    for member in ("issuer", "jwks_uri", "authorization_endpoint", "response_types_supported",
                   "subject_types_supported", "id_token_signing_alg_values_supported"):
        assert member in body, f"discovery lacks {member!r}: {body!r}"
    assert body["issuer"] == JWT_ISSUER, "issuer must be the tokens' iss"
    for member in ("jwks_uri", "authorization_endpoint"):
        assert isinstance(body[member], str) and body[member], body
    assert body["jwks_uri"].endswith(JWKS), body
    if JWT_ISSUER.startswith("https://"):
        assert body["jwks_uri"] == JWT_ISSUER.rstrip("/") + JWKS, body
    for member in ("response_types_supported", "subject_types_supported",
                   "id_token_signing_alg_values_supported"):
        value = body[member]
        assert isinstance(value, list) and value and all(isinstance(v, str) and v for v in value), \
            f"{member} must be a non-empty list of strings: {body!r}"
    assert set(body["subject_types_supported"]) <= {"public", "pairwise"}, body
    assert ALG in body["id_token_signing_alg_values_supported"], body
    assert "none" not in body["id_token_signing_alg_values_supported"], body
    # the claims access tokens carry, the Account and Two-step login sections' among them
    supported = body.get("claims_supported")
    assert isinstance(supported, list) and all(isinstance(c, str) and c for c in supported), body
    assert len(set(supported)) == len(supported), body
    assert {"sub", "iss", "aud", "exp", "iat", "email_verified", "amr", "aal"} <= set(supported), body


def test_access_tokens_verify_with_the_published_keys(api):
    user = logged_in_user(api)
    refreshed = assert_token_body(api.refresh(user.refresh_token))
    tokens = [user.access_token, refreshed["access_token"]]
    if ALG == "HS256":
        assert assert_cacheable_json(api.request("GET", JWKS)) == {"keys": []}
        key_for = lambda token: server_secret()  # noqa: E731
    else:
        # PyJWT fetches and parses the key set itself (an independent JWKS client)
        jwks_client = jwt.PyJWKClient(API_URL + JWKS, cache_keys=False)
        key_for = lambda token: jwks_client.get_signing_key_from_jwt(token).key  # noqa: E731
    for token in tokens:
        header = jwt.get_unverified_header(token)
        assert header.get("alg") == ALG, header
        assert str(header.get("typ", "")).lower() == ACCESS_TOKEN_TYP, header
        if ALG == "RS256":
            assert header.get("kid") == server_kid(), header
        verified = jwt.decode(token, key_for(token), algorithms=[ALG], audience=JWT_AUDIENCE,
                              issuer=JWT_ISSUER,
                              options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]})
        assert verified["sub"] == user.id and verified["sid"] == user.sid, verified
    if ALG == "RS256":
        # sanity: the same check refuses a token signed by another key under the same kid
        fake = forge(good_claims(user), key=attacker_private_key())
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(fake, key_for(fake), algorithms=["RS256"], audience=JWT_AUDIENCE,
                       issuer=JWT_ISSUER)


# --------------------------------------------------------------------------------------------
# limits: per-account login backoff
# --------------------------------------------------------------------------------------------


def test_login_backoff_per_account_and_source_network(new_client):
    # the backoff follows the account from one source network: a stranger's guesses from
    # elsewhere do not delay the owner's network (docs/api.md "No stranger can lock an owner out")
    a, b = new_client(), new_client()
    user = register_ok(a)
    spellings = [user.email, user.email.upper(), f"  {user.email}\t"]
    wrong = strong_password()
    for i in range(BACKOFF_AFTER):
        assert_problem(a.login(spellings[i % 3], wrong), 401, "invalid_credentials")
    # after the 5th failure: 1 s; attempts during the wait get 429 without a password check
    assert assert_too_many(a.login(user.email, wrong)) == 1
    assert assert_too_many(a.login(user.email, user.password)) == 1, "right password, unchecked"
    login_ok(b, user.email, user.password)            # another network: not delayed at all
    assert assert_too_many(a.login(user.email.upper(), wrong)) == 1, "b's success left a's wait"
    nap(1.0)
    start = time.monotonic()
    assert_problem(a.login(user.email, wrong), 401, "invalid_credentials")   # 6th failure
    resp = a.login(user.email, wrong)
    retry_after = assert_too_many(resp)
    # 2 s after the 6th failure: the attempts during the first wait did not count
    if time.monotonic() - start < 1.0:
        assert retry_after == 2, f"expected Retry-After 2 after the 6th failure: {resp!r}"
    else:  # a busy machine: the server may have seen less than a second pass
        assert retry_after in (1, 2), resp
    nap(float(retry_after))
    # a success resets the count: four more failures are plain 401s, the 5th starts over at 1 s
    login_ok(a, user.email, user.password)
    for i in range(BACKOFF_AFTER):
        assert_problem(a.login(user.email, wrong), 401, "invalid_credentials")
    assert assert_too_many(a.login(user.email, wrong)) == 1


def test_login_backoff_for_unknown_and_malformed_emails_looks_the_same(api):
    known = register_ok(api)
    u = uniq()
    unknown = f"nobody-{u}@example.com"
    malformed = f"not-an-email-{u}"
    cases = {
        "known": [known.email, known.email.upper(), f" {known.email} "],
        "unknown": [unknown, unknown.upper(), f"\u00a0{unknown}\t"],
        "malformed": [malformed, malformed.upper(), f"  {malformed.title()} "],
    }
    failures, limited = {}, {}
    for name, spellings in cases.items():
        for i in range(BACKOFF_AFTER):
            resp = api.login(spellings[i % 3], strong_password())
            assert_problem(resp, 401, "invalid_credentials")
            failures[name] = resp
        resp = api.login(spellings[0], strong_password())
        assert assert_too_many(resp) == 1, f"{name}: {resp!r}"
        limited[name] = resp
    # the limit tells nothing about which accounts exist
    for name in ("unknown", "malformed"):
        for seen in (failures, limited):
            assert seen[name].body == seen["known"].body, name
            assert seen[name].header("content-type") == seen["known"].header("content-type")
        assert limited[name].header("retry-after") == limited["known"].header("retry-after")
        assert limited[name].header("www-authenticate") == limited["known"].header("www-authenticate")


# --------------------------------------------------------------------------------------------
# limits: per source address
# --------------------------------------------------------------------------------------------


def _cheap_requests(client, refresh_token: str):
    """Requests each route refuses without hashing, after database work that counts them
    against the window (a body that is not even well-formed touches no database and is not
    counted: see `test_malformed_bodies_are_not_counted_by_the_window`)."""
    unknown = b64url(secrets.token_bytes(32))
    return [
        (lambda: client.register("not an email", strong_password()), 422),
        (lambda: client.refresh(unknown), 401),
        (lambda: client.register(new_email(), "password"), 422),
        (lambda: client.refresh("not a refresh token"), 401),
    ]


def _exhaust_window(client):
    """From `client`'s fresh address: IP_LIMIT requests over register, login and refresh, then
    more. Returns (user, tokens, the first IP_LIMIT answers with the expected statuses, the
    answers past the limit)."""
    user = register_ok(client)                                               # 1
    tokens = login_ok(client, user.email, user.password)                     # 2
    tokens = assert_token_body(client.refresh(tokens["refresh_token"]))      # 3
    cheap = _cheap_requests(client, tokens["refresh_token"])
    plan = [cheap[i % len(cheap)] for i in range(IP_LIMIT - 3)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        within = list(pool.map(lambda item: (item[0](), item[1]), plan))
    other = fresh_source_address()
    past = [
        client.login(user.email, user.password),                             # the 61st
        client.refresh(tokens["refresh_token"]),
        client.register(new_email(), strong_password()),
        client.register("not an email", strong_password()),
        client.login(user.email, user.password),
        # X-Forwarded-For (or another forwarding header) is never the source address
        client.login(user.email, user.password, headers={"X-Forwarded-For": other}),
        client.login(user.email, user.password,
                     headers={"X-Forwarded-For": f"{other}, 203.0.113.9"}),
        client.login(user.email, user.password, headers={"Forwarded": f"for={other}"}),
        client.login(user.email, user.password, headers={"X-Real-IP": other}),
    ]
    return user, tokens, within, past


def test_per_address_limit(new_client):
    if IP_LIMIT <= 0:
        pytest.skip("IP_RATE_LIMIT_PER_MINUTE is 0: the limit is off")
    if not BIND_SOURCE:
        pytest.skip("needs a source address of its own (E2E_BIND_SOURCE)")
    # The window slides: what a clock minute ago counted is partly forgotten in the next one.
    # So the burst must lie inside one clock minute; if it straddles one, it is run once more
    # from a fresh address (rather than waiting for a new minute up front).
    for _ in range(2):
        client = new_client()
        minute = int(time.time() // 60)
        user, tokens, within, past = _exhaust_window(client)
        if int(time.time() // 60) == minute:
            break
    else:
        pytest.fail("the burst straddled a minute boundary twice")

    for resp, status in within:
        assert resp.status == status, f"request within the limit not answered: {resp!r}"
    assert len(within) + 3 == IP_LIMIT
    waits = [assert_too_many(resp) for resp in past]
    assert waits[0] <= 60, past[0]
    # requests the limit rejects do not count: the wait does not grow with them
    assert waits == sorted(waits, reverse=True), f"Retry-After grew: {waits}"

    # other addresses are unaffected, also when a forwarding header names the limited one
    fresh = new_client()
    tokens = assert_token_body(fresh.refresh(tokens["refresh_token"]))
    assert_token_body(fresh.login(user.email, user.password,
                                  headers={"X-Forwarded-For": client.source_address}))
    # the routes outside the window answer the limited address as ever
    assert assert_json_response(client.me(tokens["access_token"]), 200) == user.body
    assert_json_response(client.request("GET", JWKS), 200)


def test_malformed_bodies_are_not_counted_by_the_window(new_client):
    """The window is counted by the statement that does a route's work: a body that is not
    well-formed is answered 400 without touching the database, and a flood of them leaves the
    window as it was."""
    if IP_LIMIT <= 0:
        pytest.skip("IP_RATE_LIMIT_PER_MINUTE is 0: the limit is off")
    if not BIND_SOURCE:
        pytest.skip("needs a source address of its own (E2E_BIND_SOURCE)")
    client = new_client()
    malformed = [
        (lambda: client.post_json(REGISTER, {}), 400),
        (lambda: client.post_json(LOGIN, {"email": "x@example.com"}), 400),
        (lambda: client.post_json(LOGIN, raw=b"not json"), 400),
        (lambda: client.post_json(REFRESH, {}), 400),
        (lambda: client.post_json(REGISTER, {"email": 1, "password": 2}, content_type=None), 415),
    ]
    for i in range(IP_LIMIT + 5):
        call, status = malformed[i % len(malformed)]
        resp = call()
        assert resp.status == status, resp
    user = register_ok(client)
    login_ok(client, user.email, user.password)


def test_logins_rejected_by_the_address_limit_are_not_login_failures(new_client):
    if IP_LIMIT <= 0:
        pytest.skip("IP_RATE_LIMIT_PER_MINUTE is 0: the limit is off")
    if not BIND_SOURCE:
        pytest.skip("needs a source address of its own (E2E_BIND_SOURCE)")
    helper = new_client()
    for _ in range(2):   # once more, from a fresh address, if a minute boundary fell inside
        client = new_client()
        user = register_ok(helper)
        minute = int(time.time() // 60)
        cheap = _cheap_requests(client, b64url(secrets.token_bytes(32)))
        for i in range(IP_LIMIT + 1):
            resp = cheap[i % len(cheap)][0]()
        refused = [client.login(user.email, strong_password()) for _ in range(BACKOFF_AFTER + 1)]
        if int(time.time() // 60) == minute:
            break
    else:
        pytest.fail("the burst straddled a minute boundary twice")
    assert_too_many(resp)
    for resp in refused:
        assert_too_many(resp)
    # had they counted as failed logins, the account would be in backoff now
    for _ in range(BACKOFF_AFTER - 1):
        assert_problem(helper.login(user.email, strong_password()), 401, "invalid_credentials")
    login_ok(helper, user.email, user.password)


# --------------------------------------------------------------------------------------------
# limits that take days: time moved forward in the database (white-box: the columns
# created_at, last_used_at, expires_at of the sessions table and the login_throttle table of
# migrations/V3; there is no other way with the default settings)
# --------------------------------------------------------------------------------------------


def pass_time(sid: str, seconds: int) -> None:
    """As if `seconds` had passed for the session without any activity."""
    out = run_sql(f"UPDATE {SESSIONS_TABLE} SET created_at = created_at - make_interval(secs => :'s'), "
                  "last_used_at = last_used_at - make_interval(secs => :'s'), "
                  "expires_at = expires_at - make_interval(secs => :'s') "
                  "WHERE id = :'sid' RETURNING id;", s=str(seconds), sid=sid)
    assert out == sid, f"expected to age exactly session {sid}, psql said {out!r}"


HOUR = 3600


def test_session_ends_after_the_idle_limit_counted_from_the_last_refresh(api):
    user = logged_in_user(api)
    tokens = user.tokens
    pass_time(user.sid, SESSION_IDLE - HOUR)
    assert assert_json_response(api.me(tokens["access_token"]), 200) == user.body
    tokens = assert_token_body(api.refresh(tokens["refresh_token"]))   # restarts the idle clock
    pass_time(user.sid, 2 * HOUR)                                     # idle limit + 1 h since login
    assert assert_json_response(api.me(tokens["access_token"]), 200) == user.body
    pass_time(user.sid, SESSION_IDLE - HOUR)                          # idle limit + 1 h since refresh
    assert_invalid_token(api.me(tokens["access_token"]))
    assert_invalid_token(api.refresh(tokens["refresh_token"]))
    assert_invalid_token(api.logout(tokens["access_token"]))


def test_session_ends_at_the_absolute_limit_despite_refreshes(api):
    user = logged_in_user(api)
    tokens = user.tokens
    step = min(SESSION_IDLE - HOUR, SESSION_MAX // 4)
    aged = 0
    while aged + step < SESSION_MAX - HOUR:
        pass_time(user.sid, step)
        aged += step
        tokens = assert_token_body(api.refresh(tokens["refresh_token"]))
    pass_time(user.sid, SESSION_MAX - HOUR - aged)                    # the limit less an hour
    tokens = assert_token_body(api.refresh(tokens["refresh_token"]))
    assert assert_json_response(api.me(tokens["access_token"]), 200) == user.body
    pass_time(user.sid, 2 * HOUR)                                     # the limit plus an hour
    assert_invalid_token(api.me(tokens["access_token"]))
    assert_invalid_token(api.refresh(tokens["refresh_token"]))


def test_login_backoff_is_capped_at_15_minutes(api):
    user = register_ok(api)
    wrong = strong_password()
    for _ in range(BACKOFF_AFTER - 1):
        assert_problem(api.login(user.email, wrong), 401, "invalid_credentials")
    # 30 failures more, without the waits in between
    # the row of the account from this test's network (the account-wide row is '*')
    out = run_sql("UPDATE login_throttle SET failures = failures + 30, blocked_until = NULL "
                  "WHERE account = sha256(convert_to(:'email', 'UTF8')) AND network <> '*' "
                  "RETURNING failures;",
                  email=user.email)
    assert out == str(BACKOFF_AFTER - 1 + 30), f"throttle row of {user.email}: {out!r}"
    assert_problem(api.login(user.email, wrong), 401, "invalid_credentials")
    retry_after = assert_too_many(api.login(user.email, user.password))
    assert BACKOFF_MAX - 2 <= retry_after <= BACKOFF_MAX, f"Retry-After {retry_after}"


# --------------------------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------------------------

AUDIT_COLUMNS = "event, coalesce(user_id::text, ''), coalesce(session_id::text, ''), " \
                "coalesce(source_ip, ''), coalesce(user_agent, ''), coalesce(reason, ''), " \
                "extract(epoch from occurred_at)"


@dataclass
class Row:
    event: str
    user_id: str
    session_id: str
    source_ip: str
    user_agent: str
    reason: str
    occurred_at: float


def audit_rows(where: str, **variables) -> list[Row]:
    out = run_sql(f"SELECT json_agg(json_build_array({AUDIT_COLUMNS}) ORDER BY id) "
                  f"FROM auth_events WHERE {where};", **variables)
    return [Row(*r[:6], float(r[6])) for r in json.loads(out or "null") or []]


def assert_rows_from(rows: list[Row], client, since: float) -> None:
    for row in rows:
        if client.source_address:
            assert row.source_ip == client.source_address, row
        else:
            assert row.source_ip, row
        assert row.user_agent == client.user_agent, row
        assert since - 5 <= row.occurred_at <= time.time() + 5, row


def secret_forms(token: str) -> list[str]:
    """A token and what storing it carelessly would put in a row: its hashes, its parts."""
    forms = [token, hashlib.sha256(token.encode()).hexdigest(),
             b64url(hashlib.sha256(token.encode()).digest())]
    if token.count(".") == 2:
        forms.append(token.rsplit(".", 1)[1])          # a JWT's signature
    else:
        try:
            raw = b64url_decode(token)
        except ValueError:
            raw = b""
        if raw:
            forms += [raw.hex(), hashlib.sha256(raw).hexdigest(), b64url(hashlib.sha256(raw).digest())]
    return forms


def assert_no_row_contains(needles: list[str]) -> None:
    found = run_sql(
        "SELECT json_agg(n) FROM json_array_elements_text(:'needles'::json) AS n "
        "WHERE EXISTS (SELECT 1 FROM auth_events e WHERE strpos(concat_ws(' ', e.event, "
        "e.user_id::text, e.session_id::text, e.source_ip, e.user_agent, e.reason), n) > 0);",
        needles=json.dumps(needles))
    hits = json.loads(found or "null") or []
    assert not hits, f"auth_events holds secrets: {[h[:12] + '…' for h in hits]}"


def test_audit_trail(api, reuse_scenario):
    since = time.time()
    user = register_ok(api)                                                        # registered
    assert_problem(api.register(user.email.upper(), strong_password()), 409, "email_taken")
    wrong = strong_password()
    assert_problem(api.login(user.email, wrong), 401, "invalid_credentials")       # failed (known)
    stranger_password = strong_password()
    assert_problem(api.login(new_email(), stranger_password), 401, "invalid_credentials")
    tokens = login_ok(api, user.email, user.password)                              # succeeded
    sid = claims(tokens["access_token"])["sid"]
    refreshed = assert_token_body(api.refresh(tokens["refresh_token"]))            # refreshed
    assert_invalid_token(api.refresh(b64url(secrets.token_bytes(32))))             # refresh failed
    user.tokens = refreshed
    forged = forge(good_claims(user), key=(attacker_private_key() if ALG == "RS256"
                                           else server_secret() + b"-not"))
    assert_invalid_token(api.me(forged))                                           # token rejected
    assert_no_content(api.logout(refreshed["access_token"]))                       # logged out
    assert_invalid_token(api.me(refreshed["access_token"]))                        # token rejected

    # (with mail on, a registration also writes email.verification_sent: test_account.py's)
    rows = audit_rows("user_agent = :'ua' AND event <> 'email.verification_sent'", ua=api.user_agent)
    assert [r.event for r in rows] == [
        "user.registered", "register.rejected", "login.failed", "login.failed",
        "login.succeeded", "refresh.succeeded", "refresh.failed", "token.rejected",
        "logout.succeeded", "token.rejected",
    ], f"one row per event expected, got {[(r.event, r.reason) for r in rows]}"
    assert_rows_from(rows, api, since)
    registered, rejected, failed_known, failed_unknown, succeeded, refresh_ok, refresh_failed, \
        bad_token, logged_out, ended_token = rows
    assert registered.user_id == user.id
    assert rejected.reason, rejected
    assert failed_known.user_id == user.id and failed_known.reason, failed_known
    assert failed_unknown.user_id == "" and failed_unknown.reason, failed_unknown
    assert succeeded.user_id == user.id and succeeded.session_id == sid, succeeded
    assert refresh_ok.user_id == user.id and refresh_ok.session_id == sid, refresh_ok
    assert refresh_failed.reason, refresh_failed
    assert bad_token.reason, bad_token
    assert logged_out.user_id == user.id and logged_out.session_id == sid, logged_out
    assert ended_token.reason, ended_token

    # reuse detection (the scenario's client presented a rotated token after the window)
    sc = reuse_scenario
    assert_invalid_token(sc.reuse())
    reuse = audit_rows("event = 'refresh.reuse_detected' AND session_id = :'sid'", sid=sc.sid)
    assert len(reuse) == 1, reuse
    assert reuse[0].user_id == sc.user.id, reuse
    assert_rows_from(reuse, sc.client, sc.rotated_at - 60)

    # never a password, token or hash
    needles = [user.password, wrong, stranger_password, sc.user.password]
    for t in (tokens, refreshed, sc.first, sc.rotated, sc.second):
        needles += secret_forms(t["access_token"]) + secret_forms(t["refresh_token"])
    needles += secret_forms(forged) + ["$argon2"]
    assert_no_row_contains(needles)


def test_audit_of_throttled_logins(api):
    since = time.time()
    user = register_ok(api)
    for _ in range(BACKOFF_AFTER):
        assert_problem(api.login(user.email, strong_password()), 401, "invalid_credentials")
    assert_too_many(api.login(user.email, user.password))
    rows = audit_rows("user_agent = :'ua' AND event LIKE 'login.%'", ua=api.user_agent)
    # every login attempt is one row, the one refused by the backoff included, with a reason
    assert [r.event for r in rows] == ["login.failed"] * (BACKOFF_AFTER + 1), rows
    assert all(r.user_id == user.id and r.reason for r in rows), rows
    assert rows[-1].reason != rows[0].reason, "the throttled attempt needs its own reason"
    assert_rows_from(rows, api, since)
    assert_no_row_contains([user.password])


def test_audit_sees_the_source_address_not_x_forwarded_for(api):
    since = time.time()
    spoofed = "198.51.100.23"
    resp = api.register(new_email(), strong_password(), headers={"X-Forwarded-For": spoofed})
    assert resp.status == 201, resp
    rows = audit_rows("user_agent = :'ua' AND event <> 'email.verification_sent'", ua=api.user_agent)
    assert [r.event for r in rows] == ["user.registered"], rows
    assert_rows_from(rows, api, since)
    assert rows[0].source_ip != spoofed


# --------------------------------------------------------------------------------------------
# after the grace window (last, so that the wait since the module started is mostly over)
# --------------------------------------------------------------------------------------------


def test_reuse_after_the_grace_window_revokes_that_session_only(api, reuse_scenario):
    sc = reuse_scenario
    resp = sc.reuse()
    assert_invalid_token(resp)
    # the whole session ended: its successor, its access tokens, the rotated token again
    assert_invalid_token(api.refresh(sc.rotated["refresh_token"]))
    assert_invalid_token(api.refresh(sc.first["refresh_token"]))
    for access in (sc.first["access_token"], sc.rotated["access_token"]):
        assert_invalid_token(api.me(access))
    assert_invalid_token(api.logout(sc.rotated["access_token"]))
    # the user's other session lives on
    assert_session_live(api, sc.user, sc.second)
    # and the user can log in again
    assert_session_live(api, sc.user, new_session(api, sc.user))
