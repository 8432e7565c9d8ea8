//! Everything the auth Lambdas share. A function's `main` names its [`Function`], builds what
//! that function uses (an [`AppState`], or for `keys` the key set alone) once per cold start
//! and hands each request to one of [`http::handlers`]:
//!
//! - [`config`]: every setting, validated at init; [`secrets`]: secret settings fetched from
//!   Secrets Manager at init; [`keys`]: the keys derived from `DATA_ENCRYPTION_KEY`;
//! - [`db`]: the connection pool, TLS, deadlines and retry; [`store`]: all the SQL;
//! - [`email`], [`password`]: parsed newtypes and argon2id; [`token`]: JWT issue and verify;
//! - [`openapi`]: the OpenAPI document, as `GET /openapi.json` serves it; [`pages`]: the
//!   HTML pages, embedded;
//! - [`auth`]: the operations, free of Lambda types; [`error`]: the one error enum;
//! - [`http`]: the only module that knows `lambda_http`.

pub mod auth;
pub mod breach;
pub mod config;
pub mod db;
pub mod email;
pub mod error;
pub mod http;
pub mod keys;
pub mod mail;
pub mod openapi;
pub mod origin;
pub mod pages;
pub mod password;
pub mod refresh;
#[cfg(feature = "migrations")]
pub mod schema;
pub mod secrets;
pub mod store;
pub mod tls;
pub mod token;
pub mod totp;

use chrono::{DateTime, Utc};
use config::{Config, ConfigError, KeyUse, Uses};
use std::sync::Arc;

/// Where "now" comes from: the system clock in production, a hand-set one in tests of idle and
/// absolute session limits.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The deployed functions. Each one's init reads the secrets and builds the parts it uses and
/// no others (least privilege): the table below is the one place that says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `POST /auth/register`: database, argon2, mail (the verification message).
    Register,
    /// `POST /auth/login` and its second step `POST /auth/mfa/verify`: database, argon2, the
    /// signing key, the data key (TOTP secrets, recovery codes).
    Login,
    /// `POST /auth/refresh`: database, the signing key, the successor key.
    Refresh,
    /// `GET /auth/me` and `DELETE /auth/me`: database, argon2, the public keys.
    Me,
    /// `POST /auth/logout`: database, the public keys.
    Logout,
    /// `POST /auth/email/verify` and `/resend`: database, mail.
    Email,
    /// `POST /auth/password/forgot`, `/reset` and `/change`: database, argon2, mail, the
    /// public keys.
    Password,
    /// `GET /auth/sessions` and `DELETE /auth/sessions/{id}`: database, the public keys.
    Sessions,
    /// `POST /auth/mfa/totp`, `/confirm` and `DELETE /auth/mfa/totp`: database, argon2, mail
    /// (the notices), the data key, the public keys.
    Mfa,
    /// The scheduled prune: database.
    Prune,
    /// The scheduled delivery of the outbox: database, mail.
    Mailer,
    /// The key set and discovery document: the public keys, no database.
    Keys,
}

impl Function {
    /// The secrets the function reads. Mail needs the data key too: it seals the outbox.
    pub fn uses(self) -> Uses {
        let (database, signing, data_key, mail) = match self {
            Function::Register
            | Function::Email
            | Function::Password
            | Function::Mailer
            | Function::Mfa => (true, KeyUse::Verify, true, true),
            Function::Login => (true, KeyUse::Sign, true, false),
            Function::Refresh => (true, KeyUse::Sign, true, false),
            Function::Me | Function::Logout | Function::Sessions | Function::Prune => {
                (true, KeyUse::Verify, false, false)
            }
            Function::Keys => (false, KeyUse::Verify, false, false),
        };
        Uses {
            database,
            signing,
            data_key,
            mail,
        }
    }

    /// Whether it hashes or verifies passwords (argon2).
    pub fn hashes_passwords(self) -> bool {
        matches!(
            self,
            Function::Register
                | Function::Login
                | Function::Me
                | Function::Password
                | Function::Mfa
        )
    }
}

/// What a database function's requests need, built once per cold start. The optional parts
/// exist only in the functions that use them ([`Function`]).
#[derive(Clone)]
pub struct AppState {
    /// The settings.
    pub config: Config,
    /// The connection pool.
    pub db: db::Db,
    /// argon2id with the configured cost (register, login).
    pub passwords: Option<password::Passwords>,
    /// JWT keys and validation rules; the private key only where tokens are issued.
    pub tokens: token::TokenKeys,
    /// The HMAC key deriving a rotated refresh token's successor (refresh).
    pub refresh_key: Option<aws_lc_rs::hmac::Key>,
    /// The SMTP transport and the outbox's seal, where mail is sent and `SMTP_URL` is set.
    pub mailer: Option<mail::Mailer>,
    /// The TOTP secrets' seal and the recovery codes' key (login, mfa).
    pub totp: Option<Arc<totp::Keys>>,
    /// The time source.
    pub clock: Clock,
    /// The networks this instance saw the address window refuse (see [`auth::Refused`]).
    pub refused: Arc<auth::Refused>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("db", &self.db)
            .field("tokens", &self.tokens)
            .field("mailer", &self.mailer)
            .field("totp", &self.totp)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds every part from settings that hold every secret (tests, benches). No network
    /// I/O happens here.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::build(config, true, true, true, true)
    }

    /// Builds the parts `function` uses from settings read for it
    /// ([`Config::from_lookup_for`] with [`Function::uses`]).
    pub fn for_function(config: Config, function: Function) -> Result<Self, ConfigError> {
        Self::build(
            config,
            function.hashes_passwords(),
            function == Function::Refresh,
            function.uses().mail,
            matches!(function, Function::Login | Function::Mfa),
        )
    }

    fn build(
        config: Config,
        hashes: bool,
        refreshes: bool,
        mail: bool,
        totp: bool,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            mailer: if mail {
                mail::Mailer::from_config(&config)?
            } else {
                None
            },
            db: database(&config)?,
            tokens: token::TokenKeys::from_config(&config)?,
            refresh_key: refreshes.then(|| refresh_key(&config)).transpose()?,
            totp: totp.then(|| totp_keys(&config).map(Arc::new)).transpose()?,
            clock: Arc::new(Utc::now),
            refused: Arc::default(),
            passwords: hashes.then(|| passwords(&config)).transpose()?,
            config,
        })
    }

    /// argon2, or an internal error in a function built without it (a wiring mistake).
    pub fn passwords(&self) -> Result<&password::Passwords, error::AuthError> {
        self.passwords.as_ref().ok_or_else(|| {
            tracing::error!("this function was built without argon2");
            error::AuthError::Internal
        })
    }

    /// The successor key, or an internal error in a function built without it.
    pub fn refresh_key(&self) -> Result<&aws_lc_rs::hmac::Key, error::AuthError> {
        self.refresh_key.as_ref().ok_or_else(|| {
            tracing::error!("this function was built without DATA_ENCRYPTION_KEY");
            error::AuthError::Internal
        })
    }

    /// The TOTP keys, or an internal error in a function built without them.
    pub fn totp(&self) -> Result<&totp::Keys, error::AuthError> {
        self.totp.as_deref().ok_or_else(|| {
            tracing::error!("this function was built without the TOTP keys");
            error::AuthError::Internal
        })
    }

    /// The mailer, or `503 mail_unavailable` when mail is off.
    pub fn mailer(&self) -> Result<&mail::Mailer, error::AuthError> {
        self.mailer
            .as_ref()
            .ok_or(error::AuthError::MailUnavailable)
    }

    /// The current time, from [`AppState::clock`].
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

pub use lambda_http;

fn database(config: &Config) -> Result<db::Db, ConfigError> {
    db::Db::from_config(config)
}

fn passwords(config: &Config) -> Result<password::Passwords, ConfigError> {
    password::Passwords::new(config.argon2).map_err(|_| ConfigError {
        variable: "ARGON2_MEMORY_KIB",
        problem: "and the other ARGON2_* settings do not form valid argon2 parameters".into(),
    })
}

fn data_key(config: &Config) -> Result<&keys::DataKey, ConfigError> {
    config
        .data_encryption_key
        .as_ref()
        .ok_or_else(|| ConfigError {
            variable: "DATA_ENCRYPTION_KEY",
            problem: "is required".into(),
        })
}

fn refresh_key(config: &Config) -> Result<aws_lc_rs::hmac::Key, ConfigError> {
    Ok(keys::refresh_successor_key(data_key(config)?))
}

fn totp_keys(config: &Config) -> Result<totp::Keys, ConfigError> {
    totp::Keys::new(data_key(config)?).map_err(|_| ConfigError {
        variable: "DATA_ENCRYPTION_KEY",
        problem: "does not make an AES-256-GCM key".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::collections::HashMap;

    const URL: &str = "postgres://u:p@127.0.0.1/db";
    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxAREhMUFRYXGBkaGxwdHh8AAQIDBAUGBwgJCgsMDQ4=";

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup(lookup(pairs)).expect("config")
    }

    /// A fresh RSA key pair as (private PKCS#8 PEM, public SPKI PEM).
    fn rsa_pair() -> (String, String) {
        use aws_lc_rs::{
            encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
            rsa::{KeyPair, KeySize},
            signature::KeyPair as _,
        };
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<String> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate");
        let private: Pkcs8V1Der = pair.as_der().expect("pkcs8");
        let public: PublicKeyX509Der = pair.public_key().as_der().expect("spki");
        (
            pem("PRIVATE KEY", private.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    fn successor(config: Config) -> refresh::Raw {
        let state = AppState::new(config).expect("state");
        refresh::successor(state.refresh_key().expect("refresh key"), &[7u8; 32])
    }

    #[test]
    fn rotating_the_signing_key_keeps_the_successor_and_a_new_data_key_changes_it() {
        let (rsa_1, _) = rsa_pair();
        let (rsa_2, _) = rsa_pair();
        let hs_1 = "an-hs256-secret-of-at-least-32-bytes-1";
        let hs_2 = "an-hs256-secret-of-at-least-32-bytes-2";
        let with = |signing: (&str, &str), data_key: &str| {
            successor(config(&[
                ("DATABASE_URL", URL),
                signing,
                ("DATA_ENCRYPTION_KEY", data_key),
            ]))
        };
        let under_a = with(("JWT_SECRET", hs_1), KEY_A);
        assert_eq!(under_a, with(("JWT_SECRET", hs_2), KEY_A), "HS256 rotated");
        assert_eq!(
            under_a,
            with(("JWT_PRIVATE_KEY", &rsa_1), KEY_A),
            "to RS256"
        );
        assert_eq!(
            under_a,
            with(("JWT_PRIVATE_KEY", &rsa_2), KEY_A),
            "RS256 rotated"
        );
        assert_ne!(under_a, with(("JWT_SECRET", hs_1), KEY_B), "a new data key");
        assert_eq!(
            under_a,
            refresh::successor(
                &keys::refresh_successor_key(&config::Secret::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(KEY_A)
                        .expect("b64")
                        .try_into()
                        .expect("32 bytes")
                )),
                &[7u8; 32]
            ),
            "the successor key is keys.rs's refresh-successor key"
        );
    }

    #[test]
    fn each_function_builds_only_what_it_uses() {
        let (private, public) = rsa_pair();
        let public_keys = serde_json::json!({ "k1": public }).to_string();
        // What the template gives each function: the signers the private key, the others the
        // public keys only; the data key to refresh alone.
        let env = |function: Function| {
            let mut pairs = vec![("DATABASE_URL", URL), ("JWT_KEY_ID", "k1")];
            match function.uses().signing {
                KeyUse::Sign => pairs.push(("JWT_PRIVATE_KEY", &private)),
                KeyUse::Verify => pairs.push(("JWT_PUBLIC_KEYS", &public_keys)),
            }
            if function.uses().data_key {
                pairs.push(("DATA_ENCRYPTION_KEY", KEY_A));
            }
            let config = Config::from_lookup_for(function.uses(), lookup(&pairs))
                .unwrap_or_else(|e| panic!("{function:?}: {e}"));
            AppState::for_function(config, function).unwrap_or_else(|e| panic!("{function:?}: {e}"))
        };
        let login = env(Function::Login);
        let refresh = env(Function::Refresh);
        let me = env(Function::Me);
        assert!(login.passwords().is_ok() && login.refresh_key().is_err());
        assert!(login.totp().is_ok() && refresh.totp().is_err());
        assert!(env(Function::Mfa).totp().is_ok() && env(Function::Password).totp.is_none());
        assert!(refresh.passwords().is_err() && refresh.refresh_key().is_ok());
        for function in [Function::Logout, Function::Sessions, Function::Prune] {
            let state = env(function);
            assert!(state.passwords.is_none() && state.refresh_key.is_none());
            assert!(state.config.data_encryption_key.is_none());
        }
        for function in [Function::Register, Function::Me, Function::Password] {
            assert!(
                env(function).passwords().is_ok(),
                "{function:?} checks passwords"
            );
        }
        // Mail needs the data key (the outbox's seal), and only the mail functions read it.
        for function in [
            Function::Register,
            Function::Email,
            Function::Password,
            Function::Mailer,
            Function::Mfa,
        ] {
            let state = env(function);
            assert!(state.config.data_encryption_key.is_some() && state.refresh_key.is_none());
        }
        assert!(env(Function::Me).config.data_encryption_key.is_none());

        let (user, session) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let now = Utc::now().timestamp();
        let issued = login
            .tokens
            .issue(user, session, false, token::Factors::Password, now)
            .expect("the signer signs");
        assert_eq!(
            me.tokens
                .verify(&issued.token)
                .map(|t| (t.user_id, t.session_id)),
            Ok((user, session)),
            "a verifier with the public keys alone accepts the signer's token"
        );
        assert!(
            me.tokens
                .issue(user, session, false, token::Factors::Password, now)
                .is_err(),
            "a verifier holds no private key"
        );
        assert_eq!(me.tokens.jwks_json(), login.tokens.jwks_json());

        // The keys function: no database, no private key, no data key.
        let keys_config = Config::from_lookup_for(
            Function::Keys.uses(),
            lookup(&[("JWT_PUBLIC_KEYS", &public_keys)]),
        )
        .expect("keys needs the public keys alone");
        assert!(keys_config.database_url.is_none());
        let published = token::TokenKeys::from_config(&keys_config).expect("key set");
        assert_eq!(published.jwks_json(), login.tokens.jwks_json());
    }
}
