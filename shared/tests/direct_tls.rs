//! `sslnegotiation=direct` (TLS from the first byte, no SSLRequest) against a stand-in for a
//! PostgreSQL 17 server or Neon's proxy: `scripts/direct-tls-proxy.py`, started per test in front
//! of the TLS cluster named by `FAULT_PG` ("NAME PORT", as `make test` sets it), with that
//! cluster's own certificate. Debian 12's PostgreSQL 15 cannot speak direct TLS itself.
//!
//! The proxy speaks only TLS (it refuses a first byte that is not a TLS handshake record) and
//! prints one line per connection, so a connection it logs as `direct` was direct TLS from the
//! client; behind it the cluster sees plain TCP.

mod common;

use common::{STRONG_PASSWORD, unique_email};
use shared::{
    AppState,
    auth::Credentials,
    db::{Db, DbError},
    tls::{MakeConnector, Settings},
};
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};
use tokio_postgres::config::SslNegotiation;

/// For hangs only: every step here takes milliseconds.
const HANG: Duration = Duration::from_secs(10);

/// The TLS cluster: port, password, and where its certificates are.
struct Cluster {
    port: u16,
    password: String,
    tls_dir: PathBuf,
}

fn pg_sh(args: &[&str]) -> String {
    let script = repo().join("scripts/pg.sh");
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("scripts/pg.sh runs");
    assert!(
        out.status.success(),
        "pg.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Cluster {
    fn get() -> Self {
        let spec = std::env::var("FAULT_PG").unwrap_or_else(|_| {
            panic!("FAULT_PG is not set: these tests need the TLS cluster `make test` starts")
        });
        let (name, port) = spec.split_once(' ').expect("FAULT_PG is \"NAME PORT\"");
        let url = url::Url::parse(&pg_sh(&["url", name, port, "postgres"])).expect("url");
        let ca = PathBuf::from(pg_sh(&["ca", name, port]));
        Self {
            port: port.parse().expect("port"),
            password: url.password().expect("password").to_owned(),
            tls_dir: ca.parent().expect("the CA's directory").to_path_buf(),
        }
    }

    fn ca(&self) -> String {
        self.tls_dir.join("ca.crt").display().to_string()
    }

    fn url(&self, host: &str, port: u16, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{port}/{database}?{query}",
            self.password
        )
    }

    /// Verified TLS with the cluster's CA, `extra` appended.
    fn tls_url(&self, host: &str, port: u16, database: &str, extra: &str) -> String {
        let query = format!("sslmode=verify-full&sslrootcert={}{extra}", self.ca());
        self.url(host, port, database, &query)
    }

    /// A fresh migrated database, made over plain TCP to the cluster itself.
    async fn database(&self) -> String {
        let name = format!("d_{}", uuid::Uuid::new_v4().simple());
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
        name
    }
}

/// `scripts/direct-tls-proxy.py` as a child process, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proxy {
    fn start(cluster: &Cluster, flags: &[&str]) -> Self {
        // A port the system just handed out and took back: free unless something races for it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(repo().join("scripts/direct-tls-proxy.py"))
            .args(flags)
            .arg(port.to_string())
            .arg(cluster.port.to_string())
            .arg(cluster.tls_dir.join("server.crt"))
            .arg(cluster.tls_dir.join("server.key"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("scripts/direct-tls-proxy.py starts");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(HANG)
            .expect("the proxy says it is ready");
        assert_eq!(ready, "ready");
        Self {
            child,
            port,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the next connection's line from the proxy and returns it.
    fn next_line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("the proxy said nothing more after {:?}", self.seen));
        self.seen.push(line.clone());
        line
    }

    /// SIGTERM, then how it exited.
    fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(started.elapsed() < HANG, "the proxy ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn db(url: &str) -> Db {
    Db::new(url, None, 1, HANG).expect("a valid URL")
}

/// The first query on a fresh pool, so on a fresh connection; bounded by the pool's deadline
/// and, should that fail, by a second one.
async fn first_query(url: &str) -> Result<(), DbError> {
    let db = db(url);
    tokio::time::timeout(HANG + HANG, db.query("SELECT 1", &[]))
        .await
        .expect("the pool's own deadline")
        .map(drop)
}

/// What a connection attempt through shared's connector fails with, error sources included:
/// `Db` turns every such failure into `Unavailable` and logs the reason.
async fn connect_error(url: &str) -> String {
    let settings = shared::db::connection_settings(url, None).expect("a valid URL");
    let connector = MakeConnector::new(&Settings {
        root_cert: settings.tls.root_cert.clone(),
        verify_hostname: settings.tls.verify_hostname,
        direct: settings.pg.get_ssl_negotiation() == SslNegotiation::Direct,
    })
    .expect("connector");
    let error = match tokio::time::timeout(HANG, settings.pg.connect(connector))
        .await
        .expect("no hang")
    {
        Ok(_) => panic!("{url} connected"),
        Err(error) => error,
    };
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(" / {cause}"));
        source = cause.source();
    }
    text
}

/// A refusal: `Unavailable` (503 to the client) well within the hang deadline.
async fn assert_refused(url: &str) {
    let started = Instant::now();
    let result = first_query(url).await;
    assert!(
        matches!(result, Err(DbError::Unavailable)),
        "{result:?} for {url}"
    );
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
}

fn creds(email: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: STRONG_PASSWORD.to_owned(),
    }
}

#[tokio::test]
async fn a_direct_url_registers_and_logs_in_over_verified_direct_tls() {
    let c = Cluster::get();
    let name = c.database().await;
    let mut proxy = Proxy::start(&c, &[]);
    let url = c.tls_url("localhost", proxy.port, &name, "&sslnegotiation=direct");
    let config = common::config(&url, &[("DATABASE_TIMEOUT_MS", "5000")]);
    let state = AppState::new(config).expect("state");
    let email = unique_email();
    common::register(&state, creds(&email))
        .await
        .expect("register through direct TLS");
    // The proxy refuses anything but a TLS ClientHello as the first bytes.
    assert_eq!(proxy.next_line(), "direct TLSv1.3 alpn=postgresql");
    assert!(common::login(&state, creds(&email)).await.is_ok());
    // The proxy terminates TLS: the cluster sees its plain hop, which proves the path taken.
    let rows = state
        .db
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    assert!(!rows.first().is_some_and(|r| r.get::<_, bool>(0)));
}

#[tokio::test]
async fn channel_binding_cannot_be_required_through_a_terminating_proxy() {
    // The cluster never sees the client's TLS, so it offers plain SCRAM-SHA-256 only, and the
    // client must refuse to authenticate unbound. Against PostgreSQL 17 or Neon's proxy, which
    // terminate the client's TLS themselves, channel binding works under direct as it does
    // without it; the default (prefer) is what works here.
    let c = Cluster::get();
    let mut proxy = Proxy::start(&c, &[]);
    let url = c.tls_url(
        "localhost",
        proxy.port,
        "postgres",
        "&sslnegotiation=direct&channel_binding=require",
    );
    let error = connect_error(&url).await;
    assert!(error.contains("channel binding"), "{error}");
    assert_eq!(proxy.next_line(), "direct TLSv1.3 alpn=postgresql");
    assert_refused(&url).await;
}

#[tokio::test]
async fn without_direct_the_sslrequest_is_refused_by_a_direct_only_server_without_a_hang() {
    let c = Cluster::get();
    let mut proxy = Proxy::start(&c, &[]);
    let url = c.tls_url("localhost", proxy.port, "postgres", "");
    assert_refused(&url).await;
    assert!(
        proxy.next_line().contains("not a TLS ClientHello"),
        "{:?}",
        proxy.seen
    );
}

#[tokio::test]
async fn a_direct_client_refuses_a_tls_server_that_does_not_select_alpn_postgresql() {
    let c = Cluster::get();
    let mut proxy = Proxy::start(&c, &["--no-alpn"]);
    let url = c.tls_url(
        "localhost",
        proxy.port,
        "postgres",
        "&sslnegotiation=direct",
    );
    let started = Instant::now();
    let error = connect_error(&url).await;
    assert!(
        error.contains("the server did not accept the postgresql ALPN protocol"),
        "{error}"
    );
    assert!(started.elapsed() < HANG);
    // The handshake itself succeeded: the refusal is the connector's own check.
    assert_eq!(proxy.next_line(), "direct TLSv1.3 alpn=-");
    assert_refused(&url).await;
}

#[tokio::test]
async fn the_host_name_is_still_checked_under_direct() {
    let c = Cluster::get();
    let proxy = Proxy::start(&c, &[]);
    // The certificate names only "localhost".
    let url = c.tls_url(
        "127.0.0.1",
        proxy.port,
        "postgres",
        "&sslnegotiation=direct",
    );
    let error = connect_error(&url).await;
    assert!(error.contains("certificate verify failed"), "{error}");
    assert_refused(&url).await;
    // verify-ca checks the chain only, so the same address is fine there: the name was the reason.
    let url = c.url(
        "127.0.0.1",
        proxy.port,
        "postgres",
        &format!(
            "sslmode=verify-ca&sslrootcert={}&sslnegotiation=direct",
            c.ca()
        ),
    );
    first_query(&url).await.expect("verify-ca by address");
}

#[tokio::test]
async fn the_proxy_exits_cleanly_on_sigterm() {
    let c = Cluster::get();
    let proxy = Proxy::start(&c, &[]);
    let port = proxy.port;
    let status = proxy.terminate();
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// `Db::new` and a first query, each on a fresh pool (a cold start's first connection).
async fn connect_times(url: &str, runs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        first_query(url).await.expect("connects");
        times.push(started.elapsed());
    }
    times
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// What direct saves at connect: one round trip (SSLRequest and its one-byte answer) of the
/// seven a fresh connection makes (TCP, SSLRequest, TLS 1.3, startup, two SCRAM exchanges, the
/// query). On loopback a round trip is tens of microseconds, so the figures mostly show that
/// direct costs nothing; on Lambda to Neon each one is a network round trip.
///
/// In a debug build SCRAM's PBKDF2 (4096 rounds of unoptimized `sha2`) is about 90 ms of every
/// connection and hides everything else; to see the rest, give cargo
/// `--config 'profile.dev.package.sha2.opt-level=3'` and the same for `postgres-protocol`.
#[tokio::test]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn direct_tls_connect_time() {
    const RUNS: usize = 50;
    let c = Cluster::get();
    // Both negotiations through the same hop, so their difference is the negotiation's alone.
    let proxy = Proxy::start(&c, &["--accept-sslrequest"]);
    let cases = [
        (
            "cluster, SSLRequest",
            c.tls_url("localhost", c.port, "postgres", ""),
        ),
        (
            "proxy, direct",
            c.tls_url(
                "localhost",
                proxy.port,
                "postgres",
                "&sslnegotiation=direct",
            ),
        ),
        (
            "proxy, SSLRequest",
            c.tls_url("localhost", proxy.port, "postgres", ""),
        ),
    ];
    for (_, url) in &cases {
        connect_times(url, 5).await; // warm-up
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    // Interleaved and rotated, so that the machine's drift and the previous connection's
    // teardown fall on every case alike.
    for run in 0..RUNS {
        for i in (0..cases.len()).map(|k| (run + k) % cases.len()) {
            times[i].extend(connect_times(&cases[i].1, 1).await);
        }
    }
    println!("Db::new + first query on a fresh connection, median of {RUNS}:");
    for ((what, _), t) in cases.iter().zip(times) {
        println!("  {what:<20} {}", ms(median(t)));
    }
}
