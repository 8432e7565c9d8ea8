//! Every setting of the service, read once per cold start from the environment, typed and
//! validated. A missing or invalid setting is an error that names the variable, so the function
//! fails at init instead of serving with a guessed value. Secrets are redacted in `Debug`.

use std::{fmt, path::PathBuf, time::Duration};

/// Default `iss` and `aud` claim values when `JWT_ISSUER` / `JWT_AUDIENCE` are not set.
pub const DEFAULT_ISSUER: &str = "auth-lambda";
/// See [`DEFAULT_ISSUER`].
pub const DEFAULT_AUDIENCE: &str = "auth-lambda";
/// The fewest bytes `JWT_SECRET` may have (HS256 keys shorter than the hash are weak).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// A setting that must never reach a log: `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; call it only where the value is used, never to log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A setting was missing or invalid. The message names the variable, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {variable} {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// argon2id cost parameters (RFC 9106 / OWASP: m=19456 KiB, t=2, p=1 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    /// Memory in KiB (`ARGON2_MEMORY_KIB`).
    pub memory_kib: u32,
    /// Passes over memory (`ARGON2_ITERATIONS`).
    pub iterations: u32,
    /// Lanes (`ARGON2_PARALLELISM`).
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// `PASSWORD_BREACH_CHECK`: whether new passwords are looked up in a corpus of breached ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreachCheck {
    /// `off` (the default): no lookup.
    Off,
    /// `hibp`: the Have I Been Pwned range API, with k-anonymity (see [`crate::breach`]).
    Hibp,
}

/// The breached-password check (docs/api.md "Limits against guessing").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreachSettings {
    /// `PASSWORD_BREACH_CHECK` (`off`): `off` or `hibp`.
    pub check: BreachCheck,
    /// `PASSWORD_BREACH_TIMEOUT_MS` (1000, from 100 to 10000): bound on one lookup, connecting
    /// and TLS included; past it the password is let through with a warning.
    pub timeout: Duration,
    /// `PASSWORD_BREACH_API_URL` (`https://api.pwnedpasswords.com`): the range API's base.
    /// `http://` only for a loopback host (a local stand-in), so no URL can send the prefix
    /// over plain text.
    pub api_url: url::Url,
}

/// Default of `PASSWORD_BREACH_API_URL`.
pub const DEFAULT_BREACH_API_URL: &str = "https://api.pwnedpasswords.com";

/// The secrets a function reads: its init requires, fetches and builds only these (least
/// privilege, docs/api.md "Configuration"). Settings that are not secrets are read by all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// `DATABASE_URL`.
    pub database: bool,
    /// The signing key (`JWT_PRIVATE_KEY`), or public keys alone (`JWT_PUBLIC_KEYS`) under
    /// RS256 when the function only verifies tokens or publishes the key set. HS256 has one
    /// secret for both.
    pub signing: KeyUse,
    /// `DATA_ENCRYPTION_KEY`.
    pub data_key: bool,
    /// `SMTP_URL`: the function sends mail.
    pub mail: bool,
}

/// What a function does with the token keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Signs access tokens: needs the private key.
    Sign,
    /// Verifies or publishes: the public keys are enough.
    Verify,
}

impl Uses {
    /// Everything: `authctl` and the tests.
    pub const ALL: Uses = Uses {
        database: true,
        signing: KeyUse::Sign,
        data_key: true,
        mail: true,
    };
}

/// Mail (docs/api.md "Mail"): where it goes out, what it says, and its limits.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `SMTP_URL`: `smtp://host:port`, `smtp://user:pass@host:port?tls=required` (STARTTLS) or
    /// `smtps://user:pass@host:465`; `None` when unset, or in a function that sends no mail.
    pub smtp_url: Option<Secret<String>>,
    /// Whether mail is on: `SMTP_URL` (or `SMTP_URL_SECRET_ARN`) is set. Known also to the
    /// functions that do not read the URL itself.
    pub enabled: bool,
    /// `SMTP_TIMEOUT_MS` (3000, from 100 to 20000): bound on one delivery attempt, connecting
    /// included; the request never waits longer.
    pub smtp_timeout: Duration,
    /// `MAIL_FROM` (`no-reply@localhost`): the sender mailbox, `Name <addr>` or `addr`.
    pub from: String,
    /// `MAIL_PRODUCT_NAME` (`Auth`): the name the messages sign with.
    pub product_name: String,
    /// `APP_URL`: the base URL of the pages that handle the links; by default `JWT_ISSUER`
    /// when that is an http(s) URL (the API's own base URL), else `http://localhost:9000`.
    pub app_url: url::Url,
    /// `MAIL_RESEND_INTERVAL_SECONDS` (60, from 1 to 3600): per recipient, the shortest gap
    /// between two requested mails (forgot, resend).
    pub resend_interval: Duration,
    /// `MAIL_MAX_PER_HOUR` (5, from 1 to 1000): per recipient, requested mails per hour.
    pub max_per_hour: u32,
    /// `EMAIL_VERIFY_TTL_SECONDS` (86400, from 5 to 604800): a verification link's lifetime.
    pub verify_ttl: Duration,
    /// `PASSWORD_RESET_TTL_SECONDS` (1800, from 5 to 86400): a reset link's lifetime.
    pub reset_ttl: Duration,
    /// `MAIL_ANSWER_MS` (500, from 50 to `SMTP_TIMEOUT_MS`): forgot and resend answer exactly
    /// this long after the request began, account or not, so their timing tells nothing; a
    /// delivery not done by then is left to the mailer.
    pub answer: Duration,
}

/// Default of `MAIL_FROM`.
pub const DEFAULT_MAIL_FROM: &str = "no-reply@localhost";
/// Default of `APP_URL` when `JWT_ISSUER` is no http(s) URL: `make dev`'s address.
pub const DEFAULT_APP_URL: &str = "http://localhost:9000";

/// How access tokens are signed.
#[derive(Debug, Clone)]
pub enum SigningSettings {
    /// RS256 with `JWT_PRIVATE_KEY` (PEM), named `JWT_KEY_ID` (else its RFC 7638 thumbprint),
    /// plus `JWT_PUBLIC_KEYS`: older public keys still accepted, by kid, during a rotation.
    /// A function that only verifies or publishes gets no private key: its `JWT_PUBLIC_KEYS`
    /// then holds every accepted key, the current one included.
    Rs256 {
        /// PKCS#8 or PKCS#1 PEM; `None` in a function that does not sign.
        private_key_pem: Option<Secret<String>>,
        /// The `kid` of the current key, if set.
        key_id: Option<String>,
        /// (kid, PEM public key) pairs.
        extra_public_keys: Vec<(String, String)>,
    },
    /// HS256 with `JWT_SECRET` (at least 32 bytes).
    Hs256 {
        /// The shared secret.
        secret: Secret<Vec<u8>>,
    },
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: a postgres:// URL, Neon's console form included; `None` in a function
    /// that uses no database (`keys`).
    pub database_url: Option<Secret<String>>,
    /// `DATA_ENCRYPTION_KEY`: 32 random bytes, base64, the root of every derived key
    /// ([`crate::keys`]); `None` in a function that derives none.
    pub data_encryption_key: Option<crate::keys::DataKey>,
    /// `PGSSLROOTCERT`: PEM file of roots trusted for the database's TLS (system roots otherwise).
    pub ssl_root_cert: Option<PathBuf>,
    /// `DATABASE_POOL_MAX_SIZE` (1): one Lambda instance serves one request at a time.
    pub pool_max_size: usize,
    /// `DATABASE_TIMEOUT_MS` (3000): bound on every database call, connecting included.
    pub db_timeout: Duration,
    /// RS256 when `JWT_PRIVATE_KEY` is set, else HS256 with `JWT_SECRET`.
    pub signing: SigningSettings,
    /// `JWT_ISSUER`: the `iss` claim.
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE`: the `aud` claim.
    pub jwt_audience: String,
    /// `ACCESS_TOKEN_TTL_SECONDS` (900).
    pub access_token_ttl: Duration,
    /// `PASSWORD_MIN_LENGTH` (12, from 8 to 64), in Unicode code points after NFKC.
    pub password_min_length: usize,
    /// `ARGON2_MEMORY_KIB`, `ARGON2_ITERATIONS`, `ARGON2_PARALLELISM`.
    pub argon2: Argon2Settings,
    /// `PASSWORD_BREACH_CHECK`, `PASSWORD_BREACH_TIMEOUT_MS`, `PASSWORD_BREACH_API_URL`.
    pub password_breach: BreachSettings,
    /// `REFRESH_REUSE_GRACE_SECONDS` (10): a rotated refresh token presented again this soon is
    /// a client race, not theft.
    pub refresh_grace: Duration,
    /// `SESSION_IDLE_SECONDS` (7 days): a session unused this long ends.
    pub session_idle: Duration,
    /// `SESSION_MAX_SECONDS` (30 days): a session ends this long after its login.
    pub session_max: Duration,
    /// `IP_RATE_LIMIT_PER_MINUTE` (60; 0 turns it off): requests per source address per
    /// sliding minute, shared by register, login and refresh.
    pub ip_rate_limit_per_minute: u32,
    /// `LOGIN_BACKOFF_AFTER` (5): failed logins of one account from one source network (IPv4
    /// address, IPv6 /64) before that network's backoff for the account starts.
    pub login_backoff_after: u32,
    /// `LOGIN_ACCOUNT_BACKOFF_AFTER` (50): failed logins of one account across all networks
    /// before the account-wide backoff starts.
    pub login_account_backoff_after: u32,
    /// `LOGIN_LOCK_AFTER` (100, NIST SP 800-63B-4 §3.2.2): consecutive failed logins after which
    /// the account refuses password logins (`403 account_locked`) until a reset or an unlock.
    pub login_lock_after: u32,
    /// `LOGIN_BACKOFF_MAX_SECONDS` (900): the longest backoff.
    pub login_backoff_max: Duration,
    /// `AUDIT_RETENTION_DAYS` (90): `authctl prune` deletes older audit rows and ended sessions.
    pub audit_retention_days: u32,
    /// The mail settings.
    pub mail: MailSettings,
    /// `REQUIRE_VERIFIED_EMAIL` (false): a login with the right password for an unverified
    /// account is `403 email_not_verified`. Needs mail on.
    pub require_verified_email: bool,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment in production, a map in tests), every
    /// secret required.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_lookup_for(Uses::ALL, lookup)
    }

    /// Reads the settings of a function that uses only `uses` of the secrets: the others are
    /// neither required nor read.
    pub fn from_lookup_for(
        uses: Uses,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let database_url = if uses.database {
            let url = get("DATABASE_URL").ok_or_else(|| {
                ConfigError::new("DATABASE_URL", "is required (a postgres:// URL)")
            })?;
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "must be a postgres:// or postgresql:// URL",
                ));
            }
            Some(Secret::new(url))
        } else {
            None
        };
        let data_encryption_key = if uses.data_key {
            Some(data_encryption_key(&get)?)
        } else {
            None
        };

        let signing = signing_settings(&get, uses.signing)?;

        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(raw) => match raw.trim().parse::<u64>() {
                        Ok(n) if (min..=max).contains(&n) => Ok(n),
                        _ => Err(ConfigError::new(
                            name,
                            format!("must be a whole number from {min} to {max}"),
                        )),
                    },
                }
            };

        let argon2 = Argon2Settings {
            memory_kib: number("ARGON2_MEMORY_KIB", 19_456, 8_192, 1_048_576)? as u32,
            iterations: number("ARGON2_ITERATIONS", 2, 1, 16)? as u32,
            parallelism: number("ARGON2_PARALLELISM", 1, 1, 16)? as u32,
        };

        let jwt_issuer = get("JWT_ISSUER").unwrap_or_else(|| DEFAULT_ISSUER.to_owned());
        let mail = mail_settings(&get, uses.mail, &jwt_issuer, &number)?;
        let require_verified_email = boolean(&get, "REQUIRE_VERIFIED_EMAIL")?;
        if require_verified_email && !mail.enabled {
            return Err(ConfigError::new(
                "REQUIRE_VERIFIED_EMAIL",
                "needs mail: set SMTP_URL, or REQUIRE_VERIFIED_EMAIL=false",
            ));
        }

        Ok(Self {
            database_url,
            data_encryption_key,
            ssl_root_cert: get("PGSSLROOTCERT").map(PathBuf::from),
            pool_max_size: number("DATABASE_POOL_MAX_SIZE", 1, 1, 100)? as usize,
            db_timeout: Duration::from_millis(number("DATABASE_TIMEOUT_MS", 3_000, 100, 20_000)?),
            signing,
            jwt_issuer,
            jwt_audience: get("JWT_AUDIENCE").unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned()),
            access_token_ttl: Duration::from_secs(number(
                "ACCESS_TOKEN_TTL_SECONDS",
                900,
                30,
                86_400,
            )?),
            password_min_length: number("PASSWORD_MIN_LENGTH", 12, 8, 64)? as usize,
            argon2,
            password_breach: breach_settings(
                &get,
                Duration::from_millis(number("PASSWORD_BREACH_TIMEOUT_MS", 1_000, 100, 10_000)?),
            )?,
            refresh_grace: Duration::from_secs(number("REFRESH_REUSE_GRACE_SECONDS", 10, 0, 300)?),
            session_idle: Duration::from_secs(number(
                "SESSION_IDLE_SECONDS",
                604_800,
                60,
                31_536_000,
            )?),
            session_max: Duration::from_secs(number(
                "SESSION_MAX_SECONDS",
                2_592_000,
                60,
                31_536_000,
            )?),
            ip_rate_limit_per_minute: number("IP_RATE_LIMIT_PER_MINUTE", 60, 0, 1_000_000)? as u32,
            login_backoff_after: number("LOGIN_BACKOFF_AFTER", 5, 1, 1_000)? as u32,
            login_account_backoff_after: number("LOGIN_ACCOUNT_BACKOFF_AFTER", 50, 1, 10_000)?
                as u32,
            login_lock_after: number("LOGIN_LOCK_AFTER", 100, 1, 100_000)? as u32,
            login_backoff_max: Duration::from_secs(number(
                "LOGIN_BACKOFF_MAX_SECONDS",
                900,
                1,
                86_400,
            )?),
            audit_retention_days: number("AUDIT_RETENTION_DAYS", 90, 1, 3_650)? as u32,
            mail,
            require_verified_email,
        })
    }
}

/// A `true`/`false` setting, false when unset.
fn boolean(get: &dyn Fn(&str) -> Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match get(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ConfigError::new(name, "must be `true` or `false`")),
    }
}

/// The mail settings. The URL is read only by a function that sends mail (`reads_url`); the
/// others learn only whether mail is on.
fn mail_settings(
    get: &dyn Fn(&str) -> Option<String>,
    reads_url: bool,
    jwt_issuer: &str,
    number: &dyn Fn(&'static str, u64, u64, u64) -> Result<u64, ConfigError>,
) -> Result<MailSettings, ConfigError> {
    let smtp_url = match get("SMTP_URL") {
        Some(url) if reads_url => {
            crate::mail::validate_smtp_url(url.trim())
                .map_err(|problem| ConfigError::new("SMTP_URL", problem))?;
            Some(Secret::new(url.trim().to_owned()))
        }
        _ => None,
    };
    let enabled = get("SMTP_URL").is_some() || get("SMTP_URL_SECRET_ARN").is_some();
    let from =
        get("MAIL_FROM").map_or_else(|| DEFAULT_MAIL_FROM.to_owned(), |f| f.trim().to_owned());
    crate::mail::validate_from(&from).map_err(|problem| ConfigError::new("MAIL_FROM", problem))?;
    let app_url = match get("APP_URL") {
        Some(raw) => {
            let url = url::Url::parse(raw.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| ConfigError::new("APP_URL", "must be an http(s):// URL"))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(ConfigError::new(
                    "APP_URL",
                    "must have no query or fragment",
                ));
            }
            url
        }
        None => url::Url::parse(jwt_issuer)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .map_or_else(|| url::Url::parse(DEFAULT_APP_URL), Ok)
            .map_err(|_| ConfigError::new("APP_URL", "has no valid default"))?,
    };
    let smtp_timeout_ms = number("SMTP_TIMEOUT_MS", 3_000, 100, 20_000)?;
    Ok(MailSettings {
        smtp_url,
        enabled,
        smtp_timeout: Duration::from_millis(smtp_timeout_ms),
        from,
        product_name: get("MAIL_PRODUCT_NAME")
            .map_or_else(|| "Auth".to_owned(), |n| n.trim().to_owned()),
        app_url,
        resend_interval: Duration::from_secs(number("MAIL_RESEND_INTERVAL_SECONDS", 60, 1, 3_600)?),
        max_per_hour: number("MAIL_MAX_PER_HOUR", 5, 1, 1_000)? as u32,
        verify_ttl: Duration::from_secs(number("EMAIL_VERIFY_TTL_SECONDS", 86_400, 5, 604_800)?),
        reset_ttl: Duration::from_secs(number("PASSWORD_RESET_TTL_SECONDS", 1_800, 5, 86_400)?),
        answer: Duration::from_millis(number(
            "MAIL_ANSWER_MS",
            500.min(smtp_timeout_ms),
            50,
            smtp_timeout_ms,
        )?),
    })
}

/// `PASSWORD_BREACH_CHECK` and `PASSWORD_BREACH_API_URL`, the URL checked even when the check
/// is off, so turning it on later cannot meet a bad URL at the first registration.
fn breach_settings(
    get: &dyn Fn(&str) -> Option<String>,
    timeout: Duration,
) -> Result<BreachSettings, ConfigError> {
    let check = match get("PASSWORD_BREACH_CHECK").as_deref().map(str::trim) {
        None | Some("off") => BreachCheck::Off,
        Some("hibp") => BreachCheck::Hibp,
        Some(_) => {
            return Err(ConfigError::new(
                "PASSWORD_BREACH_CHECK",
                "must be `off` or `hibp`",
            ));
        }
    };
    let invalid = |problem: &str| ConfigError::new("PASSWORD_BREACH_API_URL", problem);
    let raw = get("PASSWORD_BREACH_API_URL").unwrap_or_else(|| DEFAULT_BREACH_API_URL.to_owned());
    let api_url = url::Url::parse(raw.trim()).map_err(|_| invalid("must be an absolute URL"))?;
    let loopback = match api_url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match api_url.scheme() {
        _ if api_url.host().is_none() => return Err(invalid("must name a host")),
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(invalid(
                "must be https:// (http:// only for a loopback host)",
            ));
        }
    }
    if !api_url.username().is_empty()
        || api_url.password().is_some()
        || api_url.query().is_some()
        || api_url.fragment().is_some()
    {
        return Err(invalid(
            "must be a plain base URL (no credentials, query or fragment)",
        ));
    }
    Ok(BreachSettings {
        check,
        timeout,
        api_url,
    })
}

/// `DATA_ENCRYPTION_KEY`: exactly 32 bytes in standard base64 (`openssl rand -base64 32`).
fn data_encryption_key(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::keys::DataKey, ConfigError> {
    use base64::Engine as _;
    const NAME: &str = "DATA_ENCRYPTION_KEY";
    let raw = get(NAME).ok_or_else(|| {
        ConfigError::new(
            NAME,
            "is required (32 random bytes in base64: `openssl rand -base64 32`)",
        )
    })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|_| ConfigError::new(NAME, "must be base64 (`openssl rand -base64 32`)"))?;
    let key: [u8; crate::keys::KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
        ConfigError::new(
            NAME,
            format!("must decode to 32 bytes, not {}", bytes.len()),
        )
    })?;
    Ok(Secret::new(key))
}

/// RS256 when `JWT_PRIVATE_KEY` is set, or for a function that only verifies, when
/// `JWT_PUBLIC_KEYS` is; else HS256 when `JWT_SECRET` is; else an error.
fn signing_settings(
    get: &dyn Fn(&str) -> Option<String>,
    key_use: KeyUse,
) -> Result<SigningSettings, ConfigError> {
    // Locally one environment serves every function, so a verifier may find the private key
    // and derive the public one from it; in the cloud it is given the public keys only.
    let private_key = get("JWT_PRIVATE_KEY");
    let public_only = key_use == KeyUse::Verify
        && private_key.is_none()
        && get("JWT_SECRET").is_none()
        && get("JWT_PUBLIC_KEYS").is_some();
    if private_key.is_some() || public_only {
        let pem = match private_key {
            Some(pem) => {
                // One-line forms (.env files, some consoles) carry the PEM's newlines as "\n".
                let pem = pem.replace("\\n", "\n");
                if !pem.contains("PRIVATE KEY-----") {
                    return Err(ConfigError::new(
                        "JWT_PRIVATE_KEY",
                        "must be a PEM private key",
                    ));
                }
                Some(Secret::new(pem))
            }
            None => None,
        };
        let extra_public_keys = match get("JWT_PUBLIC_KEYS") {
            None => Vec::new(),
            Some(raw) => {
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&raw)
                    .map_err(|_| {
                        ConfigError::new(
                            "JWT_PUBLIC_KEYS",
                            "must be a JSON object of kid to PEM public key",
                        )
                    })?;
                map.into_iter()
                    .map(|(kid, pem)| match pem.as_str() {
                        Some(p) if p.contains("PUBLIC KEY-----") => {
                            Ok((kid, p.replace("\\n", "\n")))
                        }
                        _ => Err(ConfigError::new(
                            "JWT_PUBLIC_KEYS",
                            "must map each kid to a PEM public key",
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        if pem.is_none() && extra_public_keys.is_empty() {
            return Err(ConfigError::new(
                "JWT_PUBLIC_KEYS",
                "is required where JWT_PRIVATE_KEY is not given (the public keys to verify with)",
            ));
        }
        return Ok(SigningSettings::Rs256 {
            private_key_pem: pem,
            key_id: get("JWT_KEY_ID"),
            extra_public_keys,
        });
    }
    let secret = get("JWT_SECRET").ok_or_else(|| {
        ConfigError::new(
            "JWT_SECRET",
            match key_use {
                KeyUse::Sign => "or JWT_PRIVATE_KEY is required (a signing key for access tokens)",
                KeyUse::Verify => {
                    "or JWT_PUBLIC_KEYS (RS256) is required (the keys access tokens are verified with)"
                }
            },
        )
    })?;
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(ConfigError::new(
            "JWT_SECRET",
            format!("must be at least {MIN_JWT_SECRET_BYTES} bytes long"),
        ));
    }
    Ok(SigningSettings::Hs256 {
        secret: Secret::new(secret.into_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const URL: &str = "postgres://app:hunter2-secret@ep-x-pooler.neon.tech/db?sslmode=require";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    const DATA_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    /// Settings from `pairs`, with a valid DATA_ENCRYPTION_KEY unless `pairs` sets one.
    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        config_for(Uses::ALL, pairs)
    }

    fn config_for(uses: Uses, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> =
            HashMap::from([("DATA_ENCRYPTION_KEY".to_owned(), DATA_KEY.to_owned())]);
        map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_lookup_for(uses, |k| map.get(k).cloned())
    }

    #[test]
    fn the_data_encryption_key_is_required_as_32_bytes_of_base64() {
        let base = [("DATABASE_URL", URL), ("JWT_SECRET", SECRET)];
        let c = config(&base).expect("valid");
        let key = c.data_encryption_key.expect("read");
        assert_eq!(key.expose()[..4], [0, 1, 2, 3]);
        for (value, problem) in [
            ("", "is required"),
            ("not base64!", "must be base64"),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", "not 31"),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", "not 33"),
        ] {
            let e = config(&[base.as_slice(), &[("DATA_ENCRYPTION_KEY", value)]].concat())
                .expect_err(value);
            assert_eq!(e.variable, "DATA_ENCRYPTION_KEY", "{value}");
            assert!(e.problem.contains(problem), "{value}: {}", e.problem);
            assert!(value.is_empty() || !e.to_string().contains(value));
        }
        let shown = format!("{:?}", config(&base).expect("valid"));
        assert!(
            shown.contains("data_encryption_key: Some([redacted])"),
            "{shown}"
        );
    }

    #[test]
    fn a_function_reads_only_the_secrets_it_uses() {
        let keys = Uses {
            database: false,
            signing: KeyUse::Verify,
            data_key: false,
            mail: false,
        };
        let public = r#"{"k1":"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"}"#;
        // No database URL, no private key, no data key: none is asked for.
        let c = Config::from_lookup_for(keys, |k| {
            (k == "JWT_PUBLIC_KEYS").then(|| public.to_owned())
        })
        .expect("a verifier needs only public keys");
        assert!(c.database_url.is_none() && c.data_encryption_key.is_none());
        assert!(matches!(
            c.signing,
            SigningSettings::Rs256 {
                private_key_pem: None,
                ..
            }
        ));
        // A signer without its key is refused, naming the setting.
        let signer = Uses {
            signing: KeyUse::Sign,
            ..keys
        };
        let e = Config::from_lookup_for(signer, |k| {
            (k == "JWT_PUBLIC_KEYS").then(|| public.to_owned())
        })
        .expect_err("no private key");
        assert_eq!(e.variable, "JWT_SECRET");
        let e = Config::from_lookup_for(keys, |_| None).expect_err("no keys at all");
        assert_eq!(e.variable, "JWT_SECRET");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[("DATABASE_URL", URL), ("JWT_SECRET", SECRET)]).expect("valid");
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.password_min_length, 12);
        assert_eq!(c.pool_max_size, 1);
        assert_eq!(
            c.argon2,
            Argon2Settings {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        assert_eq!(c.jwt_issuer, DEFAULT_ISSUER);
        assert_eq!(c.jwt_audience, DEFAULT_AUDIENCE);
    }

    #[test]
    fn a_short_or_missing_jwt_secret_stops_init_and_names_the_setting() {
        let e = config(&[("DATABASE_URL", URL), ("JWT_SECRET", "short")]).expect_err("short");
        assert_eq!(e.variable, "JWT_SECRET");
        let e = config(&[("DATABASE_URL", URL)]).expect_err("missing");
        assert_eq!(e.variable, "JWT_SECRET");
        let e = config(&[("JWT_SECRET", SECRET)]).expect_err("missing url");
        assert_eq!(e.variable, "DATABASE_URL");
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        for (k, v) in [
            ("PASSWORD_MIN_LENGTH", "7"),
            ("PASSWORD_MIN_LENGTH", "65"),
            ("ACCESS_TOKEN_TTL_SECONDS", "ten"),
            ("DATABASE_POOL_MAX_SIZE", "0"),
        ] {
            let e = config(&[("DATABASE_URL", URL), ("JWT_SECRET", SECRET), (k, v)]).expect_err(k);
            assert_eq!(e.variable, k);
        }
        let c = config(&[
            ("DATABASE_URL", URL),
            ("JWT_SECRET", SECRET),
            ("PASSWORD_MIN_LENGTH", "8"),
        ]);
        assert_eq!(c.expect("8 is allowed").password_min_length, 8);
    }

    #[test]
    fn the_breach_check_is_off_by_default_and_refuses_plain_text_to_a_remote_host() {
        let base = [("DATABASE_URL", URL), ("JWT_SECRET", SECRET)];
        let c = config(&base).expect("valid");
        assert_eq!(c.password_breach.check, BreachCheck::Off);
        assert_eq!(c.password_breach.timeout, Duration::from_millis(1_000));
        assert_eq!(
            c.password_breach.api_url.as_str(),
            "https://api.pwnedpasswords.com/"
        );

        let with =
            |pairs: &[(&'static str, &'static str)]| config(&[base.as_slice(), pairs].concat());
        let c = with(&[
            ("PASSWORD_BREACH_CHECK", "hibp"),
            ("PASSWORD_BREACH_TIMEOUT_MS", "250"),
            ("PASSWORD_BREACH_API_URL", "http://127.0.0.1:8080"),
        ])
        .expect("a loopback stand-in");
        assert_eq!(c.password_breach.check, BreachCheck::Hibp);
        assert_eq!(c.password_breach.timeout, Duration::from_millis(250));

        for (k, v) in [
            ("PASSWORD_BREACH_CHECK", "on"),
            ("PASSWORD_BREACH_TIMEOUT_MS", "99"),
            ("PASSWORD_BREACH_TIMEOUT_MS", "10001"),
            ("PASSWORD_BREACH_API_URL", "http://api.pwnedpasswords.com"),
            ("PASSWORD_BREACH_API_URL", "http://127.0.0.1.example.com"),
            ("PASSWORD_BREACH_API_URL", "ftp://127.0.0.1"),
            (
                "PASSWORD_BREACH_API_URL",
                "https://user:pw@api.pwnedpasswords.com",
            ),
            (
                "PASSWORD_BREACH_API_URL",
                "https://api.pwnedpasswords.com/?x=1",
            ),
            ("PASSWORD_BREACH_API_URL", "api.pwnedpasswords.com"),
        ] {
            assert_eq!(with(&[(k, v)]).expect_err(v).variable, k, "{k}={v}");
        }
    }

    #[test]
    fn mail_is_off_without_smtp_url_and_its_settings_default_as_the_contract_says() {
        let c = config(&[("DATABASE_URL", URL), ("JWT_SECRET", SECRET)]).expect("valid");
        let m = &c.mail;
        assert!(!m.enabled && m.smtp_url.is_none());
        assert_eq!(m.smtp_timeout, Duration::from_millis(3_000));
        assert_eq!(m.answer, Duration::from_millis(500));
        assert_eq!(m.resend_interval, Duration::from_secs(60));
        assert_eq!(m.max_per_hour, 5);
        assert_eq!(m.verify_ttl, Duration::from_secs(86_400));
        assert_eq!(m.reset_ttl, Duration::from_secs(1_800));
        assert_eq!(m.from, DEFAULT_MAIL_FROM);
        assert_eq!(m.product_name, "Auth");
        // JWT_ISSUER defaults to a plain name, so the links default to make dev's address.
        assert_eq!(m.app_url.as_str(), "http://localhost:9000/");
        assert!(!c.require_verified_email);
    }

    #[test]
    fn the_links_follow_the_issuer_unless_app_url_is_set() {
        let base = [
            ("DATABASE_URL", URL),
            ("JWT_SECRET", SECRET),
            ("JWT_ISSUER", "https://auth.example.com"),
        ];
        let c = config(&base).expect("valid");
        assert_eq!(c.mail.app_url.as_str(), "https://auth.example.com/");
        let mut with_app = base.to_vec();
        with_app.push(("APP_URL", "https://app.example.com/account"));
        let c = config(&with_app).expect("valid");
        assert_eq!(c.mail.app_url.as_str(), "https://app.example.com/account");
        for bad in [
            "ftp://x.example",
            "not a url",
            "https://x.example/?a=1",
            "https://x.example/#f",
        ] {
            let mut pairs = base.to_vec();
            pairs.push(("APP_URL", bad));
            assert_eq!(config(&pairs).expect_err(bad).variable, "APP_URL");
        }
    }

    #[test]
    fn mail_settings_are_validated_and_the_smtp_url_stays_secret() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![("DATABASE_URL", URL), ("JWT_SECRET", SECRET)];
            pairs.extend_from_slice(extra);
            config(&pairs)
        };
        let url = "smtps://AKIAEXAMPLE:ses-smtp-pass%2Fword@email-smtp.eu-west-1.amazonaws.com:465";
        let c = with(&[("SMTP_URL", url)]).expect("valid");
        assert!(c.mail.enabled);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("ses-smtp-pass") && !shown.contains("AKIAEXAMPLE"),
            "{shown}"
        );
        let e = with(&[("SMTP_URL", "http://user:hunter3@mail.example.com")]).expect_err("scheme");
        assert_eq!(e.variable, "SMTP_URL");
        assert!(!e.to_string().contains("hunter3"), "{e}");
        for (name, value) in [
            ("SMTP_TIMEOUT_MS", "99"),
            ("SMTP_TIMEOUT_MS", "20001"),
            ("MAIL_RESEND_INTERVAL_SECONDS", "0"),
            ("MAIL_MAX_PER_HOUR", "1001"),
            ("EMAIL_VERIFY_TTL_SECONDS", "4"),
            ("PASSWORD_RESET_TTL_SECONDS", "86401"),
            ("REQUIRE_VERIFIED_EMAIL", "yes"),
            ("MAIL_FROM", "not a mailbox"),
        ] {
            let e = with(&[(name, value)]).expect_err(name);
            assert_eq!(e.variable, name, "{value}");
        }
        // The fixed answer time of forgot and resend never exceeds a delivery attempt.
        let e = with(&[("SMTP_TIMEOUT_MS", "300"), ("MAIL_ANSWER_MS", "301")]).expect_err("answer");
        assert_eq!(e.variable, "MAIL_ANSWER_MS");
        let c = with(&[("SMTP_TIMEOUT_MS", "300")]).expect("valid");
        assert_eq!(c.mail.answer, Duration::from_millis(300));
    }

    #[test]
    fn required_verification_without_mail_stops_init() {
        let base = [
            ("DATABASE_URL", URL),
            ("JWT_SECRET", SECRET),
            ("REQUIRE_VERIFIED_EMAIL", "true"),
        ];
        assert_eq!(
            config(&base).expect_err("no mail").variable,
            "REQUIRE_VERIFIED_EMAIL"
        );
        let mut with_mail = base.to_vec();
        with_mail.push(("SMTP_URL", "smtp://127.0.0.1:1025"));
        assert!(config(&with_mail).expect("mail on").require_verified_email);
        // A function that sends no mail (login) knows mail is on from the secret's ARN alone,
        // without reading the URL.
        let login = Uses {
            mail: false,
            ..Uses::ALL
        };
        let mut by_arn = base.to_vec();
        by_arn.push((
            "SMTP_URL_SECRET_ARN",
            "arn:aws:secretsmanager:eu-west-1:1:secret:smtp",
        ));
        let c = config_for(login, &by_arn).expect("mail on by ARN");
        assert!(c.mail.enabled && c.mail.smtp_url.is_none() && c.require_verified_email);
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = config(&[("DATABASE_URL", URL), ("JWT_SECRET", SECRET)]).expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        let e = config(&[("DATABASE_URL", URL), ("JWT_SECRET", "tooshort")]).expect_err("short");
        assert!(!e.to_string().contains("tooshort"));
    }
}
