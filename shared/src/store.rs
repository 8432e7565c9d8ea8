//! All the SQL; nothing else in the code base touches a table. Each function is one statement,
//! one round trip, with the audit row written by the same statement wherever the action has one.

use crate::{
    db::{Db, DbError},
    email::Email,
    origin::Origin,
    token::Factors,
};
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::Type};
use uuid::Uuid;

mod account;
mod mfa;
mod outbox;
mod window;
pub use account::*;
pub use mfa::*;
pub use outbox::*;
pub use window::{Limited, Window};
use window::{counted, windowed};

/// A user as stored, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Primary key.
    pub id: Uuid,
    /// Normalized email.
    pub email: String,
    /// Whether the account may log in.
    pub is_active: bool,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// Whether the address was proven (a verification link, or a reset by mail).
    pub email_verified: bool,
    /// Whether a login needs a second factor (TOTP) after the password.
    pub mfa_enabled: bool,
}

/// A user with the stored argon2id PHC string, for login.
#[derive(Clone)]
pub struct UserWithHash {
    /// The user.
    pub user: User,
    /// The argon2id PHC string.
    pub hashed_password: String,
}

impl std::fmt::Debug for UserWithHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserWithHash")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Registration could not insert the row.
#[derive(Debug)]
pub enum InsertError {
    /// The normalized email is taken.
    EmailTaken,
    /// The source network's window is full: nothing was written but the refusal's audit row.
    Limited(Limited),
    /// The database failed.
    Db(DbError),
}

impl From<DbError> for InsertError {
    fn from(error: DbError) -> Self {
        Self::Db(error)
    }
}

fn user_from(row: &Row) -> Result<User, DbError> {
    Ok(User {
        id: row.try_get("id").map_err(DbError::Query)?,
        email: row.try_get("email").map_err(DbError::Query)?,
        is_active: row.try_get("is_active").map_err(DbError::Query)?,
        created_at: row.try_get("created_at").map_err(DbError::Query)?,
        email_verified: row.try_get("email_verified").map_err(DbError::Query)?,
        mfa_enabled: row.try_get("mfa_enabled").map_err(DbError::Query)?,
    })
}

/// The columns [`user_from`] reads, of `users` as `u`.
const USER_COLUMNS: &str = "u.id, u.email, u.is_active, u.created_at, \
     u.email_verified_at IS NOT NULL AS email_verified, u.mfa_enabled_at IS NOT NULL AS mfa_enabled";

/// A message written to the outbox by the statement of the action that causes it.
#[derive(Debug, Clone, Copy)]
pub struct Queued<'a> {
    /// The message id (chosen by the caller: the seal's associated data).
    pub id: Uuid,
    /// What it is (`verify_email`, `password_reset`, `password_changed`, …).
    pub kind: &'static str,
    /// The sealed body.
    pub sealed: &'a [u8],
    /// Until when the request that queued it is delivering it: no mailer takes it before.
    pub lease_until: DateTime<Utc>,
}

/// A new link token, stored by hash.
#[derive(Debug, Clone, Copy)]
pub struct NewLink<'a> {
    /// SHA-256 of the token.
    pub hash: &'a [u8],
    /// The end of its lifetime.
    pub expires_at: DateTime<Utc>,
}

/// Inserts a new user, counted in its source network's window by the same statement, and
/// forgets any failed logins of its email from before it existed, so that nobody can lock an
/// address before its owner registers it. Race-safe: there is no select first; the unique
/// index decides (`ON CONFLICT DO NOTHING`: `EmailTaken`). The id is chosen here so that a
/// retry after a lost connection can recognize its own, already committed row instead of
/// calling it taken.
///
/// With `verification` (mail on), the same statement stores the verification link and queues
/// its message.
pub async fn insert_user(
    db: &Db,
    window: &Window<'_>,
    email: &Email,
    hashed_password: &str,
    origin: &Origin,
    now: DateTime<Utc>,
    verification: Option<(NewLink<'_>, Queued<'_>)>,
) -> Result<User, InsertError> {
    let id = Uuid::new_v4();
    let (link, queued) = verification.unzip();
    // A taken address inserts nothing (no unique violation, so the window's count stands).
    let row = db
        .query_opt(
            windowed!(
                ", u AS (INSERT INTO users (id, email, hashed_password, created_at, updated_at) \
                         SELECT $7, $8, $9, $10, $10 FROM w WHERE w.wait IS NULL \
                         ON CONFLICT (email) DO NOTHING \
                         RETURNING id, email, is_active, created_at, false AS email_verified, false AS mfa_enabled), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent) \
                        SELECT $10, v.event, u.id, $11, $12 \
                        FROM u, (VALUES (1, 'user.registered'), (2, 'email.verification_sent')) v (n, event) \
                        WHERE v.n = 1 OR $17::bytea IS NOT NULL ORDER BY v.n), \
                  t AS (DELETE FROM login_throttle WHERE account = $13 AND EXISTS (SELECT 1 FROM u)), \
                  l AS (INSERT INTO link_tokens (hash, user_id, purpose, created_at, expires_at) \
                        SELECT $14, id, 'verify_email', $10, $15 FROM u WHERE $14::bytea IS NOT NULL), \
                  o AS (INSERT INTO outbox (id, user_id, kind, sealed, attempts, next_attempt_at, created_at) \
                        SELECT $16, id, $19, $17, 1, $18, $10 FROM u WHERE $17::bytea IS NOT NULL) \
             SELECT w.wait, u.id, u.email, u.is_active, u.created_at, u.email_verified, u.mfa_enabled \
             FROM w LEFT JOIN u ON true"
            ),
            &window.with(&[
                (&id, Type::UUID),
                (&email.as_str(), Type::TEXT),
                (&hashed_password, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
                (&account_key(Some(email), email.as_str()).as_slice(), Type::BYTEA),
                (&link.map(|l| l.hash), Type::BYTEA),
                (&link.map(|l| l.expires_at), Type::TIMESTAMPTZ),
                (&queued.map(|q| q.id), Type::UUID),
                (&queued.map(|q| q.sealed), Type::BYTEA),
                (&queued.map(|q| q.lease_until), Type::TIMESTAMPTZ),
                (&queued.map(|q| q.kind), Type::TEXT),
            ]),
        )
        .await;
    let row = row?.ok_or(DbError::NoRow("insert_user"))?;
    counted(&row)?.map_err(InsertError::Limited)?;
    if row
        .try_get::<_, Option<Uuid>>("id")
        .map_err(DbError::Query)?
        .is_some()
    {
        return Ok(user_from(&row)?);
    }
    // Taken, unless by this very call: a retry whose first try committed, before this statement
    // began or while it waited on the first try's row (its snapshot cannot see that one, so a
    // statement of its own looks).
    match find_by_id(db, id).await? {
        Some(user) => Ok(user),
        None => Err(InsertError::EmailTaken),
    }
}

/// How a login attempt stood with the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted as a failure of the account and of the source network until it succeeds (a
    /// success deletes both counts).
    Counted,
    /// The account, or the account from this network, is in a backoff until then: the attempt
    /// was neither checked nor counted.
    Blocked(Option<DateTime<Utc>>),
    /// The account refuses password logins until a reset: the attempt was neither checked nor
    /// counted.
    Locked,
}

/// The thresholds of the login limits (docs/api.md "Limits against guessing").
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failures of one account from one network before its backoff starts.
    pub network_after: u32,
    /// Failures of one account across all networks before the account-wide backoff starts.
    pub account_after: u32,
    /// Consecutive failures of one account after which it is locked.
    pub lock_after: u32,
    /// The longest backoff, in seconds.
    pub max_secs: f64,
}

/// The key of an account's backoff rows: SHA-256 of the normalized email, or of the trimmed,
/// lower-cased input when it is no valid email, so unknown addresses are limited alike and raw
/// input is never stored.
pub fn account_key(email: Option<&Email>, raw: &str) -> Vec<u8> {
    let basis = email.map_or_else(|| raw.trim().to_lowercase(), |e| e.as_str().to_owned());
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, basis.as_bytes())
        .as_ref()
        .to_vec()
}

/// An attempt's standing with the limits, from the `outcome` and `retry_until` columns of
/// `auth_login_attempt` (also as `auth_reauth_attempt` passes them on).
fn attempt_from(row: &Row, unknown: &'static str) -> Result<Attempt, DbError> {
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    Ok(match outcome.as_str() {
        "counted" => Attempt::Counted,
        "blocked" => Attempt::Blocked(row.try_get("retry_until").map_err(DbError::Query)?),
        "locked" => Attempt::Locked,
        _ => return Err(DbError::NoRow(unknown)),
    })
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// What login needs, in one round trip and atomically (`auth_login_attempt` in migrations/V3,
/// behind the source network's window): the account with this normalized email (if the email is valid and the account exists), and
/// the attempt counted against the account's and the source network's backoff unless either
/// is waiting or the account is locked. `attempt` names this attempt, so a retry after a lost
/// answer is not counted twice.
#[allow(clippy::too_many_arguments)]
pub async fn login_attempt(
    db: &Db,
    window: &Window<'_>,
    email: Option<&Email>,
    account: &[u8],
    network: &str,
    attempt: Uuid,
    limits: LoginLimits,
    now: DateTime<Utc>,
) -> Result<Result<(Option<UserWithHash>, Attempt), Limited>, DbError> {
    let email = email.map(Email::as_str);
    let row = db
        .query_opt(
            windowed!(
                " SELECT w.wait, a.outcome, a.retry_until, a.id, a.email, a.is_active, a.created_at, \
                        a.hashed_password, \
                        (SELECT u.email_verified_at IS NOT NULL FROM users u WHERE u.id = a.id) AS email_verified, \
                        (SELECT u.mfa_enabled_at IS NOT NULL FROM users u WHERE u.id = a.id) AS mfa_enabled \
                 FROM w LEFT JOIN LATERAL \
                      (SELECT * FROM auth_login_attempt($7, $8, $9, $10, $11, $12, $13, $14, $15) \
                       WHERE w.wait IS NULL OFFSET 0) a ON true"
            ),
            &window.with(&[
                (&email, Type::TEXT),
                (&account, Type::BYTEA),
                (&network, Type::TEXT),
                (&attempt, Type::UUID),
                (&int(limits.network_after), Type::INT4),
                (&int(limits.account_after), Type::INT4),
                (&int(limits.lock_after), Type::INT4),
                (&limits.max_secs, Type::FLOAT8),
                (&now, Type::TIMESTAMPTZ),
            ]),
        )
        .await?
        .ok_or(DbError::NoRow("login_attempt"))?;
    if let Err(limited) = counted(&row)? {
        return Ok(Err(limited));
    }
    let attempt = attempt_from(&row, "login_attempt: unknown outcome")?;
    let id: Option<Uuid> = row.try_get("id").map_err(DbError::Query)?;
    let user = match id {
        None => None,
        Some(_) => Some(UserWithHash {
            user: user_from(&row)?,
            hashed_password: row.try_get("hashed_password").map_err(DbError::Query)?,
        }),
    };
    Ok(Ok((user, attempt)))
}

/// Lifts the lock and every backoff of the account with this email (`authctl unlock`; a
/// password reset later), with an audit row. Returns whether the account exists.
pub async fn unlock(
    db: &Db,
    email: &Email,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let account = account_key(Some(email), email.as_str());
    let row = db
        .query_opt(
            "WITH u AS (SELECT id FROM users WHERE email = $1), \
                  t AS (DELETE FROM login_throttle WHERE account = $2), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent, reason) \
                        SELECT $3, 'account.unlocked', id, $4, $5, 'operator' FROM u) \
             SELECT EXISTS (SELECT 1 FROM u) AS found",
            &[
                (&email.as_str(), Type::TEXT),
                (&account.as_slice(), Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("unlock"))?;
    row.try_get("found").map_err(DbError::Query)
}

/// The user with this id.
pub async fn find_by_id(db: &Db, id: Uuid) -> Result<Option<User>, DbError> {
    let row = db
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"),
            &[(&id, Type::UUID)],
        )
        .await?;
    row.as_ref().map(user_from).transpose()
}

/// Replaces a password hash, only if it is still `old` (a concurrent change wins).
/// Returns whether a row changed.
pub async fn update_password_hash(
    db: &Db,
    id: Uuid,
    old: &str,
    new: &str,
) -> Result<bool, DbError> {
    let rows = db
        .query(
            "UPDATE users SET hashed_password = $3, updated_at = now() \
             WHERE id = $1 AND hashed_password = $2 RETURNING id",
            &[(&id, Type::UUID), (&old, Type::TEXT), (&new, Type::TEXT)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// A login succeeded: start the session with its first refresh token, clear the account's
/// backoff (account-wide and this network's) and write the audit row — only while the user is
/// active, `checked_hash` is still its password hash and TOTP is off, so a login that checked
/// the old password while a reset or change committed, or that found TOTP off while its owner
/// turned it on, starts no session after it (the user's row is share-locked first, so the
/// statement waits for such a change and then sees it). Returns
/// whether the session started. The session id is chosen by the caller, so a retry after a
/// lost answer finds its own session instead of failing on it.
#[allow(clippy::too_many_arguments)]
pub async fn start_session(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    refresh_hash: &[u8],
    checked_hash: &str,
    account: &[u8],
    network: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "WITH u AS (SELECT id FROM users WHERE id = $2 AND hashed_password = $10 AND is_active \
                            AND mfa_enabled_at IS NULL FOR SHARE), \
                  s AS (INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, source_ip, user_agent) \
                        SELECT $1, id, $4, $4, $5, $8, $9 FROM u ON CONFLICT (id) DO NOTHING RETURNING id), \
                  r AS (INSERT INTO refresh_tokens (hash, session_id, issued_at) SELECT $3, id, $4 FROM s), \
                  t AS (DELETE FROM login_throttle WHERE account = $6 AND network IN ('*', $7) \
                        AND EXISTS (SELECT 1 FROM s)), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent) \
                        SELECT $4, 'login.succeeded', $2, id, $8, $9 FROM s) \
             SELECT EXISTS (SELECT 1 FROM s) \
                 OR EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2) AS started",
            &[
                (&session_id, Type::UUID),
                (&user_id, Type::UUID),
                (&refresh_hash, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&expires_at, Type::TIMESTAMPTZ),
                (&account, Type::BYTEA),
                (&network, Type::TEXT),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
                (&checked_hash, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("start_session"))?;
    row.try_get("started").map_err(DbError::Query)
}

/// An audit row for an event that changes nothing else.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// The dotted event name (`login.failed`, …).
    pub event: &'static str,
    /// Why, for failures.
    pub reason: Option<&'a str>,
    /// The account, when known.
    pub user_id: Option<Uuid>,
    /// The session, when known.
    pub session_id: Option<Uuid>,
    /// A refused request: counted into one row per (network, event, reason, account) and
    /// minute, so that a flood cannot grow the table faster than the address window allows.
    pub refusal: bool,
}

impl AuditEvent<'_> {
    /// A refused request's event.
    pub fn refusal(event: &'static str, reason: &'static str) -> AuditEvent<'static> {
        AuditEvent {
            event,
            reason: Some(reason),
            user_id: None,
            session_id: None,
            refusal: true,
        }
    }
}

/// Writes one audit row, once: never retried, since the row is best effort and a retry after
/// a lost answer would write it twice.
pub async fn audit(
    db: &Db,
    event: &AuditEvent<'_>,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<(), DbError> {
    let sql = if event.refusal {
        "SELECT auth_refusal($1, $2, $3, $4, $5, $6, $7)"
    } else {
        "INSERT INTO auth_events (occurred_at, event, reason, user_id, session_id, source_ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    };
    let source = if event.refusal {
        origin.refusal_source()
    } else {
        origin.source_ip.clone()
    };
    db.query_once(sql, &audit_params(&now, event, &source, origin))
        .await?;
    Ok(())
}

/// An audit row's parameters, in the order of `auth_refusal` and of the plain insert.
fn audit_params<'a>(
    now: &'a DateTime<Utc>,
    event: &'a AuditEvent<'_>,
    source: &'a Option<String>,
    origin: &'a Origin,
) -> [crate::db::Param<'a>; 7] {
    [
        (now, Type::TIMESTAMPTZ),
        (&event.event, Type::TEXT),
        (&event.reason, Type::TEXT),
        (&event.user_id, Type::UUID),
        (&event.session_id, Type::UUID),
        (source, Type::TEXT),
        (&origin.user_agent, Type::TEXT),
    ]
}

/// A refused request's audit row on a route guarded by the window, counted in it by the same
/// statement: when the window is full, the refusal recorded is the window's instead. Unlike
/// [`audit`], retried on a fresh connection when the first one was dead (the first request
/// after a thaw), so the request is still counted; a retry after a lost answer may count the
/// refusal twice in its audit row's count, never in the window (the request's id).
pub async fn refuse(
    db: &Db,
    window: &Window<'_>,
    event: &AuditEvent<'_>,
    origin: &Origin,
) -> Result<Result<(), Limited>, DbError> {
    debug_assert!(event.refusal, "store::refuse writes refusals only");
    let source = origin.refusal_source();
    let rows = db
        .query(
            windowed!(
                " SELECT w.wait FROM w LEFT JOIN LATERAL \
                      (SELECT auth_refusal($7, $8, $9, $10, $11, $12, $13) WHERE w.wait IS NULL OFFSET 0) a \
                  ON true"
            ),
            &window.with(&audit_params(window.now(), event, &source, origin)),
        )
        .await?;
    counted(rows.first().ok_or(DbError::NoRow("refuse"))?)
}

/// How an access token's user and session stand, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionUser {
    /// The user exists, is active, and the session is live.
    Live(User),
    /// The user exists but is disabled.
    Inactive,
    /// The session ended (logout, reuse, idle, absolute limit) or is not this user's.
    SessionEnded,
    /// No such user.
    Gone,
}

/// The token's user, if the user exists and is active and the session is live at `now`.
pub async fn session_user(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
    idle_cutoff: DateTime<Utc>,
) -> Result<SessionUser, DbError> {
    let row = db
        .query_opt(
            "SELECT u.id, u.email, u.is_active, u.created_at, u.email_verified_at IS NOT NULL AS email_verified, \
                    u.mfa_enabled_at IS NOT NULL AS mfa_enabled, \
                    coalesce(s.ended_at IS NULL AND s.expires_at > $3 AND s.last_used_at > $4, false) AS live \
             FROM users u LEFT JOIN sessions s ON s.id = $2 AND s.user_id = u.id \
             WHERE u.id = $1",
            &[(&user_id, Type::UUID), (&session_id, Type::UUID), (&now, Type::TIMESTAMPTZ), (&idle_cutoff, Type::TIMESTAMPTZ)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(SessionUser::Gone);
    };
    let user = user_from(&row)?;
    let live: bool = row.try_get("live").map_err(DbError::Query)?;
    Ok(match (user.is_active, live) {
        (false, _) => SessionUser::Inactive,
        (true, false) => SessionUser::SessionEnded,
        (true, true) => SessionUser::Live(user),
    })
}

/// Ends the token's session, or with `global` every session of its user, if the token's own
/// session is still live; writes the audit row. Returns whether it was live (also when this is
/// the retry of a call that ended it: `request` names the call). See `auth_end_sessions` in
/// migrations/V3.
#[allow(clippy::too_many_arguments)]
pub async fn end_sessions(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    global: bool,
    now: DateTime<Utc>,
    idle_cutoff: DateTime<Utc>,
    request: Uuid,
    origin: &Origin,
) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "SELECT auth_end_sessions($1, $2, $3, $4, $5, $6, $7, $8) AS ended",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&global, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
                (&idle_cutoff, Type::TIMESTAMPTZ),
                (&request, Type::UUID),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("end_sessions"))?;
    row.try_get("ended").map_err(DbError::Query)
}

/// What presenting a refresh token came to (see `auth_refresh` in migrations/V3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Rotated: the successor is now the session's live token.
    Rotated,
    /// Presented again inside the grace window while its successor is still live.
    Grace,
    /// Presented again inside the grace window, but its successor was rotated too (or was
    /// derived under another key): refused, the session lives on.
    GraceSuperseded,
    /// Presented after the grace window: the session was ended.
    ReuseDetected,
    /// No such token.
    UnknownToken,
    /// The session had ended.
    SessionEnded,
    /// The user is disabled or gone.
    UserInactive,
    /// The session reached its absolute limit (and was ended).
    SessionExpired,
    /// The session was idle too long (and was ended).
    SessionIdle,
}

impl RefreshOutcome {
    fn parse(outcome: &str) -> Result<Self, DbError> {
        Ok(match outcome {
            "rotated" => Self::Rotated,
            "grace" => Self::Grace,
            "grace_superseded" => Self::GraceSuperseded,
            "reuse_detected" => Self::ReuseDetected,
            "unknown_token" => Self::UnknownToken,
            "session_ended" => Self::SessionEnded,
            "user_inactive" => Self::UserInactive,
            "session_expired" => Self::SessionExpired,
            "session_idle" => Self::SessionIdle,
            _ => return Err(DbError::NoRow("refresh: unknown outcome")),
        })
    }

    /// The reason as the audit log and the logs name it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rotated => "rotated",
            Self::Grace => "grace_window",
            Self::GraceSuperseded => "grace_superseded",
            Self::ReuseDetected => "reuse_detected",
            Self::UnknownToken => "unknown_token",
            Self::SessionEnded => "session_ended",
            Self::UserInactive => "user_inactive",
            Self::SessionExpired => "session_expired",
            Self::SessionIdle => "session_idle",
        }
    }
}

/// A presented refresh token's outcome, with its session and user when the token was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// What happened.
    pub outcome: RefreshOutcome,
    /// The session, when the token was known.
    pub session_id: Option<Uuid>,
    /// Its user, when the token was known.
    pub user_id: Option<Uuid>,
    /// Whether that user's address is proven, for the new access token's claim.
    pub email_verified: bool,
    /// How the session was established, for the new access token's `amr` and `aal`.
    pub factors: Factors,
}

/// Presents a refresh token (by hash): rotates it to `successor_hash`, or recognizes a race
/// inside the grace window, or a reuse after it (ending the session); writes the audit row.
/// A retry after a lost answer finds the token rotated at its own `now`, which is inside any
/// grace window, and gets the same successor.
#[allow(clippy::too_many_arguments)]
pub async fn refresh(
    db: &Db,
    window: &Window<'_>,
    hash: &[u8],
    successor_hash: &[u8],
    now: DateTime<Utc>,
    grace_secs: f64,
    idle_secs: f64,
    origin: &Origin,
) -> Result<Result<Refreshed, Limited>, DbError> {
    let row = db
        .query_opt(
            windowed!(
                " SELECT w.wait, r.outcome, r.session_id, r.user_id, \
                        coalesce((SELECT u.email_verified_at IS NOT NULL FROM users u WHERE u.id = r.user_id), false) \
                            AS email_verified, \
                        (SELECT s.amr FROM sessions s WHERE s.id = r.session_id) AS amr \
                 FROM w LEFT JOIN LATERAL \
                      (SELECT * FROM auth_refresh($7, $8, $9, make_interval(secs => $10), \
                                                  make_interval(secs => $11), $12, $13, $14) \
                       WHERE w.wait IS NULL OFFSET 0) r ON true"
            ),
            &window.with(&[
                (&hash, Type::BYTEA),
                (&successor_hash, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&grace_secs, Type::FLOAT8),
                (&idle_secs, Type::FLOAT8),
                (&origin.source_ip, Type::TEXT),
                (&origin.refusal_source(), Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ]),
        )
        .await?
        .ok_or(DbError::NoRow("refresh"))?;
    if let Err(limited) = counted(&row)? {
        return Ok(Err(limited));
    }
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    Ok(Ok(Refreshed {
        outcome: RefreshOutcome::parse(&outcome)?,
        session_id: row.try_get("session_id").map_err(DbError::Query)?,
        user_id: row.try_get("user_id").map_err(DbError::Query)?,
        email_verified: row.try_get("email_verified").map_err(DbError::Query)?,
        factors: factors_from(&row)?,
    }))
}

/// A session's factors from its `amr` column (`NULL` for a session that does not exist is
/// the password alone: nothing is issued for it).
fn factors_from(row: &Row) -> Result<Factors, DbError> {
    let amr: Option<Vec<String>> = row.try_get("amr").map_err(DbError::Query)?;
    match amr {
        None => Ok(Factors::Password),
        Some(amr) => Factors::from_amr(&amr).ok_or(DbError::NoRow("sessions.amr: unknown factors")),
    }
}

/// Counts a request against its source network's sliding one-minute window (the IPv4
/// address, or the IPv6 /64), unless the window is full; then the refusal's audit row is
/// written. For the requests whose route has no statement of its own to carry the window (the
/// bearer routes' refusals); the others pass their [`Window`] to their statement.
pub async fn window(db: &Db, window: &Window<'_>) -> Result<Result<(), Limited>, DbError> {
    let row = db
        .query_opt(windowed!(" SELECT w.wait FROM w"), &window.with(&[]))
        .await?
        .ok_or(DbError::NoRow("window"))?;
    counted(&row)
}

/// One row of the audit log.
#[derive(Debug, Clone)]
pub struct Event {
    /// When.
    pub occurred_at: DateTime<Utc>,
    /// The dotted event name.
    pub event: String,
    /// The session, when known.
    pub session_id: Option<Uuid>,
    /// The source address.
    pub source_ip: Option<String>,
    /// The user agent.
    pub user_agent: Option<String>,
    /// Why, for failures.
    pub reason: Option<String>,
}

/// The most recent audit rows of the account with this email, newest first.
pub async fn events_for(db: &Db, email: &Email, limit: i64) -> Result<Vec<Event>, DbError> {
    let rows = db
        .query(
            "SELECT e.occurred_at, e.event, e.session_id, e.source_ip, e.user_agent, e.reason \
             FROM auth_events e JOIN users u ON u.id = e.user_id \
             WHERE u.email = $1 ORDER BY e.occurred_at DESC, e.id DESC LIMIT $2",
            &[(&email.as_str(), Type::TEXT), (&limit, Type::INT8)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                occurred_at: r.try_get("occurred_at").map_err(DbError::Query)?,
                event: r.try_get("event").map_err(DbError::Query)?,
                session_id: r.try_get("session_id").map_err(DbError::Query)?,
                source_ip: r.try_get("source_ip").map_err(DbError::Query)?,
                user_agent: r.try_get("user_agent").map_err(DbError::Query)?,
                reason: r.try_get("reason").map_err(DbError::Query)?,
            })
        })
        .collect()
}

/// What `prune` deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Audit rows older than the retention.
    pub events: u64,
    /// Sessions that ended or expired before the retention.
    pub sessions: u64,
    /// Address-window rows that slid out of their minute.
    pub ip_requests: u64,
    /// Backoff rows nobody needs any more.
    pub throttles: u64,
    /// Outbox rows sent or failed before the retention.
    pub mail: u64,
    /// Link tokens a day past their lifetime.
    pub links: u64,
    /// Requested-mail counts that slid out of their hour.
    pub mail_requests: u64,
    /// Login challenges (the second step) a day past their lifetime.
    pub challenges: u64,
}

/// Deletes what has expired: audit rows, finished sessions and finished mail older than
/// `cutoff`, address windows past their minute, requested-mail counts past their hour, link
/// tokens and login challenges a day past their lifetime (until then a late click says
/// `link_expired`, a late code `invalid_token` with the reason `expired`), and backoff
/// rows whose wait is over and that have been quiet for a day (a day without failures forgets
/// the count); a lock is kept until `cutoff`.
pub async fn prune(db: &Db, cutoff: DateTime<Utc>, now: DateTime<Utc>) -> Result<Pruned, DbError> {
    let row = db
        .query_opt(
            "WITH e AS (DELETE FROM auth_events WHERE occurred_at < $1 RETURNING 1), \
                  s AS (DELETE FROM sessions WHERE coalesce(ended_at, expires_at) < $1 RETURNING 1), \
                  i AS (DELETE FROM ip_requests WHERE at <= $2 - interval '1 minute' RETURNING 1), \
                  t AS (DELETE FROM login_throttle \
                        WHERE updated_at < $1 \
                           OR (updated_at < $2 - interval '1 day' \
                               AND coalesce(blocked_until, '-infinity') <= $2 AND locked_at IS NULL) \
                        RETURNING 1), \
                  m AS (DELETE FROM outbox WHERE status <> 'pending' AND finished_at < $1 RETURNING 1), \
                  l AS (DELETE FROM link_tokens WHERE expires_at < $2 - interval '1 day' RETURNING 1), \
                  r AS (DELETE FROM mail_requests WHERE at <= $2 - interval '1 hour' RETURNING 1), \
                  c AS (DELETE FROM mfa_challenges WHERE expires_at < $2 - interval '1 day' RETURNING 1) \
             SELECT (SELECT count(*) FROM e) AS events, (SELECT count(*) FROM s) AS sessions, \
                    (SELECT count(*) FROM i) AS ip_requests, (SELECT count(*) FROM t) AS throttles, \
                    (SELECT count(*) FROM m) AS mail, (SELECT count(*) FROM l) AS links, \
                    (SELECT count(*) FROM r) AS mail_requests, (SELECT count(*) FROM c) AS challenges",
            &[
                (&cutoff, Type::TIMESTAMPTZ),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("prune"))?;
    let count = |name: &str| -> Result<u64, DbError> {
        let n: i64 = row.try_get(name).map_err(DbError::Query)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(Pruned {
        events: count("events")?,
        sessions: count("sessions")?,
        ip_requests: count("ip_requests")?,
        throttles: count("throttles")?,
        mail: count("mail")?,
        links: count("links")?,
        mail_requests: count("mail_requests")?,
        challenges: count("challenges")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_row_is_a_500_and_only_an_unreachable_database_a_503() {
        use crate::error::AuthError;
        assert_eq!(
            AuthError::from(DbError::NoRow("refresh")),
            AuthError::Internal
        );
        assert_eq!(AuthError::from(DbError::NoRow("refresh")).status(), 500);
        assert_eq!(
            AuthError::from(DbError::Unavailable),
            AuthError::ServiceUnavailable {
                retry_after_secs: crate::db::RETRY_AFTER_SECS
            }
        );
    }

    #[test]
    fn the_account_key_is_the_normalized_email_or_the_trimmed_lowercased_input() {
        let email = Email::parse("Ann@Example.com").expect("valid");
        assert_eq!(
            account_key(Some(&email), "Ann@Example.com"),
            account_key(None, "  ann@example.com ")
        );
        assert_ne!(account_key(None, "a"), account_key(None, "b"));
        assert_eq!(account_key(None, "x").len(), 32);
    }
}
