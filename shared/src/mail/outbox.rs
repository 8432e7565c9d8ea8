//! The outbox's delivery: a message is prepared (sealed) before the statement of its action
//! queues it, delivered at once by the request, and otherwise by the scheduled mailer, which
//! retries with backoff and gives up after [`MAX_ATTEMPTS`]. The SQL is in `store`.

use crate::{
    AppState,
    mail::{Envelope, Mailer, Notice},
    store::{self, Queued},
};
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// The longest wait between two attempts.
pub const MAX_BACKOFF_SECS: f64 = 3600.0;
/// Attempts after which a message is marked failed (`mail.failed`): with the default
/// `SMTP_TIMEOUT_MS`, about seven hours of retries (12 s doubling up to an hour).
pub const MAX_ATTEMPTS: u32 = 16;

/// The lease of a message someone is delivering, and the first retry's delay: twice the
/// longest delivery attempt (`SMTP_TIMEOUT_MS`), so a mailer never takes a message that is
/// still being sent, while a message whose first attempt met a mail server that was down for a
/// moment is retried within seconds. Each later retry waits twice as long.
pub fn lease(config: &crate::config::Config) -> chrono::Duration {
    chrono::Duration::from_std(config.mail.smtp_timeout * 2).unwrap_or(chrono::Duration::seconds(6))
}
/// How long one mailer run keeps claiming messages, within the function's timeout.
pub const RUN_BUDGET: Duration = Duration::from_secs(40);

/// A message ready to queue: its id and sealed body exist before the statement that writes it.
#[derive(Debug)]
pub struct Prepared {
    /// The message id, the seal's associated data.
    pub id: Uuid,
    /// What it says, to whom.
    pub envelope: Envelope,
    /// The sealed body.
    pub sealed: Vec<u8>,
}

impl Prepared {
    /// Seals `notice` to `to`.
    pub fn new(mailer: &Mailer, to: &str, notice: Notice) -> Self {
        let id = Uuid::new_v4();
        let envelope = Envelope {
            to: to.to_owned(),
            notice,
        };
        let sealed = mailer.seal(id, &envelope);
        Self {
            id,
            envelope,
            sealed,
        }
    }

    /// The row its action's statement writes: leased to the request, which delivers it next.
    pub fn queued(&self, state: &AppState, now: DateTime<Utc>) -> Queued<'_> {
        Queued {
            id: self.id,
            kind: self.envelope.notice.kind(),
            sealed: &self.sealed,
            lease_until: now + lease(&state.config),
        }
    }
}

/// The request's own delivery attempt of a message its statement queued, bounded by
/// `deadline`. Sent: marked sent. Refused for good (a recipient the server cannot take):
/// marked failed. Otherwise left queued and due at once for the mailer. A failure is logged
/// and changes no answer.
pub async fn deliver(state: &AppState, mailer: &Mailer, prepared: &Prepared, deadline: Duration) {
    let kind = prepared.envelope.notice.kind();
    match mailer.send(&prepared.envelope, deadline).await {
        Ok(()) => {
            tracing::info!(event = "mail.sent", message_id = %prepared.id, kind);
            if let Err(error) = store::mail_sent(&state.db, prepared.id, state.now()).await {
                tracing::warn!(message_id = %prepared.id, error = ?error, "sent mail not marked; the mailer may send it again");
            }
        }
        Err(error) => {
            // A refusal that no retry can change ends the message now; any other failure
            // leaves it due at once for the mailer.
            let last = !error.is_retryable();
            if last {
                tracing::error!(event = "mail.failed", message_id = %prepared.id, kind, %error);
            } else {
                tracing::warn!(event = "mail.deferred", message_id = %prepared.id, kind, %error);
            }
            let now = state.now();
            let reason = error.to_string();
            if let Err(error) =
                store::mail_failed(&state.db, prepared.id, &reason, last, Some(now), now).await
            {
                tracing::warn!(message_id = %prepared.id, error = ?error, "failed mail not recorded; the mailer takes it after its lease");
            }
        }
    }
}

/// What one mailer run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    /// Messages sent.
    pub sent: u32,
    /// Messages that failed this time and wait for a retry.
    pub deferred: u32,
    /// Messages given up (`mail.failed`).
    pub failed: u32,
}

/// One mailer run: claims due messages one at a time (a concurrent run skips what this one
/// holds) and delivers each, until none is due or [`RUN_BUDGET`] is spent.
pub async fn run(state: &AppState) -> Result<Delivered, crate::error::AuthError> {
    let mut done = Delivered::default();
    let Some(mailer) = state.mailer.as_ref() else {
        tracing::warn!(event = "mail.off", "SMTP_URL is not set: queued mail waits");
        return Ok(done);
    };
    let started = tokio::time::Instant::now();
    // A claim is taken only while its whole attempt (the send and its record) fits the budget,
    // so the function's own timeout never cuts a message off between sent and marked.
    let attempt = mailer.timeout() + state.config.db_timeout * 2;
    while started.elapsed() + attempt < RUN_BUDGET {
        let now = state.now();
        let base = lease(&state.config).as_seconds_f64();
        let Some(claimed) = store::mail_claim(&state.db, now, base, MAX_BACKOFF_SECS).await? else {
            break;
        };
        let last = claimed.attempts >= MAX_ATTEMPTS;
        let result = match mailer.open(claimed.id, &claimed.sealed) {
            Ok(envelope) => mailer.send(&envelope, mailer.timeout()).await,
            Err(error) => Err(error),
        };
        let now = state.now();
        match result {
            Ok(()) => {
                tracing::info!(event = "mail.sent", message_id = %claimed.id, kind = claimed.kind, attempts = claimed.attempts);
                store::mail_sent(&state.db, claimed.id, now).await?;
                done.sent += 1;
            }
            Err(error) => {
                let reason = error.to_string();
                let last = last || !error.is_retryable();
                if last {
                    tracing::error!(event = "mail.failed", message_id = %claimed.id, kind = claimed.kind, attempts = claimed.attempts, error = %reason);
                    done.failed += 1;
                } else {
                    tracing::warn!(event = "mail.deferred", message_id = %claimed.id, kind = claimed.kind, attempts = claimed.attempts, error = %reason);
                    done.deferred += 1;
                }
                store::mail_failed(&state.db, claimed.id, &reason, last, None, now).await?;
            }
        }
    }
    tracing::info!(
        event = "mailer.finished",
        sent = done.sent,
        deferred = done.deferred,
        failed = done.failed
    );
    Ok(done)
}
