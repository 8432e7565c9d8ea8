//! Access tokens: JWTs (RFC 7519, RFC 9068 `typ: at+jwt`) signed with RS256 keys named by
//! `kid` — or HS256 with a shared secret for simple setups. Keys, the validation rules and the
//! published key set are built once per cold start. Verification pins the algorithm and the
//! key by `kid`, requires `typ`, `exp`, `sub`, `sid`, `iss` and `aud`, and allows at most
//! [`LEEWAY_SECONDS`] of clock skew.

use crate::config::{Config, ConfigError, SigningSettings};
use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, Jwk, ThumbprintHash},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{fmt, sync::OnceLock, time::Duration};
use uuid::Uuid;

/// Clock skew tolerated on `exp` (docs/api.md allows at most 30 s).
pub const LEEWAY_SECONDS: u64 = 30;
/// The JWT `typ` of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The session's id.
    pub sid: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Issuer (`JWT_ISSUER`).
    pub iss: String,
    /// Audience (`JWT_AUDIENCE`).
    pub aud: String,
    /// A unique id for this token.
    pub jti: String,
    /// Whether the user's email address was proven when the token was issued.
    pub email_verified: bool,
    /// How the session was established (RFC 8176): `["pwd"]`, `["pwd", "otp"]` or
    /// `["pwd", "mfa"]`.
    pub amr: Vec<String>,
    /// The session's authenticator assurance level: `aal1`, or `aal2` with a second factor.
    pub aal: String,
}

/// How a session was established: the factors its login checked. Stored with the session
/// (`sessions.amr`), so a refresh keeps what the login proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factors {
    /// The password alone.
    Password,
    /// The password and a TOTP code.
    PasswordAndTotp,
    /// The password and a recovery code.
    PasswordAndRecoveryCode,
}

impl Factors {
    /// The RFC 8176 method names, as the `amr` claim and `sessions.amr` hold them (`mfa` for a
    /// recovery code: a second factor that is neither `otp` nor any other registered method).
    pub fn amr(self) -> &'static [&'static str] {
        match self {
            Self::Password => &["pwd"],
            Self::PasswordAndTotp => &["pwd", "otp"],
            Self::PasswordAndRecoveryCode => &["pwd", "mfa"],
        }
    }

    /// The assurance level, named as Supabase names it.
    pub fn aal(self) -> &'static str {
        match self {
            Self::Password => "aal1",
            Self::PasswordAndTotp | Self::PasswordAndRecoveryCode => "aal2",
        }
    }

    /// The factors `sessions.amr` names; `None` for a list no migration allows.
    pub fn from_amr<S: AsRef<str>>(amr: &[S]) -> Option<Self> {
        let amr: Vec<&str> = amr.iter().map(AsRef::as_ref).collect();
        [
            Self::Password,
            Self::PasswordAndTotp,
            Self::PasswordAndRecoveryCode,
        ]
        .into_iter()
        .find(|f| f.amr() == amr.as_slice())
    }
}

/// The claims a verified token must carry beyond those `Validation` checks.
#[derive(Debug, Deserialize)]
struct Verified {
    sub: String,
    sid: Option<String>,
}

/// Who a verified access token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessToken {
    /// `sub`.
    pub user_id: Uuid,
    /// `sid`.
    pub session_id: Uuid,
}

/// Why a presented token was refused (for logs and the audit; the client sees `invalid_token`
/// or `token_expired` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// `exp` has passed, beyond the leeway.
    Expired,
    /// Signature does not match.
    BadSignature,
    /// `alg` is not the configured one (`none` included).
    WrongAlgorithm,
    /// `kid` names no key we accept.
    UnknownKey,
    /// `typ` is not `at+jwt`: not an access token.
    WrongType,
    /// `iss` or `aud` is not ours.
    WrongIssuerOrAudience,
    /// A required claim is missing or of the wrong type, or `sub`/`sid` is not an id.
    BadClaims,
    /// Not a JWT at all.
    Malformed,
}

impl TokenRejection {
    /// A stable word for the log's and the audit's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::WrongType => "wrong_type",
            Self::WrongIssuerOrAudience => "wrong_issuer_or_audience",
            Self::BadClaims => "bad_claims",
            Self::Malformed => "malformed",
        }
    }
}

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Lifetime in seconds, for `expires_in`.
    pub expires_in: u64,
}

/// Signing and verification keys, the validation rules and the published documents, built
/// once per cold start.
#[derive(Clone)]
pub struct TokenKeys {
    algorithm: Algorithm,
    /// `None` in a function that only verifies or publishes (no private key given).
    encoding: Option<EncodingKey>,
    key_id: Option<String>,
    /// Every key a token may be verified with: by kid under RS256, one unnamed key under HS256.
    decoding: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
    jwks: String,
    discovery: String,
    /// The served OpenAPI document, built on its first request (not at init: it is rarely
    /// asked for, and cacheable).
    openapi: OnceLock<String>,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn bad(variable: &'static str, problem: &str) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.to_owned(),
    }
}

impl TokenKeys {
    /// Builds the keys from the settings: RS256 when a private key is configured, else HS256.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let (algorithm, encoding, key_id, decoding, jwks) = match &config.signing {
            SigningSettings::Hs256 { secret } => (
                Algorithm::HS256,
                Some(EncodingKey::from_secret(secret.expose())),
                None,
                vec![(None, DecodingKey::from_secret(secret.expose()))],
                Vec::new(),
            ),
            SigningSettings::Rs256 {
                private_key_pem,
                key_id,
                extra_public_keys,
            } => {
                let (mut decoding, mut jwks, encoding, kid) = match private_key_pem {
                    Some(private_key_pem) => {
                        let encoding =
                            EncodingKey::from_rsa_pem(private_key_pem.expose().as_bytes())
                                .map_err(|_| {
                                    bad("JWT_PRIVATE_KEY", "is not an RSA private key in PEM form")
                                })?;
                        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
                            .map_err(|_| bad("JWT_PRIVATE_KEY", "is not a usable RSA key"))?;
                        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
                            return Err(bad("JWT_PRIVATE_KEY", "is not an RSA key"));
                        };
                        let kid = key_id
                            .clone()
                            .unwrap_or_else(|| jwk.thumbprint(ThumbprintHash::SHA256));
                        let current = DecodingKey::from_rsa_components(&rsa.n, &rsa.e)
                            .map_err(|_| bad("JWT_PRIVATE_KEY", "is not a usable RSA key"))?;
                        (
                            vec![(Some(kid.clone()), current)],
                            vec![rsa_jwk(&kid, &rsa.n, &rsa.e)],
                            Some(encoding),
                            Some(kid),
                        )
                    }
                    // A verifier: every accepted key, the current one included, is in
                    // JWT_PUBLIC_KEYS.
                    None => (Vec::new(), Vec::new(), None, key_id.clone()),
                };
                for (extra_kid, pem) in extra_public_keys {
                    if encoding.is_some() && kid.as_ref() == Some(extra_kid) {
                        return Err(bad("JWT_PUBLIC_KEYS", "repeats the kid of the current key"));
                    }
                    let (n, e) = rsa_public_components(pem).ok_or_else(|| {
                        bad(
                            "JWT_PUBLIC_KEYS",
                            "holds a key that is not an RSA public key in PEM form",
                        )
                    })?;
                    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                    let (n, e) = (b64.encode(n), b64.encode(e));
                    let key = DecodingKey::from_rsa_components(&n, &e)
                        .map_err(|_| bad("JWT_PUBLIC_KEYS", "holds an unusable RSA key"))?;
                    decoding.push((Some(extra_kid.clone()), key));
                    jwks.push(rsa_jwk(extra_kid, &n, &e));
                }
                (Algorithm::RS256, encoding, kid, decoding, jwks)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let discovery = discovery_document(&config.jwt_issuer, algorithm);
        Ok(Self {
            algorithm,
            encoding,
            key_id,
            decoding,
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            ttl: config.access_token_ttl,
            jwks: json!({ "keys": jwks }).to_string(),
            discovery,
            openapi: OnceLock::new(),
        })
    }

    /// Issues an access token for a user's session, valid from `now` (seconds since the epoch)
    /// for the configured lifetime.
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        email_verified: bool,
        factors: Factors,
        now: i64,
    ) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let ttl = self.ttl.as_secs();
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Uuid::new_v4().to_string(),
            email_verified,
            amr: factors.amr().iter().map(|&m| m.to_owned()).collect(),
            aal: factors.aal().to_owned(),
        };
        let mut header = Header::new(self.algorithm);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid.clone_from(&self.key_id);
        // Only a function given the private key issues tokens; reaching here without one is a
        // wiring mistake, answered as an internal error by the caller.
        let encoding = self
            .encoding
            .as_ref()
            .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        let token = jsonwebtoken::encode(&header, &claims, encoding)?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
        })
    }

    /// Verifies a compact JWS as an access token.
    pub fn verify(&self, token: &str) -> Result<AccessToken, TokenRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => TokenRejection::WrongAlgorithm,
            _ => TokenRejection::Malformed,
        })?;
        if header.alg != self.algorithm {
            return Err(TokenRejection::WrongAlgorithm);
        }
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenRejection::WrongType);
        }
        let key = match self.algorithm {
            Algorithm::HS256 => self.decoding.first().map(|(_, k)| k),
            _ => header.kid.as_deref().and_then(|kid| {
                self.decoding
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(kid))
                    .map(|(_, key)| key)
            }),
        }
        .ok_or(TokenRejection::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<Verified>(token, key, &self.validation).map_err(|e| match e
                .kind()
            {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                ErrorKind::InvalidSignature => TokenRejection::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => TokenRejection::WrongAlgorithm,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                    TokenRejection::WrongIssuerOrAudience
                }
                ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::ImmatureSignature
                | ErrorKind::InvalidSubject => TokenRejection::BadClaims,
                _ => TokenRejection::Malformed,
            })?;
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| TokenRejection::BadClaims)?;
        let session_id = data
            .claims
            .sid
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or(TokenRejection::BadClaims)?;
        Ok(AccessToken {
            user_id,
            session_id,
        })
    }

    /// The public keys as a JWK Set (RFC 7517); empty under HS256.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// The OpenID Connect Discovery document for this issuer.
    pub fn discovery_json(&self) -> &str {
        &self.discovery
    }

    /// The OpenAPI document with this issuer as its server (see [`crate::openapi::served`]).
    pub fn openapi_json(&self) -> &str {
        self.openapi
            .get_or_init(|| crate::openapi::served(&self.issuer))
    }
}

fn rsa_jwk(kid: &str, n: &str, e: &str) -> serde_json::Value {
    json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e })
}

/// The members OpenID Connect Discovery 1.0 marks required, filled with what this service
/// really does: there is no OAuth authorization flow, the login route is where users
/// authenticate and it returns a bearer access token directly.
fn discovery_document(issuer: &str, algorithm: Algorithm) -> String {
    let base = issuer.trim_end_matches('/');
    let alg = match algorithm {
        Algorithm::HS256 => "HS256",
        _ => "RS256",
    };
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "authorization_endpoint": format!("{base}/auth/login"),
        "service_documentation": format!("{base}/openapi.json"),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": ["sub", "sid", "iss", "aud", "exp", "iat", "jti", "email_verified", "amr", "aal"],
    })
    .to_string()
}

/// The modulus and exponent of an RSA public key in PEM: SubjectPublicKeyInfo ("PUBLIC KEY")
/// or PKCS#1 ("RSA PUBLIC KEY").
fn rsa_public_components(pem: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let pkcs1 = pem.contains("BEGIN RSA PUBLIC KEY");
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    let rsa_key = if pkcs1 {
        der
    } else {
        // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0x00, RSAPublicKey } }
        let (spki, _) = der_element(&der, 0x30)?;
        let (_algorithm, rest) = der_element(spki, 0x30)?;
        let (bits, _) = der_element(rest, 0x03)?;
        bits.split_first()
            .filter(|(unused, _)| **unused == 0)?
            .1
            .to_vec()
    };
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    let (seq, _) = der_element(&rsa_key, 0x30)?;
    let (n, rest) = der_element(seq, 0x02)?;
    let (e, _) = der_element(rest, 0x02)?;
    let strip = |v: &[u8]| {
        v.iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    Some((strip(n), strip(e)))
}

/// One DER element with the expected tag: its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const SECRET: &str = "an-hs256-test-secret-of-32-bytes!";

    fn config_with(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup_for(
            crate::config::Uses {
                data_key: false,
                ..crate::config::Uses::ALL
            },
            |k| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
                    .or_else(|| match k {
                        "DATABASE_URL" => Some("postgres://u:p@localhost/db".into()),
                        _ => None,
                    })
            },
        )
        .expect("config")
    }

    fn keys_with(issuer: &str, audience: &str, secret: &str) -> TokenKeys {
        TokenKeys::from_config(&config_with(&[
            ("JWT_SECRET", secret),
            ("JWT_ISSUER", issuer),
            ("JWT_AUDIENCE", audience),
        ]))
        .expect("keys")
    }

    fn keys() -> TokenKeys {
        keys_with("iss-a", "aud-a", SECRET)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn at_header(alg: Algorithm) -> Header {
        let mut h = Header::new(alg);
        h.typ = Some("at+jwt".into());
        h
    }

    fn sign(header: &Header, claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("sign")
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        json!({"sub": Uuid::new_v4().to_string(), "sid": Uuid::new_v4().to_string(), "iat": now(),
               "exp": now() + exp_offset, "iss": "iss-a", "aud": "aud-a", "jti": "j"})
    }

    #[test]
    fn an_issued_token_round_trips_with_all_claims_and_the_at_jwt_type() {
        let k = keys();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = k
            .issue(user, session, false, Factors::Password, now())
            .expect("issue");
        assert_eq!(issued.expires_in, 900);
        assert_eq!(
            k.verify(&issued.token),
            Ok(AccessToken {
                user_id: user,
                session_id: session
            })
        );
        let data =
            jsonwebtoken::dangerous::insecure_decode::<Claims>(&issued.token).expect("decode");
        assert_eq!(data.header.alg, Algorithm::HS256);
        assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(data.claims.exp - data.claims.iat, 900);
        assert_eq!(
            (data.claims.iss.as_str(), data.claims.aud.as_str()),
            ("iss-a", "aud-a")
        );
        assert_eq!(
            Uuid::parse_str(&data.claims.jti).map(|u| u.get_version_num()),
            Ok(4)
        );
    }

    #[test]
    fn tokens_carry_the_sessions_factors_and_their_assurance_level() {
        let k = keys();
        for (factors, amr, aal) in [
            (Factors::Password, &["pwd"][..], "aal1"),
            (Factors::PasswordAndTotp, &["pwd", "otp"][..], "aal2"),
            (
                Factors::PasswordAndRecoveryCode,
                &["pwd", "mfa"][..],
                "aal2",
            ),
        ] {
            let issued = k
                .issue(Uuid::new_v4(), Uuid::new_v4(), true, factors, now())
                .expect("issue");
            let claims = jsonwebtoken::dangerous::insecure_decode::<Claims>(&issued.token)
                .expect("decode")
                .claims;
            assert_eq!(claims.amr, amr);
            assert_eq!(claims.aal, aal);
            assert_eq!(Factors::from_amr(&claims.amr), Some(factors));
        }
        assert_eq!(Factors::from_amr(&["otp"]), None);
        assert_eq!(Factors::from_amr::<&str>(&[]), None);
    }

    #[test]
    fn expiry_allows_the_leeway_and_no_more() {
        let k = keys();
        let h = at_header(Algorithm::HS256);
        assert!(k.verify(&sign(&h, &claims(-10), SECRET)).is_ok());
        assert_eq!(
            k.verify(&sign(&h, &claims(-31 - 2), SECRET)),
            Err(TokenRejection::Expired)
        );
        let old = k
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                false,
                Factors::Password,
                now() - 3600,
            )
            .expect("issue");
        assert_eq!(k.verify(&old.token), Err(TokenRejection::Expired));
    }

    #[test]
    fn forged_foreign_and_untyped_tokens_are_refused() {
        let k = keys();
        let h = at_header(Algorithm::HS256);
        let other_secret = "another-secret-that-is-32-bytes-long";
        assert_eq!(
            k.verify(&sign(&h, &claims(60), other_secret)),
            Err(TokenRejection::BadSignature)
        );
        let foreign = keys_with("iss-b", "aud-a", SECRET)
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                false,
                Factors::Password,
                now(),
            )
            .expect("i");
        assert_eq!(
            k.verify(&foreign.token),
            Err(TokenRejection::WrongIssuerOrAudience)
        );
        let foreign = keys_with("iss-a", "aud-b", SECRET)
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                false,
                Factors::Password,
                now(),
            )
            .expect("i");
        assert_eq!(
            k.verify(&foreign.token),
            Err(TokenRejection::WrongIssuerOrAudience)
        );
        assert_eq!(
            k.verify(&sign(&at_header(Algorithm::HS512), &claims(60), SECRET)),
            Err(TokenRejection::WrongAlgorithm)
        );
        assert_eq!(
            k.verify(&sign(&Header::new(Algorithm::HS256), &claims(60), SECRET)),
            Err(TokenRejection::WrongType)
        );
        for junk in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30."] {
            assert!(k.verify(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        let body = b64.encode(claims(60).to_string());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(matches!(
                keys().verify(&token),
                Err(TokenRejection::WrongAlgorithm | TokenRejection::Malformed)
            ));
        }
    }

    #[test]
    fn required_claims_must_be_present_and_ids_must_be_uuids() {
        let k = keys();
        let h = at_header(Algorithm::HS256);
        for missing in ["exp", "sub", "sid", "iss", "aud"] {
            let mut c = claims(60);
            c.as_object_mut().expect("object").remove(missing);
            assert!(
                k.verify(&sign(&h, &c, SECRET)).is_err(),
                "without {missing}"
            );
        }
        for (claim, value) in [
            ("sub", json!("not-a-uuid")),
            ("sid", json!("x")),
            ("sub", json!(42)),
        ] {
            let mut c = claims(60);
            c[claim] = value;
            assert!(k.verify(&sign(&h, &c, SECRET)).is_err(), "{claim}");
        }
    }

    /// A fresh RSA key pair as (private PKCS#8 PEM, public SPKI PEM).
    pub(crate) fn rsa_pair() -> (String, String) {
        use aws_lc_rs::{
            encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
            rsa::{KeyPair, KeySize},
            signature::KeyPair as _,
        };
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate");
        let private: Pkcs8V1Der<'_> = pair.as_der().expect("pkcs8");
        let public: PublicKeyX509Der<'_> = pair.public_key().as_der().expect("spki");
        (
            pem("PRIVATE KEY", private.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    #[test]
    fn rs256_tokens_name_their_key_and_verify_against_the_published_set() {
        let (private, public) = rsa_pair();
        let k = TokenKeys::from_config(&config_with(&[
            ("JWT_PRIVATE_KEY", &private),
            ("JWT_KEY_ID", "k1"),
        ]))
        .expect("keys");
        let issued = k
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                false,
                Factors::Password,
                now(),
            )
            .expect("issue");
        let header = jsonwebtoken::decode_header(&issued.token).expect("header");
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::RS256, Some("k1"))
        );
        assert!(k.verify(&issued.token).is_ok());
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(k.jwks_json()).expect("jwks");
        let jwk = set.find("k1").expect("k1 published");
        let key = DecodingKey::from_jwk(jwk).expect("key");
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&["auth-lambda"]);
        assert!(jsonwebtoken::decode::<Claims>(&issued.token, &key, &v).is_ok());
        // The published modulus is the one of the PEM public key.
        let (n, _) = rsa_public_components(&public).expect("components");
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            panic!("not RSA")
        };
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n),
            rsa.n
        );
    }

    #[test]
    fn keys_rotate_without_logging_anyone_out() {
        let ((old_private, old_public), (new_private, _)) = (rsa_pair(), rsa_pair());
        let old = TokenKeys::from_config(&config_with(&[
            ("JWT_PRIVATE_KEY", &old_private),
            ("JWT_KEY_ID", "old"),
        ]))
        .expect("old keys");
        let token = old
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                false,
                Factors::Password,
                now(),
            )
            .expect("issue")
            .token;
        let extra = json!({ "old": old_public }).to_string();
        let rotated = TokenKeys::from_config(&config_with(&[
            ("JWT_PRIVATE_KEY", &new_private),
            ("JWT_KEY_ID", "new"),
            ("JWT_PUBLIC_KEYS", &extra),
        ]))
        .expect("rotated keys");
        assert!(
            rotated.verify(&token).is_ok(),
            "a token of the previous key still verifies"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(rotated.jwks_json()).expect("json")["keys"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let retired = TokenKeys::from_config(&config_with(&[
            ("JWT_PRIVATE_KEY", &new_private),
            ("JWT_KEY_ID", "new"),
        ]))
        .expect("keys");
        assert_eq!(
            retired.verify(&token),
            Err(TokenRejection::UnknownKey),
            "until its key is removed"
        );
    }

    #[test]
    fn the_kid_defaults_to_the_rfc_7638_thumbprint_and_hs256_publishes_no_keys() {
        let k = TokenKeys::from_config(&config_with(&[("JWT_PRIVATE_KEY", &rsa_pair().0)]))
            .expect("keys");
        let kid = k.key_id.clone().expect("kid");
        assert_eq!(kid.len(), 43, "base64url SHA-256");
        assert_eq!(keys().jwks_json(), r#"{"keys":[]}"#);
        let doc: serde_json::Value = serde_json::from_str(k.discovery_json()).expect("json");
        assert_eq!(doc["jwks_uri"], "auth-lambda/.well-known/jwks.json");
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
    }

    #[test]
    fn pem_public_keys_of_both_forms_parse() {
        assert!(
            rsa_public_components(&rsa_pair().1)
                .is_some_and(|(n, e)| n.len() == 256 && e == [1, 0, 1])
        );
        assert!(
            rsa_public_components("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_none()
        );
        assert!(der_element(&[0x30, 0x85, 1, 1, 1, 1, 1], 0x30).is_none());
        assert!(der_element(&[0x30, 0x05, 1], 0x30).is_none());
    }
}
