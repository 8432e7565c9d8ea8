//! What the functions log: one structured event per outcome, and never a password, hash,
//! token, secret or database URL, nor a whole email address.

mod common;

use common::{SECRET, STRONG_PASSWORD, fresh_state, unique_email};
use shared::auth::Credentials;
use std::{
    io::Write,
    sync::{Arc, Mutex},
};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
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

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn every_outcome_is_logged_once_without_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .init();

    let state = fresh_state(&[]).await;
    let email = unique_email();
    let local = email.split('@').next().expect("local part").to_owned();
    let user = common::register(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("register");
    let _ = common::register(&state, creds(&email, STRONG_PASSWORD)).await;
    let _ = common::register(&state, creds(&unique_email(), "password1234")).await;
    let token = common::login(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("login");
    let _ = common::login(&state, creds(&email, "a wrong password here")).await;
    let _ = common::login(&state, creds("nobody@example.com", STRONG_PASSWORD)).await;
    common::current_user(&state, &token.access.token)
        .await
        .expect("me");
    let _ = common::current_user(&state, "garbage").await;

    let hash = common::stored_hash(&state, user.id).await;
    let log = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let db_password = url::Url::parse(state.config.database_url.expose())
        .expect("url")
        .password()
        .map(str::to_owned);

    for (what, secret) in [
        ("password", STRONG_PASSWORD),
        ("weak password", "password1234"),
        ("token", token.access.token.as_str()),
        ("jwt secret", SECRET),
        ("hash", hash.as_str()),
        ("email local part", local.as_str()),
    ] {
        assert!(!log.contains(secret), "the log holds the {what}:\n{log}");
    }
    if let Some(p) = db_password {
        assert!(!log.contains(&p), "the log holds the database password");
    }
    assert!(!log.contains("$argon2"), "the log holds a hash");

    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |event: &str, reason: Option<&str>| {
        events
            .iter()
            .filter(|e| {
                e["fields"]["event"] == event && reason.is_none_or(|r| e["fields"]["reason"] == r)
            })
            .count()
    };
    assert_eq!(count("user.registered", None), 1);
    assert_eq!(count("register.rejected", Some("email_taken")), 1);
    assert_eq!(count("register.rejected", Some("weak_password")), 1);
    assert_eq!(count("login.succeeded", None), 1);
    assert_eq!(count("login.failed", Some("bad_password")), 1);
    assert_eq!(count("login.failed", Some("unknown_email")), 1);
    assert_eq!(count("token.rejected", Some("malformed")), 1);
    let registered = events
        .iter()
        .find(|e| e["fields"]["event"] == "user.registered")
        .expect("event");
    assert_eq!(registered["fields"]["user_id"], user.id.to_string());
    assert!(
        registered["fields"]["email"]
            .as_str()
            .is_some_and(|m| m.contains("***@example.com"))
    );
}
