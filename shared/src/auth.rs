//! The operations — register, login, refresh, logout, current user — as plain async functions
//! on [`AppState`]. No Lambda or HTTP types here: `http` parses requests into these arguments
//! and renders the results. Each outcome is logged once, as a structured event, and written to
//! the audit table, in the same round trip as the action where there is one.

use crate::{
    AppState,
    db::{DbError, RETRY_AFTER_SECS},
    email::{Email, mask},
    error::AuthError,
    password::{self, NewPassword},
    store::{self, Attempt, Client, InsertError, SessionUser, User},
    token::{AccessToken, IssuedToken, TokenRejection},
};
use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use uuid::Uuid;

/// Email and password as the client sent them (unnormalized, unvalidated).
pub struct Credentials {
    /// Raw email.
    pub email: String,
    /// Raw password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("email", &mask(&self.email))
            .finish_non_exhaustive()
    }
}

/// What login and refresh return: an access token and the session's current refresh token.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The access token.
    pub access: IssuedToken,
    /// The opaque refresh token (256 random bits, base64url).
    pub refresh_token: String,
}

fn db_failure(error: DbError) -> AuthError {
    match error {
        DbError::Unavailable => AuthError::ServiceUnavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        },
        DbError::UniqueViolation { constraint, .. } => {
            tracing::error!(constraint, "unexpected unique violation");
            AuthError::Internal
        }
        DbError::Query(error) => {
            tracing::error!(error = crate::db::describe(&error), "database query failed");
            AuthError::Internal
        }
    }
}

fn seconds_until(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (until - now).num_milliseconds().max(0);
    u64::try_from(millis).unwrap_or(0).div_ceil(1000).max(1)
}

/// The per-source-address window shared by register, login and refresh. A request it rejects
/// is not counted.
pub async fn check_source_address(
    state: &AppState,
    client: &Client,
    route: &'static str,
) -> Result<(), AuthError> {
    let limit = state.config.ip_rate_limit_per_minute;
    let Some(ip) = client.source_ip.as_deref().filter(|_| limit > 0) else {
        return Ok(());
    };
    let now = state.now();
    match store::ip_allow(&state.db, ip, limit, now)
        .await
        .map_err(db_failure)?
    {
        None => Ok(()),
        Some(retry_after_secs) => {
            tracing::info!(event = "rate_limit.exceeded", route, retry_after_secs);
            // Best effort: a failed audit write does not change the answer.
            let _ = store::audit(
                &state.db,
                "rate_limit.exceeded",
                None,
                None,
                Some(route),
                now,
                client,
            )
            .await;
            Err(AuthError::TooManyRequests { retry_after_secs })
        }
    }
}

/// Registers a new account: validates the email and the password, hashes the password and
/// inserts the row, letting the unique index settle races.
pub async fn register(
    state: &AppState,
    credentials: Credentials,
    client: &Client,
) -> Result<User, AuthError> {
    let now = state.now();
    let masked = mask(credentials.email.trim());
    let masked = &masked;
    let rejected = |reason: &'static str, error: AuthError| async move {
        tracing::info!(event = "register.rejected", reason, email = %masked);
        let _ = store::audit(
            &state.db,
            "register.rejected",
            None,
            None,
            Some(reason),
            now,
            client,
        )
        .await;
        error
    };
    let email = match Email::parse(&credentials.email) {
        Ok(email) => email,
        Err(e) => return Err(rejected("invalid_email", e).await),
    };
    let password = match NewPassword::parse(
        &credentials.password,
        &email,
        state.config.password_min_length,
    ) {
        Ok(password) => password,
        Err(AuthError::WeakPassword) => {
            return Err(rejected("weak_password", AuthError::WeakPassword).await);
        }
        Err(e) => return Err(rejected("invalid_password", e).await),
    };
    let hash = state.passwords.hash(&password).await?;
    match store::insert_user(&state.db, &email, &hash, client, now).await {
        Ok(user) => {
            tracing::info!(event = "user.registered", user_id = %user.id, email = %email.masked());
            Ok(user)
        }
        Err(InsertError::EmailTaken) => Err(rejected("email_taken", AuthError::EmailTaken).await),
        Err(InsertError::Db(e)) => Err(db_failure(e)),
    }
}

/// The per-account backoff key: SHA-256 of the normalized email, or of the trimmed,
/// lower-cased input when it is no valid email. Raw input is never stored.
fn throttle_key(email: Option<&Email>, raw: &str) -> Vec<u8> {
    let basis = email.map_or_else(|| raw.trim().to_lowercase(), |e| e.as_str().to_owned());
    digest::digest(&digest::SHA256, basis.as_bytes())
        .as_ref()
        .to_vec()
}

/// Logs in: honours the account's backoff, checks the password (against a dummy hash when
/// there is no account, so both failures take the same time), rehashes a hash weaker than the
/// current parameters, starts a session and issues its tokens.
pub async fn login(
    state: &AppState,
    credentials: Credentials,
    client: &Client,
) -> Result<Tokens, AuthError> {
    let now = state.now();
    let password = password::normalize(&credentials.password);
    let email = Email::parse(&credentials.email).ok();
    let key = throttle_key(email.as_ref(), &credentials.email);
    let config = &state.config;
    let (found, attempt) = store::login_attempt(
        &state.db,
        email.as_ref(),
        &key,
        config.login_backoff_after,
        config.login_backoff_max.as_secs_f64(),
        now,
    )
    .await
    .map_err(db_failure)?;
    let masked = mask(credentials.email.trim());
    let user_id = found.as_ref().map(|f| f.user.id);

    if let Attempt::Blocked(until) = attempt {
        let retry_after_secs = until.map_or(1, |until| seconds_until(until, now));
        tracing::info!(event = "login.failed", reason = "too_many_attempts", email = %masked, retry_after_secs);
        let _ = store::audit(
            &state.db,
            "login.failed",
            user_id,
            None,
            Some("too_many_attempts"),
            now,
            client,
        )
        .await;
        return Err(AuthError::TooManyRequests { retry_after_secs });
    }

    let stored = found.as_ref().map(|f| f.hashed_password.as_str());
    let matched = state.passwords.verify(&password, stored).await?;
    let failure = match (&email, &found) {
        (None, _) => Some("malformed_email"),
        (Some(_), None) => Some("unknown_email"),
        (Some(_), Some(_)) if !matched => Some("bad_password"),
        _ => None,
    };
    if let Some(reason) = failure {
        tracing::info!(event = "login.failed", reason, user_id = user_id.map(tracing::field::display), email = %masked);
        store::audit(
            &state.db,
            "login.failed",
            user_id,
            None,
            Some(reason),
            now,
            client,
        )
        .await
        .map_err(db_failure)?;
        return Err(AuthError::InvalidCredentials);
    }
    let Some(found) = found else {
        return Err(AuthError::InvalidCredentials);
    };
    let user = &found.user;
    if !user.is_active {
        tracing::info!(event = "login.failed", reason = "account_disabled", user_id = %user.id, email = %masked);
        let _ = store::audit(
            &state.db,
            "login.failed",
            Some(user.id),
            None,
            Some("account_disabled"),
            now,
            client,
        )
        .await;
        return Err(AuthError::AccountDisabled);
    }
    if state.passwords.needs_rehash(&found.hashed_password) {
        rehash(state, user, &found.hashed_password, &password).await;
    }

    let session_id = Uuid::new_v4();
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let expires_at = now + state.config.session_max;
    store::start_session(
        &state.db,
        user.id,
        session_id,
        &hash_refresh(&raw),
        &key,
        now,
        expires_at,
        client,
    )
    .await
    .map_err(db_failure)?;
    let access = issue(state, user.id, session_id, now)?;
    tracing::info!(event = "login.succeeded", user_id = %user.id, session_id = %session_id);
    Ok(Tokens {
        access,
        refresh_token: encode_refresh(&raw),
    })
}

fn issue(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<IssuedToken, AuthError> {
    state
        .tokens
        .issue(user_id, session_id, now.timestamp())
        .map_err(|error| {
            tracing::error!(%error, "token signing failed");
            AuthError::Internal
        })
}

/// Upgrades a stored hash to the current parameters. A failure here must not fail the login.
async fn rehash(state: &AppState, user: &User, old: &str, password: &str) {
    let Ok(new) = state.passwords.rehash(password).await else {
        return;
    };
    match store::update_password_hash(&state.db, user.id, old, &new).await {
        Ok(changed) => tracing::info!(event = "password.rehashed", user_id = %user.id, changed),
        Err(_) => tracing::warn!(event = "password.rehash_failed", user_id = %user.id),
    }
}

fn encode_refresh(raw: &[u8; 32]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_refresh(token: &str) -> Option<[u8; 32]> {
    if token.len() != 43 {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?
        .try_into()
        .ok()
}

fn hash_refresh(raw: &[u8; 32]) -> Vec<u8> {
    digest::digest(&digest::SHA256, raw).as_ref().to_vec()
}

/// The successor of a refresh token: a keyed hash of it, so a client racing inside the grace
/// window is given the same successor without the successor ever being stored.
fn successor(state: &AppState, raw: &[u8; 32]) -> [u8; 32] {
    let tag = hmac::sign(&state.refresh_key, raw);
    let mut out = [0u8; 32];
    out.copy_from_slice(&tag.as_ref()[..32]);
    out
}

/// Exchanges a refresh token for a new access token and the token's successor. A rotated token
/// presented again inside the grace window gets the same successor; after it, the session ends.
pub async fn refresh(
    state: &AppState,
    refresh_token: &str,
    client: &Client,
) -> Result<Tokens, AuthError> {
    let now = state.now();
    let Some(raw) = decode_refresh(refresh_token) else {
        tracing::info!(event = "refresh.failed", reason = "malformed");
        let _ = store::audit(
            &state.db,
            "refresh.failed",
            None,
            None,
            Some("malformed"),
            now,
            client,
        )
        .await;
        return Err(AuthError::InvalidToken);
    };
    let next = successor(state, &raw);
    let outcome = store::refresh(
        &state.db,
        &hash_refresh(&raw),
        &hash_refresh(&next),
        now,
        state.config.refresh_grace.as_secs_f64(),
        state.config.session_idle.as_secs_f64(),
        client,
    )
    .await
    .map_err(db_failure)?;
    let user = outcome.user_id.map(tracing::field::display);
    let session = outcome.session_id.map(tracing::field::display);
    match (
        outcome.outcome.as_str(),
        outcome.user_id,
        outcome.session_id,
    ) {
        ("rotated" | "grace", Some(user_id), Some(session_id)) => {
            let access = issue(state, user_id, session_id, now)?;
            tracing::info!(
                event = "refresh.succeeded",
                user_id = user,
                session_id = session,
                grace = outcome.outcome == "grace"
            );
            Ok(Tokens {
                access,
                refresh_token: encode_refresh(&next),
            })
        }
        ("reuse_detected", ..) => {
            tracing::warn!(
                event = "refresh.reuse_detected",
                user_id = user,
                session_id = session
            );
            Err(AuthError::InvalidToken)
        }
        (reason, ..) => {
            tracing::info!(
                event = "refresh.failed",
                reason,
                user_id = user,
                session_id = session
            );
            Err(AuthError::InvalidToken)
        }
    }
}

/// Verifies an access token and writes a `token.rejected` audit row when it is refused.
async fn verified(
    state: &AppState,
    bearer: &str,
    client: &Client,
) -> Result<AccessToken, AuthError> {
    match state.tokens.verify(bearer) {
        Ok(token) => Ok(token),
        Err(rejection) => {
            let reason = rejection.reason();
            tracing::info!(event = "token.rejected", reason);
            let _ = store::audit(
                &state.db,
                "token.rejected",
                None,
                None,
                Some(reason),
                state.now(),
                client,
            )
            .await;
            Err(match rejection {
                TokenRejection::Expired => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })
        }
    }
}

async fn refuse(
    state: &AppState,
    token: &AccessToken,
    reason: &'static str,
    client: &Client,
) -> AuthError {
    tracing::info!(event = "token.rejected", reason, user_id = %token.user_id, session_id = %token.session_id);
    let _ = store::audit(
        &state.db,
        "token.rejected",
        Some(token.user_id),
        Some(token.session_id),
        Some(reason),
        state.now(),
        client,
    )
    .await;
    AuthError::InvalidToken
}

/// The user a bearer token names, re-read with its session in one round trip, so that a
/// deleted or disabled account, or an ended session, stops working at once.
pub async fn current_user(
    state: &AppState,
    bearer: &str,
    client: &Client,
) -> Result<User, AuthError> {
    let token = verified(state, bearer, client).await?;
    let now = state.now();
    let idle_cutoff = now - state.config.session_idle;
    match store::session_user(&state.db, token.user_id, token.session_id, now, idle_cutoff)
        .await
        .map_err(db_failure)?
    {
        SessionUser::Live(user) => Ok(user),
        SessionUser::Inactive => Err(refuse(state, &token, "user_inactive", client).await),
        SessionUser::SessionEnded => Err(refuse(state, &token, "session_ended", client).await),
        SessionUser::Gone => Err(refuse(state, &token, "user_gone", client).await),
    }
}

/// Ends the bearer token's session, or all its user's sessions with `global`. A token whose
/// session already ended is refused, so a second logout with it is a 401.
pub async fn logout(
    state: &AppState,
    bearer: &str,
    global: bool,
    client: &Client,
) -> Result<(), AuthError> {
    let token = verified(state, bearer, client).await?;
    let now = state.now();
    let idle_cutoff = now - state.config.session_idle;
    let ended = store::end_sessions(
        &state.db,
        token.user_id,
        token.session_id,
        global,
        now,
        idle_cutoff,
        client,
    )
    .await
    .map_err(db_failure)?;
    if !ended {
        return Err(refuse(state, &token, "session_ended", client).await);
    }
    tracing::info!(event = "logout.succeeded", user_id = %token.user_id, session_id = %token.session_id, global);
    Ok(())
}
