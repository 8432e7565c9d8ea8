//! The database connection: a deadpool-postgres pool built once per cold start, TLS through
//! [`crate::tls`] (OpenSSL) whenever the URL asks for it, libpq URL conventions that tokio-postgres
//! lacks (`sslmode=verify-ca|verify-full`, `sslrootcert`), one bounded deadline per call, and
//! one retry on a fresh connection when the old one turned out to be dead (a frozen Lambda's
//! socket, a Neon compute that scaled to zero, a restarted server).
//!
//! Queries go through [`Db::query`], which uses `query_typed`: an unnamed statement with
//! explicit parameter types, so one round trip and nothing that a transaction-mode pooler
//! (PgBouncer, Neon's `-pooler` host) could lose between transactions.

use crate::config::{Config, ConfigError};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};
use tokio::time::{Instant, timeout_at};
use tokio_postgres::{
    Row,
    config::{SslMode, SslNegotiation},
    error::SqlState,
    types::{ToSql, Type},
};

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 2;

/// A query parameter with its explicit type, as `query_typed` takes it.
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// How a database call failed, as the callers need to tell it apart.
#[derive(Debug)]
pub enum DbError {
    /// No answer in time, or no connection could be made: the service is unavailable.
    Unavailable,
    /// A unique constraint refused the row. `retried` tells whether this was the second try
    /// of a call whose first try may have committed before its connection died.
    UniqueViolation {
        /// The constraint's name.
        constraint: Option<String>,
        /// Whether the call had been retried.
        retried: bool,
    },
    /// Anything else the server or driver reported (a bug, a schema mismatch).
    Query(tokio_postgres::Error),
    /// A statement answered what it never answers: no row, or an outcome the code does not
    /// know (a bug or a schema mismatch, never a reason to retry); names the store function.
    NoRow(&'static str),
}

/// How the server's TLS certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `false` only for `sslmode=disable`.
    pub enabled: bool,
    /// `false` only for `sslmode=verify-ca`, which checks the chain but not the host name.
    pub verify_hostname: bool,
    /// PEM roots to trust instead of the system's.
    pub root_cert: Option<PathBuf>,
}

/// The URL split into what tokio-postgres understands and what we handle ourselves.
#[derive(Debug)]
pub struct ConnectionSettings {
    /// Parsed connection settings.
    pub pg: tokio_postgres::Config,
    /// TLS verification settings.
    pub tls: TlsSettings,
}

/// Parses a libpq-style URL. Certificates are always verified, host name included, except
/// under `sslmode=verify-ca` (chain only, as libpq defines it) and `sslmode=disable` (no TLS).
/// `sslrootcert` in the URL wins over `PGSSLROOTCERT`; `sslrootcert=system` means the system roots.
///
/// Anything weaker than verified TLS (`sslmode=disable|allow|prefer`) is refused unless every
/// host the URL names is loopback: the authority's hosts and those of `host=` and `hostaddr=`,
/// which libpq and tokio-postgres add to the list they try, so neither can slip a remote server
/// past the check.
pub fn connection_settings(
    url: &str,
    env_root_cert: Option<&Path>,
) -> Result<ConnectionSettings, ConfigError> {
    let bad = |problem: &str| ConfigError {
        variable: "DATABASE_URL",
        problem: problem.to_owned(),
    };
    let mut parsed = url::Url::parse(url).map_err(|_| bad("is not a valid URL"))?;
    let mut tls = TlsSettings {
        enabled: true,
        verify_hostname: true,
        root_cert: env_root_cert.map(Path::to_path_buf),
    };
    let mut explicit_sslmode = false;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        // tokio-postgres lets the last sslmode win; so does everything derived from it here.
        let (mode, verify_hostname) = match (key.as_ref(), value.as_ref()) {
            ("sslmode", "disable") => ("disable", true),
            ("sslmode", "allow" | "prefer") => ("prefer", true),
            ("sslmode", "require" | "verify-full") => ("require", true),
            ("sslmode", "verify-ca") => ("require", false),
            ("sslmode", _) => return Err(bad("has an unknown sslmode")),
            ("sslrootcert", "system") => {
                tls.root_cert = None;
                continue;
            }
            ("sslrootcert", path) => {
                tls.root_cert = Some(PathBuf::from(path));
                continue;
            }
            (k, v) => {
                kept.push((k.to_owned(), v.to_owned()));
                continue;
            }
        };
        explicit_sslmode = true;
        tls.verify_hostname = verify_hostname;
        kept.push(("sslmode".into(), mode.into()));
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut pg = tokio_postgres::Config::from_str(parsed.as_str())
        .map_err(|_| bad("could not be parsed as a PostgreSQL connection URL"))?;
    let local = pg.get_hosts().iter().all(is_local_host)
        && pg.get_hostaddrs().iter().all(std::net::IpAddr::is_loopback);
    if !local {
        // libpq's default, `prefer`, silently falls back to plaintext; an auth service must not
        // send password hashes and tokens over the network in the clear.
        if !explicit_sslmode {
            pg.ssl_mode(SslMode::Require);
        }
        if pg.get_ssl_mode() != SslMode::Require {
            return Err(bad(
                "asks for less than verified TLS (sslmode=disable, allow or prefer) for a host that \
                 is not loopback; use sslmode=require, verify-full or verify-ca",
            ));
        }
    }
    // As libpq: direct TLS has no plaintext to fall back to, and without TLS it means nothing.
    if pg.get_ssl_negotiation() == SslNegotiation::Direct && pg.get_ssl_mode() != SslMode::Require {
        return Err(bad(
            "has sslnegotiation=direct, which needs sslmode=require, verify-ca or verify-full",
        ));
    }
    tls.enabled = pg.get_ssl_mode() != SslMode::Disable;
    Ok(ConnectionSettings { pg, tls })
}

/// Loopback: `localhost`, 127.0.0.0/8, `::1`, or a Unix socket. Anything else, a name that
/// may resolve to loopback included, is treated as remote.
fn is_local_host(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

fn tls_connector(
    tls: &TlsSettings,
    direct: bool,
) -> Result<crate::tls::MakeConnector, ConfigError> {
    use crate::tls::SetupError;
    let bad = |variable: &'static str, problem: &str| ConfigError {
        variable,
        problem: problem.to_owned(),
    };
    crate::tls::MakeConnector::new(&crate::tls::Settings {
        root_cert: tls.root_cert.clone(),
        verify_hostname: tls.verify_hostname,
        direct,
    })
    .map_err(|error| match error {
        SetupError::RootUnreadable => bad("PGSSLROOTCERT", "names a file that cannot be read"),
        SetupError::RootUnparsable => {
            bad("PGSSLROOTCERT", "holds a certificate that cannot be parsed")
        }
        SetupError::RootEmpty => bad("PGSSLROOTCERT", "holds no PEM certificate"),
        SetupError::Library => bad("DATABASE_URL", "TLS could not be set up"),
    })
}

/// The pool and the per-call deadline. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("status", &self.pool.status())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Db {
    /// Builds the pool from the settings. No connection is made here.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let url = config.database_url.as_ref().ok_or_else(|| ConfigError {
            variable: "DATABASE_URL",
            problem: "is required (a postgres:// URL)".into(),
        })?;
        Self::new(
            url.expose(),
            config.ssl_root_cert.as_deref(),
            config.pool_max_size,
            config.db_timeout,
        )
    }

    /// Builds a pool for `url` (TLS roots, size and deadline given). No connection is made here.
    pub fn new(
        url: &str,
        ssl_root_cert: Option<&Path>,
        max_size: usize,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let settings = connection_settings(url, ssl_root_cert)?;
        let mut pg = settings.pg;
        pg.connect_timeout(timeout);
        // A peer that stops acknowledging (a frozen or vanished compute) fails writes in bounded time.
        pg.tcp_user_timeout(timeout);
        pg.keepalives(true);
        if pg.get_application_name().is_none() {
            pg.application_name("auth-lambda");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if settings.tls.enabled {
            let direct = pg.get_ssl_negotiation() == SslNegotiation::Direct;
            Manager::from_config(pg, tls_connector(&settings.tls, direct)?, manager_config)
        } else {
            Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|_| ConfigError {
                variable: "DATABASE_POOL_MAX_SIZE",
                problem: "is not usable".into(),
            })?;
        Ok(Self { pool, timeout })
    }

    /// Opens a connection ahead of the first request (at init, where Lambda gives full CPU).
    /// A failure is only logged: the first request will try again and answer 503 if it must.
    pub async fn warm_up(&self) {
        match timeout_at(Instant::now() + self.timeout, self.pool.get()).await {
            Ok(Ok(_client)) => tracing::debug!("database connection opened at init"),
            Ok(Err(error)) => {
                tracing::warn!(error = %pool_error_summary(&error), "database not reachable at init")
            }
            Err(_) => tracing::warn!("database connection at init timed out"),
        }
    }

    /// A pooled connection for administrative work (the CLI, tests); requests use [`Db::query`].
    pub async fn connection(&self) -> Result<Object, DbError> {
        match timeout_at(Instant::now() + self.timeout, self.pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(PoolError::Backend(error))) => Err(DbError::Query(error)),
            _ => Err(DbError::Unavailable),
        }
    }

    /// Runs one statement and returns its rows, within the call's deadline, retrying once on a
    /// fresh connection if the first one was dead.
    pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let deadline = Instant::now() + self.timeout;
        match self.attempt(sql, params, deadline).await {
            Err(Failure::Connection(reason)) => {
                tracing::warn!(
                    reason,
                    "database connection lost; retrying once on a new connection"
                );
                match self.attempt(sql, params, deadline).await {
                    Ok(rows) => Ok(rows),
                    Err(failure) => Err(failure.into_error(true)),
                }
            }
            other => other.map_err(|f| f.into_error(false)),
        }
    }

    /// Runs one statement once, without the retry: for best-effort writes (the audit of a
    /// refusal) whose repetition after a lost answer would be worse than their loss.
    pub async fn query_once(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let deadline = Instant::now() + self.timeout;
        self.attempt(sql, params, deadline)
            .await
            .map_err(|f| f.into_error(false))
    }

    /// Like [`Db::query`], for statements that return at most one row.
    pub async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    async fn attempt(
        &self,
        sql: &str,
        params: &[Param<'_>],
        deadline: Instant,
    ) -> Result<Vec<Row>, Failure> {
        let client = match timeout_at(deadline, self.pool.get()).await {
            Err(_) | Ok(Err(PoolError::Timeout(_))) => return Err(Failure::Timeout),
            Ok(Err(error)) => return Err(Failure::Connect(pool_error_summary(&error))),
            Ok(Ok(client)) => client,
        };
        match timeout_at(deadline, client.query_typed(sql, params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) if is_connection_error(&error) => {
                // Keep the dead connection out of the pool.
                drop(Object::take(client));
                Err(Failure::Connection(connection_error_summary(&error)))
            }
            Ok(Err(error)) => Err(Failure::Query(error)),
            Err(_) => {
                // The connection may be stuck mid-query: never hand it out again.
                drop(Object::take(client));
                Err(Failure::Timeout)
            }
        }
    }
}

enum Failure {
    Timeout,
    Connect(String),
    Connection(&'static str),
    Query(tokio_postgres::Error),
}

impl Failure {
    fn into_error(self, retried: bool) -> DbError {
        match self {
            Self::Timeout => {
                tracing::error!(retried, "database call timed out");
                DbError::Unavailable
            }
            Self::Connect(error) => {
                tracing::error!(error, retried, "could not connect to the database");
                DbError::Unavailable
            }
            Self::Connection(reason) => {
                tracing::error!(reason, retried, "database connection lost");
                DbError::Unavailable
            }
            Self::Query(error) => match error.as_db_error() {
                Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => DbError::UniqueViolation {
                    constraint: db.constraint().map(str::to_owned),
                    retried,
                },
                _ => DbError::Query(error),
            },
        }
    }
}

/// A log-safe description of a driver error: SQLSTATE and message, never the server's DETAIL
/// line, which repeats row values ("Failing row contains (…)", "Key (email)=(…)").
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// Errors that mean the connection, not the statement, failed: retrying on a new connection
/// is safe for them and only for them.
fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P01..57P03: admin/crash shutdown, cannot connect now
        // (what a Neon compute suspending sends: "terminating connection due to administrator command").
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

fn connection_error_summary(error: &tokio_postgres::Error) -> &'static str {
    match error.as_db_error() {
        Some(_) => "server ended the session",
        None if error.is_closed() => "connection closed",
        None => "i/o error",
    }
}

/// A log-safe summary: the driver's own text names no password, but keep it to the kind.
fn pool_error_summary(error: &PoolError) -> String {
    match error {
        PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => format!("server refused the connection ({})", db.code().code()),
            None => e.to_string(),
        },
        PoolError::Timeout(kind) => format!("timeout ({kind:?})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neon_console_url_is_accepted_as_is() {
        let url = "postgresql://neondb_owner:npg_secret@ep-cool-darkness-a1b2c3d4-pooler.eu-central-1.aws.neon.tech/neondb?sslmode=require&channel_binding=require";
        let s = connection_settings(url, None).expect("parses");
        assert_eq!(s.pg.get_ssl_mode(), SslMode::Require);
        assert_eq!(s.pg.get_dbname(), Some("neondb"));
        assert_eq!(s.pg.get_user(), Some("neondb_owner"));
        assert_eq!(
            s.tls,
            TlsSettings {
                enabled: true,
                verify_hostname: true,
                root_cert: None
            }
        );
    }

    #[test]
    fn verify_full_and_verify_ca_map_to_verified_tls() {
        let s = connection_settings(
            "postgres://u:p@db.example.com/db?sslmode=verify-full&sslrootcert=/tmp/ca.pem",
            None,
        )
        .expect("parses");
        assert_eq!(s.pg.get_ssl_mode(), SslMode::Require);
        assert_eq!(s.tls.root_cert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert!(s.tls.verify_hostname);
        let s = connection_settings(
            "postgres://u:p@db.example.com/db?sslmode=verify-ca",
            Some(Path::new("/env.pem")),
        )
        .expect("parses");
        assert!(!s.tls.verify_hostname);
        assert_eq!(s.tls.root_cert.as_deref(), Some(Path::new("/env.pem")));
        let s = connection_settings(
            "postgres://u:p@h/db?sslrootcert=system",
            Some(Path::new("/env.pem")),
        )
        .expect("parses");
        assert_eq!(s.tls.root_cert, None);
    }

    #[test]
    fn sslmode_disable_turns_tls_off_and_bad_urls_name_the_setting() {
        let s = connection_settings("postgres://u:p@127.0.0.1:5432/auth?sslmode=disable", None)
            .expect("parses");
        assert!(!s.tls.enabled);
        for bad in [
            "not a url",
            "postgres://u:p@h/db?sslmode=sometimes",
            "postgres://u:p@h/db?frobnicate=1",
        ] {
            let e = connection_settings(bad, None).expect_err(bad);
            assert_eq!(e.variable, "DATABASE_URL");
            assert!(!e.to_string().contains("u:p"), "{e}");
        }
    }

    #[test]
    fn direct_tls_needs_verified_tls() {
        for url in [
            "postgres://u:p@localhost/db?sslnegotiation=direct",
            "postgres://u:p@localhost/db?sslnegotiation=direct&sslmode=prefer",
            "postgres://u:p@localhost/db?sslnegotiation=direct&sslmode=disable",
        ] {
            let e = connection_settings(url, None).expect_err(url);
            assert!(e.to_string().contains("sslnegotiation=direct"), "{e}");
        }
        for mode in ["require", "verify-ca", "verify-full"] {
            let url =
                format!("postgres://u:p@db.example.com/db?sslnegotiation=direct&sslmode={mode}");
            let s = connection_settings(&url, None).expect("direct with verified TLS");
            assert_eq!(s.pg.get_ssl_negotiation(), SslNegotiation::Direct);
            assert!(s.tls.enabled);
        }
        let remote = connection_settings(
            "postgres://u:p@db.example.com/db?sslnegotiation=direct",
            None,
        )
        .expect("a remote host requires TLS by default");
        assert_eq!(remote.pg.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn without_an_sslmode_tls_is_required_except_on_loopback() {
        let s = connection_settings("postgres://u:p@db.example.com/db", None).expect("parses");
        assert_eq!(s.pg.get_ssl_mode(), SslMode::Require);
        assert!(s.tls.enabled && s.tls.verify_hostname);
        for local in [
            "postgres://u:p@localhost/db",
            "postgres://u:p@LOCALHOST/db",
            "postgres://u:p@127.0.0.1:5432/db",
            "postgres://u:p@127.3.2.1/db",
            "postgres://u:p@[::1]/db",
            "postgres://u:p@localhost,127.0.0.2/db?host=::1",
        ] {
            let s = connection_settings(local, None).expect("parses");
            assert_eq!(s.pg.get_ssl_mode(), SslMode::Prefer, "{local}");
        }
    }

    /// The error for a downgrade: names DATABASE_URL and never echoes the URL.
    fn assert_downgrade_refused(url: &str) {
        let e = connection_settings(url, None).expect_err(url);
        assert_eq!(e.variable, "DATABASE_URL");
        assert!(e.problem.contains("less than verified TLS"), "{url}: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_remote_host_refuses_sslmode_disable_allow_and_prefer() {
        for mode in ["disable", "allow", "prefer"] {
            assert_downgrade_refused(&format!(
                "postgres://u:s3cret@db.example.com/db?sslmode={mode}"
            ));
            assert_downgrade_refused(&format!("postgres://u:s3cret@10.0.0.5/db?sslmode={mode}"));
        }
        // The last sslmode is the one tokio-postgres applies.
        assert_downgrade_refused(
            "postgres://u:s3cret@db.example.com/db?sslmode=require&sslmode=disable",
        );
        for verified in ["require", "verify-full", "verify-ca"] {
            let url = format!("postgres://u:s3cret@db.example.com/db?sslmode={verified}");
            let s = connection_settings(&url, None).expect(&url);
            assert_eq!(s.pg.get_ssl_mode(), SslMode::Require, "{verified}");
            assert!(s.tls.enabled);
            assert_eq!(s.tls.verify_hostname, verified != "verify-ca");
        }
        let s = connection_settings(
            "postgres://u:s3cret@db.example.com/db?sslmode=verify-ca&sslmode=verify-full",
            None,
        )
        .expect("parses");
        assert!(s.tls.verify_hostname, "the last sslmode wins");
    }

    #[test]
    fn a_host_query_parameter_cannot_slip_a_remote_server_past_the_loopback_check() {
        for url in [
            "postgres://u:s3cret@localhost/db?host=db.example.com&sslmode=disable",
            "postgres://u:s3cret@127.0.0.1/db?host=db.example.com&sslmode=prefer",
            "postgres://u:s3cret@localhost/db?host=localhost,db.example.com&sslmode=allow",
            "postgres://u:s3cret@localhost/db?hostaddr=203.0.113.5&sslmode=disable",
            "postgres://u:s3cret@localhost/db?hostaddr=127.0.0.1,203.0.113.5&sslmode=disable",
            "postgres://u:s3cret@localhost,db.example.com/db?sslmode=prefer",
            "postgres:///db?host=db.example.com,/var/run/postgresql&sslmode=disable",
            "postgres://u:s3cret@[::1]/db?host=::ffff:127.0.0.1&sslmode=disable",
        ] {
            assert_downgrade_refused(url);
        }
        // Without an sslmode, a remote host among them makes TLS required.
        let s = connection_settings("postgres://u:p@localhost/db?host=db.example.com", None)
            .expect("parses");
        assert_eq!(s.pg.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn loopback_hosts_and_unix_sockets_may_go_without_tls() {
        for url in [
            "postgres://u:p@localhost/db?host=127.0.0.2&sslmode=disable",
            "postgres://u:p@127.0.0.1/db?hostaddr=127.0.0.1&sslmode=disable",
            "postgres:///db?host=/var/run/postgresql&sslmode=disable",
            "postgres://u:p@%2Ftmp%2Fpg/db?sslmode=prefer",
            "postgres://u:p@[::1]:5432/db?sslmode=allow",
        ] {
            let s = connection_settings(url, None).expect(url);
            assert_ne!(s.pg.get_ssl_mode(), SslMode::Require, "{url}");
        }
        let s = connection_settings(
            "postgres:///db?host=/var/run/postgresql&sslmode=disable",
            None,
        )
        .expect("parses");
        assert!(!s.tls.enabled);
    }
}
