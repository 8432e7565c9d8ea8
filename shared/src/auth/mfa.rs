//! Two-step login (docs/api.md "Two-step login (TOTP)"): enrolment with the current password,
//! its confirmation with a first code, turning it off, and login's second step.
//!
//! Every check of a factor — the password, a code, a recovery code — counts against the
//! account's backoffs as a login does, and only the check's success clears them. A login
//! whose password was right but that still needs its second step stays counted, so a stolen
//! password buys a bounded number of code guesses before the backoff and then the lock.

use super::{
    Tokens,
    account::{admitted, check_failed, check_password, notice},
    audit, issue, limited, login_limits, refuse_token, refused, verified, window,
};
use crate::{
    AppState,
    error::{AuthError, MfaToken},
    mail::{Notice, outbox},
    origin::Origin,
    refresh,
    store::{
        self, AuditEvent, Challenge, Checked, Disabled, Enrolled, FactorCheck, FactorRefusal,
        Finished, NewSession, Proof, SecondFactor, TotpRequirement, TotpState,
    },
    token::AccessToken,
    totp::{self, Code, RecoveryCode},
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How long a login's mfa_token lives.
pub const MFA_TOKEN_SECS: i64 = 300;
/// Wrong codes after which an mfa_token dies.
pub const MAX_WRONG_CODES: u32 = 5;
/// Recovery codes made at each enrolment.
pub const RECOVERY_CODES: usize = 10;

/// The event of a wrong code, on login's second step and on the signed-in routes alike.
const CHALLENGE_FAILED: &str = "mfa.challenge_failed";

/// A pending enrolment, as `POST /auth/mfa/totp` shows it: the only time the secret leaves.
pub struct Enrolment {
    /// The secret, base32 without padding.
    pub secret: String,
    /// The `otpauth://totp/…` URI authenticator apps read.
    pub otpauth_uri: String,
    /// That URI as an SVG QR code in a `data:image/svg+xml;base64,` URI.
    pub qr_code: String,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrolment { [redacted] }")
    }
}

/// What login's second step, or turning TOTP off, is proven with.
#[derive(Debug)]
pub enum SecondStep {
    /// A six-digit code.
    Code(Code),
    /// A recovery code.
    RecoveryCode(RecoveryCode),
}

/// What turning TOTP off is proven with.
pub enum TurnOff {
    /// A current code.
    Code(Code),
    /// The password.
    Password(String),
}

impl std::fmt::Debug for TurnOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(_) => f.write_str("TurnOff::Code([redacted])"),
            Self::Password(_) => f.write_str("TurnOff::Password([redacted])"),
        }
    }
}

/// The TOTP routes' first round trip: the token verified, its session live, the enrolment in
/// the state the route needs (else `409`, nothing counted), the check counted against the
/// backoffs (`429` during a wait, `403 account_locked` when locked).
async fn factor_attempt(
    state: &AppState,
    route: &'static str,
    bearer: &str,
    require: TotpRequirement,
    event: &'static str,
    origin: &Origin,
) -> Result<(AccessToken, FactorCheck), AuthError> {
    let token = verified(state, route, bearer, origin).await?;
    let now = state.now();
    let checked = store::totp_attempt(
        &state.db,
        token.user_id,
        token.session_id,
        now,
        now - state.config.session_idle,
        &origin.network(),
        Uuid::new_v4(),
        login_limits(&state.config),
        require,
    )
    .await?;
    let check = match checked {
        Ok(check) => check,
        Err(FactorRefusal::Unauthorized(why)) => {
            return Err(refuse_token(state, route, &token, why.reason(), origin).await);
        }
        Err(FactorRefusal::Totp(found)) => {
            tracing::info!(event = "mfa.refused", route, found = ?found, user_id = %token.user_id);
            return Err(match (found, require) {
                (TotpState::Enabled, _) => AuthError::MfaAlreadyEnabled,
                (_, TotpRequirement::Pending) => AuthError::MfaNotPending,
                _ => AuthError::MfaNotEnabled,
            });
        }
    };
    admitted(state, route, event, &token, check.attempt, origin).await?;
    Ok((token, check))
}

/// The user's TOTP secret, opened.
fn open_secret(
    state: &AppState,
    user_id: Uuid,
    sealed: Option<&[u8]>,
) -> Result<totp::TotpSecret, AuthError> {
    sealed
        .and_then(|sealed| state.totp().ok()?.open(user_id, sealed))
        .ok_or_else(|| {
            tracing::error!(user_id = %user_id, "the TOTP secret does not open under this DATA_ENCRYPTION_KEY");
            AuthError::Internal
        })
}

/// `POST /auth/mfa/totp`: with the current password, a new pending enrolment (replacing one
/// not yet confirmed); its secret, URI and QR code are shown this once.
pub async fn enrol_totp(
    state: &AppState,
    bearer: &str,
    password: &str,
    origin: &Origin,
) -> Result<Enrolment, AuthError> {
    const ROUTE: &str = "mfa_enrol";
    let (token, check) = factor_attempt(
        state,
        ROUTE,
        bearer,
        TotpRequirement::NotEnabled,
        "password.check_failed",
        origin,
    )
    .await?;
    check_password(
        state,
        ROUTE,
        &token,
        password,
        &check.hashed_password,
        origin,
    )
    .await?;
    let keys = state.totp()?;
    let secret = totp::generate_secret();
    let sealed = keys.seal(token.user_id, &secret);
    let email = crate::email::Email::parse(&check.email)?;
    let account = store::account_key(Some(&email), email.as_str());
    let enrolled = store::totp_enrol(
        &state.db,
        token.user_id,
        token.session_id,
        &check.hashed_password,
        &sealed,
        &account,
        &origin.network(),
        state.now(),
        origin,
    )
    .await?;
    match enrolled {
        Enrolled::Pending => {}
        Enrolled::AlreadyEnabled => return Err(AuthError::MfaAlreadyEnabled),
        Enrolled::Conflict => {
            tracing::info!(event = "password.check_failed", route = ROUTE, reason = "changed_meanwhile", user_id = %token.user_id);
            return Err(AuthError::WrongPassword);
        }
    }
    let otpauth_uri = totp::otpauth_uri(&secret, &state.config.mail.product_name, email.as_str());
    let qr_code = totp::qr_code(&otpauth_uri).ok_or_else(|| {
        tracing::error!("the otpauth URI does not fit a QR code");
        AuthError::Internal
    })?;
    tracing::info!(event = "mfa.enrolment_started", user_id = %token.user_id);
    Ok(Enrolment {
        secret: totp::base32(&secret),
        otpauth_uri,
        qr_code,
    })
}

/// `POST /auth/mfa/totp/confirm`: a first valid code turns TOTP on. Returns the ten recovery
/// codes, shown this once; every other session of the user ends and a notice is mailed.
pub async fn confirm_totp(
    state: &AppState,
    bearer: &str,
    code: &Code,
    origin: &Origin,
) -> Result<Vec<String>, AuthError> {
    const ROUTE: &str = "mfa_confirm";
    let (token, check) = factor_attempt(
        state,
        ROUTE,
        bearer,
        TotpRequirement::Pending,
        CHALLENGE_FAILED,
        origin,
    )
    .await?;
    let secret = open_secret(state, token.user_id, check.sealed_secret.as_deref())?;
    let now = state.now();
    let Some(step) = totp::matching_step(&secret, code, now.timestamp()) else {
        check_failed(
            state,
            ROUTE,
            CHALLENGE_FAILED,
            &token,
            "bad_code",
            false,
            origin,
        )
        .await;
        return Err(AuthError::InvalidCode);
    };
    let keys = state.totp()?;
    let codes: Vec<RecoveryCode> = (0..RECOVERY_CODES)
        .map(|_| RecoveryCode::generate())
        .collect();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|code| keys.recovery_hash(token.user_id, code))
        .collect();
    let email = crate::email::Email::parse(&check.email)?;
    let account = store::account_key(Some(&email), email.as_str());
    let notice = notice(state, email.as_str(), Notice::MfaEnabled);
    let network = origin.network();
    let sealed = check.sealed_secret.as_deref().unwrap_or_default();
    let confirmed = store::totp_confirm(
        &state.db,
        token.user_id,
        token.session_id,
        step,
        &hashes,
        Checked {
            sealed,
            account: &account,
            network: &network,
            now,
            request: Uuid::new_v4(),
        },
        notice
            .as_ref()
            .map(|(_, prepared)| prepared.queued(state, now)),
        origin,
    )
    .await?;
    if !confirmed {
        // Replaced by a newer enrolment, or confirmed, between the check and now.
        check_failed(
            state,
            ROUTE,
            CHALLENGE_FAILED,
            &token,
            "changed_meanwhile",
            false,
            origin,
        )
        .await;
        return Err(AuthError::InvalidCode);
    }
    tracing::info!(event = "mfa.enrolled", user_id = %token.user_id, session_id = %token.session_id);
    if let Some((mailer, prepared)) = &notice {
        outbox::deliver(state, mailer, prepared, state.config.mail.smtp_timeout).await;
    }
    Ok(codes.iter().map(RecoveryCode::display).collect())
}

/// `DELETE /auth/mfa/totp`: with a current code or the password, TOTP goes off with its
/// recovery codes; every other session of the user ends and a notice is mailed.
pub async fn disable_totp(
    state: &AppState,
    bearer: &str,
    proof: &TurnOff,
    origin: &Origin,
) -> Result<(), AuthError> {
    const ROUTE: &str = "mfa_disable";
    let event = match proof {
        TurnOff::Code(_) => CHALLENGE_FAILED,
        TurnOff::Password(_) => "password.check_failed",
    };
    let (token, check) = factor_attempt(
        state,
        ROUTE,
        bearer,
        TotpRequirement::Enabled,
        event,
        origin,
    )
    .await?;
    let now = state.now();
    let proven = match proof {
        TurnOff::Password(password) => {
            check_password(
                state,
                ROUTE,
                &token,
                password,
                &check.hashed_password,
                origin,
            )
            .await?;
            Proof::Password(&check.hashed_password)
        }
        TurnOff::Code(code) => {
            let secret = open_secret(state, token.user_id, check.sealed_secret.as_deref())?;
            match totp::matching_step(&secret, code, now.timestamp()) {
                Some(step) => Proof::Code(step),
                None => {
                    check_failed(state, ROUTE, event, &token, "bad_code", false, origin).await;
                    return Err(AuthError::InvalidCode);
                }
            }
        }
    };
    let email = crate::email::Email::parse(&check.email)?;
    let account = store::account_key(Some(&email), email.as_str());
    let notice = notice(state, email.as_str(), Notice::MfaDisabled);
    let network = origin.network();
    let disabled = store::totp_disable(
        &state.db,
        token.user_id,
        token.session_id,
        proven,
        Checked {
            sealed: check.sealed_secret.as_deref().unwrap_or_default(),
            account: &account,
            network: &network,
            now,
            request: Uuid::new_v4(),
        },
        notice
            .as_ref()
            .map(|(_, prepared)| prepared.queued(state, now)),
        origin,
    )
    .await?;
    let refused = match (disabled, proof) {
        (Disabled::Disabled, _) => None,
        (Disabled::Replayed, _) => Some(("replayed", AuthError::InvalidCode)),
        (Disabled::Conflict, TurnOff::Code(_)) => {
            Some(("changed_meanwhile", AuthError::InvalidCode))
        }
        (Disabled::Conflict, TurnOff::Password(_)) => {
            Some(("changed_meanwhile", AuthError::WrongPassword))
        }
    };
    if let Some((reason, error)) = refused {
        check_failed(state, ROUTE, event, &token, reason, false, origin).await;
        return Err(error);
    }
    tracing::info!(event = "mfa.disabled", user_id = %token.user_id, session_id = %token.session_id);
    if let Some((mailer, prepared)) = &notice {
        outbox::deliver(state, mailer, prepared, state.config.mail.smtp_timeout).await;
    }
    Ok(())
}

/// Login with TOTP on, after the right password: the challenge of the second step is stored
/// and its token returned as `401 mfa_required`; no session starts. `checked` is the hash the
/// password was checked against (a change or reset since ends the challenge).
pub(super) async fn challenge(
    state: &AppState,
    user_id: Uuid,
    checked: &str,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<AuthError, AuthError> {
    let raw = refresh::generate();
    let expires_at = now + chrono::Duration::seconds(MFA_TOKEN_SECS);
    let started = store::start_challenge(
        &state.db,
        &refresh::hash(&raw),
        user_id,
        checked,
        now,
        expires_at,
        origin,
    )
    .await?;
    if !started {
        // The password changed, TOTP went off or the account was disabled since the check.
        tracing::info!(event = "login.failed", reason = "changed_meanwhile", user_id = %user_id);
        let event = AuditEvent {
            event: "login.failed",
            reason: Some("changed_meanwhile"),
            user_id: Some(user_id),
            session_id: None,
            refusal: false,
        };
        audit(state, event, origin).await;
        return Ok(AuthError::InvalidCredentials);
    }
    tracing::info!(event = "mfa.challenge_started", user_id = %user_id);
    Ok(AuthError::MfaRequired(MfaToken(refresh::encode(&raw))))
}

/// `POST /auth/mfa/verify`: login's second step. A valid code (of a step later than the last
/// accepted one) or an unused recovery code finishes the login; a wrong one is `401
/// invalid_code`, counted by the backoffs and by the challenge, which dies at the fifth.
pub async fn verify_mfa(
    state: &AppState,
    mfa_token: &str,
    factor: &SecondStep,
    origin: &Origin,
) -> Result<Tokens, AuthError> {
    const ROUTE: &str = "mfa_verify";
    let window = window(state, origin, ROUTE);
    let Some(raw) = refresh::decode(mfa_token) else {
        tracing::info!(event = CHALLENGE_FAILED, reason = "malformed");
        let event = AuditEvent::refusal(CHALLENGE_FAILED, "malformed");
        return Err(refused(state, &window, event, AuthError::InvalidMfaToken, origin).await);
    };
    let hash = refresh::hash(&raw);
    let now = state.now();
    let network = origin.network();
    let attempt = Uuid::new_v4();
    let (user_id, challenge) = store::mfa_attempt(
        &state.db,
        &window,
        &hash,
        &network,
        attempt,
        MAX_WRONG_CODES,
        login_limits(&state.config),
        now,
    )
    .await?
    .map_err(|over| limited(state, &window, over))?;
    let failed = |reason: &'static str, refusal: bool| AuditEvent {
        event: CHALLENGE_FAILED,
        reason: Some(reason),
        user_id,
        session_id: None,
        refusal,
    };
    let (attempt_standing, sealed) = match challenge {
        Challenge::Live {
            attempt,
            sealed_secret,
        } => (attempt, sealed_secret),
        dead => {
            let reason = match dead {
                Challenge::Exhausted => "too_many_wrong_codes",
                Challenge::Expired => "expired",
                _ => "unknown_token",
            };
            tracing::info!(
                event = CHALLENGE_FAILED,
                reason,
                user_id = user_id.map(tracing::field::display)
            );
            audit(state, failed(reason, true), origin).await;
            return Err(AuthError::InvalidMfaToken);
        }
    };
    let user_id = user_id.ok_or(crate::db::DbError::NoRow("mfa_attempt: no user"))?;
    match attempt_standing {
        store::Attempt::Counted => {}
        store::Attempt::Blocked(until) => {
            let retry_after_secs = until.map_or(1, |until| super::seconds_until(until, now));
            tracing::info!(event = CHALLENGE_FAILED, reason = "too_many_attempts", user_id = %user_id, retry_after_secs);
            audit(state, failed("too_many_attempts", true), origin).await;
            return Err(AuthError::TooManyRequests { retry_after_secs });
        }
        store::Attempt::Locked => {
            tracing::info!(event = CHALLENGE_FAILED, reason = "account_locked", user_id = %user_id);
            audit(state, failed("account_locked", true), origin).await;
            return Err(AuthError::AccountLocked);
        }
    }
    let recovery_hash;
    let second = match factor {
        SecondStep::Code(code) => {
            let secret = open_secret(state, user_id, Some(&sealed))?;
            match totp::matching_step(&secret, code, now.timestamp()) {
                Some(step) => SecondFactor::Step(step),
                None => SecondFactor::WrongCode,
            }
        }
        SecondStep::RecoveryCode(code) => {
            recovery_hash = state.totp()?.recovery_hash(user_id, code);
            SecondFactor::RecoveryCode(&recovery_hash)
        }
    };
    let session_id = Uuid::new_v4();
    let refresh_raw = refresh::generate();
    let finished = store::mfa_finish(
        &state.db,
        &hash,
        second,
        NewSession {
            id: session_id,
            refresh_hash: &refresh::hash(&refresh_raw),
            expires_at: now + state.config.session_max,
        },
        &network,
        attempt,
        MAX_WRONG_CODES,
        now,
        origin,
    )
    .await?;
    match finished {
        Finished::Succeeded {
            user_id,
            email_verified,
            factors,
        } => {
            let access = issue(state, user_id, session_id, email_verified, factors, now)?;
            tracing::info!(event = "login.succeeded", user_id = %user_id, session_id = %session_id, aal = factors.aal());
            Ok(Tokens {
                access,
                refresh_token: refresh::encode(&refresh_raw),
            })
        }
        Finished::Wrong { user_id, failures } => {
            tracing::info!(event = CHALLENGE_FAILED, user_id = %user_id, failures, "wrong code");
            Err(AuthError::InvalidCode)
        }
        Finished::Invalid => {
            tracing::info!(event = CHALLENGE_FAILED, reason = "ended_meanwhile", user_id = %user_id);
            Err(AuthError::InvalidMfaToken)
        }
    }
}
