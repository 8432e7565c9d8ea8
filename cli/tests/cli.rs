//! `authctl` as an operator runs it, against a fresh database on the real Postgres named by
//! `TEST_DATABASE_URL` (`make test` starts one).

use std::process::{Command, Output};

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("TEST_DATABASE_URL is not set: these tests need a real Postgres (run `make test`)")
    })
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("cli_{}", std::process::id()) + &format!("_{}", rand_suffix());
    psql(&admin, &format!("CREATE DATABASE {name}"));
    let mut url = url::Url::parse(&admin).expect("url");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn authctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_authctl"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("authctl runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn migrate_is_idempotent_and_status_and_verify_report_the_schema() {
    let url = fresh_database();
    let out = authctl(&url, &["status"]);
    assert!(
        out.status.success() && text(&out).contains("V1__create_users\tpending"),
        "{}",
        text(&out)
    );
    let out = authctl(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("table users: missing"));

    let out = authctl(&url, &["migrate"]);
    assert!(
        out.status.success() && text(&out).contains("applied V1__create_users"),
        "{}",
        text(&out)
    );
    let out = authctl(&url, &["migrate"]);
    assert!(
        out.status.success() && text(&out).contains("nothing to apply"),
        "{}",
        text(&out)
    );
    let out = authctl(&url, &["status"]);
    assert!(
        text(&out).contains("V1__create_users\tapplied 20"),
        "{}",
        text(&out)
    );
    let out = authctl(&url, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn verify_exits_non_zero_with_a_readable_difference() {
    let url = fresh_database();
    assert!(authctl(&url, &["migrate"]).status.success());
    psql(&url, "ALTER TABLE users DROP CONSTRAINT users_email_key");
    let out = authctl(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    assert!(
        report.contains("missing unique constraint on users(email)"),
        "{report}"
    );
    assert!(
        report.contains("missing valid unique index on users(email)"),
        "{report}"
    );
}

#[test]
fn an_unreachable_database_is_an_error_that_does_not_print_the_password() {
    let out = authctl(
        "postgres://admin:s3cret-pass@127.0.0.1:9/db?sslmode=disable",
        &["status"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    assert!(report.contains("could not connect"), "{report}");
    assert!(!report.contains("s3cret-pass"), "{report}");
}
