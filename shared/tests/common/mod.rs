//! Test support: every test gets its own freshly created and migrated database on the real
//! Postgres named by `TEST_DATABASE_URL` (`make test` starts one). Without it the tests fail;
//! they never skip.

#![allow(dead_code)] // each test binary uses its own part of this module

use shared::{
    AppState,
    auth::{self, Credentials, Tokens},
    config::Config,
    error::AuthError,
    origin::Origin,
    store::User,
};
use std::collections::HashMap;

pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// 32 bytes, base64 (`DATA_ENCRYPTION_KEY`).
pub const DATA_KEY: &str = "dGVzdC1kYXRhLWVuY3J5cHRpb24ta2V5LTMyLWJ5dGU=";
pub const STRONG_PASSWORD: &str = "correct horse battery staple 93!";

/// The server the functions connect to: Postgres itself, or a transaction-mode PgBouncer in
/// front of it (`make test` runs the database suites both ways).
pub fn app_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set: database tests need a real Postgres (run `make test`)"
        )
    })
}

/// Postgres itself, for creating databases and arranging rows with prepared statements, which
/// a transaction-mode pooler does not keep: `TEST_DIRECT_DATABASE_URL`, else `TEST_DATABASE_URL`.
pub fn admin_url() -> String {
    std::env::var("TEST_DIRECT_DATABASE_URL").unwrap_or_else(|_| app_url())
}

/// Swaps the database name in a postgres URL.
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a postgres URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// Creates an empty database and returns its URL as the functions reach it.
pub async fn create_database() -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test Postgres");
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    drop(client);
    let _ = task.await;
    with_database(&app_url(), &name)
}

/// Settings for a test: fast argon2 unless the test overrides it.
pub fn config(url: &str, overrides: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), url.to_owned()),
        ("JWT_SECRET".into(), SECRET.into()),
        ("DATA_ENCRYPTION_KEY".into(), DATA_KEY.into()),
        ("ARGON2_MEMORY_KIB".into(), "8192".into()),
        ("ARGON2_ITERATIONS".into(), "1".into()),
    ]);
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|k| env.get(k).cloned()).expect("test config")
}

/// A fresh, migrated database and the state of a function connected to it.
pub async fn fresh_state(overrides: &[(&str, &str)]) -> AppState {
    let url = create_database().await;
    let state = AppState::new(config(&url, overrides)).expect("state");
    shared::schema::migrate(&mut psql(&state).await)
        .await
        .expect("migrate");
    state
}

/// The state's database URL, parsed.
pub fn database_url(state: &AppState) -> url::Url {
    let url = state.config.database_url.as_ref().expect("a database");
    url::Url::parse(url.expose()).expect("url")
}

/// A direct connection to the state's database, for arranging and inspecting rows.
pub async fn psql(state: &AppState) -> tokio_postgres::Client {
    let url = database_url(state);
    let direct = with_database(&admin_url(), url.path().trim_start_matches('/'));
    let (client, connection) = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// The argon2id PHC string stored for a user.
pub async fn stored_hash(state: &AppState, id: uuid::Uuid) -> String {
    psql(state)
        .await
        .query_one("SELECT hashed_password FROM users WHERE id = $1", &[&id])
        .await
        .expect("the user's row")
        .get(0)
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// The operations as a request without a source address calls them (no per-address limit).
pub async fn register(state: &AppState, credentials: Credentials) -> Result<User, AuthError> {
    auth::register(state, credentials, &Origin::default()).await
}

pub async fn login(state: &AppState, credentials: Credentials) -> Result<Tokens, AuthError> {
    auth::login(state, credentials, &Origin::default()).await
}

pub async fn current_user(state: &AppState, bearer: &str) -> Result<User, AuthError> {
    auth::current_user(state, bearer, &Origin::default()).await
}

/// Replaces the state's clock with one the test moves by hand.
pub fn hand_clock(
    state: &mut AppState,
) -> std::sync::Arc<std::sync::Mutex<chrono::DateTime<chrono::Utc>>> {
    let now = std::sync::Arc::new(std::sync::Mutex::new(chrono::Utc::now()));
    let read = now.clone();
    state.clock = std::sync::Arc::new(move || *read.lock().expect("clock"));
    now
}

/// Moves a hand-set clock.
pub fn advance(
    clock: &std::sync::Arc<std::sync::Mutex<chrono::DateTime<chrono::Utc>>>,
    by: chrono::Duration,
) {
    *clock.lock().expect("clock") += by;
}

/// A request from this source address.
pub fn from(ip: &str) -> Origin {
    Origin {
        source_ip: Some(ip.to_owned()),
        user_agent: Some("tests".to_owned()),
    }
}

/// Log output captured from the functions' own subscriber, for tests of what is logged.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The functions' own subscriber (`shared::http::log_subscriber`), JSON lines into this
    /// buffer, for the current thread: `#[tokio::test]` runs every task of the test there, and
    /// tests running at the same time on other threads do not mix their events in.
    pub fn install(
        &self,
        aws_lambda_log_level: Option<&str>,
        rust_log: Option<&str>,
    ) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        tracing::subscriber::set_default(shared::http::log_subscriber(
            aws_lambda_log_level,
            rust_log,
            true,
            move || writer.clone(),
        ))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

/// An SMTP URL on which nothing listens (port 1 on loopback): every delivery attempt fails at
/// once, so queued messages keep their sealed bodies for a test to open.
pub const CLOSED_SMTP: &str = "smtp://127.0.0.1:1";

/// The envelopes the outbox still holds sealed for `to`, oldest first, opened with the
/// state's own mailer (the row id is the seal's associated data).
pub async fn sealed_mail(
    client: &tokio_postgres::Client,
    mailer: &shared::mail::Mailer,
    to: &str,
) -> Vec<shared::mail::Envelope> {
    let rows = client
        .query(
            "SELECT id, sealed FROM outbox WHERE sealed IS NOT NULL ORDER BY created_at, id",
            &[],
        )
        .await
        .expect("outbox rows");
    rows.iter()
        .map(|r| {
            mailer
                .open(r.get(0), &r.get::<_, Vec<u8>>(1))
                .expect("a sealed body opens with the state's key")
        })
        .filter(|envelope| envelope.to == to)
        .collect()
}

/// The link token of the newest sealed message to `to` that carries one of this kind
/// (`verify_email` or `password_reset`).
pub async fn newest_link(
    client: &tokio_postgres::Client,
    mailer: &shared::mail::Mailer,
    to: &str,
    kind: &str,
) -> String {
    sealed_mail(client, mailer, to)
        .await
        .into_iter()
        .rev()
        .find_map(|envelope| match envelope.notice {
            shared::mail::Notice::VerifyEmail { token } if kind == "verify_email" => Some(token),
            shared::mail::Notice::PasswordReset { token } if kind == "password_reset" => {
                Some(token)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no sealed {kind} message to {to}"))
}

/// A setting the mail tests need; they fail without it, never skip: a mail test that passes
/// without a mail server proves nothing.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the mail tests need a real MailDev (run `make test`, or \
             `scripts/maildev.sh start NAME SMTP_PORT WEB_PORT` and set TEST_SMTP_URL to its \
             smtp://127.0.0.1:SMTP_PORT and TEST_MAILDEV_URL to its http://127.0.0.1:WEB_PORT)"
        )
    })
}

/// A GET of MailDev's REST API (`TEST_MAILDEV_URL`, plain HTTP/1.0 on loopback): the body.
pub async fn maildev_get(path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = required_env("TEST_MAILDEV_URL");
    let url = url::Url::parse(&base).expect("TEST_MAILDEV_URL is a URL");
    let host = url
        .host_str()
        .expect("TEST_MAILDEV_URL names a host")
        .to_owned();
    let port = url.port_or_known_default().expect("a port");
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap_or_else(|e| panic!("MailDev's web port at {base} does not answer: {e}"));
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET {path}: {head}"
    );
    body.to_owned()
}
