//! The SQL of two-step login (migrations/V6): the TOTP routes' checks and writes, login's
//! challenge and its second step, and the operator's reset.

use super::{
    Attempt, Limited, LoginLimits, Queued, Unauthorized, Window, attempt_from, counted, int,
    windowed,
};
use crate::{
    db::{Db, DbError},
    email::Email,
    origin::Origin,
    token::Factors,
};
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::Type};
use uuid::Uuid;

/// Where a user's TOTP enrolment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpState {
    /// Never enrolled, or turned off.
    None,
    /// Enrolled, waiting for the first code.
    Pending,
    /// On: logins need a second factor.
    Enabled,
}

/// The enrolment state a TOTP route needs before it checks anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpRequirement {
    /// Enrolling: not on yet (a pending enrolment is replaced).
    NotEnabled,
    /// Confirming: an enrolment waits for its first code.
    Pending,
    /// Turning it off: on.
    Enabled,
}

impl TotpRequirement {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotEnabled => "not_enabled",
            Self::Pending => "pending",
            Self::Enabled => "enabled",
        }
    }
}

/// Why a TOTP route's check did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorRefusal {
    /// The token's session or user no longer allows it.
    Unauthorized(Unauthorized),
    /// The enrolment is not in the state the route needs.
    Totp(TotpState),
}

/// A signed-in user's factor check, counted against the account's backoffs.
#[derive(Clone)]
pub struct FactorCheck {
    /// How the attempt stood with the limits.
    pub attempt: Attempt,
    /// The user's normalized address.
    pub email: String,
    /// The stored argon2id PHC string.
    pub hashed_password: String,
    /// The sealed TOTP secret (pending or on), when there is one.
    pub sealed_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for FactorCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactorCheck")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

fn step_param(step: Option<u64>) -> Option<i64> {
    step.and_then(|s| i64::try_from(s).ok())
}

/// Checks the token's session and the enrolment's state, then counts a factor check against
/// the account's backoffs (see `auth_totp_attempt`).
#[allow(clippy::too_many_arguments)]
pub async fn totp_attempt(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
    idle_cutoff: DateTime<Utc>,
    network: &str,
    attempt: Uuid,
    limits: LoginLimits,
    require: TotpRequirement,
) -> Result<Result<FactorCheck, FactorRefusal>, DbError> {
    let row = db
        .query_opt(
            "SELECT state, outcome, retry_until, email, hashed_password, sealed_secret \
             FROM auth_totp_attempt($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
                (&require.as_str(), Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("totp_attempt"))?;
    let state: String = row.try_get("state").map_err(DbError::Query)?;
    let refusal = match state.as_str() {
        "live" => None,
        "user_gone" => Some(FactorRefusal::Unauthorized(Unauthorized::UserGone)),
        "user_inactive" => Some(FactorRefusal::Unauthorized(Unauthorized::UserInactive)),
        "session_ended" => Some(FactorRefusal::Unauthorized(Unauthorized::SessionEnded)),
        "totp_none" => Some(FactorRefusal::Totp(TotpState::None)),
        "totp_pending" => Some(FactorRefusal::Totp(TotpState::Pending)),
        "totp_enabled" => Some(FactorRefusal::Totp(TotpState::Enabled)),
        _ => return Err(DbError::NoRow("totp_attempt: unknown state")),
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    Ok(Ok(FactorCheck {
        attempt: attempt_from(&row, "totp_attempt: unknown outcome")?,
        email: row.try_get("email").map_err(DbError::Query)?,
        hashed_password: row.try_get("hashed_password").map_err(DbError::Query)?,
        sealed_secret: row.try_get("sealed_secret").map_err(DbError::Query)?,
    }))
}

/// What starting an enrolment came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolled {
    /// The secret is stored, waiting for its first code.
    Pending,
    /// TOTP is on already.
    AlreadyEnabled,
    /// The password changed or the session ended since the check.
    Conflict,
}

/// Stores a pending enrolment's sealed secret after the password check (see
/// `auth_totp_enrol`).
#[allow(clippy::too_many_arguments)]
pub async fn totp_enrol(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    checked_hash: &str,
    sealed: &[u8],
    account: &[u8],
    network: &str,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Enrolled, DbError> {
    let row = db
        .query_opt(
            "SELECT auth_totp_enrol($1, $2, $3, $4, $5, $6, $7, $8, $9) AS outcome",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&checked_hash, Type::TEXT),
                (&sealed, Type::BYTEA),
                (&account, Type::BYTEA),
                (&network, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("totp_enrol"))?;
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    match outcome.as_str() {
        "pending" => Ok(Enrolled::Pending),
        "enabled" => Ok(Enrolled::AlreadyEnabled),
        "conflict" => Ok(Enrolled::Conflict),
        _ => Err(DbError::NoRow("totp_enrol: unknown outcome")),
    }
}

/// What a TOTP route's write is told about the check it follows.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    /// The sealed secret the code was checked against (a replaced enrolment is a conflict).
    pub sealed: &'a [u8],
    /// The account's backoff key.
    pub account: &'a [u8],
    /// The source network.
    pub network: &'a str,
    /// The moment of the write (a retry of the call recognizes its own).
    pub now: DateTime<Utc>,
    /// Names the call, marking the sessions it ends.
    pub request: Uuid,
}

fn checked_params<'a>(checked: &'a Checked<'a>) -> [crate::db::Param<'a>; 5] {
    [
        (&checked.sealed, Type::BYTEA),
        (&checked.account, Type::BYTEA),
        (&checked.network, Type::TEXT),
        (&checked.now, Type::TIMESTAMPTZ),
        (&checked.request, Type::UUID),
    ]
}

/// Turns TOTP on with the step its first code matched and the recovery codes' HMACs; returns
/// whether it is on (see `auth_totp_confirm`).
#[allow(clippy::too_many_arguments)]
pub async fn totp_confirm(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    step: u64,
    recovery_hashes: &[Vec<u8>],
    checked: Checked<'_>,
    notice: Option<Queued<'_>>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let step = step_param(Some(step));
    let hashes: Vec<&[u8]> = recovery_hashes.iter().map(Vec::as_slice).collect();
    let [sealed, account, network, now, request] = checked_params(&checked);
    let row = db
        .query_opt(
            "SELECT auth_totp_confirm($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             AS outcome",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                sealed,
                (&step, Type::INT8),
                (&hashes, Type::BYTEA_ARRAY),
                account,
                network,
                now,
                request,
                (&notice.map(|q| q.id), Type::UUID),
                (&notice.map(|q| q.kind), Type::TEXT),
                (&notice.map(|q| q.sealed), Type::BYTEA),
                (&notice.map(|q| q.lease_until), Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("totp_confirm"))?;
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    Ok(outcome == "enabled")
}

/// What turning TOTP off came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disabled {
    /// Off (also when this is the retry of the call that turned it off).
    Disabled,
    /// The code's step was accepted already.
    Replayed,
    /// TOTP went off, was enrolled anew, the password changed or the session ended meanwhile.
    Conflict,
}

/// The factor a turn-off was checked with.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// The password, whose stored hash was this.
    Password(&'a str),
    /// A code, which matched this step.
    Code(u64),
}

/// Turns TOTP off after its check (see `auth_totp_disable`).
pub async fn totp_disable(
    db: &Db,
    user_id: Uuid,
    session_id: Uuid,
    proof: Proof<'_>,
    checked: Checked<'_>,
    notice: Option<Queued<'_>>,
    origin: &Origin,
) -> Result<Disabled, DbError> {
    let (hash, step) = match proof {
        Proof::Password(hash) => (Some(hash), None),
        Proof::Code(step) => (None, step_param(Some(step))),
    };
    let [sealed, account, network, now, request] = checked_params(&checked);
    let row = db
        .query_opt(
            "SELECT auth_totp_disable($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             AS outcome",
            &[
                (&user_id, Type::UUID),
                (&session_id, Type::UUID),
                (&hash, Type::TEXT),
                sealed,
                (&step, Type::INT8),
                account,
                network,
                now,
                request,
                (&notice.map(|q| q.id), Type::UUID),
                (&notice.map(|q| q.kind), Type::TEXT),
                (&notice.map(|q| q.sealed), Type::BYTEA),
                (&notice.map(|q| q.lease_until), Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("totp_disable"))?;
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    match outcome.as_str() {
        "disabled" => Ok(Disabled::Disabled),
        "replayed" => Ok(Disabled::Replayed),
        "conflict" => Ok(Disabled::Conflict),
        _ => Err(DbError::NoRow("totp_disable: unknown outcome")),
    }
}

/// A login with TOTP on passed its password check: stores the challenge of its second step,
/// bound to that password and that enrolment, with the audit row — only while the user is
/// active, `checked_hash` is still its hash and TOTP is still on (the user's row is
/// share-locked first, as in [`super::start_session`]). Returns whether it was stored. The
/// password was right, yet the attempt counted before its check stays counted: only the second
/// step's success clears the backoffs, so a stolen password does not buy unlimited code
/// guesses.
pub async fn start_challenge(
    db: &Db,
    hash: &[u8],
    user_id: Uuid,
    checked_hash: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "WITH u AS (SELECT id, mfa_enabled_at FROM users \
                        WHERE id = $2 AND hashed_password = $3 AND is_active AND mfa_enabled_at IS NOT NULL \
                        FOR SHARE), \
                  c AS (INSERT INTO mfa_challenges (hash, user_id, password_fingerprint, enrolled_at, \
                                                    created_at, expires_at, source_ip, user_agent) \
                        SELECT $1, id, sha256(convert_to($3, 'UTF8')), mfa_enabled_at, $4, $5, $6, $7 FROM u \
                        ON CONFLICT (hash) DO NOTHING RETURNING user_id), \
                  e AS (INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent) \
                        SELECT $4, 'mfa.challenge_started', user_id, $6, $7 FROM c) \
             SELECT EXISTS (SELECT 1 FROM c) \
                 OR EXISTS (SELECT 1 FROM mfa_challenges WHERE hash = $1 AND user_id = $2) AS started",
            &[
                (&hash, Type::BYTEA),
                (&user_id, Type::UUID),
                (&checked_hash, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&expires_at, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("start_challenge"))?;
    row.try_get("started").map_err(DbError::Query)
}

/// How a presented mfa_token stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Live: the attempt's standing with the limits, and the secret to check a code with.
    Live {
        /// How the attempt stood with the limits.
        attempt: Attempt,
        /// The sealed TOTP secret.
        sealed_secret: Vec<u8>,
    },
    /// Unknown, used, or no longer matching the password or the enrolment.
    Invalid,
    /// Ended by too many wrong codes.
    Exhausted,
    /// Past its lifetime.
    Expired,
}

/// Reads a presented mfa_token's challenge and, when it is live, counts the attempt against
/// the account's backoffs (see `auth_mfa_attempt`); guarded by the source network's window.
/// Returns the challenge's user when the token was known.
#[allow(clippy::too_many_arguments)]
pub async fn mfa_attempt(
    db: &Db,
    window: &Window<'_>,
    hash: &[u8],
    network: &str,
    attempt: Uuid,
    max_failures: u32,
    limits: LoginLimits,
    now: DateTime<Utc>,
) -> Result<Result<(Option<Uuid>, Challenge), Limited>, DbError> {
    let row = db
        .query_opt(
            windowed!(
                " SELECT w.wait, m.state, m.outcome, m.retry_until, m.user_id, m.sealed_secret \
                 FROM w LEFT JOIN LATERAL \
                      (SELECT * FROM auth_mfa_attempt($7, $8, $9, $10, $11, $12, $13, $14, $15) \
                       WHERE w.wait IS NULL OFFSET 0) m ON true"
            ),
            &window.with(&[
                (&hash, Type::BYTEA),
                (&network, Type::TEXT),
                (&attempt, Type::UUID),
                (&int(max_failures), Type::INT4),
                (&int(limits.network_after), Type::INT4),
                (&int(limits.account_after), Type::INT4),
                (&int(limits.lock_after), Type::INT4),
                (&limits.max_secs, Type::FLOAT8),
                (&now, Type::TIMESTAMPTZ),
            ]),
        )
        .await?
        .ok_or(DbError::NoRow("mfa_attempt"))?;
    if let Err(limited) = counted(&row)? {
        return Ok(Err(limited));
    }
    let user_id: Option<Uuid> = row.try_get("user_id").map_err(DbError::Query)?;
    let state: String = row.try_get("state").map_err(DbError::Query)?;
    let challenge = match state.as_str() {
        "live" => Challenge::Live {
            attempt: attempt_from(&row, "mfa_attempt: unknown outcome")?,
            sealed_secret: row
                .try_get::<_, Option<Vec<u8>>>("sealed_secret")
                .map_err(DbError::Query)?
                .ok_or(DbError::NoRow("mfa_attempt: no secret"))?,
        },
        "invalid" => Challenge::Invalid,
        "exhausted" => Challenge::Exhausted,
        "expired" => Challenge::Expired,
        _ => return Err(DbError::NoRow("mfa_attempt: unknown state")),
    };
    Ok(Ok((user_id, challenge)))
}

/// The second factor as checked before [`mfa_finish`].
#[derive(Debug, Clone, Copy)]
pub enum SecondFactor<'a> {
    /// A code that matched this step.
    Step(u64),
    /// A code that matched no step of the window.
    WrongCode,
    /// A recovery code, by its HMAC.
    RecoveryCode(&'a [u8]),
}

/// What the second step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The session started.
    Succeeded {
        /// Whose.
        user_id: Uuid,
        /// Whether the address is proven, for the token's claim.
        email_verified: bool,
        /// How it was established.
        factors: Factors,
    },
    /// A wrong, replayed or used code: the challenge's wrong codes so far.
    Wrong {
        /// Whose challenge.
        user_id: Uuid,
        /// Its wrong codes, this one included.
        failures: u32,
    },
    /// The challenge ended meanwhile.
    Invalid,
}

/// The session a successful second step starts.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    /// Its id, chosen by the caller (a retry finds its own).
    pub id: Uuid,
    /// SHA-256 of its first refresh token.
    pub refresh_hash: &'a [u8],
    /// Its absolute limit.
    pub expires_at: DateTime<Utc>,
}

/// Finishes login's second step (see `auth_mfa_finish`).
#[allow(clippy::too_many_arguments)]
pub async fn mfa_finish(
    db: &Db,
    hash: &[u8],
    factor: SecondFactor<'_>,
    session: NewSession<'_>,
    network: &str,
    attempt: Uuid,
    max_failures: u32,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Finished, DbError> {
    let (step, recovery) = match factor {
        SecondFactor::Step(step) => (step_param(Some(step)), None),
        SecondFactor::WrongCode => (None, None),
        SecondFactor::RecoveryCode(hash) => (None, Some(hash)),
    };
    let row = db
        .query_opt(
            "SELECT outcome, user_id, failures, email_verified, amr \
             FROM auth_mfa_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                (&hash, Type::BYTEA),
                (&step, Type::INT8),
                (&recovery, Type::BYTEA),
                (&session.id, Type::UUID),
                (&session.refresh_hash, Type::BYTEA),
                (&network, Type::TEXT),
                (&attempt, Type::UUID),
                (&int(max_failures), Type::INT4),
                (&now, Type::TIMESTAMPTZ),
                (&session.expires_at, Type::TIMESTAMPTZ),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("mfa_finish"))?;
    let outcome: String = row.try_get("outcome").map_err(DbError::Query)?;
    let user_id = |row: &Row| -> Result<Uuid, DbError> {
        row.try_get::<_, Option<Uuid>>("user_id")
            .map_err(DbError::Query)?
            .ok_or(DbError::NoRow("mfa_finish: no user"))
    };
    Ok(match outcome.as_str() {
        "succeeded" => Finished::Succeeded {
            user_id: user_id(&row)?,
            email_verified: row.try_get("email_verified").map_err(DbError::Query)?,
            factors: super::factors_from(&row)?,
        },
        "wrong" => {
            let failures: i32 = row.try_get("failures").map_err(DbError::Query)?;
            Finished::Wrong {
                user_id: user_id(&row)?,
                failures: u32::try_from(failures).unwrap_or(0),
            }
        }
        "invalid" => Finished::Invalid,
        _ => return Err(DbError::NoRow("mfa_finish: unknown outcome")),
    })
}

/// Turns TOTP off for the account with this email, its codes and challenges gone and every
/// session ended, with an audit row (`authctl mfa reset`). Returns whether the account exists.
pub async fn mfa_reset(
    db: &Db,
    email: &Email,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<bool, DbError> {
    let row = db
        .query_opt(
            "SELECT auth_mfa_reset($1, $2, $3, $4, $5) AS found",
            &[
                (&email.as_str(), Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&Uuid::new_v4(), Type::UUID),
                (&origin.source_ip, Type::TEXT),
                (&origin.user_agent, Type::TEXT),
            ],
        )
        .await?
        .ok_or(DbError::NoRow("mfa_reset"))?;
    row.try_get("found").map_err(DbError::Query)
}
