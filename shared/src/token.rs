//! Access tokens: JWTs (RFC 7519) signed with HS256. Keys and the validation rules are built
//! once per cold start; verification pins the algorithm, requires `exp`, `sub`, `iss` and `aud`
//! and allows at most [`LEEWAY_SECONDS`] of clock skew.

use crate::config::Config;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::{fmt, time::Duration};
use uuid::Uuid;

/// Clock skew tolerated on `exp` (API.md allows at most 30 s).
pub const LEEWAY_SECONDS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
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
}

/// The claims a verified token must carry; `iat` and `jti` are optional on the way in.
#[derive(Debug, Deserialize)]
struct Verified {
    sub: String,
}

/// Why a presented token was refused (for logs; the client sees `invalid_token` or
/// `token_expired` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// `exp` has passed, beyond the leeway.
    Expired,
    /// Signature does not match.
    BadSignature,
    /// `alg` is not the configured one (`none` included).
    WrongAlgorithm,
    /// `iss` or `aud` is not ours.
    WrongIssuerOrAudience,
    /// A required claim is missing or of the wrong type, or `sub` is not a user id.
    BadClaims,
    /// Not a JWT at all.
    Malformed,
}

impl TokenRejection {
    /// A stable word for the log's `reason` field.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
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

/// Signing and verification keys with the validation rules, built once per cold start.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Builds HS256 keys from `JWT_SECRET` and the claim settings.
    pub fn from_config(config: &Config) -> Self {
        let secret = config.jwt_secret.expose();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            ttl: config.access_token_ttl,
        }
    }

    /// Issues an access token for `user_id`, valid from now for the configured lifetime.
    pub fn issue(&self, user_id: Uuid) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        self.issue_at(user_id, chrono::Utc::now().timestamp())
    }

    /// Issues a token as if the time were `now` (seconds since the epoch).
    pub fn issue_at(
        &self,
        user_id: Uuid,
        now: i64,
    ) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let ttl = self.ttl.as_secs();
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
        })
    }

    /// Verifies a compact JWS and returns the user id it names.
    pub fn verify(&self, token: &str) -> Result<Uuid, TokenRejection> {
        let data = jsonwebtoken::decode::<Verified>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
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
        Uuid::parse_str(&data.claims.sub).map_err(|_| TokenRejection::BadClaims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const SECRET: &str = "an-hs256-test-secret-of-32-bytes!";

    fn keys_with(issuer: &str, audience: &str, secret: &str) -> TokenKeys {
        let config = Config::from_lookup(|k| match k {
            "DATABASE_URL" => Some("postgres://u:p@localhost/db".into()),
            "JWT_SECRET" => Some(secret.into()),
            "JWT_ISSUER" => Some(issuer.into()),
            "JWT_AUDIENCE" => Some(audience.into()),
            _ => None,
        })
        .expect("config");
        TokenKeys::from_config(&config)
    }

    fn keys() -> TokenKeys {
        keys_with("iss-a", "aud-a", SECRET)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn sign(header: &Header, claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("sign")
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        json!({"sub": Uuid::new_v4().to_string(), "iat": now(), "exp": now() + exp_offset,
               "iss": "iss-a", "aud": "aud-a", "jti": "j"})
    }

    #[test]
    fn an_issued_token_round_trips_with_all_claims() {
        let k = keys();
        let id = Uuid::new_v4();
        let issued = k.issue(id).expect("issue");
        assert_eq!(issued.expires_in, 900);
        assert_eq!(k.verify(&issued.token), Ok(id));
        let data =
            jsonwebtoken::dangerous::insecure_decode::<Claims>(&issued.token).expect("decode");
        assert_eq!(data.header.alg, Algorithm::HS256);
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
    fn expiry_allows_the_leeway_and_no_more() {
        let k = keys();
        let h = Header::new(Algorithm::HS256);
        assert!(k.verify(&sign(&h, &claims(-10), SECRET)).is_ok());
        assert_eq!(
            k.verify(&sign(&h, &claims(-31 - 2), SECRET)),
            Err(TokenRejection::Expired)
        );
        let old = k.issue_at(Uuid::new_v4(), now() - 3600).expect("issue");
        assert_eq!(k.verify(&old.token), Err(TokenRejection::Expired));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let k = keys();
        let h = Header::new(Algorithm::HS256);
        let other_secret = "another-secret-that-is-32-bytes-long";
        assert_eq!(
            k.verify(&sign(&h, &claims(60), other_secret)),
            Err(TokenRejection::BadSignature)
        );
        assert_eq!(
            k.verify(
                &keys_with("iss-b", "aud-a", SECRET)
                    .issue(Uuid::new_v4())
                    .expect("i")
                    .token
            ),
            Err(TokenRejection::WrongIssuerOrAudience)
        );
        assert_eq!(
            k.verify(
                &keys_with("iss-a", "aud-b", SECRET)
                    .issue(Uuid::new_v4())
                    .expect("i")
                    .token
            ),
            Err(TokenRejection::WrongIssuerOrAudience)
        );
        assert_eq!(
            k.verify(&sign(&Header::new(Algorithm::HS512), &claims(60), SECRET)),
            Err(TokenRejection::WrongAlgorithm)
        );
        for junk in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30."] {
            assert!(k.verify(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(claims(60).to_string());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(matches!(
                keys().verify(&token),
                Err(TokenRejection::WrongAlgorithm | TokenRejection::Malformed)
            ));
        }
    }

    #[test]
    fn required_claims_must_be_present_and_sub_must_be_a_user_id() {
        let k = keys();
        let h = Header::new(Algorithm::HS256);
        for missing in ["exp", "sub", "iss", "aud"] {
            let mut c = claims(60);
            c.as_object_mut().expect("object").remove(missing);
            assert!(
                k.verify(&sign(&h, &c, SECRET)).is_err(),
                "without {missing}"
            );
        }
        let mut c = claims(60);
        c["sub"] = json!("not-a-uuid");
        assert_eq!(
            k.verify(&sign(&h, &c, SECRET)),
            Err(TokenRejection::BadClaims)
        );
        c["sub"] = json!(42);
        assert!(k.verify(&sign(&h, &c, SECRET)).is_err());
    }
}
