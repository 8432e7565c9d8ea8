//! The SQL of the account routes: link tokens, requested mails, password checks of a signed-in
//! user, change, reset, deletion and the sessions list (migrations/V4).

use super::{
    Attempt, Limited, LoginLimits, NewLink, Queued, User, Window, attempt_from, counted, int,
    user_from, windowed,
};
use crate::token::Factors;
use crate::{
    db::{Db, DbError},
    email::Email,
    origin::Origin,
};
use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

/// What a link token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    /// Proves an email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
}

impl LinkPurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkPurpose::VerifyEmail => "verify_email",
            LinkPurpose::ResetPassword => "reset_password",
        }
    }
}

/// Why a link token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Unknown, used, replaced, or of another purpose.
    Invalid,
    /// Known but past its lifetime.
    Expired,
}

fn link_refusal(state: &str) -> Result<LinkRefusal, DbError> {
    match state {
        "invalid" => Ok(LinkRefusal::Invalid),
        "expired" => Ok(LinkRefusal::Expired),
        _ => Err(DbError::NoRow("link: unknown state")),
    }
}

/// What a requested mail (forgot, resend) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailRequest {
    /// The account qualified: the link and the message were stored.
    Queued(Uuid),
    /// Counted, but no account qualified: nothing was stored.
    Accepted,
    /// Over the recipient's limits: retry after this many seconds.
    Limited(u64),
}

/// Limits of requested mails per recipient.
#[derive(Debug, Clone, Copy)]
pub struct MailLimits {
    /// The shortest gap between two, in seconds.
    pub interval_secs: f64,
    /// At most this many per hour.
    pub per_hour: u32,
}

/// Counts a requested mail against its recipient's limits and, when the account with `email`
/// qualifies for `purpose`, stores `link` and queues `message` (see `auth_mail_request`).
#[allow(clippy::too_many_arguments)]
pub async fn mail_request(
    db: &Db,
    window: &Window<'_>,
    purpose: LinkPurpose,
    recipient: &[u8],
    email: Option<&Email>,
    link: NewLink<'_>,
    message: Queued<'_>,
    limits: MailLimits,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Result<MailRequest, Limited>, DbError> {
    let row = db
        .query_opt(
            windowed!(
                " SELECT w.wait, m.outcome, m.retry_after_secs, m.user_id FROM w LEFT JOIN LATERAL \
                      (SELECT * FROM auth_mail_request($7, $8, $9, $10, $11, $12, $13, $14, $15, \
                                                       make_interval(secs => $16), $17, $18, $19, $20) \
                       WHERE w.wait IS NULL OFFSET 0) m ON true"
            ),
            &window.with(&[
                (&purpose.as_str(), Type::TEXT),
                (&recipient, Type::BYTEA),
                (&email.map(Email::as_str), Type::TEXT),
                (&link.hash, Type::BYTEA),
                (&link.expires_at, Type::TIMESTAMPTZ),
                (&message.id, Type::UUID),
                (&message.kind, Type::TEXT),
                (&message.sealed, Type::BYTEA),
                (&message.lease_until, Type::TIMESTAMPTZ),
                (&limits.interval_secs, Type::FLOAT8),
                (&int(limits.per_hour), Type::INT4),
                (&now, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ]),
        )
        .await?
        .ok_or(DbError::NoRow("mail_request"))?;
    if let Err(limited) = counted(&row)? {
        return Ok(Err(limited));
    }
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    Ok(Ok(match outcome.as_str() {
        "queued" => MailRequest::Queued(
            row.try_get::<_, Option<Uuid>>("user_id")
                .map_err(DbError::Query)?
                .ok_or(DbError::NoRow("mail_request: no user"))?,
        ),
        "accepted" => MailRequest::Accepted,
        "limited" => {
            let wait: i32 = row.try_get("retry_after_secs").map_err(DbError::Query)?;
            MailRequest::Limited(u64::try_from(wait.max(1)).unwrap_or(1))
        }
        _ => return Err(DbError::NoRow("mail_request: unknown outcome")),
    }))
}

/// A link token that may be used: its user and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHolder {
    /// The user.
    pub user_id: Uuid,
    /// The user's normalized address.
    pub email: String,
}

/// How a link token stands, without using it.
pub async fn link_state(
    db: &Db,
    window: &Window<'_>,
    hash: &[u8],
    purpose: LinkPurpose,
    now: DateTime<Utc>,
) -> Result<Result<Result<LinkHolder, LinkRefusal>, Limited>, DbError> {
    let row = db
        .query_opt(
            windowed!(
                " SELECT w.wait, k.state, k.user_id, k.email FROM w LEFT JOIN LATERAL \
                      (SELECT * FROM auth_link_state($7, $8, $9) WHERE w.wait IS NULL OFFSET 0) k ON true"
            ),
            &window.with(&[
                (&hash, Type::BYTEA),
                (&purpose.as_str(), Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
            ]),
        )
        .await?
        .ok_or(DbError::NoRow("link_state"))?;
    if let Err(limited) = counted(&row)? {
        return Ok(Err(limited));
    }
    let state: String = row.try_get("state").map_err(DbError::Query)?;
    if state != "valid" {
        return Ok(Ok(Err(link_refusal(&state)?)));
    }
    Ok(Ok(Ok(LinkHolder {
        user_id: row.try_get("user_id").map_err(DbError::Query)?,
        email: row.try_get("email").map_err(DbError::Query)?,
    })))
}

/// Uses a verification link: the address is proven; the audit row is written.
pub async fn verify_email(
    db: &Db,
    window: &Window<'_>,
    hash: &[u8],
    now: DateTime<Utc>,
    request: Uuid,
    origin: &Origin,
) -> Result<Result<Result<User, LinkRefusal>, Limited>, DbError> {
    let row = db
        .query_opt(
            windowed!(
                " SELECT w.wait, v.state, v.id, v.email, v.is_active, v.created_at, v.email_verified, \
                         (SELECT x.mfa_enabled_at IS NOT NULL FROM users x WHERE x.id = v.id) AS mfa_enabled \
                  FROM w LEFT JOIN LATERAL \
                       (SELECT * FROM auth_verify_email($7, $8, $9, $10, $11) WHERE w.wait IS NULL OFFSET 0) v \
                  ON true"
            ),
            &window.with(&[
                (&hash, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&request, Type::UUID),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ]),
        )
        .await?
        .ok_or(DbError::NoRow("verify_email"))?;
    if let Err(limited) = counted(&row)? {
        return Ok(Err(limited));
    }
    let state: String = row.try_get("state").map_err(DbError::Query)?;
    if state != "valid" {
        return Ok(Ok(Err(link_refusal(&state)?)));
    }
    Ok(Ok(Ok(user_from(&row)?)))
}

/// Uses a reset link: the new hash, every session ended, the backoffs lifted, the address
/// proven, the notice queued (when mail is on), the audit row (see `auth_reset_password`).
#[allow(clippy::too_many_arguments)]
pub async fn reset_password(
    db: &Db,
    hash: &[u8],
    new_hash: &str,
    account: &[u8],
    now: DateTime<Utc>,
    request: Uuid,
    notice: Option<Queued<'_>>,
    origin: &Origin,
) -> Result<Result<Uuid, LinkRefusal>, DbError> {
    let row = db
        .query_opt(
            "SELECT state, user_id FROM auth_reset_password($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                (&hash, Type::BYTEA),
                (&new_hash, Type::TEXT),
                (&account, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&request, Type::UUID),
                (&notice.map(|q| q.id), Type::UUID),
                (&notice.map(|q| q.kind), Type::TEXT),
                (&notice.map(|q| q.sealed), Type::BYTEA),
                (&notice.map(|q| q.lease_until), Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("reset_password"))?;
    let state: String = row.try_get("state").map_err(DbError::Query)?;
    if state != "valid" {
        return Ok(Err(link_refusal(&state)?));
    }
    row.try_get::<_, Option<Uuid>>("user_id")
        .map_err(DbError::Query)?
        .map(Ok)
        .ok_or(DbError::NoRow("reset_password: no user"))
}

/// Why a signed-in user's token no longer allows a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No such user.
    UserGone,
    /// The user is disabled.
    UserInactive,
    /// The token's session ended.
    SessionEnded,
}

impl Unauthorized {
    /// The reason as the audit log names it.
    pub fn reason(self) -> &'static str {
        match self {
            Unauthorized::UserGone => "user_gone",
            Unauthorized::UserInactive => "user_inactive",
            Unauthorized::SessionEnded => "session_ended",
        }
    }
}

/// A password check of a signed-in user, counted against the account's backoffs.
#[derive(Clone)]
pub struct Reauth {
    /// How the attempt stood with the limits.
    pub attempt: Attempt,
    /// The user's normalized address.
    pub email: String,
    /// The stored argon2id PHC string.
    pub hashed_password: String,
}

impl std::fmt::Debug for Reauth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reauth")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Checks the token's session and user, and counts a password check against the account's
/// backoffs like a login attempt (see `auth_reauth_attempt`).
#[allow(clippy::too_many_arguments)]
pub async fn reauth_attempt(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
    idle_cutoff: DateTime<Utc>,
    network: &str,
    attempt: Uuid,
    limits: LoginLimits,
) -> Result<Result<Reauth, Unauthorized>, DbError> {
    let row = db
        .query_opt(
            "SELECT state, outcome, retry_until, email, hashed_password \
             FROM auth_reauth_attempt($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&now, Type::TIMESTAMPTZ),
                (&idle_cutoff, Type::TIMESTAMPTZ),
                (&network, Type::TEXT),
                (&attempt, Type::UUID),
                (&int(limits.network_after), Type::INT4),
                (&int(limits.account_after), Type::INT4),
                (&int(limits.lock_after), Type::INT4),
                (&limits.max_secs, Type::FLOAT8),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("reauth_attempt"))?;
    let state: String = row.try_get("state").map_err(DbError::Query)?;
    match state.as_str() {
        "live" => {}
        "user_gone" => return Ok(Err(Unauthorized::UserGone)),
        "user_inactive" => return Ok(Err(Unauthorized::UserInactive)),
        "session_ended" => return Ok(Err(Unauthorized::SessionEnded)),
        _ => return Err(DbError::NoRow("reauth_attempt: unknown state")),
    }
    let attempt = attempt_from(&row, "reauth_attempt: unknown outcome")?;
    Ok(Ok(Reauth {
        attempt,
        email: row.try_get("email").map_err(DbError::Query)?,
        hashed_password: row.try_get("hashed_password").map_err(DbError::Query)?,
    }))
}

/// Forgets the counted attempts of an account from one network and account-wide: a right
/// password whose request failed later (a new password breaking the rules).
pub async fn clear_backoff(db: &Db, account: &[u8], network: &str) -> Result<(), DbError> {
    db.query(
        "DELETE FROM login_throttle WHERE account = $1 AND network IN ('*', $2) RETURNING 1",
        &[(&account, Type::BYTEA), (&network, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Changes a signed-in user's password while its hash is still `old_hash`; returns whether it
/// changed (see `auth_change_password`).
#[allow(clippy::too_many_arguments)]
pub async fn change_password(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    old_hash: &str,
    new_hash: &str,
    account: &[u8],
    now: DateTime<Utc>,
    request: Uuid,
    notice: Option<Queued<'_>>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "SELECT auth_change_password($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) AS outcome",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&old_hash, Type::TEXT),
                (&new_hash, Type::TEXT),
                (&account, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&request, Type::UUID),
                (&notice.map(|q| q.id), Type::UUID),
                (&notice.map(|q| q.kind), Type::TEXT),
                (&notice.map(|q| q.sealed), Type::BYTEA),
                (&notice.map(|q| q.lease_until), Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("change_password"))?;
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    Ok(outcome == "changed")
}

/// Deletes a signed-in user while its hash is still `hash`; returns whether it is gone.
#[allow(clippy::too_many_arguments)]
pub async fn delete_user(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    hash: &str,
    account: &[u8],
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "SELECT auth_delete_user($1, $2, $3, $4, $5, $6, $7) AS deleted",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&hash, Type::TEXT),
                (&account, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("delete_user"))?;
    row.try_get("deleted").map_err(DbError::Query)
}

/// A live session as its user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub id: Uuid,
    /// The login.
    pub created_at: DateTime<Utc>,
    /// The login or the last refresh.
    pub last_used_at: DateTime<Utc>,
    /// The earlier of the idle and the absolute limit.
    pub expires_at: DateTime<Utc>,
    /// The login's user agent.
    pub user_agent: Option<String>,
    /// The login's source address.
    pub source_ip: Option<String>,
    /// Whether it is the caller's.
    pub current: bool,
    /// How it was established (its `aal`).
    pub factors: Factors,
}

/// The user's live sessions, newest first, if the caller's session is one of them (else
/// empty: the caller is not signed in).
pub async fn live_sessions(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
    idle_secs: f64,
) -> Result<Vec<SessionInfo>, DbError> {
    let rows = db
        .query(
            "WITH live AS (SELECT s.* FROM sessions s JOIN users u ON u.id = s.user_id AND u.is_active \
                           WHERE s.user_id = $1 AND s.ended_at IS NULL AND s.expires_at > $3 \
                             AND s.last_used_at > $3 - make_interval(secs => $4)) \
             SELECT id, created_at, last_used_at, \
                    least(expires_at, last_used_at + make_interval(secs => $4)) AS expires_at, \
                    user_agent, source_ip, id = $2 AS current, amr \
             FROM live WHERE EXISTS (SELECT 1 FROM live WHERE id = $2) \
             ORDER BY created_at DESC, id",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&now, Type::TIMESTAMPTZ),
                (&idle_secs, Type::FLOAT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SessionInfo {
                id: r.try_get("id").map_err(DbError::Query)?,
                created_at: r.try_get("created_at").map_err(DbError::Query)?,
                last_used_at: r.try_get("last_used_at").map_err(DbError::Query)?,
                expires_at: r.try_get("expires_at").map_err(DbError::Query)?,
                user_agent: r.try_get("user_agent").map_err(DbError::Query)?,
                source_ip: r.try_get("source_ip").map_err(DbError::Query)?,
                current: r.try_get("current").map_err(DbError::Query)?,
                factors: super::factors_from(r)?,
            })
        })
        .collect()
}

/// What ending one of the caller's sessions came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Ended (also when this is the retry of the call that ended it).
    Revoked,
    /// Not a live session of the caller's user.
    NotFound,
    /// The caller's own session or user no longer allows it.
    Unauthorized,
}

/// Ends one of the caller's sessions (see `auth_revoke_session`).
#[allow(clippy::too_many_arguments)]
pub async fn revoke_session(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    target: Uuid,
    now: DateTime<Utc>,
    idle_cutoff: DateTime<Utc>,
    request: Uuid,
    origin: &Origin,
) -> Result<Revoked, DbError> {
    let row = db
        .query_opt(
            "SELECT auth_revoke_session($1, $2, $3, $4, $5, $6, $7, $8) AS outcome",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&target, Type::UUID),
                (&now, Type::TIMESTAMPTZ),
                (&idle_cutoff, Type::TIMESTAMPTZ),
                (&request, Type::UUID),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("revoke_session"))?;
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    match outcome.as_str() {
        "revoked" => Ok(Revoked::Revoked),
        "not_found" => Ok(Revoked::NotFound),
        "unauthorized" => Ok(Revoked::Unauthorized),
        _ => Err(DbError::NoRow("revoke_session: unknown outcome")),
    }
}
