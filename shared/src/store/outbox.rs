//! The SQL of the outbox's delivery (migrations/V4): the mailer's claim, and a message marked
//! sent or failed, with its audit row, in one statement each.

use crate::db::{Db, DbError};
use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

/// A due message, claimed for one delivery attempt.
#[derive(Clone)]
pub struct Claimed {
    /// The message id.
    pub id: Uuid,
    /// The sealed body.
    pub sealed: Vec<u8>,
    /// Delivery attempts so far, this one included.
    pub attempts: u32,
    /// What it is.
    pub kind: String,
    /// Its recipient's account, if it still exists.
    pub user_id: Option<Uuid>,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("attempts", &self.attempts)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Claims the next due message, skipping any another mailer holds, and moves its lease past
/// this attempt: `base_secs` doubled per earlier attempt, at most `max_secs`.
pub async fn mail_claim(
    db: &Db,
    now: DateTime<Utc>,
    base_secs: f64,
    max_secs: f64,
) -> Result<Option<Claimed>, DbError> {
    // Never retried: a claim whose answer was lost holds its message until the lease ends,
    // and a retry would claim a second one.
    let rows = db
        .query_once(
            "SELECT id, sealed, attempts, kind, user_id FROM auth_mail_claim($1, $2, $3)",
            &[
                (&now, Type::TIMESTAMPTZ),
                (&base_secs, Type::FLOAT8),
                (&max_secs, Type::FLOAT8),
            ],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let attempts: i32 = row.try_get("attempts").map_err(DbError::Query)?;
    Ok(Some(Claimed {
        id: row.try_get("id").map_err(DbError::Query)?,
        sealed: row.try_get("sealed").map_err(DbError::Query)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        kind: row.try_get("kind").map_err(DbError::Query)?,
        user_id: row.try_get("user_id").map_err(DbError::Query)?,
    }))
}

/// A message was delivered: its body is deleted, the audit row written. Returns whether it was
/// still pending (a message finished by someone else is left alone).
pub async fn mail_sent(db: &Db, id: Uuid, now: DateTime<Utc>) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "WITH o AS (UPDATE outbox SET status = 'sent', sealed = NULL, finished_at = $2, last_error = NULL \
                        WHERE id = $1 AND status = 'pending' RETURNING user_id, kind, attempts), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, reason) \
                        SELECT $2, 'mail.sent', user_id, kind FROM o) \
             SELECT EXISTS (SELECT 1 FROM o) AS marked",
            &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(DbError::NoRow("mail_sent"))?;
    row.try_get("marked").map_err(DbError::Query)
}

/// A delivery attempt failed with `error` (a short reason, never a secret). With `last`, the
/// message is marked failed for good: its body is deleted and `mail.failed` audited. Otherwise
/// it stays queued, due at `retry_at` when given (a request's own attempt: the next mailer run
/// may take it at once), else when its claim's lease ends.
pub async fn mail_failed(
    db: &Db,
    id: Uuid,
    error: &str,
    last: bool,
    retry_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    db.query(
        "WITH o AS (UPDATE outbox SET last_error = $2, \
                        status = CASE WHEN $3 THEN 'failed' ELSE status END, \
                        sealed = CASE WHEN $3 THEN NULL ELSE sealed END, \
                        finished_at = CASE WHEN $3 THEN $4 ELSE finished_at END, \
                        next_attempt_at = coalesce($5, next_attempt_at) \
                    WHERE id = $1 AND status = 'pending' RETURNING user_id, kind) \
         INSERT INTO auth_events (occurred_at, event, user_id, reason) \
         SELECT $4, 'mail.failed', user_id, kind FROM o WHERE $3 RETURNING 1",
        &[
            (&id, Type::UUID),
            (&error, Type::TEXT),
            (&last, Type::BOOL),
            (&now, Type::TIMESTAMPTZ),
            (&retry_at, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}
