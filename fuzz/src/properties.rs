//! What must hold of each parser of untrusted input, for any input at all. Every function takes
//! the raw fuzz input, decodes from it what it feeds the parser (documented per function, so a
//! seed or a regression file can be written by hand), and panics when a property breaks: the
//! fuzzer reports the panic as a crash, the regression test as a failure.
//!
//! Shared by the fuzz targets (fuzz/fuzz_targets/*.rs) and shared/tests/fuzz_regressions.rs,
//! which includes this file with `#[path]`; it uses only crates both have.

use base64::Engine as _;
use lambda_http::{Body, Request, http::HeaderValue};
use serde_json::Value;
use shared::error::AuthError;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

pub type Target = (&'static str, fn(&[u8]));

/// Each property by the name of its fuzz target (and of its directories under fuzz/corpus/ and
/// shared/tests/fuzz-regressions/).
pub const TARGETS: [Target; 10] = [
    ("json_body", json_body),
    ("email", email),
    ("password", password),
    ("bearer", bearer),
    ("token_verify", token_verify),
    ("token_roundtrip", token_roundtrip),
    ("token_claims", token_claims),
    ("refresh", refresh),
    ("db_url", db_url),
    ("mfa_codes", mfa_codes),
];

fn request(header: Option<(&'static str, &[u8])>, body: Body) -> Option<Request> {
    let mut req = Request::new(body);
    if let Some((name, value)) = header {
        // Bytes no HTTP header can hold never reach a handler: nothing to check then.
        let value = HeaderValue::from_bytes(value).ok()?;
        req.headers_mut().insert(name, value);
    }
    Some(req)
}

/// `json_object` and `string_field`. Input: byte 0 is `n | pad`, where the low 7 bits `n` are
/// the length of the `Content-Type` value that follows (127: no header) and the high bit pads
/// the body with trailing spaces to 16 383, 16 384 or 16 385 bytes (by `n % 3`), across the
/// limit; then the header value, then the body. Byte 1 of the body picks text or binary.
///
/// Holds: over 16 KiB is `PayloadTooLarge` whatever else; otherwise only `UnsupportedMediaType`
/// or `InvalidJson`; `Ok` only for a JSON object serde_json reads the same, under a content
/// type that is `application/json`; `InvalidJson` only where the same headers with `{}` would
/// pass; `string_field` gives a string member's value and `InvalidRequest` naming the field
/// for any other member or a missing one.
pub fn json_body(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(first & 0x7f);
    let (content_type, body) = if n == 127 {
        (None, rest)
    } else if rest.len() >= n {
        let (ct, body) = rest.split_at(n);
        (Some(ct), body)
    } else {
        return;
    };
    let mut body = body.to_vec();
    if first & 0x80 != 0 {
        let target = shared::http::MAX_BODY_BYTES - 1 + n % 3;
        if body.len() < target {
            body.resize(target, b' ');
        }
    }
    let make = |bytes: Vec<u8>| match String::from_utf8(bytes) {
        Ok(text) if text.len() % 2 == 0 => Body::Text(text),
        Ok(text) => Body::Binary(text.into_bytes()),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    let header = content_type.map(|ct| ("content-type", ct));
    let Some(req) = request(header, make(body.clone())) else {
        return;
    };
    let result = shared::http::json_object(&req);
    if body.len() > shared::http::MAX_BODY_BYTES {
        assert_eq!(result, Err(AuthError::PayloadTooLarge));
        return;
    }
    let header_value = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    let accepted_type = request(header, Body::Text("{}".into()))
        .map(|r| shared::http::json_object(&r).is_ok())
        .unwrap_or(false);
    match &result {
        Ok(map) => {
            assert!(accepted_type);
            let media = header_value
                .and_then(|v| v.split(';').next())
                .map(str::trim)
                .unwrap_or_default();
            assert!(media.eq_ignore_ascii_case("application/json"), "{media:?}");
            assert_eq!(
                serde_json::from_slice::<Value>(&body).ok(),
                Some(Value::Object(map.clone()))
            );
        }
        Err(AuthError::UnsupportedMediaType) => assert!(!accepted_type),
        Err(AuthError::InvalidJson) => {
            assert!(accepted_type);
            assert!(!matches!(
                serde_json::from_slice::<Value>(&body),
                Ok(Value::Object(_))
            ));
        }
        Err(other) => panic!("json_object answered {other:?}"),
    }
    // The exact type the contract names is always accepted, with or without a charset.
    for ct in ["application/json", "application/json; charset=utf-8"] {
        let r = request(Some(("content-type", ct.as_bytes())), make(body.clone()));
        let r = r.map(|r| shared::http::json_object(&r));
        assert!(
            !r.is_some_and(|r| matches!(r, Err(AuthError::UnsupportedMediaType))),
            "{ct}"
        );
    }
    let Ok(map) = result else { return };
    let mut names: Vec<String> = map.keys().take(4).cloned().collect();
    names.push("email".into());
    for name in names {
        match (shared::http::string_field(&map, &name), map.get(&name)) {
            (Ok(s), Some(Value::String(v))) => assert_eq!(&s, v),
            (Err(AuthError::InvalidRequest(detail)), v) => {
                assert!(!matches!(v, Some(Value::String(_))));
                assert!(detail.contains(&format!("`{name}`")), "{detail}");
            }
            (r, v) => panic!("string_field({name:?}) = {r:?} for {v:?}"),
        }
    }
}

/// `Email::parse`. Input: the raw address (UTF-8; anything else is skipped).
///
/// Holds: only `InvalidEmail` errors; an accepted address is lower-case ASCII, at most 254
/// characters with a local part of at most 64, has exactly one `@`, and parses again to itself
/// (normalization is idempotent); `mask` never shows more than the masked normalized form.
pub fn email(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    match shared::email::Email::parse(raw) {
        Ok(email) => {
            let s = email.as_str();
            assert!(s.is_ascii(), "{s:?}");
            assert!(!s.chars().any(|c| c.is_ascii_uppercase()), "{s:?}");
            assert!(s.len() <= shared::email::MAX_EMAIL_CHARS, "{s:?}");
            assert_eq!(s.matches('@').count(), 1, "{s:?}");
            assert!(email.local_part().len() <= shared::email::MAX_LOCAL_CHARS);
            assert!(!email.local_part().is_empty());
            let again = shared::email::Email::parse(s).expect("a normalized email parses again");
            assert_eq!(again, email);
            assert_eq!(shared::email::mask(raw), email.masked());
        }
        Err(AuthError::InvalidEmail(_)) => assert_eq!(shared::email::mask(raw), "***"),
        Err(other) => panic!("Email::parse answered {other:?}"),
    }
}

const PASSWORD_EMAILS: [&str; 3] = ["ann@example.com", "correcthorse@example.org", "x@y.de"];

/// `NewPassword::parse`. Input: byte 0 picks the account's email (of three) and the minimum
/// length (8 to 64, as `PASSWORD_MIN_LENGTH` allows, usually the default 12); the rest is the
/// password (UTF-8). zxcvbn sees at most 128 code points (the length check comes first), so
/// the cost is bounded by the code; run with `-max_len` of a few hundred bytes all the same.
///
/// Holds: only `InvalidPassword` or `WeakPassword`; `InvalidPassword` exactly when the NFKC
/// form is outside min..=128 code points or holds a control character; an accepted password is
/// the NFKC form of the input, NFKC-stable, and not the email or its local part.
pub fn password(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let email = shared::email::Email::parse(PASSWORD_EMAILS[usize::from(first) % 3])
        .expect("a fixed valid email");
    let min = match first >> 2 {
        n if n < 32 => 12,
        n => 8 + usize::from(n - 32) * 2,
    };
    let normalized: String = raw.nfkc().collect();
    let chars = normalized.chars().count();
    let shape_ok = (min..=shared::password::MAX_PASSWORD_CHARS).contains(&chars)
        && !normalized.chars().any(char::is_control);
    match shared::password::NewPassword::parse(raw, &email, min) {
        Ok(p) => {
            assert!(shape_ok, "{chars} chars accepted under min {min}");
            assert_eq!(p.expose(), normalized);
            assert_eq!(shared::password::normalize(p.expose()), p.expose());
            let lowered = p.expose().to_lowercase();
            assert!(lowered != email.as_str() && lowered != email.local_part());
        }
        Err(AuthError::InvalidPassword(_)) => assert!(!shape_ok),
        Err(AuthError::WeakPassword) => assert!(shape_ok),
        Err(other) => panic!("NewPassword::parse answered {other:?}"),
    }
}

/// `bearer`. Input: the `Authorization` header value (skipped when no header can hold it).
///
/// Holds: a value that is not visible ASCII is an empty token (refused later as invalid, never
/// read as missing); otherwise a token exactly when the first word is `Bearer` in any case, and
/// the token is the rest, trimmed; flipping the scheme's case changes nothing; any other
/// scheme in its place is `Missing`; no header is `Missing`.
pub fn bearer(data: &[u8]) {
    use shared::http::Bearer;
    assert_eq!(
        shared::http::bearer(&Request::new(Body::Empty)),
        Bearer::Missing
    );
    let Some(req) = request(Some(("authorization", data)), Body::Empty) else {
        return;
    };
    let result = shared::http::bearer(&req);
    let Ok(value) = std::str::from_utf8(data) else {
        assert_eq!(result, Bearer::Token(""));
        return;
    };
    if req.headers()["authorization"].to_str().is_err() {
        assert_eq!(result, Bearer::Token(""));
        return;
    }
    let trimmed = value.trim();
    let (scheme, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    let is_bearer = scheme.eq_ignore_ascii_case("bearer");
    match result {
        Bearer::Token(token) => {
            assert!(is_bearer, "{scheme:?}");
            assert_eq!(token, rest.trim());
            assert_eq!(token, token.trim());
        }
        Bearer::Missing => assert!(!is_bearer, "{scheme:?}"),
    }
    let flipped: String = scheme
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let other = format!("{flipped} {rest}");
    if let Some(r) = request(Some(("authorization", other.as_bytes())), Body::Empty) {
        assert_eq!(shared::http::bearer(&r), result, "{other:?}");
    }
    for scheme in ["Basic", "Bearerx", "Digest", "bear"] {
        let other = format!("{scheme} {rest}");
        if let Some(r) = request(Some(("authorization", other.as_bytes())), Body::Empty) {
            assert_eq!(shared::http::bearer(&r), Bearer::Missing, "{other:?}");
        }
    }
}

/// The fixed HS256 secret of the token targets (a test value, as in shared's own tests).
pub const TEST_SECRET: &str = "a-fuzzing-hs256-secret-of-32-bytes!";
/// `JWT_ISSUER` and `JWT_AUDIENCE` of the token targets.
pub const TEST_ISSUER: &str = "https://fuzz.example";
pub const TEST_AUDIENCE: &str = "fuzz-audience";
const TEST_TTL_SECS: i64 = 900;

/// The two key sets: HS256 with [`TEST_SECRET`], RS256 with a key generated once per process
/// (no key is committed).
pub fn test_keys() -> &'static [shared::token::TokenKeys; 2] {
    static KEYS: OnceLock<[shared::token::TokenKeys; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = rsa_private_pem();
        let ttl = TEST_TTL_SECS.to_string();
        let build = |pairs: &[(&str, &str)]| {
            let config = shared::config::Config::from_lookup_for(
                shared::config::Uses {
                    database: false,
                    signing: shared::config::KeyUse::Sign,
                    data_key: false,
                    mail: false,
                },
                |name| {
                    pairs
                        .iter()
                        .chain(&[
                            ("JWT_ISSUER", TEST_ISSUER),
                            ("JWT_AUDIENCE", TEST_AUDIENCE),
                            ("ACCESS_TOKEN_TTL_SECONDS", ttl.as_str()),
                        ])
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| (*v).to_owned())
                },
            )
            .expect("the fuzzing config");
            shared::token::TokenKeys::from_config(&config).expect("the fuzzing keys")
        };
        [
            build(&[("JWT_SECRET", TEST_SECRET)]),
            build(&[("JWT_PRIVATE_KEY", &rsa), ("JWT_KEY_ID", "fuzz-1")]),
        ]
    })
}

fn rsa_private_pem() -> String {
    use aws_lc_rs::{
        encoding::{AsDer, Pkcs8V1Der},
        rsa::{KeyPair, KeySize},
    };
    let pair = KeyPair::generate(KeySize::Rsa2048).expect("an RSA key");
    let der: Pkcs8V1Der<'_> = pair.as_der().expect("PKCS#8");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `TokenKeys::verify` on arbitrary strings. Input: the token (UTF-8), tried against both key
/// sets. No one can sign for keys they do not have, so nothing is ever accepted. (A seed signed
/// with [`TEST_SECRET`] must be expired, or this target rightly reports it.)
pub fn token_verify(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    for keys in test_keys() {
        if let Ok(t) = keys.verify(token) {
            panic!("{token:?} was accepted as {t:?}");
        }
    }
}

/// Issue then verify. Input: 16 bytes of user id, 16 of session id, a flag byte (bit 0: email
/// verified, bit 1: RS256 instead of HS256), 4 bytes of age in seconds (big-endian, taken
/// modulo 2 000), 2 bytes of a position and 1 byte to change there (missing bytes are zero).
///
/// Holds: a token issued `age` seconds ago verifies to the same user and session while
/// `age < ttl`, and is `Expired` once `age > ttl + leeway` (+2 s for the clock); its payload
/// holds exactly the issued claims; the token with any one byte changed is never accepted.
pub fn token_roundtrip(data: &[u8]) {
    let mut buf = [0u8; 40];
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    let user = Uuid::from_bytes(buf[0..16].try_into().expect("16 bytes"));
    let session = Uuid::from_bytes(buf[16..32].try_into().expect("16 bytes"));
    let flags = buf[32];
    let age = i64::from(u32::from_be_bytes(buf[33..37].try_into().expect("4 bytes")) % 2000);
    let position = usize::from(u16::from_be_bytes([buf[37], buf[38]]));
    let replacement = buf[39];
    let keys = &test_keys()[usize::from(flags & 2 != 0)];
    let verified = flags & 1 != 0;
    let factors = [
        shared::token::Factors::Password,
        shared::token::Factors::PasswordAndTotp,
        shared::token::Factors::PasswordAndRecoveryCode,
    ][usize::from(flags >> 2) % 3];
    let issued_at = now() - age;
    let issued = keys
        .issue(user, session, verified, factors, issued_at)
        .expect("issuing with a signing key");
    assert_eq!(issued.expires_in, TEST_TTL_SECS as u64);
    let result = keys.verify(&issued.token);
    let leeway = i64::try_from(shared::token::LEEWAY_SECONDS).expect("small");
    if age < TEST_TTL_SECS {
        let t = result.expect("a fresh token verifies");
        assert_eq!((t.user_id, t.session_id), (user, session));
    } else if age > TEST_TTL_SECS + leeway + 2 {
        assert_eq!(result, Err(shared::token::TokenRejection::Expired));
    }
    let payload = issued.token.split('.').nth(1).expect("a compact JWS");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: shared::token::Claims = serde_json::from_slice(&payload).expect("the claims");
    assert_eq!(claims.sub, user.to_string());
    assert_eq!(claims.sid, session.to_string());
    assert_eq!(claims.iat, issued_at);
    assert_eq!(claims.exp, issued_at + TEST_TTL_SECS);
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str()),
        (TEST_ISSUER, TEST_AUDIENCE)
    );
    assert_eq!(claims.email_verified, verified);
    assert_eq!(claims.amr, factors.amr());
    assert_eq!(claims.aal, factors.aal());
    let mut tampered = issued.token.into_bytes();
    let at = position % tampered.len();
    if tampered[at] != replacement {
        tampered[at] = replacement;
        if let Ok(s) = std::str::from_utf8(&tampered) {
            assert!(keys.verify(s).is_err(), "a changed token was accepted: {s}");
        }
    }
}

/// Verify arbitrary but correctly signed tokens: the header JSON and the claims JSON are the
/// input split at its first 0x00 byte, base64url-encoded and signed with [`TEST_SECRET`]
/// (HS256). This reaches what signature checks keep the other targets from: the rules on the
/// header and the claims.
///
/// Holds: an accepted token has `alg` HS256, `typ` `at+jwt` (or `application/at+jwt`, any
/// case), `iss` ours, `aud` ours (or an array holding it), a numeric `exp` not past beyond the
/// leeway, no `nbf` in the future beyond it, and `sub` and `sid` ids that are the ones verify
/// returned.
pub fn token_claims(data: &[u8]) {
    let Some(split) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (header, claims) = (&data[..split], &data[split + 1..]);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, TEST_SECRET.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    let token = format!("{input}.{}", b64.encode(tag.as_ref()));
    let Ok(access) = test_keys()[0].verify(&token) else {
        return;
    };
    let header: Value = serde_json::from_slice(header).expect("an accepted header is JSON");
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    assert_eq!(header["alg"], "HS256", "{header}");
    let typ = header["typ"].as_str().expect("typ is a string");
    assert!(
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt"),
        "{typ:?}"
    );
    assert_eq!(claims["iss"], TEST_ISSUER, "{claims}");
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == TEST_AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a == TEST_AUDIENCE),
        _ => false,
    };
    assert!(aud_ok, "{claims}");
    let leeway = shared::token::LEEWAY_SECONDS as f64;
    let exp = claims["exp"].as_f64().expect("exp is a number");
    assert!(exp + leeway >= now() as f64, "{claims}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("nbf is a number");
        assert!(nbf - leeway <= now() as f64 + 1.0, "{claims}");
    }
    let id = |name: &str| {
        claims[name]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(|| panic!("{name} is an id: {claims}"))
    };
    assert_eq!((id("sub"), id("sid")), (access.user_id, access.session_id));
}

/// `refresh::decode`. Input: the token (UTF-8); and its first 32 bytes as raw token bytes.
///
/// Holds: a decoded token is 43 characters and is exactly the encoding of its bytes (one wire
/// form per token: no padding, no non-canonical trailing bits, so no two strings name one
/// token); encode then decode gives the bytes back.
pub fn refresh(data: &[u8]) {
    if let Ok(token) = std::str::from_utf8(data)
        && let Some(raw) = shared::refresh::decode(token)
    {
        assert_eq!(token.len(), 43);
        assert_eq!(shared::refresh::encode(&raw), token);
    }
    let mut raw = [0u8; 32];
    let n = data.len().min(32);
    raw[..n].copy_from_slice(&data[..n]);
    let token = shared::refresh::encode(&raw);
    assert_eq!(token.len(), 43);
    assert_eq!(shared::refresh::decode(&token), Some(raw));
}

/// What `connection_settings` may say of a URL it refuses: fixed sentences, never the URL.
const DB_URL_PROBLEMS: [&str; 5] = [
    "is not a valid URL",
    "has an unknown sslmode",
    "could not be parsed as a PostgreSQL connection URL",
    "asks for less than verified TLS (sslmode=disable, allow or prefer) for a host that is not \
     loopback; use sslmode=require, verify-full or verify-ca",
    "has sslnegotiation=direct, which needs sslmode=require, verify-ca or verify-full",
];

/// `db::connection_settings`. Input: the URL (UTF-8).
///
/// Holds: a refusal names `DATABASE_URL` with one of the fixed problems (the URL, password
/// included, is never echoed); an accepted URL has TLS on unless `sslmode=disable`, requires
/// verified TLS whenever any host or hostaddr it will connect to is not loopback (checked here
/// independently of db.rs's own check), and direct TLS only with verified TLS.
pub fn db_url(data: &[u8]) {
    use tokio_postgres::config::{Host, SslMode, SslNegotiation};
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let settings = match shared::db::connection_settings(url, None) {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e.variable, "DATABASE_URL");
            assert!(DB_URL_PROBLEMS.contains(&e.problem.as_str()), "{e}");
            return;
        }
    };
    let pg = &settings.pg;
    assert_eq!(settings.tls.enabled, pg.get_ssl_mode() != SslMode::Disable);
    let loopback_name = |name: &str| {
        let bare = name.strip_prefix('[').unwrap_or(name);
        let bare = bare.strip_suffix(']').unwrap_or(bare);
        bare.eq_ignore_ascii_case("localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let remote = pg.get_hosts().iter().any(|h| match h {
        Host::Tcp(name) => !loopback_name(name),
        Host::Unix(_) => false,
    }) || pg.get_hostaddrs().iter().any(|a| !a.is_loopback());
    if remote {
        assert_eq!(pg.get_ssl_mode(), SslMode::Require, "{url:?}");
    }
    if pg.get_ssl_negotiation() == SslNegotiation::Direct {
        assert_eq!(pg.get_ssl_mode(), SslMode::Require, "{url:?}");
    }
    // The URL parser drops tabs and newlines anywhere (WHATWG), so `veri\nfy-ca` is verify-ca.
    let seen: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    if !settings.tls.verify_hostname {
        assert!(seen.contains("verify-ca"), "{url:?}");
    }
}

/// `totp::Code::parse` and `totp::RecoveryCode::parse`, what the second step's fields go
/// through. Input: the raw field (UTF-8; anything else is skipped).
///
/// Holds: a code is accepted exactly when the input without its spaces is six ASCII digits;
/// a recovery code is accepted exactly when, without spaces and hyphens and upper-cased, it is
/// sixteen base32 characters, and then its display form is `XXXX-XXXX-XXXX-XXXX` of those
/// characters and parses again to the same code.
pub fn mfa_codes(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let digits: String = raw.chars().filter(|c| *c != ' ').collect();
    let six_digits = digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit());
    assert_eq!(
        shared::totp::Code::parse(raw).is_some(),
        six_digits,
        "{raw:?}"
    );

    let bare: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect::<String>()
        .to_ascii_uppercase();
    let base32 = bare.len() == shared::totp::RECOVERY_CODE_CHARS
        && bare.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7'));
    let parsed = shared::totp::RecoveryCode::parse(raw);
    assert_eq!(parsed.is_some(), base32, "{raw:?}");
    if let Some(code) = parsed {
        let shown = code.display();
        assert_eq!(shown.replace('-', ""), bare);
        assert_eq!(
            shown.split('-').map(str::len).collect::<Vec<_>>(),
            [4, 4, 4, 4]
        );
        assert_eq!(shared::totp::RecoveryCode::parse(&shown), Some(code));
    }
}
