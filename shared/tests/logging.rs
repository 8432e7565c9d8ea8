//! What the functions log: one structured event per outcome, and never a password, hash,
//! token, secret or database URL, nor a whole email address.

mod common;

use common::{Captured, SECRET, STRONG_PASSWORD, fresh_state, unique_email};
use shared::auth::Credentials;

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn every_outcome_is_logged_once_without_secrets() {
    let captured = Captured::default();
    let _guard = captured.install(None, None);

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
    let log = captured.text();
    let db_password = common::database_url(&state).password().map(str::to_owned);

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
    let first = email.chars().next().expect("first character");
    assert_eq!(
        registered["fields"]["email"],
        format!("{first}***@example.com")
    );
}

/// The longest line any event may make: a masked email is at most 254 characters.
const MAX_LINE_CHARS: usize = 1024;

#[tokio::test]
async fn raw_email_input_never_reaches_the_log() {
    let captured = Captured::default();
    // TRACE: whatever the level, no event carries the raw input.
    let _guard = captured.install(Some("TRACE"), None);
    let state = fresh_state(&[]).await;
    let password_in_email = "bob@example.com Hunter2!";
    let huge_domain = format!("bob@{}.com", "d".repeat(16 * 1024));
    for email in [password_in_email, huge_domain.as_str()] {
        let _ = common::login(&state, creds(email, STRONG_PASSWORD)).await;
        let _ = common::register(&state, creds(email, STRONG_PASSWORD)).await;
    }
    let log = captured.text();
    assert!(
        !log.contains("Hunter2"),
        "the log holds the password:\n{log}"
    );
    assert!(!log.contains("ddddd"), "the log holds the raw domain");
    for line in log.lines() {
        assert!(
            line.chars().count() <= MAX_LINE_CHARS,
            "a {}-character log line",
            line.chars().count()
        );
    }
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let emails = |event: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["fields"]["event"] == event)
            .map(|e| e["fields"]["email"].as_str().unwrap_or("(none)").to_owned())
            .collect()
    };
    assert_eq!(emails("login.failed"), ["***", "***"]);
    assert_eq!(emails("register.rejected"), ["***", "***"]);
}

#[tokio::test]
async fn a_valid_email_is_logged_in_its_masked_normalized_form() {
    let captured = Captured::default();
    let _guard = captured.install(None, None);
    let state = fresh_state(&[]).await;
    let local = format!("user-{}", uuid::Uuid::new_v4().simple());
    let raw = format!("  {}@MÜNCHEN.de ", local.to_uppercase());
    let _ = common::login(&state, creds(&raw, STRONG_PASSWORD)).await;
    let log = captured.text();
    let failed: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["event"] == "login.failed")
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert_eq!(failed[0]["fields"]["reason"], "unknown_email");
    assert_eq!(failed[0]["fields"]["email"], "u***@xn--mnchen-3ya.de");
}

/// Emits what lambda_runtime emits at TRACE (the whole invocation event), the same below INFO
/// from each runtime target, a runtime INFO event, and the application's own TRACE event, under
/// the subscriber these settings build.
fn runtime_events_under(aws_lambda_log_level: Option<&str>, rust_log: Option<&str>) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        shared::http::log_subscriber(aws_lambda_log_level, rust_log, true, move || writer.clone());
    tracing::subscriber::with_default(subscriber, || {
        tracing::trace!(
            target: "lambda_runtime::layers::api_response",
            body = "EVENT-BODY",
            "raw JSON event received from Lambda"
        );
        tracing::debug!(target: "lambda_runtime", body = "EVENT-BODY");
        tracing::trace!(target: "lambda_runtime_api_client", body = "EVENT-BODY");
        tracing::debug!(target: "lambda_http::request", body = "EVENT-BODY");
        tracing::trace!(target: "aws_lambda_events::encodings", body = "EVENT-BODY");
        tracing::info!(target: "lambda_runtime", "RUNTIME-INFO");
        tracing::trace!(target: "shared::auth", "APP-TRACE");
    });
    captured.text()
}

#[test]
fn the_runtime_targets_stay_at_info_whatever_the_level() {
    // (AWS_LAMBDA_LOG_LEVEL, RUST_LOG, whether the application's TRACE is on)
    for (aws, rust_log, app_trace) in [
        (Some("TRACE"), None, true),
        (Some("TRACE"), Some("lambda_runtime=trace"), true),
        (None, Some("trace"), true),
        (None, Some("lambda_runtime=trace"), false),
        (
            None,
            Some("trace,lambda_runtime::layers::api_response=trace,lambda_http=trace"),
            true,
        ),
        (
            None,
            Some("info,lambda_runtime_api_client=trace,aws_lambda_events=trace,shared=trace"),
            true,
        ),
    ] {
        let log = runtime_events_under(aws, rust_log);
        let what = format!("AWS_LAMBDA_LOG_LEVEL={aws:?} RUST_LOG={rust_log:?}");
        assert!(
            !log.contains("EVENT-BODY"),
            "{what}: a runtime event below INFO got through:\n{log}"
        );
        assert!(
            log.contains("RUNTIME-INFO"),
            "{what}: the runtime's INFO was dropped"
        );
        assert_eq!(log.contains("APP-TRACE"), app_trace, "{what}:\n{log}");
    }
    // Unset, the level is INFO; FATAL, which tracing lacks, keeps errors only.
    let log = runtime_events_under(None, None);
    assert!(
        log.contains("RUNTIME-INFO") && !log.contains("APP-TRACE"),
        "{log}"
    );
    assert!(!runtime_events_under(Some("FATAL"), None).contains("RUNTIME-INFO"));
}
