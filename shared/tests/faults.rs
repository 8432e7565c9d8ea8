//! Neon's production conditions, reproduced locally against a real Postgres that these tests
//! may restart, stop and put behind a proxy: TLS with certificate and host-name verification
//! and channel binding, restarts, dead and silent connections, a database down at cold start.
//!
//! `make test` starts the cluster (`scripts/pg.sh`, TLS on) and names it in `FAULT_PG`
//! ("NAME PORT"). The tests share it, so they take turns through [`exclusive`].

mod common;

use common::{STRONG_PASSWORD, unique_email};
use shared::{AppState, auth::Credentials, error::AuthError};
use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Mutex, MutexGuard},
};

static CLUSTER: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));

async fn exclusive() -> MutexGuard<'static, ()> {
    CLUSTER.lock().await
}

/// The fault cluster: name, port, password and CA.
struct Cluster {
    name: String,
    port: u16,
    password: String,
    ca: PathBuf,
}

fn pg_sh(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
    let out = Command::new(script)
        .args(args)
        .env("PG_TLS", "1")
        .output()
        .expect("scripts/pg.sh runs");
    assert!(
        out.status.success(),
        "pg.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Cluster {
    fn get() -> Self {
        let spec = std::env::var("FAULT_PG").unwrap_or_else(|_| {
            panic!("FAULT_PG is not set: these tests need the TLS cluster `make test` starts")
        });
        let (name, port) = spec.split_once(' ').expect("FAULT_PG is \"NAME PORT\"");
        let url = url::Url::parse(&pg_sh(&["url", name, port, "postgres"])).expect("url");
        Self {
            name: name.to_owned(),
            port: port.parse().expect("port"),
            password: url.password().expect("password").to_owned(),
            ca: PathBuf::from(pg_sh(&["ca", name, port])),
        }
    }

    fn url(&self, host: &str, port: u16, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{port}/{database}?{query}",
            self.password
        )
    }

    fn stop(&self) {
        pg_sh(&["stop", &self.name, &self.port.to_string()]);
    }

    fn start(&self) {
        pg_sh(&["start", &self.name, &self.port.to_string()]);
    }

    /// A fresh migrated database, reached over plain TCP for arranging and inspecting.
    async fn database(&self) -> (String, tokio_postgres::Client) {
        let name = format!("f_{}", uuid::Uuid::new_v4().simple());
        let admin = self.url("127.0.0.1", self.port, "postgres", "sslmode=disable");
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create");
        let direct = self.url("127.0.0.1", self.port, &name, "sslmode=disable");
        let (mut client, conn) = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        shared::schema::migrate(&mut client).await.expect("migrate");
        (name, client)
    }
}

fn state(url: &str, extra: &[(&str, &str)]) -> AppState {
    // Generous, so that the ordinary steps around a fault never meet the deadline on a busy
    // machine; the tests of the deadline itself set theirs.
    let mut overrides = vec![("DATABASE_TIMEOUT_MS", "5000")];
    overrides.extend_from_slice(extra);
    AppState::new(common::config(url, &overrides)).expect("state")
}

fn creds(email: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: STRONG_PASSWORD.to_owned(),
    }
}

async fn uses_tls(state: &AppState) -> bool {
    let rows = state
        .db
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    rows.first().is_some_and(|r| r.get::<_, bool>(0))
}

#[tokio::test]
async fn a_neon_style_url_connects_over_verified_tls_with_channel_binding() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, _) = c.database().await;
    let ca = c.ca.display().to_string();
    // As Neon's console gives it, with the CA from PGSSLROOTCERT.
    let s = state(
        &c.url(
            "localhost",
            c.port,
            &db,
            "sslmode=require&channel_binding=require",
        ),
        &[("PGSSLROOTCERT", &ca)],
    );
    let email = unique_email();
    common::register(&s, creds(&email))
        .await
        .expect("register over TLS");
    assert!(uses_tls(&s).await);
    // What Neon's docs recommend and tokio-postgres cannot parse: verify-full, sslrootcert in the URL.
    let s = state(
        &c.url(
            "localhost",
            c.port,
            &db,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &[],
    );
    assert!(common::login(&s, creds(&email)).await.is_ok());
    assert!(uses_tls(&s).await);
    // verify-ca checks the chain but not the name, so 127.0.0.1 is fine there.
    let s = state(
        &c.url(
            "127.0.0.1",
            c.port,
            &db,
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        &[],
    );
    assert!(common::login(&s, creds(&email)).await.is_ok());
}

#[tokio::test]
async fn a_certificate_for_another_host_or_from_an_unknown_ca_is_refused() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, _) = c.database().await;
    let ca = c.ca.display().to_string();
    // The certificate names only "localhost"; require still verifies the host name.
    for query in [
        format!("sslmode=require&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let s = state(&c.url("127.0.0.1", c.port, &db, &query), &[]);
        let err = common::login(&s, creds(&unique_email()))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), "service_unavailable", "{query}");
    }
    // The throwaway CA is not among the system roots.
    let s = state(&c.url("localhost", c.port, &db, "sslmode=require"), &[]);
    assert_eq!(
        common::login(&s, creds(&unique_email()))
            .await
            .err()
            .map(|e| e.code()),
        Some("service_unavailable")
    );
}

#[tokio::test]
async fn a_request_after_a_server_restart_succeeds() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, _) = c.database().await;
    let s = state(&c.url("127.0.0.1", c.port, &db, "sslmode=disable"), &[]);
    let email = unique_email();
    common::register(&s, creds(&email)).await.expect("register");
    c.stop();
    c.start();
    // The pooled connection died with the old server; one retry on a new one hides it.
    assert!(common::login(&s, creds(&email)).await.is_ok());
    let again = unique_email();
    c.stop();
    c.start();
    common::register(&s, creds(&again))
        .await
        .expect("registration after a restart");
}

#[tokio::test]
async fn a_database_that_is_down_answers_503_fast_and_keeps_no_partial_rows() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, direct) = c.database().await;
    let s = state(
        &c.url("127.0.0.1", c.port, &db, "sslmode=disable"),
        &[("DATABASE_TIMEOUT_MS", "3000")],
    );
    let email = unique_email();
    common::register(&s, creds(&email)).await.expect("register");
    drop(direct);
    c.stop();
    let started = Instant::now();
    let down = common::register(&s, creds(&unique_email()))
        .await
        .expect_err("down");
    let login = common::login(&s, creds(&email)).await.expect_err("down");
    let elapsed = started.elapsed();
    // A refused token stays a 401: the address window it counts against is out of reach.
    let garbage = shared::auth::current_user(&s, "garbage", &common::from("198.51.100.9")).await;
    c.start();
    assert_eq!(garbage.err(), Some(AuthError::InvalidToken));
    assert_eq!(
        down,
        AuthError::ServiceUnavailable {
            retry_after_secs: 2
        }
    );
    assert_eq!(
        login,
        AuthError::ServiceUnavailable {
            retry_after_secs: 2
        }
    );
    assert!(elapsed < Duration::from_secs(10), "503s took {elapsed:?}");
    let (client, conn) = tokio_postgres::connect(
        &c.url("127.0.0.1", c.port, &db, "sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    let count: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        count, 1,
        "only the account registered before the outage exists"
    );
    assert!(
        common::login(&s, creds(&email)).await.is_ok(),
        "the next request after recovery succeeds"
    );
}

#[tokio::test]
async fn a_function_whose_database_is_down_at_init_starts_and_recovers() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, direct) = c.database().await;
    drop(direct);
    c.stop();
    // What `http::run` does at cold start: build the state, try to connect, never fail init.
    let s = state(&c.url("127.0.0.1", c.port, &db, "sslmode=disable"), &[]);
    s.db.warm_up().await;
    let answer = common::login(&s, creds(&unique_email()))
        .await
        .expect_err("down");
    c.start();
    assert_eq!(answer.code(), "service_unavailable");
    let email = unique_email();
    common::register(&s, creds(&email))
        .await
        .expect("register once the database is back");
    assert!(common::login(&s, creds(&email)).await.is_ok());
}

/// A TCP proxy between the functions and Postgres that can go silent without closing anything
/// (a frozen or partitioned peer), or swallow the answers on the connections open so far and
/// then close them (a connection that dies after the server committed, before the client heard).
struct Proxy {
    port: u16,
    silent: Arc<AtomicBool>,
    /// Connections numbered below this lose their answers and are closed.
    cut_below: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Self {
            port: listener.local_addr().expect("addr").port(),
            silent: Arc::new(AtomicBool::new(false)),
            cut_below: Arc::new(AtomicUsize::new(0)),
            opened: Arc::new(AtomicUsize::new(0)),
        };
        let (silent, cut_below, opened) = (
            proxy.silent.clone(),
            proxy.cut_below.clone(),
            proxy.opened.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let id = opened.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let no_cut = Arc::new(AtomicUsize::new(0));
                tokio::spawn(pump(cr, sw, silent.clone(), no_cut, id));
                tokio::spawn(pump(sr, cw, silent.clone(), cut_below.clone(), id));
            }
        });
        proxy
    }

    /// From now on, the connections already open lose the server's answers and are closed.
    fn cut_open_connections(&self) {
        self.cut_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    cut_below: Arc<AtomicUsize>,
    id: usize,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if id < cut_below.load(Ordering::SeqCst) {
            let _ = to.shutdown().await;
            break;
        }
        if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::test]
async fn a_registration_whose_answer_was_lost_is_retried_without_a_false_email_taken() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, direct) = c.database().await;
    let proxy = Proxy::start(c.port).await;
    let s = state(&c.url("127.0.0.1", proxy.port, &db, "sslmode=disable"), &[]);
    common::register(&s, creds(&unique_email()))
        .await
        .expect("a first registration opens the connection");
    proxy.cut_open_connections();
    // The server commits this insert, but its answer never arrives and the connection closes:
    // the retry on a new connection meets its own row and must not call the email taken.
    let email = unique_email();
    let user = common::register(&s, creds(&email))
        .await
        .expect("registered despite the lost answer");
    let rows = direct
        .query("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .expect("q");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, uuid::Uuid>(0), user.id);
    assert_eq!(
        common::register(&s, creds(&email)).await.err(),
        Some(AuthError::EmailTaken)
    );
}

/// A state behind the proxy with one registered account and its connection open, and the
/// direct connection for inspecting rows. After `proxy.cut_open_connections()` the next
/// statement runs on the server but its answer is lost, and `Db` retries it on a new connection.
async fn behind_the_proxy(c: &Cluster) -> (AppState, Proxy, tokio_postgres::Client, String) {
    let (db, direct) = c.database().await;
    let proxy = Proxy::start(c.port).await;
    let s = state(&c.url("127.0.0.1", proxy.port, &db, "sslmode=disable"), &[]);
    let email = unique_email();
    common::register(&s, creds(&email))
        .await
        .expect("a first registration opens the connection");
    (s, proxy, direct, email)
}

async fn count(direct: &tokio_postgres::Client, sql: &str) -> i64 {
    direct.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn a_failed_login_whose_answer_was_lost_is_counted_once() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email) = behind_the_proxy(&Cluster::get()).await;
    proxy.cut_open_connections();
    let wrong = Credentials {
        email,
        password: "not the password at all 1".into(),
    };
    assert_eq!(
        common::login(&s, wrong).await.err(),
        Some(AuthError::InvalidCredentials)
    );
    assert_eq!(
        count(&direct, "SELECT sum(failures) FROM login_throttle").await,
        2,
        "one failure on the account-wide row and one on the network's"
    );
}

#[tokio::test]
async fn a_session_start_whose_answer_was_lost_finds_its_own_session() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email) = behind_the_proxy(&Cluster::get()).await;
    let user_id: uuid::Uuid = direct
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .expect("user")
        .get(0);
    let hash: String = direct
        .query_one(
            "SELECT hashed_password FROM users WHERE id = $1",
            &[&user_id],
        )
        .await
        .expect("hash")
        .get(0);
    proxy.cut_open_connections();
    let now = chrono::Utc::now();
    let session_id = uuid::Uuid::new_v4();
    let raw = shared::refresh::generate();
    let started = shared::store::start_session(
        &s.db,
        user_id,
        session_id,
        &shared::refresh::hash(&raw),
        &hash,
        &shared::store::account_key(None, &email),
        "unknown",
        now,
        now + chrono::Duration::days(1),
        &shared::origin::Origin::default(),
    )
    .await
    .expect("no error");
    assert!(started, "the retry recognizes its own session");
    assert_eq!(count(&direct, "SELECT count(*) FROM sessions").await, 1);
    assert_eq!(
        count(&direct, "SELECT count(*) FROM refresh_tokens").await,
        1
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'login.succeeded'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_logout_whose_answer_was_lost_answers_as_the_first_try() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email) = behind_the_proxy(&Cluster::get()).await;
    let tokens = common::login(&s, creds(&email)).await.expect("login");
    proxy.cut_open_connections();
    shared::auth::logout(
        &s,
        &tokens.access.token,
        false,
        &shared::origin::Origin::default(),
    )
    .await
    .expect("the logout that ended the session succeeds");
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM sessions WHERE ended_reason = 'logout'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'logout.succeeded'"
        )
        .await,
        1
    );
    assert_eq!(
        common::current_user(&s, &tokens.access.token).await.err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn a_request_whose_window_answer_was_lost_is_counted_once() {
    let _turn = exclusive().await;
    let (s, proxy, direct, _) = behind_the_proxy(&Cluster::get()).await;
    let from = shared::origin::Origin {
        source_ip: Some("198.51.100.7".into()),
        user_agent: None,
    };
    proxy.cut_open_connections();
    shared::auth::check_source_address(&s, &from, "login")
        .await
        .expect("allowed");
    assert_eq!(count(&direct, "SELECT count(*) FROM ip_requests").await, 1);
}

#[tokio::test]
async fn a_refresh_whose_answer_was_lost_gets_the_successor_it_committed() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email) = behind_the_proxy(&Cluster::get()).await;
    let tokens = common::login(&s, creds(&email)).await.expect("login");
    proxy.cut_open_connections();
    let next = shared::auth::refresh(
        &s,
        &tokens.refresh_token,
        &shared::origin::Origin::default(),
    )
    .await
    .expect("the retry meets its own rotation inside the grace window");
    assert_eq!(
        count(&direct, "SELECT count(*) FROM refresh_tokens").await,
        2
    );
    shared::auth::refresh(&s, &next.refresh_token, &shared::origin::Origin::default())
        .await
        .expect("the successor handed out is the live token");
}

#[tokio::test]
async fn a_connection_that_stops_answering_is_a_503_at_the_deadline() {
    let _turn = exclusive().await;
    let c = Cluster::get();
    let (db, _) = c.database().await;
    let proxy = Proxy::start(c.port).await;
    let s = state(
        &c.url("127.0.0.1", proxy.port, &db, "sslmode=disable"),
        &[("DATABASE_TIMEOUT_MS", "1000")],
    );
    let email = unique_email();
    common::register(&s, creds(&email))
        .await
        .expect("register through the proxy");
    proxy.silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = common::login(&s, creds(&email)).await.expect_err("silent");
    let waited = started.elapsed();
    assert_eq!(err.code(), "service_unavailable");
    // The Lambda timeout in template.yaml is 10 s; the answer comes at the 1 s deadline.
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
    proxy.silent.store(false, Ordering::SeqCst);
    assert!(
        common::login(&s, creds(&email)).await.is_ok(),
        "a fresh connection works again"
    );
}

#[tokio::test]
async fn a_burst_through_a_transaction_mode_pooler_has_no_protocol_errors() {
    let _turn = exclusive().await;
    let bouncer = std::env::var("FAULT_BOUNCER_PORT")
        .unwrap_or_else(|_| panic!("FAULT_BOUNCER_PORT is not set: `make test` starts PgBouncer"));
    let c = Cluster::get();
    let (db, _) = c.database().await;
    let url = c.url(
        "127.0.0.1",
        bouncer.parse().expect("port"),
        &db,
        "sslmode=disable",
    );
    // 50 instances with one connection each, as 50 concurrent Lambdas would be.
    let flows: Vec<_> = (0..50)
        .map(|_| {
            let s = state(&url, &[("DATABASE_TIMEOUT_MS", "20000")]);
            tokio::spawn(async move {
                let email = unique_email();
                common::register(&s, creds(&email)).await?;
                let token = common::login(&s, creds(&email)).await?;
                common::current_user(&s, &token.access.token).await
            })
        })
        .collect();
    let mut failures = Vec::new();
    for flow in flows {
        if let Err(e) = flow.await.expect("task") {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

// --- The account writes (issue 8), each retried after its answer was lost ---------------------

/// `behind_the_proxy` with mail on, every delivery failing at once (so each message stays
/// sealed in the outbox for the test to open), and forgot answering after 50 ms; also the
/// account's user id.
async fn behind_the_proxy_with_mail(
    c: &Cluster,
) -> (AppState, Proxy, tokio_postgres::Client, String, uuid::Uuid) {
    let (db, direct) = c.database().await;
    let proxy = Proxy::start(c.port).await;
    let s = state(
        &c.url("127.0.0.1", proxy.port, &db, "sslmode=disable"),
        &[
            ("SMTP_URL", common::CLOSED_SMTP),
            ("SMTP_TIMEOUT_MS", "1000"),
            ("MAIL_ANSWER_MS", "50"),
        ],
    );
    let email = unique_email();
    let user = common::register(&s, creds(&email))
        .await
        .expect("a first registration opens the connection");
    (s, proxy, direct, email, user.id)
}

/// The statement after the cut lost its answer and was sent again on a new connection.
fn assert_retried(proxy: &Proxy) {
    assert!(
        proxy.opened.load(Ordering::SeqCst) > proxy.cut_below.load(Ordering::SeqCst),
        "no new connection: the lost answer was never retried"
    );
}

fn session_of(tokens: &shared::auth::Tokens) -> uuid::Uuid {
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&tokens.access.token)
            .expect("a JWT")
            .claims;
    uuid::Uuid::parse_str(claims["sid"].as_str().expect("sid")).expect("a uuid")
}

/// The argon2id hash of a new password for `email`, as a change or reset stores it.
async fn new_hash(s: &AppState, email: &str) -> String {
    let email = shared::email::Email::parse(email).expect("email");
    let password = shared::password::NewPassword::parse(
        "tangerine submarine orchestra 71",
        &email,
        s.config.password_min_length,
    )
    .expect("a strong password");
    s.passwords()
        .expect("argon2")
        .hash(&password)
        .await
        .expect("hash")
}

async fn hash_of(direct: &tokio_postgres::Client, user_id: uuid::Uuid) -> String {
    direct
        .query_one(
            "SELECT hashed_password FROM users WHERE id = $1",
            &[&user_id],
        )
        .await
        .expect("the user's row")
        .get(0)
}

fn account_of(email: &str) -> Vec<u8> {
    let email = shared::email::Email::parse(email).expect("email");
    shared::store::account_key(Some(&email), email.as_str())
}

#[tokio::test]
async fn a_verification_whose_answer_was_lost_answers_as_the_first_try() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, user_id) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let mailer = s.mailer.as_ref().expect("mail on");
    let token = common::newest_link(&direct, mailer, &email, "verify_email").await;
    proxy.cut_open_connections();
    let user = shared::auth::verify_email(&s, &token, &shared::origin::Origin::default())
        .await
        .expect("the retry finds the link used by its own first try");
    assert_retried(&proxy);
    assert_eq!(user.id, user_id);
    assert!(user.email_verified);
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'email.verified'"
        )
        .await,
        1
    );
    assert_eq!(
        shared::auth::verify_email(&s, &token, &shared::origin::Origin::default())
            .await
            .err(),
        Some(AuthError::LinkInvalid),
        "another request still finds it used"
    );
}

#[tokio::test]
async fn a_reset_whose_answer_was_lost_answers_as_the_first_try() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, user_id) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let nobody = shared::origin::Origin::default();
    shared::auth::request_mail(
        &s,
        shared::auth::MailAsk::PasswordReset,
        &email,
        &nobody,
        tokio::time::Instant::now(),
    )
    .await
    .expect("forgot");
    for _ in 0..2 {
        common::login(&s, creds(&email)).await.expect("login");
    }
    let mailer = s.mailer.as_ref().expect("mail on");
    let token = common::newest_link(&direct, mailer, &email, "password_reset").await;
    let link = shared::refresh::hash(&shared::refresh::decode(&token).expect("base64url"));
    let new_hash = new_hash(&s, &email).await;
    let notice =
        shared::mail::outbox::Prepared::new(mailer, &email, shared::mail::Notice::PasswordChanged);
    let now = s.now();
    let changed = count(
        &direct,
        "SELECT count(*) FROM outbox WHERE kind = 'password_changed'",
    )
    .await;
    proxy.cut_open_connections();
    // The statement of `auth::reset_password`, called directly so that its answer is the one lost.
    let reset = shared::store::reset_password(
        &s.db,
        &link,
        &new_hash,
        &account_of(&email),
        now,
        uuid::Uuid::new_v4(),
        Some(notice.queued(&s, now)),
        &nobody,
    )
    .await
    .expect("no error");
    assert_retried(&proxy);
    assert_eq!(reset, Ok(user_id));
    assert_eq!(hash_of(&direct, user_id).await, new_hash);
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM sessions WHERE ended_reason = 'password_reset'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM outbox WHERE kind = 'password_changed'"
        )
        .await,
        changed + 1,
        "one notice"
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'password.reset'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_password_change_whose_answer_was_lost_answers_as_the_first_try() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, user_id) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let nobody = shared::origin::Origin::default();
    let caller = common::login(&s, creds(&email)).await.expect("login");
    let other = common::login(&s, creds(&email)).await.expect("login");
    let old_hash = hash_of(&direct, user_id).await;
    let new_hash = new_hash(&s, &email).await;
    let mailer = s.mailer.as_ref().expect("mail on");
    let notice =
        shared::mail::outbox::Prepared::new(mailer, &email, shared::mail::Notice::PasswordChanged);
    let now = s.now();
    proxy.cut_open_connections();
    // The statement of `auth::change_password`, called directly so that its answer is the one lost.
    let changed = shared::store::change_password(
        &s.db,
        user_id,
        session_of(&caller),
        &old_hash,
        &new_hash,
        &account_of(&email),
        now,
        uuid::Uuid::new_v4(),
        Some(notice.queued(&s, now)),
        &nobody,
    )
    .await
    .expect("no error");
    assert_retried(&proxy);
    assert!(changed, "the retry recognizes its own change");
    assert_eq!(hash_of(&direct, user_id).await, new_hash);
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM sessions WHERE ended_reason = 'password_changed'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM outbox WHERE kind = 'password_changed'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'password.changed'"
        )
        .await,
        1
    );
    common::current_user(&s, &caller.access.token)
        .await
        .expect("the calling session lives on");
    assert_eq!(
        common::current_user(&s, &other.access.token).await.err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn a_wrong_password_check_whose_answer_was_lost_is_counted_once() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, _) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let tokens = common::login(&s, creds(&email)).await.expect("login");
    proxy.cut_open_connections();
    assert_eq!(
        shared::auth::change_password(
            &s,
            &tokens.access.token,
            "not the password at all 1",
            "tangerine submarine orchestra 71",
            &shared::origin::Origin::default(),
        )
        .await
        .err(),
        Some(AuthError::WrongPassword)
    );
    assert_retried(&proxy);
    assert_eq!(
        count(&direct, "SELECT sum(failures) FROM login_throttle").await,
        2,
        "one failure on the account-wide row and one on the network's"
    );
}

#[tokio::test]
async fn a_deletion_whose_answer_was_lost_answers_as_the_first_try() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, user_id) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let tokens = common::login(&s, creds(&email)).await.expect("login");
    let hash = hash_of(&direct, user_id).await;
    proxy.cut_open_connections();
    // The statement of `auth::delete_account`, called directly so that its answer is the one lost.
    let deleted = shared::store::delete_user(
        &s.db,
        user_id,
        session_of(&tokens),
        &hash,
        &account_of(&email),
        s.now(),
        &shared::origin::Origin::default(),
    )
    .await
    .expect("no error");
    assert_retried(&proxy);
    assert!(
        deleted,
        "the retry finds the user gone by its own first try"
    );
    assert_eq!(count(&direct, "SELECT count(*) FROM users").await, 0);
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'user.deleted'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_session_revocation_whose_answer_was_lost_answers_as_the_first_try() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, _) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let caller = common::login(&s, creds(&email)).await.expect("login");
    let other = common::login(&s, creds(&email)).await.expect("login");
    proxy.cut_open_connections();
    shared::auth::revoke_session(
        &s,
        &caller.access.token,
        &session_of(&other).to_string(),
        &shared::origin::Origin::default(),
    )
    .await
    .expect("the retry finds the session ended by its own first try");
    assert_retried(&proxy);
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM sessions WHERE ended_reason = 'revoked'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'session.revoked'"
        )
        .await,
        1
    );
    assert_eq!(
        common::current_user(&s, &other.access.token).await.err(),
        Some(AuthError::InvalidToken)
    );
    common::current_user(&s, &caller.access.token)
        .await
        .expect("the caller lives on");
}

#[tokio::test]
async fn a_mail_request_whose_answer_was_lost_is_counted_and_queued_once() {
    let _turn = exclusive().await;
    let (s, proxy, direct, email, user_id) = behind_the_proxy_with_mail(&Cluster::get()).await;
    let nobody = shared::origin::Origin::default();
    let forgot = |address: String| {
        let (s, nobody) = (&s, nobody.clone());
        async move {
            shared::auth::request_mail(
                s,
                shared::auth::MailAsk::PasswordReset,
                &address,
                &nobody,
                tokio::time::Instant::now(),
            )
            .await
        }
    };
    proxy.cut_open_connections();
    // Counted twice, the retry would be over the per-recipient interval: a 429.
    assert_eq!(forgot(email.clone()).await, Ok(()));
    assert_retried(&proxy);
    assert_eq!(
        count(&direct, "SELECT count(*) FROM mail_requests").await,
        1
    );
    let user: Vec<uuid::Uuid> = direct
        .query(
            "SELECT user_id FROM link_tokens WHERE purpose = 'reset_password'",
            &[],
        )
        .await
        .expect("links")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(user, [user_id]);
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM outbox WHERE kind = 'password_reset'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM auth_events WHERE event = 'password.reset_requested'"
        )
        .await,
        1
    );
    // An unknown address: counted once too, nothing stored.
    proxy.cut_open_connections();
    assert_eq!(forgot(unique_email()).await, Ok(()));
    assert_retried(&proxy);
    assert_eq!(
        count(&direct, "SELECT count(*) FROM mail_requests").await,
        2
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM outbox WHERE kind = 'password_reset'"
        )
        .await,
        1
    );
}
