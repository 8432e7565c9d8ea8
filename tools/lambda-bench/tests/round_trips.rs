//! The exact number of database round trips each route makes per request, counted by the
//! harness's proxy in front of Postgres: a change that adds a trip fails `make test`.
//!
//! Needs (scripts/round-trips.sh sets them): `TEST_DATABASE_URL`, a superuser URL of a running
//! cluster (the test makes, migrates and drops its own database there); `TEST_SMTP_URL` and
//! `TEST_MAILDEV_URL`, a MailDev's SMTP and web addresses; `ROUND_TRIPS_BIN_DIR`, the directory
//! of the function binaries (default: target/debug). Unset, the test fails: it never skips.

use lambda_bench::{
    Result,
    bench::{count_round_trips, function_env, without_mail_server},
    proxy::{CountingProxy, upstream_of},
    routes::{self, Setup},
};
use std::path::PathBuf;

/// Round trips per request, route by route, once the function is warm (its connection opened
/// at init), with mail on. Each route's work is one statement, the address window and the
/// audit row in it (store::Window); the second trips are the ones that cannot be folded in:
/// - login, change password and delete account run argon2 between reading the hash (with the
///   attempt counted) and their write;
/// - reset checks the new password against the link holder's address, and hashes it, between
///   reading the link and using it;
/// - every route that mails marks the message sent after the SMTP exchange (`mail_sent`):
///   marked before, a failed send would be lost; never marked, the mailer would send it again;
/// - the TOTP routes and login's second step check a code (or the password) between reading
///   the sealed secret, with the attempt counted, and their write: the secret is opened with a
///   key the database never sees.
///
/// Whoever changes a count changes it here, and says why in BENCHMARKS.md.
const EXPECTED: &[(&str, u64)] = &[
    ("POST /auth/register", 2),
    ("POST /auth/login", 2),
    ("GET /auth/me", 1),
    ("DELETE /auth/me", 2),
    ("POST /auth/refresh", 1),
    ("POST /auth/logout", 1),
    ("GET /.well-known/jwks.json", 0),
    ("GET /.well-known/openid-configuration", 0),
    ("GET /openapi.json", 0),
    ("GET /", 0),
    ("GET /assets/{file}", 0),
    ("POST /auth/email/verify", 1),
    ("POST /auth/email/verify/resend", 2),
    ("POST /auth/password/forgot", 2),
    ("POST /auth/password/reset", 3),
    ("POST /auth/password/change", 3),
    ("GET /auth/sessions", 1),
    ("DELETE /auth/sessions/{id}", 1),
    ("POST /auth/mfa/totp", 2),
    ("POST /auth/mfa/totp/confirm", 3),
    ("DELETE /auth/mfa/totp", 3),
    ("POST /auth/mfa/verify", 2),
    ("schedule prune", 1),
    // The claim, the sent mark, and the claim that finds nothing left.
    ("schedule mailer (one message pending)", 3),
];

/// Requests counted per route after the first (which may still warm something up).
const RUNS: usize = 3;

fn env(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{name} must be set (scripts/round-trips.sh sets it)").into())
}

/// A fresh database on the cluster of `admin_url`, migrated; its URL.
fn fresh_database(rt: &tokio::runtime::Runtime, admin_url: &str, name: &str) -> Result<String> {
    rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(admin_url)?;
        url.set_path(&format!("/{name}"));
        let (mut db, connection) =
            tokio_postgres::connect(url.as_str(), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        shared::schema::migrate(&mut db).await?;
        Ok(url.to_string())
    })
}

fn drop_database(rt: &tokio::runtime::Runtime, admin_url: &str, name: &str) {
    let dropped: Result<()> = rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        Ok(())
    });
    if let Err(error) = dropped {
        eprintln!("could not drop the test database {name}: {error}");
    }
}

#[test]
fn every_route_makes_exactly_its_round_trips() -> Result<()> {
    let admin_url = env("TEST_DATABASE_URL")?;
    let smtp_url = env("TEST_SMTP_URL")?;
    let maildev_url = env("TEST_MAILDEV_URL")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin_dir = std::env::var_os("ROUND_TRIPS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/debug"));
    let log_dir = root.join("target/round-trips");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join("functions.log");

    let functions = routes::functions(&root)?;
    routes::check_coverage(&functions)?;
    let routes = routes::routes_of(&functions);
    let missing: Vec<&str> = routes
        .iter()
        .map(|r| r.name)
        .filter(|name| !EXPECTED.iter().any(|(e, _)| e == name))
        .collect();
    assert!(
        missing.is_empty(),
        "no expected count in the test's table for: {}",
        missing.join(", ")
    );

    let rt = lambda_bench::tokio_runtime()?;
    let name = format!("round_trips_{}", lambda_bench::nonce());
    let database_url = fresh_database(&rt, &admin_url, &name)?;
    let outcome = (|| -> Result<Vec<String>> {
        let env = function_env(&database_url, &smtp_url);
        let proxy = CountingProxy::start(upstream_of(&database_url)?)?;
        let proxied = env.with_database(&proxy.url_for(&database_url)?);
        let mut setup = Setup::new(
            bin_dir.clone(),
            log.clone(),
            env.clone(),
            without_mail_server(&env)?,
            &maildev_url,
        );
        let mut failures = Vec::new();
        for route in &routes {
            let expected = EXPECTED
                .iter()
                .find(|(name, _)| *name == route.name)
                .map(|(_, n)| *n)
                .unwrap_or_default();
            let trips = count_round_trips(
                &bin_dir, &log, &mut setup, route, &proxy, None, &proxied, RUNS,
            )
            .map_err(|e| format!("{}: {e}", route.name))?;
            let observed: Vec<u64> = trips.per_request.iter().map(|t| t.queries).collect();
            println!(
                "{:<42} expected {expected}, observed {observed:?}",
                route.name
            );
            if observed.iter().any(|&n| n != expected) {
                failures.push(format!(
                    "{}: expected {expected} round trips per request, observed {observed:?}",
                    route.name
                ));
            }
            if trips.connects() != 0 {
                failures.push(format!(
                    "{}: expected no new connection per request once warm, observed {}",
                    route.name,
                    trips.connects()
                ));
            }
        }
        Ok(failures)
    })();
    drop_database(&rt, &admin_url, &name);
    let failures = outcome?;
    assert!(
        failures.is_empty(),
        "round trips per request differ from the table in tests/round_trips.rs:\n  {}",
        failures.join("\n  ")
    );
    Ok(())
}
