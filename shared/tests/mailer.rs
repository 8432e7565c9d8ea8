//! The outbox's delivery against a real Postgres and a real MailDev (`TEST_SMTP_URL`,
//! `TEST_MAILDEV_URL`; `make test` starts one): the mailer delivers queued mail once and deletes
//! its body, two mailers at once never send a message twice, and a mail server out of reach
//! defers a message with backoff until it is marked failed. Messages are queued by a state
//! whose own delivery attempt fails at once (nothing listens on its SMTP port), and made due
//! by a hand-set clock instead of waiting out leases.
//!
//! Without the two variables the tests fail, never skip.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{
    CLOSED_SMTP, STRONG_PASSWORD, advance, fresh_state, hand_clock, maildev_get, newest_link, psql,
    required_env, unique_email,
};
use shared::{
    AppState,
    auth::{self, Credentials},
    mail::outbox::{self, Delivered},
    origin::Origin,
    store::User,
};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

type Clock = Arc<Mutex<DateTime<Utc>>>;

/// A fresh database and a state whose every delivery fails at once: what it queues stays queued.
async fn queuing() -> AppState {
    fresh_state(&[("SMTP_URL", CLOSED_SMTP), ("SMTP_TIMEOUT_MS", "1000")]).await
}

/// A mailer over the same database delivering to MailDev, its clock past every lease the
/// queuing requests took.
fn delivering(queued_by: &AppState) -> (AppState, Clock) {
    let url = common::database_url(queued_by).to_string();
    let smtp = required_env("TEST_SMTP_URL");
    required_env("TEST_MAILDEV_URL");
    let mut state = AppState::new(common::config(&url, &[("SMTP_URL", &smtp)])).expect("state");
    let clock = hand_clock(&mut state);
    advance(
        &clock,
        outbox::lease(&queued_by.config) + Duration::seconds(1),
    );
    (state, clock)
}

async fn register(state: &AppState) -> (String, User) {
    let email = unique_email();
    let credentials = Credentials {
        email: email.clone(),
        password: STRONG_PASSWORD.to_owned(),
    };
    let user = auth::register(state, credentials, &Origin::default())
        .await
        .expect("register");
    (email, user)
}

/// The messages MailDev holds now for `address`.
async fn inbox_now(address: &str) -> Vec<serde_json::Value> {
    let all: serde_json::Value =
        serde_json::from_str(&maildev_get("/api/email").await).expect("JSON");
    all.as_array()
        .expect("a list of messages")
        .iter()
        .filter(|m| {
            m["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|t| t["address"] == address))
        })
        .cloned()
        .collect()
}

/// The messages MailDev holds for `address` once it holds any, waiting (bounded: a hang is
/// what this guards against, not speed). Called after the sends finished, so a second copy,
/// had there been one, is among them.
async fn inbox(address: &str) -> Vec<serde_json::Value> {
    let started = std::time::Instant::now();
    loop {
        let mine = inbox_now(address).await;
        if !mine.is_empty() || started.elapsed() > std::time::Duration::from_secs(10) {
            return mine;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An outbox row as the tests look at it.
#[derive(Debug)]
struct Row {
    status: String,
    has_body: bool,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    finished: bool,
    last_error: Option<String>,
}

async fn message_of(state: &AppState, user: Uuid) -> Row {
    let row = psql(state)
        .await
        .query_one(
            "SELECT status, sealed IS NOT NULL, attempts, next_attempt_at, finished_at IS NOT NULL, \
                    last_error FROM outbox WHERE user_id = $1",
            &[&user],
        )
        .await
        .expect("the user's one message");
    Row {
        status: row.get(0),
        has_body: row.get(1),
        attempts: row.get(2),
        next_attempt_at: row.get(3),
        finished: row.get(4),
        last_error: row.get(5),
    }
}

async fn audited(state: &AppState, event: &str, user: Uuid) -> i64 {
    psql(state)
        .await
        .query_one(
            "SELECT count(*) FROM auth_events WHERE event = $1 AND user_id = $2",
            &[&event, &user],
        )
        .await
        .expect("count")
        .get(0)
}

fn now_of(clock: &Clock) -> DateTime<Utc> {
    *clock.lock().expect("clock")
}

#[tokio::test]
async fn a_registrations_mail_is_delivered_by_the_request_itself() {
    let smtp = required_env("TEST_SMTP_URL");
    let state = fresh_state(&[("SMTP_URL", &smtp)]).await;
    let (email, user) = register(&state).await;
    let row = message_of(&state, user.id).await;
    assert_eq!(row.status, "sent");
    assert!(!row.has_body && row.finished);
    assert_eq!(inbox(&email).await.len(), 1);
    assert_eq!(audited(&state, "mail.sent", user.id).await, 1);
}

#[tokio::test]
async fn a_queued_message_is_delivered_by_the_mailer_and_its_body_deleted() {
    let queue = queuing().await;
    let (email, user) = register(&queue).await;
    let queued = message_of(&queue, user.id).await;
    assert_eq!((queued.status.as_str(), queued.has_body), ("pending", true));
    let mailer = queue.mailer.as_ref().expect("mail on");
    let token = newest_link(&psql(&queue).await, mailer, &email, "verify_email").await;
    let (deliver, _) = delivering(&queue);
    assert_eq!(
        outbox::run(&deliver).await.expect("run"),
        Delivered {
            sent: 1,
            deferred: 0,
            failed: 0
        }
    );
    let row = message_of(&queue, user.id).await;
    assert_eq!(row.status, "sent");
    assert!(!row.has_body, "a delivered message's body is deleted");
    assert!(row.finished);
    assert_eq!(audited(&queue, "mail.sent", user.id).await, 1);
    let messages = inbox(&email).await;
    assert_eq!(messages.len(), 1);
    let text = messages[0]["text"].as_str().expect("a text part");
    assert!(
        text.contains(&format!("#token={token}")),
        "the sealed link token arrives in the fragment: {text}"
    );
    assert_eq!(
        outbox::run(&deliver).await.expect("run"),
        Delivered::default(),
        "nothing is left to send"
    );
    assert_eq!(
        inbox_now(&email).await.len(),
        1,
        "and nothing was sent twice"
    );
}

#[tokio::test]
async fn two_mailers_at_once_deliver_each_message_exactly_once() {
    const N: usize = 20;
    let queue = queuing().await;
    let mut recipients = Vec::new();
    for _ in 0..N {
        recipients.push(register(&queue).await);
    }
    let (one, _) = delivering(&queue);
    let (two, _) = delivering(&queue);
    let (a, b) = tokio::join!(outbox::run(&one), outbox::run(&two));
    let (a, b) = (a.expect("run"), b.expect("run"));
    assert_eq!(a.sent + b.sent, N as u32, "{a:?} {b:?}");
    assert_eq!(a.deferred + b.deferred + a.failed + b.failed, 0);
    for (email, user) in &recipients {
        assert_eq!(message_of(&queue, user.id).await.status, "sent");
        assert_eq!(audited(&queue, "mail.sent", user.id).await, 1);
        assert_eq!(inbox(email).await.len(), 1, "{email} got one copy");
    }
}

#[tokio::test]
async fn a_mail_server_out_of_reach_defers_the_message_with_backoff_then_fails_it() {
    let mut state = queuing().await;
    let clock = hand_clock(&mut state);
    let (_, user) = register(&state).await;
    let queued = message_of(&state, user.id).await;
    assert_eq!(queued.attempts, 1, "the request's own attempt");
    assert!(queued.has_body && queued.last_error.is_some());
    let base = outbox::lease(&state.config);
    advance(&clock, base);
    for attempt in 2..outbox::MAX_ATTEMPTS {
        let now = now_of(&clock);
        assert_eq!(
            outbox::run(&state).await.expect("run"),
            Delivered {
                sent: 0,
                deferred: 1,
                failed: 0
            },
            "attempt {attempt}"
        );
        let row = message_of(&state, user.id).await;
        assert_eq!(row.attempts, attempt as i32);
        assert_eq!(row.status, "pending");
        assert!(row.has_body && !row.finished);
        let reason = row.last_error.expect("a reason");
        assert!(!reason.contains("127.0.0.1"), "no URL in {reason:?}");
        // Doubling from the lease, at most the longest backoff.
        let wait =
            (base.as_seconds_f64() * 2f64.powi(attempt as i32 - 1)).min(outbox::MAX_BACKOFF_SECS);
        let expected = now + Duration::milliseconds((wait * 1000.0) as i64);
        assert!(
            (row.next_attempt_at - expected).num_milliseconds().abs() <= 1,
            "attempt {attempt}: next at {} instead of {expected}",
            row.next_attempt_at
        );
        assert_eq!(
            outbox::run(&state).await.expect("run"),
            Delivered::default(),
            "not due before its backoff ends"
        );
        advance(&clock, row.next_attempt_at - now);
    }
    assert_eq!(
        outbox::run(&state).await.expect("run"),
        Delivered {
            sent: 0,
            deferred: 0,
            failed: 1
        }
    );
    let row = message_of(&state, user.id).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, outbox::MAX_ATTEMPTS as i32);
    assert!(!row.has_body, "a failed message's body is deleted");
    assert!(row.finished);
    assert_eq!(audited(&state, "mail.failed", user.id).await, 1);
    advance(&clock, Duration::days(1));
    assert_eq!(
        outbox::run(&state).await.expect("run"),
        Delivered::default()
    );
}

/// An SMTP server that accepts every connection and never says a word.
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("smtp://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_message_its_request_is_still_delivering_is_left_to_it_then_released_to_the_mailer() {
    let silent = silent_server().await;
    let mut queue = fresh_state(&[("SMTP_URL", &silent), ("SMTP_TIMEOUT_MS", "3000")]).await;
    let queue_clock = hand_clock(&mut queue);
    let lease = outbox::lease(&queue.config);
    let (deliver, clock) = delivering(&queue);
    *clock.lock().expect("clock") = now_of(&queue_clock) + lease - Duration::milliseconds(1);
    // While the registration waits on the silent server, a mailer run finds nothing due.
    let ((email, user), during) = tokio::join!(register(&queue), async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        outbox::run(&deliver).await.expect("run")
    });
    assert_eq!(
        during,
        Delivered::default(),
        "leased to the request that is sending it"
    );
    // Its attempt over, the request released the message at once.
    let row = message_of(&queue, user.id).await;
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 1));
    assert!(row.next_attempt_at <= now_of(&queue_clock));
    assert_eq!(
        outbox::run(&deliver).await.expect("run"),
        Delivered {
            sent: 1,
            deferred: 0,
            failed: 0
        }
    );
    let messages = inbox(&email).await;
    assert_eq!(messages.len(), 1);
    let subject = messages[0]["subject"].as_str().expect("a subject");
    assert!(subject.contains("confirm your email address"), "{subject}");
}

#[tokio::test]
async fn a_body_that_does_not_open_fails_at_once_and_is_never_sent() {
    let queue = queuing().await;
    let (first, one) = register(&queue).await;
    let (second, two) = register(&queue).await;
    // Swapped bodies: each is sealed to its own row id, so neither opens in the other row.
    psql(&queue)
        .await
        .execute(
            "UPDATE outbox o SET sealed = p.sealed FROM outbox p \
             WHERE o.user_id IN ($1, $2) AND p.user_id IN ($1, $2) AND p.id <> o.id",
            &[&one.id, &two.id],
        )
        .await
        .expect("swap");
    let (deliver, _) = delivering(&queue);
    assert_eq!(
        outbox::run(&deliver).await.expect("run"),
        Delivered {
            sent: 0,
            deferred: 0,
            failed: 2
        }
    );
    for (email, user) in [(&first, &one), (&second, &two)] {
        let row = message_of(&queue, user.id).await;
        assert_eq!((row.status.as_str(), row.attempts), ("failed", 2));
        assert!(!row.has_body && row.finished);
        assert_eq!(audited(&queue, "mail.failed", user.id).await, 1);
        assert!(inbox_now(email).await.is_empty(), "nothing sent to {email}");
    }
}
