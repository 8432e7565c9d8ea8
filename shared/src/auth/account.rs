//! The account operations (docs/api.md "Account"): email verification and its resend, forgot /
//! reset / change password, deleting the account, and the sessions list. Link tokens are 256
//! random bits, base64url, stored by hash, single-use and bound to one user and one purpose.

use super::{audit, login_limits, refuse_token, seconds_until, verified};
use crate::{
    AppState,
    email::Email,
    error::AuthError,
    mail::{
        Mailer, Notice,
        outbox::{self, Prepared},
    },
    origin::Origin,
    password::{self, NewPassword},
    refresh,
    store::{
        self, Attempt, AuditEvent, LinkPurpose, LinkRefusal, MailLimits, MailRequest, NewLink,
        SessionInfo, SessionUser, Unauthorized, User, Window,
    },
    token::AccessToken,
};
use tokio::time::Instant;
use uuid::Uuid;

/// What forgot and resend keep of their answer time for recording the delivery's outcome.
const RECORD_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// Which mail a person asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailAsk {
    /// `POST /auth/password/forgot`: a reset link.
    PasswordReset,
    /// `POST /auth/email/verify/resend`: a new verification link.
    Verification,
}

impl MailAsk {
    /// The route's name in the logs, the audit and the address window.
    pub fn route(self) -> &'static str {
        match self {
            MailAsk::PasswordReset => "password_forgot",
            MailAsk::Verification => "email_resend",
        }
    }
}

fn link_error(refusal: LinkRefusal) -> AuthError {
    match refusal {
        LinkRefusal::Invalid => AuthError::LinkInvalid,
        LinkRefusal::Expired => AuthError::LinkExpired,
    }
}

fn link_reason(refusal: LinkRefusal) -> &'static str {
    match refusal {
        LinkRefusal::Invalid => "link_invalid",
        LinkRefusal::Expired => "link_expired",
    }
}

/// A link token refused: logged and audited (as a refusal, counted per minute).
async fn refuse_link(state: &AppState, event: &'static str, reason: &'static str, origin: &Origin) {
    tracing::info!(event, reason);
    audit(state, AuditEvent::refusal(event, reason), origin).await;
}

/// A link token that does not even decode, refused before any other database work: its
/// statement is the one the window counts.
async fn malformed_link(
    state: &AppState,
    window: &Window<'_>,
    event: &'static str,
    origin: &Origin,
) -> AuthError {
    tracing::info!(event, reason = "malformed");
    let refusal = AuditEvent::refusal(event, "malformed");
    super::refused(state, window, refusal, AuthError::LinkInvalid, origin).await
}

/// A fresh link token: the raw token for the message and its hash for the store.
fn new_link() -> (String, Vec<u8>) {
    let raw = refresh::generate();
    (refresh::encode(&raw), refresh::hash(&raw))
}

/// A notice that follows an action (password changed), prepared when mail is on.
pub(super) fn notice<'s>(
    state: &'s AppState,
    to: &str,
    notice: Notice,
) -> Option<(&'s Mailer, Prepared)> {
    state
        .mailer
        .as_ref()
        .map(|mailer| (mailer, Prepared::new(mailer, to, notice)))
}

/// Forgot and resend: `202` for every email, account or not, at the same moment
/// (`MAIL_ANSWER_MS` after `started`), after the same work — a link token and a sealed message
/// are made either way, and one statement counts the recipient's limits and stores them only
/// when the account qualifies. Only the account's mailbox learns anything.
pub async fn request_mail(
    state: &AppState,
    ask: MailAsk,
    raw_email: &str,
    origin: &Origin,
    started: Instant,
) -> Result<(), AuthError> {
    let mailer = state.mailer()?;
    let settings = &state.config.mail;
    let answer_at = started + settings.answer;
    let now = state.now();
    let email = Email::parse(raw_email).ok();
    let recipient = store::account_key(email.as_ref(), raw_email);
    let (token, hash) = new_link();
    let (purpose, ttl, notice) = match ask {
        MailAsk::PasswordReset => (
            LinkPurpose::ResetPassword,
            settings.reset_ttl,
            Notice::PasswordReset { token },
        ),
        MailAsk::Verification => (
            LinkPurpose::VerifyEmail,
            settings.verify_ttl,
            Notice::VerifyEmail { token },
        ),
    };
    // A malformed address is sealed too (never sent), so that path does the same work.
    let to = email.as_ref().map_or(raw_email.trim(), Email::as_str);
    let prepared = Prepared::new(mailer, to, notice);
    let link = NewLink {
        hash: &hash,
        expires_at: now + ttl,
    };
    let limits = MailLimits {
        interval_secs: settings.resend_interval.as_secs_f64(),
        per_hour: settings.max_per_hour,
    };
    let window = super::window(state, origin, ask.route());
    let outcome = store::mail_request(
        &state.db,
        &window,
        purpose,
        &recipient,
        email.as_ref(),
        link,
        prepared.queued(state, now),
        limits,
        now,
        origin,
    )
    .await?
    .map_err(|over| super::limited(state, &window, over))?;
    match outcome {
        MailRequest::Limited(retry_after_secs) => {
            tracing::info!(
                event = "mail.limited",
                route = ask.route(),
                retry_after_secs
            );
            audit(
                state,
                AuditEvent::refusal("mail.limited", ask.route()),
                origin,
            )
            .await;
            return Err(AuthError::TooManyRequests { retry_after_secs });
        }
        MailRequest::Queued(user_id) => {
            tracing::info!(event = "mail.requested", route = ask.route(), user_id = %user_id, message_id = %prepared.id);
            // Whatever is not done by the answer's moment is left to the mailer. The send
            // stops early enough to record its outcome in time; the outer bound is a backstop.
            let remaining = answer_at.saturating_duration_since(Instant::now());
            let send_by = remaining.saturating_sub(RECORD_BUDGET);
            let delivery = outbox::deliver(state, mailer, &prepared, send_by);
            if tokio::time::timeout(remaining, delivery).await.is_err() {
                tracing::info!(event = "mail.deferred", message_id = %prepared.id, "left to the mailer");
            }
        }
        MailRequest::Accepted => {
            tracing::info!(
                event = "mail.requested",
                route = ask.route(),
                account = false
            );
        }
    }
    tokio::time::sleep_until(answer_at).await;
    Ok(())
}

/// `POST /auth/email/verify`: proves the address with its link and returns the user.
pub async fn verify_email(
    state: &AppState,
    token: &str,
    origin: &Origin,
) -> Result<User, AuthError> {
    const EVENT: &str = "email.verify_failed";
    let window = super::window(state, origin, "email_verify");
    let Some(raw) = refresh::decode(token) else {
        return Err(malformed_link(state, &window, EVENT, origin).await);
    };
    let now = state.now();
    let verified = store::verify_email(
        &state.db,
        &window,
        &refresh::hash(&raw),
        now,
        Uuid::new_v4(),
        origin,
    )
    .await?
    .map_err(|over| super::limited(state, &window, over))?;
    match verified {
        Ok(user) => {
            tracing::info!(event = "email.verified", user_id = %user.id);
            Ok(user)
        }
        Err(refusal) => {
            refuse_link(state, EVENT, link_reason(refusal), origin).await;
            Err(link_error(refusal))
        }
    }
}

/// `POST /auth/password/reset`: sets a new password with a reset link. The new password follows
/// the registration rules (and the token stays usable when it does not); then, atomically,
/// every session ends, the lock and backoffs lift, the address counts as proven, the token is
/// used and a notice is queued. It does not log in.
pub async fn reset_password(
    state: &AppState,
    token: &str,
    new_password: &str,
    origin: &Origin,
) -> Result<(), AuthError> {
    const EVENT: &str = "password.reset_failed";
    let window = super::window(state, origin, "password_reset");
    let Some(raw) = refresh::decode(token) else {
        return Err(malformed_link(state, &window, EVENT, origin).await);
    };
    let hash = refresh::hash(&raw);
    let now = state.now();
    // The first of reset's two round trips: the new password is checked against the holder's
    // address, and hashed, between reading the link and using it.
    let holder = store::link_state(&state.db, &window, &hash, LinkPurpose::ResetPassword, now)
        .await?
        .map_err(|over| super::limited(state, &window, over))?;
    let holder = match holder {
        Ok(holder) => holder,
        Err(refusal) => {
            refuse_link(state, EVENT, link_reason(refusal), origin).await;
            return Err(link_error(refusal));
        }
    };
    let email = Email::parse(&holder.email)?;
    let password = new_password_for(
        state,
        "password_reset",
        new_password,
        holder.user_id,
        &email,
        origin,
    )
    .await?;
    let new_hash = state.passwords()?.hash(&password).await?;
    let notice = notice(state, email.as_str(), Notice::PasswordChanged);
    let account = store::account_key(Some(&email), email.as_str());
    let now = state.now();
    let reset = store::reset_password(
        &state.db,
        &hash,
        &new_hash,
        &account,
        now,
        Uuid::new_v4(),
        notice
            .as_ref()
            .map(|(_, prepared)| prepared.queued(state, now)),
        origin,
    )
    .await?;
    match reset {
        Ok(user_id) => {
            tracing::info!(event = "password.reset", user_id = %user_id);
            if let Some((mailer, prepared)) = &notice {
                outbox::deliver(state, mailer, prepared, state.config.mail.smtp_timeout).await;
            }
            Ok(())
        }
        // Used by a concurrent reset between the look-up and now.
        Err(refusal) => {
            refuse_link(state, EVENT, link_reason(refusal), origin).await;
            Err(link_error(refusal))
        }
    }
}

/// A new password under the registration rules, breached-password check included.
/// A refusal is logged and audited as `password.rejected` with its reason, as register's are.
async fn new_password_for(
    state: &AppState,
    route: &'static str,
    raw: &str,
    user_id: Uuid,
    email: &Email,
    origin: &Origin,
) -> Result<NewPassword, AuthError> {
    let refused = match NewPassword::parse(raw, email, state.config.password_min_length) {
        Ok(password) => {
            if !crate::breach::is_breached(&state.config.password_breach, &password).await {
                return Ok(password);
            }
            ("breached_password", AuthError::WeakPassword)
        }
        Err(AuthError::WeakPassword) => ("weak_password", AuthError::WeakPassword),
        Err(error) => ("invalid_password", error),
    };
    let (reason, error) = refused;
    tracing::info!(event = "password.rejected", route, reason, user_id = %user_id);
    let event = AuditEvent {
        event: "password.rejected",
        reason: Some(reason),
        user_id: Some(user_id),
        session_id: None,
        refusal: false,
    };
    audit(state, event, origin).await;
    Err(error)
}

/// A signed-in user's password, checked: the token's session must be live, and the check
/// counts against the account's backoffs like a login (`429` during a wait, `403
/// account_locked` when locked, `403 wrong_password` when wrong). Returns the token, the
/// user's address and the hash that was checked.
async fn reauthenticate(
    state: &AppState,
    route: &'static str,
    bearer: &str,
    password: &str,
    origin: &Origin,
) -> Result<(AccessToken, Email, String), AuthError> {
    let token = verified(state, route, bearer, origin).await?;
    let now = state.now();
    let network = origin.network();
    let reauth = match store::reauth_attempt(
        &state.db,
        token.user_id,
        token.session_id,
        now,
        now - state.config.session_idle,
        &network,
        Uuid::new_v4(),
        login_limits(&state.config),
    )
    .await?
    {
        Ok(reauth) => reauth,
        Err(unauthorized) => {
            return Err(refuse_token(state, route, &token, unauthorized.reason(), origin).await);
        }
    };
    admitted(
        state,
        route,
        PASSWORD_CHECK_FAILED,
        &token,
        reauth.attempt,
        origin,
    )
    .await?;
    check_password(
        state,
        route,
        &token,
        password,
        &reauth.hashed_password,
        origin,
    )
    .await?;
    let email = Email::parse(&reauth.email)?;
    Ok((token, email, reauth.hashed_password))
}

/// The event of a signed-in user's wrong password.
const PASSWORD_CHECK_FAILED: &str = "password.check_failed";

/// A signed-in user's failed check of a factor, logged and audited as `event` (a refusal by
/// the limits is counted into its minute's row).
pub(super) async fn check_failed(
    state: &AppState,
    route: &'static str,
    event: &'static str,
    token: &AccessToken,
    reason: &'static str,
    refusal: bool,
    origin: &Origin,
) {
    tracing::info!(event, route, reason, user_id = %token.user_id);
    audit_check(state, event, token, reason, refusal, origin).await;
}

async fn audit_check(
    state: &AppState,
    event: &'static str,
    token: &AccessToken,
    reason: &'static str,
    refusal: bool,
    origin: &Origin,
) {
    let row = AuditEvent {
        event,
        reason: Some(reason),
        user_id: Some(token.user_id),
        session_id: Some(token.session_id),
        refusal,
    };
    audit(state, row, origin).await;
}

/// A counted check's standing with the limits: `429` during a wait and `403 account_locked`
/// when locked, each audited as `event`, and nothing checked.
pub(super) async fn admitted(
    state: &AppState,
    route: &'static str,
    event: &'static str,
    token: &AccessToken,
    attempt: Attempt,
    origin: &Origin,
) -> Result<(), AuthError> {
    match attempt {
        Attempt::Counted => Ok(()),
        Attempt::Blocked(until) => {
            let retry_after_secs = until.map_or(1, |until| seconds_until(until, state.now()));
            let reason = "too_many_attempts";
            tracing::info!(event, route, reason, user_id = %token.user_id, retry_after_secs);
            audit_check(state, event, token, reason, true, origin).await;
            Err(AuthError::TooManyRequests { retry_after_secs })
        }
        Attempt::Locked => {
            check_failed(state, route, event, token, "account_locked", true, origin).await;
            Err(AuthError::AccountLocked)
        }
    }
}

/// A signed-in user's password against the stored hash: `403 wrong_password`, audited, when
/// it does not match.
pub(super) async fn check_password(
    state: &AppState,
    route: &'static str,
    token: &AccessToken,
    password: &str,
    hashed_password: &str,
    origin: &Origin,
) -> Result<(), AuthError> {
    let matched = state
        .passwords()?
        .verify(&password::normalize(password), Some(hashed_password))
        .await?;
    if !matched {
        check_failed(
            state,
            route,
            PASSWORD_CHECK_FAILED,
            token,
            "bad_password",
            false,
            origin,
        )
        .await;
        return Err(AuthError::WrongPassword);
    }
    Ok(())
}

/// `POST /auth/password/change`: needs the current password; the new one follows the
/// registration rules. Every other session of the user ends, the calling one lives on, and a
/// notice is mailed.
pub async fn change_password(
    state: &AppState,
    bearer: &str,
    current: &str,
    new_password: &str,
    origin: &Origin,
) -> Result<(), AuthError> {
    const ROUTE: &str = "password_change";
    let (token, email, old_hash) = reauthenticate(state, ROUTE, bearer, current, origin).await?;
    let account = store::account_key(Some(&email), email.as_str());
    let password =
        match new_password_for(state, ROUTE, new_password, token.user_id, &email, origin).await {
            Ok(password) => password,
            Err(error) => {
                // The current password was right: its check must not count as a failure.
                store::clear_backoff(&state.db, &account, &origin.network()).await?;
                return Err(error);
            }
        };
    let new_hash = state.passwords()?.hash(&password).await?;
    let notice = notice(state, email.as_str(), Notice::PasswordChanged);
    let now = state.now();
    let changed = store::change_password(
        &state.db,
        token.user_id,
        token.session_id,
        &old_hash,
        &new_hash,
        &account,
        now,
        Uuid::new_v4(),
        notice
            .as_ref()
            .map(|(_, prepared)| prepared.queued(state, now)),
        origin,
    )
    .await?;
    if !changed {
        // Changed by a concurrent request between the check and now.
        tracing::info!(event = "password.check_failed", route = ROUTE, reason = "changed_meanwhile", user_id = %token.user_id);
        return Err(AuthError::WrongPassword);
    }
    tracing::info!(event = "password.changed", user_id = %token.user_id, session_id = %token.session_id);
    if let Some((mailer, prepared)) = &notice {
        outbox::deliver(state, mailer, prepared, state.config.mail.smtp_timeout).await;
    }
    Ok(())
}

/// `DELETE /auth/me`: needs the password. The user, its sessions, tokens and pending mail go;
/// audit rows keep the user id.
pub async fn delete_account(
    state: &AppState,
    bearer: &str,
    password: &str,
    origin: &Origin,
) -> Result<(), AuthError> {
    const ROUTE: &str = "me_delete";
    let (token, email, hash) = reauthenticate(state, ROUTE, bearer, password, origin).await?;
    let account = store::account_key(Some(&email), email.as_str());
    let deleted = store::delete_user(
        &state.db,
        token.user_id,
        token.session_id,
        &hash,
        &account,
        state.now(),
        origin,
    )
    .await?;
    if !deleted {
        tracing::info!(event = "password.check_failed", route = ROUTE, reason = "changed_meanwhile", user_id = %token.user_id);
        return Err(AuthError::WrongPassword);
    }
    tracing::info!(event = "user.deleted", user_id = %token.user_id);
    Ok(())
}

/// Why a verified token's session or user refuses it, read when a statement found it refused.
async fn refusal_reason(state: &AppState, token: &AccessToken) -> Result<&'static str, AuthError> {
    let now = state.now();
    let stands = store::session_user(
        &state.db,
        token.user_id,
        token.session_id,
        now,
        now - state.config.session_idle,
    )
    .await?;
    Ok(match stands {
        SessionUser::Inactive => Unauthorized::UserInactive.reason(),
        SessionUser::Gone => Unauthorized::UserGone.reason(),
        SessionUser::Live(_) | SessionUser::SessionEnded => Unauthorized::SessionEnded.reason(),
    })
}

/// `GET /auth/sessions`: the user's live sessions, newest first, the caller's marked.
pub async fn list_sessions(
    state: &AppState,
    bearer: &str,
    origin: &Origin,
) -> Result<Vec<SessionInfo>, AuthError> {
    const ROUTE: &str = "sessions";
    let token = verified(state, ROUTE, bearer, origin).await?;
    let sessions = store::live_sessions(
        &state.db,
        token.user_id,
        token.session_id,
        state.now(),
        state.config.session_idle.as_secs_f64(),
    )
    .await?;
    if sessions.is_empty() {
        // The caller's own session is always listed while it is live.
        let reason = refusal_reason(state, &token).await?;
        return Err(refuse_token(state, ROUTE, &token, reason, origin).await);
    }
    Ok(sessions)
}

/// `DELETE /auth/sessions/{id}`: ends one of the caller's live sessions at once (its tokens
/// included); any other id — malformed, unknown, ended, another user's — is
/// `404 session_not_found`, and nothing tells them apart.
pub async fn revoke_session(
    state: &AppState,
    bearer: &str,
    target: &str,
    origin: &Origin,
) -> Result<(), AuthError> {
    const ROUTE: &str = "sessions_delete";
    let token = verified(state, ROUTE, bearer, origin).await?;
    // A malformed id is nobody's session: the nil id answers as any unknown one.
    let target = Uuid::parse_str(target).unwrap_or(Uuid::nil());
    let now = state.now();
    let revoked = store::revoke_session(
        &state.db,
        token.user_id,
        token.session_id,
        target,
        now,
        now - state.config.session_idle,
        Uuid::new_v4(),
        origin,
    )
    .await?;
    match revoked {
        store::Revoked::Revoked => {
            tracing::info!(event = "session.revoked", user_id = %token.user_id, session_id = %target);
            Ok(())
        }
        store::Revoked::NotFound => {
            tracing::info!(event = "session.revoke_failed", reason = "not_found", user_id = %token.user_id);
            Err(AuthError::SessionNotFound)
        }
        store::Revoked::Unauthorized => {
            let reason = refusal_reason(state, &token).await?;
            Err(refuse_token(state, ROUTE, &token, reason, origin).await)
        }
    }
}
