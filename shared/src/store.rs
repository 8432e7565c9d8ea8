//! All the SQL; nothing else in the code base touches a table. Each function is one statement,
//! one round trip, with the audit row written by the same statement wherever the action has one.

use crate::{
    db::{Db, DbError},
    email::Email,
};
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::Type};
use uuid::Uuid;

/// Where a request came from, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// `requestContext.http.sourceIp` (never `X-Forwarded-For`).
    pub source_ip: Option<String>,
    /// The `User-Agent` header, cut to 512 characters.
    pub user_agent: Option<String>,
}

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
    /// The database failed.
    Db(DbError),
}

fn user_from(row: &Row) -> Result<User, DbError> {
    Ok(User {
        id: row.try_get("id").map_err(DbError::Query)?,
        email: row.try_get("email").map_err(DbError::Query)?,
        is_active: row.try_get("is_active").map_err(DbError::Query)?,
        created_at: row.try_get("created_at").map_err(DbError::Query)?,
    })
}

/// Inserts a new user. Race-safe: there is no select first; the unique index decides, and
/// its violation (SQLSTATE 23505) is `EmailTaken`. The id is chosen here so that a retry after
/// a lost connection can recognize its own, already committed row instead of calling it taken.
pub async fn insert_user(
    db: &Db,
    email: &Email,
    hashed_password: &str,
    client: &Client,
    now: DateTime<Utc>,
) -> Result<User, InsertError> {
    let id = Uuid::new_v4();
    let inserted = db
        .query_opt(
            "WITH u AS (INSERT INTO users (id, email, hashed_password, created_at, updated_at) \
                        VALUES ($1, $2, $3, $4, $4) RETURNING id, email, is_active, created_at), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent) \
                        SELECT $4, 'user.registered', id, $5, $6 FROM u) \
             SELECT id, email, is_active, created_at FROM u",
            &[
                (&id, Type::UUID),
                (&email.as_str(), Type::TEXT),
                (&hashed_password, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&client.source_ip, Type::TEXT),
                (&client.user_agent, Type::TEXT),
            ],
        )
        .await;
    match inserted {
        Ok(Some(row)) => user_from(&row).map_err(InsertError::Db),
        Ok(None) => Err(InsertError::Db(DbError::Unavailable)),
        Err(DbError::UniqueViolation { retried: true, .. }) => match find_by_id(db, id).await {
            Ok(Some(user)) if user.email == email.as_str() => Ok(user),
            Ok(_) => Err(InsertError::EmailTaken),
            Err(e) => Err(InsertError::Db(e)),
        },
        Err(DbError::UniqueViolation { .. }) => Err(InsertError::EmailTaken),
        Err(e) => Err(InsertError::Db(e)),
    }
}

/// Whether a login attempt was counted against its throttle key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted as a failure until it succeeds (a success deletes the key's row).
    Counted,
    /// The key is in a backoff until then (if known): the attempt was neither checked nor counted.
    Blocked(Option<DateTime<Utc>>),
}

/// What login needs, in one round trip and atomically: the account with this normalized email
/// (if the email is valid and the account exists), and the attempt counted against the
/// throttle key unless the key is in a backoff. Counting before the password is checked is what
/// makes the backoff hold against parallel guesses: the attempt that reaches the limit starts the
/// wait for every attempt after it, whichever instance serves them. From the `after`-th
/// consecutive failure on, the wait doubles from 1 s up to `max_secs`.
pub async fn login_attempt(
    db: &Db,
    email: Option<&Email>,
    throttle_key: &[u8],
    after: u32,
    max_secs: f64,
    now: DateTime<Utc>,
) -> Result<(Option<UserWithHash>, Attempt), DbError> {
    let email = email.map(Email::as_str);
    let after = i32::try_from(after).unwrap_or(i32::MAX);
    let row = db
        .query_opt(
            "WITH t AS (INSERT INTO login_throttle AS l (key, failures, blocked_until, updated_at) \
                        VALUES ($2, 1, CASE WHEN 1 >= $3 THEN $5 + make_interval(secs => LEAST(1, $4)) END, $5) \
                        ON CONFLICT (key) DO UPDATE SET \
                          failures = l.failures + 1, \
                          blocked_until = CASE WHEN l.failures + 1 >= $3 \
                            THEN $5 + make_interval(secs => LEAST(power(2, l.failures + 1 - $3), $4)) END, \
                          updated_at = $5 \
                        WHERE l.blocked_until IS NULL OR l.blocked_until <= $5 \
                        RETURNING 1) \
             SELECT u.id, u.email, u.is_active, u.created_at, u.hashed_password, \
                    EXISTS (SELECT 1 FROM t) AS counted, \
                    (SELECT blocked_until FROM login_throttle WHERE key = $2) AS blocked_until \
             FROM (SELECT $1::text AS email) q LEFT JOIN users u ON u.email = q.email",
            &[
                (&email, Type::TEXT),
                (&throttle_key, Type::BYTEA),
                (&after, Type::INT4),
                (&max_secs, Type::FLOAT8),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or(DbError::Unavailable)?;
    let counted: bool = row.try_get("counted").map_err(DbError::Query)?;
    let attempt = if counted {
        Attempt::Counted
    } else {
        Attempt::Blocked(row.try_get("blocked_until").map_err(DbError::Query)?)
    };
    let id: Option<Uuid> = row.try_get("id").map_err(DbError::Query)?;
    let user = match id {
        None => None,
        Some(_) => Some(UserWithHash {
            user: user_from(&row)?,
            hashed_password: row.try_get("hashed_password").map_err(DbError::Query)?,
        }),
    };
    Ok((user, attempt))
}

/// The user with this id.
pub async fn find_by_id(db: &Db, id: Uuid) -> Result<Option<User>, DbError> {
    let row = db
        .query_opt(
            "SELECT id, email, is_active, created_at FROM users WHERE id = $1",
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
/// backoff and write the audit row.
#[allow(clippy::too_many_arguments)]
pub async fn start_session(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    refresh_hash: &[u8],
    throttle_key: &[u8],
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    client: &Client,
) -> Result<(), DbError> {
    db.query(
        "WITH s AS (INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at) \
                    VALUES ($1, $2, $4, $4, $5) RETURNING id), \
              r AS (INSERT INTO refresh_tokens (hash, session_id, issued_at) SELECT $3, id, $4 FROM s), \
              t AS (DELETE FROM login_throttle WHERE key = $6), \
              e AS (INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent) \
                    SELECT $4, 'login.succeeded', $2, id, $7, $8 FROM s) \
         SELECT id FROM s",
        &[
            (&session_id, Type::UUID),
            (&user_id, Type::UUID),
            (&refresh_hash, Type::BYTEA),
            (&now, Type::TIMESTAMPTZ),
            (&expires_at, Type::TIMESTAMPTZ),
            (&throttle_key, Type::BYTEA),
            (&client.source_ip, Type::TEXT),
            (&client.user_agent, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// One audit row for an event that changes nothing else.
pub async fn audit(
    db: &Db,
    event: &str,
    user_id: Option<Uuid>,
    session_id: Option<Uuid>,
    reason: Option<&str>,
    now: DateTime<Utc>,
    client: &Client,
) -> Result<(), DbError> {
    db.query(
        "INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            (&now, Type::TIMESTAMPTZ),
            (&event, Type::TEXT),
            (&user_id, Type::UUID),
            (&session_id, Type::UUID),
            (&client.source_ip, Type::TEXT),
            (&client.user_agent, Type::TEXT),
            (&reason, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
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
            "SELECT u.id, u.email, u.is_active, u.created_at, \
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
/// session is still live; writes the audit row. Returns whether it was live.
#[allow(clippy::too_many_arguments)]
pub async fn end_sessions(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    global: bool,
    now: DateTime<Utc>,
    idle_cutoff: DateTime<Utc>,
    client: &Client,
) -> Result<bool, DbError> {
    let scope = if global { "global" } else { "session" };
    let rows = db
        .query(
            "WITH live AS (SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id \
                           WHERE s.id = $2 AND s.user_id = $1 AND u.is_active AND s.ended_at IS NULL \
                             AND s.expires_at > $4 AND s.last_used_at > $5 FOR UPDATE OF s), \
                  ended AS (UPDATE sessions s SET ended_at = $4, ended_reason = 'logout' FROM live \
                            WHERE s.ended_at IS NULL AND (s.id = live.id OR ($3 AND s.user_id = $1)) \
                            RETURNING s.id), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason) \
                        SELECT $4, 'logout.succeeded', $1, id, $6, $7, $8 FROM live) \
             SELECT id FROM live",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&global, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
                (&idle_cutoff, Type::TIMESTAMPTZ),
                (&client.source_ip, Type::TEXT),
                (&client.user_agent, Type::TEXT),
                (&scope, Type::TEXT),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// What presenting a refresh token came to (see `auth_refresh` in migrations/V2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOutcome {
    /// `rotated`, `grace`, `reuse_detected`, `unknown_token`, `session_ended`,
    /// `user_inactive`, `session_expired` or `session_idle`.
    pub outcome: String,
    /// The session, when the token was known.
    pub session_id: Option<Uuid>,
    /// Its user, when the token was known.
    pub user_id: Option<Uuid>,
}

/// Presents a refresh token (by hash): rotates it to `successor_hash`, or recognizes a race
/// inside the grace window, or a reuse after it (ending the session); writes the audit row.
#[allow(clippy::too_many_arguments)]
pub async fn refresh(
    db: &Db,
    hash: &[u8],
    successor_hash: &[u8],
    now: DateTime<Utc>,
    grace_secs: f64,
    idle_secs: f64,
    client: &Client,
) -> Result<RefreshOutcome, DbError> {
    let row = db
        .query_opt(
            "SELECT outcome, session_id, user_id FROM auth_refresh($1, $2, $3, make_interval(secs => $4), \
             make_interval(secs => $5), $6, $7)",
            &[
                (&hash, Type::BYTEA),
                (&successor_hash, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&grace_secs, Type::FLOAT8),
                (&idle_secs, Type::FLOAT8),
                (&client.source_ip, Type::TEXT),
                (&client.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::Unavailable)?;
    Ok(RefreshOutcome {
        outcome: row.try_get("outcome").map_err(DbError::Query)?,
        session_id: row.try_get("session_id").map_err(DbError::Query)?,
        user_id: row.try_get("user_id").map_err(DbError::Query)?,
    })
}

/// Counts a request against its source address's sliding one-minute window, unless the window
/// is full; then returns the seconds until a slot frees.
pub async fn ip_allow(
    db: &Db,
    source_ip: &str,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Option<u64>, DbError> {
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    let row = db
        .query_opt(
            "SELECT allowed, retry_after_secs FROM auth_ip_allow($1, $2, $3)",
            &[
                (&source_ip, Type::TEXT),
                (&limit, Type::INT4),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or(DbError::Unavailable)?;
    let allowed: bool = row.try_get("allowed").map_err(DbError::Query)?;
    let wait: i32 = row.try_get("retry_after_secs").map_err(DbError::Query)?;
    Ok((!allowed).then(|| u64::try_from(wait.max(1)).unwrap_or(1)))
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
}

/// Deletes audit rows and finished sessions older than `cutoff`, and limiter rows nobody needs.
pub async fn prune(db: &Db, cutoff: DateTime<Utc>, now: DateTime<Utc>) -> Result<Pruned, DbError> {
    let row = db
        .query_opt(
            "WITH e AS (DELETE FROM auth_events WHERE occurred_at < $1 RETURNING 1), \
                  s AS (DELETE FROM sessions WHERE coalesce(ended_at, expires_at) < $1 RETURNING 1), \
                  i AS (DELETE FROM ip_requests WHERE at < $2 - interval '2 minutes'), \
                  t AS (DELETE FROM login_throttle WHERE updated_at < $1) \
             SELECT (SELECT count(*) FROM e) AS events, (SELECT count(*) FROM s) AS sessions",
            &[(&cutoff, Type::TIMESTAMPTZ), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(DbError::Unavailable)?;
    let count = |name: &str| -> Result<u64, DbError> {
        let n: i64 = row.try_get(name).map_err(DbError::Query)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(Pruned {
        events: count("events")?,
        sessions: count("sessions")?,
    })
}
