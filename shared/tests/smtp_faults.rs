//! A mail server that is down, or that accepts connections and never answers, costs a request
//! no more than its usual time (forgot, resend) or `SMTP_TIMEOUT_MS` (register, reset, change),
//! and loses no message: it waits in the outbox, due for the mailer (docs/api.md "Mail").

mod common;

use common::{STRONG_PASSWORD, fresh_state, psql, unique_email};
use shared::{
    AppState,
    auth::{self, Credentials, MailAsk},
    origin::Origin,
};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The bound these tests put on a hang: generous, since a busy machine is slow, but far below
/// the minutes a request would wait on a silent server without its deadline.
const HANG_MARGIN: Duration = Duration::from_secs(2);

/// An SMTP server that accepts every connection and never says a word.
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("smtp://127.0.0.1:{port}")
}

/// A port where nothing listens.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("smtp://127.0.0.1:{port}")
}

async fn state_with(smtp_url: &str, smtp_timeout_ms: &str) -> AppState {
    fresh_state(&[
        ("SMTP_URL", smtp_url),
        ("SMTP_TIMEOUT_MS", smtp_timeout_ms),
        ("MAIL_ANSWER_MS", "300"),
    ])
    .await
}

/// (status, attempts, due now) of every outbox row, oldest first.
async fn outbox(state: &AppState) -> Vec<(String, i32, bool)> {
    psql(state)
        .await
        .query(
            "SELECT status, attempts, next_attempt_at <= now() + interval '1 second' \
             FROM outbox ORDER BY created_at",
            &[],
        )
        .await
        .expect("outbox")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn registered(state: &AppState) -> String {
    let email = unique_email();
    auth::register(
        state,
        Credentials {
            email: email.clone(),
            password: STRONG_PASSWORD.into(),
        },
        &Origin::default(),
    )
    .await
    .expect("register");
    email
}

#[tokio::test]
async fn a_silent_mail_server_holds_register_no_longer_than_the_smtp_timeout_and_the_mail_waits() {
    let state = state_with(&silent_server().await, "600").await;
    let started = Instant::now();
    registered(&state).await;
    let took = started.elapsed();
    assert!(
        took < state.config.mail.smtp_timeout + HANG_MARGIN,
        "register took {took:?}"
    );
    // The attempt timed out: the message is pending, due again for the mailer.
    assert_eq!(outbox(&state).await, [("pending".to_owned(), 1, true)]);
}

#[tokio::test]
async fn a_silent_mail_server_leaves_forgot_at_its_usual_time_and_the_reset_mail_queued() {
    // A delivery attempt may take 5 s, but forgot answers at 300 ms all the same.
    let state = state_with(&silent_server().await, "5000").await;
    let email = registered(&state).await;
    psql(&state)
        .await
        .execute("DELETE FROM outbox", &[])
        .await
        .expect("forget the verification mail");
    for address in [email.as_str(), "nobody@example.com"] {
        let started = tokio::time::Instant::now();
        auth::request_mail(
            &state,
            MailAsk::PasswordReset,
            address,
            &Origin::default(),
            started,
        )
        .await
        .expect("202");
        let took = started.elapsed();
        assert!(
            took >= state.config.mail.answer && took < state.config.mail.answer + HANG_MARGIN,
            "{address}: forgot took {took:?}"
        );
    }
    // Cut off at the answer's moment, the message waits for the mailer (leased, or released
    // if the attempt's own failure was recorded first), and only the account's message exists.
    let rows = outbox(&state).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("pending", 1));
}

#[tokio::test]
async fn a_mail_server_that_is_down_fails_no_request_and_the_mail_is_due_at_once() {
    let state = state_with(&closed_port().await, "600").await;
    let email = registered(&state).await;
    let started = tokio::time::Instant::now();
    auth::request_mail(
        &state,
        MailAsk::PasswordReset,
        &email,
        &Origin::default(),
        started,
    )
    .await
    .expect("202");
    assert!(started.elapsed() < state.config.mail.answer + HANG_MARGIN);
    // Both attempts failed fast: both messages wait, due for the next mailer run.
    assert_eq!(
        outbox(&state).await,
        [
            ("pending".to_owned(), 1, true),
            ("pending".to_owned(), 1, true)
        ]
    );
    let last_errors: Vec<Option<String>> = psql(&state)
        .await
        .query("SELECT last_error FROM outbox", &[])
        .await
        .expect("outbox")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for error in &last_errors {
        let error = error.as_deref().expect("the failure is recorded");
        assert!(
            !error.contains(&email) && !error.contains("127.0.0.1"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_recipient_the_mail_server_refuses_for_good_is_failed_at_once_not_retried() {
    // MailDev, like many servers, refuses (501) an address at the 254-character limit that
    // the contract accepts: no retry can change that answer.
    let state = fresh_state(&[("SMTP_URL", &common::required_env("TEST_SMTP_URL"))]).await;
    let domain = format!(
        "{}.{}.{}.com",
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(57)
    );
    let email = format!("{}@{domain}", "a".repeat(64));
    assert_eq!(email.len(), 254);
    auth::register(
        &state,
        Credentials {
            email,
            password: STRONG_PASSWORD.into(),
        },
        &Origin::default(),
    )
    .await
    .expect("register");
    let row = psql(&state)
        .await
        .query_one(
            "SELECT status, sealed IS NULL, last_error, \
                    (SELECT count(*) FROM auth_events WHERE event = 'mail.failed') \
             FROM outbox",
            &[],
        )
        .await
        .expect("the verification mail");
    let (status, body_gone, error, audited): (String, bool, Option<String>, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((status.as_str(), body_gone, audited), ("failed", true, 1));
    assert!(
        error.as_deref().is_some_and(|e| e.contains("501")),
        "{error:?}"
    );
}
