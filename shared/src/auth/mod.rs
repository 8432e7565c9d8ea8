//! The operations — register, login, refresh, logout, current user — as plain async functions
//! on [`AppState`]. No Lambda or HTTP types here: `http` parses requests into these arguments
//! and renders the results. Each outcome is logged once, as a structured event, and written to
//! the audit table, in the same round trip as the action where there is one.

use crate::{
    AppState,
    db::DbError,
    email::{Email, mask},
    error::AuthError,
    mail::{
        Notice,
        outbox::{self, Prepared},
    },
    origin::Origin,
    password::{self, NewPassword},
    refresh,
    store::{
        self, Attempt, AuditEvent, InsertError, Limited, LoginLimits, NewLink, RefreshOutcome,
        SessionUser, User, Window,
    },
    token::{AccessToken, Factors, IssuedToken, TokenRejection},
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

mod account;
mod mfa;
mod refused;
pub use account::*;
pub use mfa::*;
pub use refused::Refused;

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

/// The one audit writer: best effort, so a failure is logged and changes no answer.
async fn audit(state: &AppState, event: AuditEvent<'_>, origin: &Origin) {
    if let Err(error) = store::audit(&state.db, &event, state.now(), origin).await {
        let error = match &error {
            DbError::Query(e) => crate::db::describe(e),
            other => format!("{other:?}"),
        };
        tracing::warn!(audit_event = event.event, error, "audit row not written");
    }
}

/// The thresholds of the per-account limits, which every password check counts against.
fn login_limits(config: &crate::config::Config) -> LoginLimits {
    LoginLimits {
        network_after: config.login_backoff_after,
        account_after: config.login_account_backoff_after,
        lock_after: config.login_lock_after,
        max_secs: config.login_backoff_max.as_secs_f64(),
    }
}

fn seconds_until(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (until - now).num_milliseconds().max(0);
    u64::try_from(millis).unwrap_or(0).div_ceil(1000).max(1)
}

/// A request's place in its source network's window (docs/api.md "Limits against guessing"),
/// counted by the statement that does the route's work, so that it costs no round trip.
fn window<'a>(state: &AppState, origin: &'a Origin, route: &'static str) -> Window<'a> {
    Window::new(
        origin,
        state.config.ip_rate_limit_per_minute,
        route,
        state.now(),
    )
}

/// The window's refusal, logged and remembered; the statement that found the window full wrote
/// its audit row.
fn limited(state: &AppState, window: &Window<'_>, Limited(retry_after_secs): Limited) -> AuthError {
    tracing::info!(
        event = "rate_limit.exceeded",
        route = window.route(),
        retry_after_secs
    );
    if let Some(network) = window.network() {
        state
            .refused
            .remember(network, retry_after_secs, *window.now());
    }
    AuthError::TooManyRequests { retry_after_secs }
}

/// A request refused before any other database work, on a route the window guards: its audit
/// row and the window's count are one statement, and over the window the answer is the
/// window's `429`. A database that cannot be reached for it leaves `error` standing.
async fn refused(
    state: &AppState,
    window: &Window<'_>,
    event: AuditEvent<'_>,
    error: AuthError,
    origin: &Origin,
) -> AuthError {
    match store::refuse(&state.db, window, &event, origin).await {
        Ok(Ok(())) => error,
        Ok(Err(over)) => limited(state, window, over),
        Err(db_error) => {
            tracing::warn!(audit_event = event.event, error = ?db_error, "audit row not written");
            error
        }
    }
}

/// The source network's window alone, for a request with no statement of its own to count it
/// in. A request it rejects is not counted.
pub async fn check_source_address(
    state: &AppState,
    origin: &Origin,
    route: &'static str,
) -> Result<(), AuthError> {
    let window = window(state, origin, route);
    store::window(&state.db, &window)
        .await?
        .map_err(|over| limited(state, &window, over))
}

/// Register's window. Register hashes the password (and may ask the breach API) before the
/// statement that counts its window: for a network this instance saw the window refuse, and
/// whose wait is not over, the window is checked first by a statement of its own, so a client
/// over its window costs no argon2 run. Counted there, the request is not counted again.
async fn register_window<'a>(
    state: &AppState,
    origin: &'a Origin,
) -> Result<Window<'a>, AuthError> {
    let window = window(state, origin, "register");
    let now = *window.now();
    let remembered = window
        .network()
        .is_some_and(|network| state.refused.wait(network, now).is_some());
    if !remembered {
        return Ok(window);
    }
    store::window(&state.db, &window)
        .await?
        .map_err(|over| limited(state, &window, over))?;
    Ok(Window::new(origin, 0, "register", now))
}

/// Registers a new account: validates the email and the password, hashes the password and
/// inserts the row, letting the unique index settle races.
pub async fn register(
    state: &AppState,
    credentials: Credentials,
    origin: &Origin,
) -> Result<User, AuthError> {
    let window = &register_window(state, origin).await?;
    let parsed = Email::parse(&credentials.email);
    let masked = parsed
        .as_ref()
        .map_or_else(|_| "***".to_owned(), Email::masked);
    let masked = &masked;
    // Refused before the insert: the refusal's statement is the one the window counts.
    let rejected = |reason: &'static str, error: AuthError| async move {
        tracing::info!(event = "register.rejected", reason, email = %masked);
        let event = AuditEvent::refusal("register.rejected", reason);
        refused(state, window, event, error, origin).await
    };
    let email = match parsed {
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
    if crate::breach::is_breached(&state.config.password_breach, &password).await {
        return Err(rejected("breached_password", AuthError::WeakPassword).await);
    }
    let hash = state.passwords()?.hash(&password).await?;
    // Taken after the breach check and argon2, which take their time: the row, its lease and
    // its link's lifetime start now.
    let now = state.now();
    // With mail on, the verification link and its message are stored by the insert itself.
    let verification = state.mailer.as_ref().map(|mailer| {
        let raw = refresh::generate();
        let notice = Notice::VerifyEmail {
            token: refresh::encode(&raw),
        };
        (
            mailer,
            refresh::hash(&raw),
            Prepared::new(mailer, email.as_str(), notice),
        )
    });
    let stored = verification.as_ref().map(|(_, hash, prepared)| {
        (
            NewLink {
                hash,
                expires_at: now + state.config.mail.verify_ttl,
            },
            prepared.queued(state, now),
        )
    });
    match store::insert_user(&state.db, window, &email, &hash, origin, now, stored).await {
        Ok(user) => {
            tracing::info!(event = "user.registered", user_id = %user.id, email = %email.masked());
            if let Some((mailer, _, prepared)) = &verification {
                outbox::deliver(state, mailer, prepared, state.config.mail.smtp_timeout).await;
            }
            Ok(user)
        }
        Err(InsertError::EmailTaken) => {
            // The insert was counted in the window already.
            tracing::info!(event = "register.rejected", reason = "email_taken", email = %masked);
            let event = AuditEvent::refusal("register.rejected", "email_taken");
            audit(state, event, origin).await;
            Err(AuthError::EmailTaken)
        }
        Err(InsertError::Limited(over)) => Err(limited(state, window, over)),
        Err(InsertError::Db(e)) => Err(e.into()),
    }
}

/// Logs in: honours the lock and the backoffs (of the account from this network, and of the
/// account across all networks), checks the password (against a dummy hash when there is no
/// account, so both failures take the same time), rehashes a hash weaker than the current
/// parameters, starts a session and issues its tokens — or, with TOTP on, answers
/// `401 mfa_required` with the token of the second step ([`verify_mfa`]) and starts none.
pub async fn login(
    state: &AppState,
    credentials: Credentials,
    origin: &Origin,
) -> Result<Tokens, AuthError> {
    let now = state.now();
    let password = password::normalize(&credentials.password);
    let email = Email::parse(&credentials.email).ok();
    let account = store::account_key(email.as_ref(), &credentials.email);
    let network = origin.network();
    let config = &state.config;
    let limits = login_limits(config);
    let window = window(state, origin, "login");
    let (found, attempt) = store::login_attempt(
        &state.db,
        &window,
        email.as_ref(),
        &account,
        &network,
        Uuid::new_v4(),
        limits,
        now,
    )
    .await?
    .map_err(|over| limited(state, &window, over))?;
    let masked = email
        .as_ref()
        .map_or_else(|| "***".to_owned(), Email::masked);
    let user_id = found.as_ref().map(|f| f.user.id);
    // A refusal by the limits is counted into its minute's row; a checked failure is a row.
    let failed = |reason: &'static str, refusal: bool| AuditEvent {
        event: "login.failed",
        reason: Some(reason),
        user_id,
        session_id: None,
        refusal,
    };

    match attempt {
        Attempt::Counted => {}
        Attempt::Blocked(until) => {
            let retry_after_secs = until.map_or(1, |until| seconds_until(until, now));
            tracing::info!(event = "login.failed", reason = "too_many_attempts", email = %masked, retry_after_secs);
            audit(state, failed("too_many_attempts", true), origin).await;
            return Err(AuthError::TooManyRequests { retry_after_secs });
        }
        Attempt::Locked => {
            tracing::info!(event = "login.failed", reason = "account_locked", email = %masked);
            audit(state, failed("account_locked", true), origin).await;
            return Err(AuthError::AccountLocked);
        }
    }

    let stored = found.as_ref().map(|f| f.hashed_password.as_str());
    let matched = state.passwords()?.verify(&password, stored).await?;
    let failure = match (&email, &found) {
        (None, _) => Some("malformed_email"),
        (Some(_), None) => Some("unknown_email"),
        (Some(_), Some(_)) if !matched => Some("bad_password"),
        _ => None,
    };
    if let Some(reason) = failure {
        tracing::info!(event = "login.failed", reason, user_id = user_id.map(tracing::field::display), email = %masked);
        audit(state, failed(reason, false), origin).await;
        return Err(AuthError::InvalidCredentials);
    }
    let Some(found) = found else {
        return Err(AuthError::InvalidCredentials);
    };
    let user = &found.user;
    let refused = if !user.is_active {
        Some(("account_disabled", AuthError::AccountDisabled))
    } else if state.config.require_verified_email && !user.email_verified {
        Some(("email_not_verified", AuthError::EmailNotVerified))
    } else {
        None
    };
    if let Some((reason, error)) = refused {
        tracing::info!(event = "login.failed", reason, user_id = %user.id, email = %masked);
        audit(state, failed(reason, false), origin).await;
        // The password was right: the attempt counted before the check is no failure.
        store::clear_backoff(&state.db, &account, &network).await?;
        return Err(error);
    }
    // The hash the session is started under: the checked one, or its upgrade.
    let mut checked = found.hashed_password.clone();
    if state.passwords()?.needs_rehash(&checked)
        && let Some(upgraded) = rehash(state, user, &checked, &password).await
    {
        checked = upgraded;
    }
    if user.mfa_enabled {
        return Err(mfa::challenge(state, user.id, &checked, now, origin).await?);
    }

    let session_id = Uuid::new_v4();
    let raw = refresh::generate();
    let expires_at = now + state.config.session_max;
    let started = store::start_session(
        &state.db,
        user.id,
        session_id,
        &refresh::hash(&raw),
        &checked,
        &account,
        &network,
        now,
        expires_at,
        origin,
    )
    .await?;
    if !started {
        // The password changed (a reset, a change) or the account was disabled or deleted
        // since the check: the password given is no longer the account's.
        tracing::info!(event = "login.failed", reason = "changed_meanwhile", user_id = %user.id, email = %masked);
        audit(state, failed("changed_meanwhile", false), origin).await;
        return Err(AuthError::InvalidCredentials);
    }
    let access = issue(
        state,
        user.id,
        session_id,
        user.email_verified,
        Factors::Password,
        now,
    )?;
    tracing::info!(event = "login.succeeded", user_id = %user.id, session_id = %session_id);
    Ok(Tokens {
        access,
        refresh_token: refresh::encode(&raw),
    })
}

fn issue(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    email_verified: bool,
    factors: Factors,
    now: DateTime<Utc>,
) -> Result<IssuedToken, AuthError> {
    state
        .tokens
        .issue(
            user_id,
            session_id,
            email_verified,
            factors,
            now.timestamp(),
        )
        .map_err(|error| {
            tracing::error!(%error, "token signing failed");
            AuthError::Internal
        })
}

/// Upgrades a stored hash to the current parameters. A failure here must not fail the login.
/// Returns the new hash when it replaced `old`.
async fn rehash(state: &AppState, user: &User, old: &str, password: &str) -> Option<String> {
    let passwords = state.passwords().ok()?;
    let new = passwords.rehash(password).await.ok()?;
    match store::update_password_hash(&state.db, user.id, old, &new).await {
        Ok(changed) => {
            tracing::info!(event = "password.rehashed", user_id = %user.id, changed);
            changed.then_some(new)
        }
        Err(_) => {
            tracing::warn!(event = "password.rehash_failed", user_id = %user.id);
            None
        }
    }
}

/// Exchanges a refresh token for a new access token and the token's successor. A rotated token
/// presented again inside the grace window gets the same successor while that successor is
/// still live; after the window, the session ends.
pub async fn refresh(
    state: &AppState,
    refresh_token: &str,
    origin: &Origin,
) -> Result<Tokens, AuthError> {
    let now = state.now();
    let window = window(state, origin, "refresh");
    let Some(raw) = refresh::decode(refresh_token) else {
        tracing::info!(event = "refresh.failed", reason = "malformed");
        let event = AuditEvent::refusal("refresh.failed", "malformed");
        return Err(refused(state, &window, event, AuthError::InvalidToken, origin).await);
    };
    let next = refresh::successor(state.refresh_key()?, &raw);
    let refreshed = store::refresh(
        &state.db,
        &window,
        &refresh::hash(&raw),
        &refresh::hash(&next),
        now,
        state.config.refresh_grace.as_secs_f64(),
        state.config.session_idle.as_secs_f64(),
        origin,
    )
    .await?
    .map_err(|over| limited(state, &window, over))?;
    let user = refreshed.user_id.map(tracing::field::display);
    let session = refreshed.session_id.map(tracing::field::display);
    match (refreshed.outcome, refreshed.user_id, refreshed.session_id) {
        (
            outcome @ (RefreshOutcome::Rotated | RefreshOutcome::Grace),
            Some(user_id),
            Some(session_id),
        ) => {
            let access = issue(
                state,
                user_id,
                session_id,
                refreshed.email_verified,
                refreshed.factors,
                now,
            )?;
            tracing::info!(
                event = "refresh.succeeded",
                user_id = user,
                session_id = session,
                grace = outcome == RefreshOutcome::Grace
            );
            Ok(Tokens {
                access,
                refresh_token: refresh::encode(&next),
            })
        }
        (RefreshOutcome::ReuseDetected, ..) => {
            tracing::warn!(
                event = "refresh.reuse_detected",
                user_id = user,
                session_id = session
            );
            Err(AuthError::InvalidToken)
        }
        (outcome, ..) => {
            tracing::info!(
                event = "refresh.failed",
                reason = outcome.reason(),
                user_id = user,
                session_id = session
            );
            Err(AuthError::InvalidToken)
        }
    }
}

/// A bearer route refuses a token: the refusal counts against the source network's window (so
/// a flood of garbage tokens meets `429`, while a valid token is never slowed by it) and is
/// audited as a refusal.
async fn refuse(
    state: &AppState,
    route: &'static str,
    event: AuditEvent<'static>,
    error: AuthError,
    origin: &Origin,
) -> AuthError {
    let answer = refused(state, &window(state, origin, route), event, error, origin).await;
    if !matches!(answer, AuthError::TooManyRequests { .. }) {
        tracing::info!(
            event = "token.rejected",
            reason = event.reason,
            user_id = event.user_id.map(tracing::field::display),
            session_id = event.session_id.map(tracing::field::display)
        );
    }
    answer
}

/// Verifies an access token; a refused one goes through [`refuse`].
async fn verified(
    state: &AppState,
    route: &'static str,
    bearer: &str,
    origin: &Origin,
) -> Result<AccessToken, AuthError> {
    match state.tokens.verify(bearer) {
        Ok(token) => Ok(token),
        Err(rejection) => {
            let error = match rejection {
                TokenRejection::Expired => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            };
            let event = AuditEvent::refusal("token.rejected", rejection.reason());
            Err(refuse(state, route, event, error, origin).await)
        }
    }
}

/// The refusal of a verified token whose session or user no longer allows it.
async fn refuse_token(
    state: &AppState,
    route: &'static str,
    token: &AccessToken,
    reason: &'static str,
    origin: &Origin,
) -> AuthError {
    let event = AuditEvent {
        user_id: Some(token.user_id),
        session_id: Some(token.session_id),
        ..AuditEvent::refusal("token.rejected", reason)
    };
    refuse(state, route, event, AuthError::InvalidToken, origin).await
}

/// The user a bearer token names, re-read with its session in one round trip, so that a
/// deleted or disabled account, or an ended session, stops working at once.
pub async fn current_user(
    state: &AppState,
    bearer: &str,
    origin: &Origin,
) -> Result<User, AuthError> {
    const ROUTE: &str = "me";
    let token = verified(state, ROUTE, bearer, origin).await?;
    let now = state.now();
    let idle_cutoff = now - state.config.session_idle;
    let reason =
        match store::session_user(&state.db, token.user_id, token.session_id, now, idle_cutoff)
            .await?
        {
            SessionUser::Live(user) => return Ok(user),
            SessionUser::Inactive => "user_inactive",
            SessionUser::SessionEnded => "session_ended",
            SessionUser::Gone => "user_gone",
        };
    Err(refuse_token(state, ROUTE, &token, reason, origin).await)
}

/// Ends the bearer token's session, or all its user's sessions with `global`. A token whose
/// session already ended is refused, so a second logout with it is a 401.
pub async fn logout(
    state: &AppState,
    bearer: &str,
    global: bool,
    origin: &Origin,
) -> Result<(), AuthError> {
    const ROUTE: &str = "logout";
    let token = verified(state, ROUTE, bearer, origin).await?;
    let now = state.now();
    let idle_cutoff = now - state.config.session_idle;
    let ended = store::end_sessions(
        &state.db,
        token.user_id,
        token.session_id,
        global,
        now,
        idle_cutoff,
        Uuid::new_v4(),
        origin,
    )
    .await?;
    if !ended {
        return Err(refuse_token(state, ROUTE, &token, "session_ended", origin).await);
    }
    tracing::info!(event = "logout.succeeded", user_id = %token.user_id, session_id = %token.session_id, global);
    Ok(())
}
