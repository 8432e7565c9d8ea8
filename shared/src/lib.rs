//! Everything the auth Lambdas share. A function's `main` builds an [`AppState`] once per cold
//! start and hands each request to one of [`http::handlers`]:
//!
//! - [`config`]: every setting, validated at init;
//! - [`db`]: the connection pool, TLS, deadlines and retry; [`store`]: all the SQL;
//! - [`email`], [`password`]: parsed newtypes and argon2id; [`token`]: JWT issue and verify;
//! - [`auth`]: the operations, free of Lambda types; [`error`]: the one error enum;
//! - [`http`]: the only module that knows `lambda_http`.

pub mod auth;
pub mod breach;
pub mod config;
pub mod db;
pub mod email;
pub mod error;
pub mod http;
pub mod origin;
pub mod password;
pub mod refresh;
#[cfg(feature = "migrations")]
pub mod schema;
pub mod store;
pub mod token;

use chrono::{DateTime, Utc};
use config::{Config, ConfigError};
use std::sync::Arc;

/// Where "now" comes from: the system clock in production, a hand-set one in tests of idle and
/// absolute session limits.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What every request needs, built once per cold start.
#[derive(Clone)]
pub struct AppState {
    /// The settings.
    pub config: Config,
    /// The connection pool.
    pub db: db::Db,
    /// argon2id with the configured cost.
    pub passwords: password::Passwords,
    /// JWT keys and validation rules.
    pub tokens: token::TokenKeys,
    /// The HMAC key deriving a rotated refresh token's successor.
    pub refresh_key: aws_lc_rs::hmac::Key,
    /// The time source.
    pub clock: Clock,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("db", &self.db)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(Config::from_env()?)
    }

    /// Builds the state from settings. No network I/O happens here.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let passwords = password::Passwords::new(config.argon2).map_err(|_| ConfigError {
            variable: "ARGON2_MEMORY_KIB",
            problem: "and the other ARGON2_* settings do not form valid argon2 parameters".into(),
        })?;
        Ok(Self {
            db: db::Db::from_config(&config)?,
            tokens: token::TokenKeys::from_config(&config)?,
            refresh_key: aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                &config.refresh_derivation_key(),
            ),
            clock: Arc::new(Utc::now),
            passwords,
            config,
        })
    }

    /// The current time, from [`AppState::clock`].
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

pub use lambda_http;
