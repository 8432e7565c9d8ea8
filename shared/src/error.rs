//! The one error type of the service. Every way a request can fail is a variant here, and each
//! variant knows its HTTP status, its stable machine-readable `code` and a human `detail` that
//! never carries internals. `http.rs` turns it into an RFC 9457 problem document.

use std::fmt;

/// Why a request failed, as the client is allowed to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 400: the body is not a JSON object (or not UTF-8, or not JSON at all).
    InvalidJson,
    /// 400: a field is missing or has the wrong type; the detail names the field.
    InvalidRequest(String),
    /// 413: the body is over [`crate::http::MAX_BODY_BYTES`].
    PayloadTooLarge,
    /// 415: the content type is missing or not `application/json`.
    UnsupportedMediaType,
    /// 422: the email breaks the rules of docs/api.md; the detail says which.
    InvalidEmail(&'static str),
    /// 422: the password is too short, too long or holds control characters.
    InvalidPassword(String),
    /// 422: the password is common, guessable, or equals the email.
    WeakPassword,
    /// 409: an account with this (normalized) email exists.
    EmailTaken,
    /// 401: unknown email or wrong password; one body for both.
    InvalidCredentials,
    /// 403: the password was right but the account is disabled.
    AccountDisabled,
    /// 403: too many consecutive failed logins; only a password reset (or an operator's
    /// `authctl unlock`) lets a password log in again. Same answer whatever password was sent.
    AccountLocked,
    /// 401: no `Authorization: Bearer` header.
    MissingToken,
    /// 401: the bearer token is malformed, forged, for someone else, or its user is gone.
    InvalidToken,
    /// 401: the bearer token's `exp` has passed, beyond the leeway.
    TokenExpired,
    /// 429: a rate limit was hit; retry after this many seconds.
    TooManyRequests { retry_after_secs: u64 },
    /// 503: the database could not be reached in time; retry after this many seconds.
    ServiceUnavailable { retry_after_secs: u64 },
    /// 400: a link token that is unknown, used, replaced or of another purpose.
    LinkInvalid,
    /// 400: a link token that is known but past its lifetime.
    LinkExpired,
    /// 403: the right password for an unverified account, under `REQUIRE_VERIFIED_EMAIL`.
    EmailNotVerified,
    /// 403: the current password given to change, delete or enrol is wrong.
    WrongPassword,
    /// 404: the session id is not one of the caller's live sessions.
    SessionNotFound,
    /// 503: the route exists only to send mail, and mail is off (`SMTP_URL` unset).
    MailUnavailable,
    /// 404: no route has this path (API Gateway's `$default` route, see [`crate::openapi`]).
    NotFound,
    /// 405: the path has routes, none for this method; `allow` lists the methods it has.
    MethodNotAllowed { allow: &'static str },
    /// 401: the password was right and the account has TOTP on: the login's second step
    /// (`POST /auth/mfa/verify`) takes this token.
    MfaRequired(MfaToken),
    /// 401: the TOTP code or recovery code is wrong, or was accepted already.
    InvalidCode,
    /// 401: the mfa_token is malformed, unknown, used, expired or ended by too many wrong
    /// codes (`invalid_token`, as a refused bearer token).
    InvalidMfaToken,
    /// 409: enrolling, or confirming, while TOTP is on already.
    MfaAlreadyEnabled,
    /// 409: confirming without an enrolment waiting for its first code.
    MfaNotPending,
    /// 409: turning TOTP off while it is not on.
    MfaNotEnabled,
    /// 500: anything else. The cause is logged where it happens, never sent.
    Internal,
}

/// A login's mfa_token (opaque, 256 random bits): never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct MfaToken(pub String);

impl fmt::Debug for MfaToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MfaToken([redacted])")
    }
}

/// The second factors `mfa_required` offers (its `methods` member).
pub const MFA_METHODS: [&str; 2] = ["totp", "recovery_code"];

impl AuthError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidJson | Self::InvalidRequest(_) | Self::LinkInvalid | Self::LinkExpired => {
                400
            }
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::InvalidEmail(_) | Self::InvalidPassword(_) | Self::WeakPassword => 422,
            Self::EmailTaken
            | Self::MfaAlreadyEnabled
            | Self::MfaNotPending
            | Self::MfaNotEnabled => 409,
            Self::InvalidCredentials
            | Self::MissingToken
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::MfaRequired(_)
            | Self::InvalidCode
            | Self::InvalidMfaToken => 401,
            Self::AccountDisabled
            | Self::AccountLocked
            | Self::EmailNotVerified
            | Self::WrongPassword => 403,
            Self::SessionNotFound | Self::NotFound => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::TooManyRequests { .. } => 429,
            Self::ServiceUnavailable { .. } | Self::MailUnavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The stable, machine-readable code of docs/api.md.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidEmail(_) => "invalid_email",
            Self::InvalidPassword(_) => "invalid_password",
            Self::WeakPassword => "weak_password",
            Self::EmailTaken => "email_taken",
            Self::InvalidCredentials => "invalid_credentials",
            Self::AccountDisabled => "account_disabled",
            Self::AccountLocked => "account_locked",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::ServiceUnavailable { .. } => "service_unavailable",
            Self::LinkInvalid => "link_invalid",
            Self::LinkExpired => "link_expired",
            Self::EmailNotVerified => "email_not_verified",
            Self::WrongPassword => "wrong_password",
            Self::SessionNotFound => "session_not_found",
            Self::MailUnavailable => "mail_unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::MfaRequired(_) => "mfa_required",
            Self::InvalidCode => "invalid_code",
            Self::InvalidMfaToken => "invalid_token",
            Self::MfaAlreadyEnabled => "mfa_already_enabled",
            Self::MfaNotPending => "mfa_not_pending",
            Self::MfaNotEnabled => "mfa_not_enabled",
            Self::Internal => "internal_error",
        }
    }

    /// The RFC 9110 reason phrase of the status, the `title` RFC 9457 gives an `about:blank`
    /// problem. Matched per variant, without a catch-all, so a new variant cannot fall into
    /// a wrong title unnoticed.
    pub fn title(&self) -> &'static str {
        match self {
            Self::InvalidJson | Self::InvalidRequest(_) | Self::LinkInvalid | Self::LinkExpired => {
                "Bad Request"
            }
            Self::PayloadTooLarge => "Content Too Large",
            Self::UnsupportedMediaType => "Unsupported Media Type",
            Self::InvalidEmail(_) | Self::InvalidPassword(_) | Self::WeakPassword => {
                "Unprocessable Content"
            }
            Self::EmailTaken
            | Self::MfaAlreadyEnabled
            | Self::MfaNotPending
            | Self::MfaNotEnabled => "Conflict",
            Self::InvalidCredentials
            | Self::MissingToken
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::MfaRequired(_)
            | Self::InvalidCode
            | Self::InvalidMfaToken => "Unauthorized",
            Self::AccountDisabled
            | Self::AccountLocked
            | Self::EmailNotVerified
            | Self::WrongPassword => "Forbidden",
            Self::SessionNotFound | Self::NotFound => "Not Found",
            Self::MethodNotAllowed { .. } => "Method Not Allowed",
            Self::TooManyRequests { .. } => "Too Many Requests",
            Self::ServiceUnavailable { .. } | Self::MailUnavailable => "Service Unavailable",
            Self::Internal => "Internal Server Error",
        }
    }

    /// A sentence for people. Never holds SQL, library errors or secrets.
    pub fn detail(&self) -> String {
        match self {
            Self::InvalidJson => "The request body must be a JSON object.".into(),
            Self::InvalidRequest(detail) => detail.clone(),
            Self::PayloadTooLarge => "The request body must not exceed 16 KiB.".into(),
            Self::UnsupportedMediaType => "The request body must be sent as application/json.".into(),
            Self::InvalidEmail(why) => format!("The email address is not valid: {why}."),
            Self::InvalidPassword(detail) => detail.clone(),
            Self::WeakPassword => {
                "The password is too common or too easy to guess; choose a longer, less predictable one."
                    .into()
            }
            Self::EmailTaken => "An account with this email already exists.".into(),
            Self::InvalidCredentials => "The email or password is incorrect.".into(),
            Self::AccountDisabled => "This account is disabled.".into(),
            Self::AccountLocked => {
                "This account is locked after too many failed sign-in attempts; reset the password to unlock it."
                    .into()
            }
            Self::MissingToken => "This resource needs an `Authorization: Bearer` access token.".into(),
            Self::InvalidToken => "The access token is not valid.".into(),
            Self::TokenExpired => "The access token has expired.".into(),
            Self::TooManyRequests { .. } => "Too many attempts; try again later.".into(),
            Self::ServiceUnavailable { .. } => {
                "The service is temporarily unavailable; try again shortly.".into()
            }
            Self::LinkInvalid => {
                "This link is not valid: it was used already, replaced by a newer one, or is not meant for this."
                    .into()
            }
            Self::LinkExpired => "This link has expired; ask for a new one.".into(),
            Self::EmailNotVerified => {
                "Verify your email address first: follow the link in the message we sent."
                    .into()
            }
            Self::WrongPassword => "The current password is incorrect.".into(),
            Self::SessionNotFound => "There is no such live session.".into(),
            Self::NotFound => "There is no such resource.".into(),
            Self::MethodNotAllowed { allow } => format!("This resource allows only {allow}."),
            Self::MailUnavailable => {
                "Email is not available on this service, so this cannot be done now.".into()
            }
            Self::MfaRequired(_) => {
                "Enter the code from your authenticator app, or a recovery code, to finish signing in."
                    .into()
            }
            Self::InvalidCode => "The code is not valid, or it was used already.".into(),
            Self::InvalidMfaToken => {
                "This sign-in attempt has expired or ended; sign in with your password again."
                    .into()
            }
            Self::MfaAlreadyEnabled => "Two-step login is already on for this account.".into(),
            Self::MfaNotPending => {
                "There is no enrolment to confirm; start one with POST /auth/mfa/totp.".into()
            }
            Self::MfaNotEnabled => "Two-step login is not on for this account.".into(),
            Self::Internal => "An unexpected error occurred.".into(),
        }
    }

    /// Seconds for a `Retry-After` header, where the error calls for one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::TooManyRequests { retry_after_secs }
            | Self::ServiceUnavailable { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.status())
    }
}

impl std::error::Error for AuthError {}

/// The one boundary between the store and the operations: an unreachable database is a 503
/// the client may retry; anything else is a bug or a schema mismatch, logged here and a 500.
impl From<crate::db::DbError> for AuthError {
    fn from(error: crate::db::DbError) -> Self {
        use crate::db::{DbError, RETRY_AFTER_SECS};
        match error {
            DbError::Unavailable => Self::ServiceUnavailable {
                retry_after_secs: RETRY_AFTER_SECS,
            },
            DbError::NoRow(statement) => {
                tracing::error!(statement, "statement returned no row");
                Self::Internal
            }
            DbError::UniqueViolation { constraint, .. } => {
                tracing::error!(constraint, "unexpected unique violation");
                Self::Internal
            }
            DbError::Query(error) => {
                tracing::error!(error = crate::db::describe(&error), "database query failed");
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant with the status, code and title docs/api.md gives it. `position` has no
    /// catch-all arm, so a variant added to the enum but not here does not compile.
    fn contract() -> Vec<(AuthError, u16, &'static str, &'static str)> {
        vec![
            (AuthError::InvalidJson, 400, "invalid_json", "Bad Request"),
            (
                AuthError::InvalidRequest("The field `email` is required.".into()),
                400,
                "invalid_request",
                "Bad Request",
            ),
            (
                AuthError::PayloadTooLarge,
                413,
                "payload_too_large",
                "Content Too Large",
            ),
            (
                AuthError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
                "Unsupported Media Type",
            ),
            (
                AuthError::InvalidEmail("it is empty"),
                422,
                "invalid_email",
                "Unprocessable Content",
            ),
            (
                AuthError::InvalidPassword("The password needs at least 12 characters.".into()),
                422,
                "invalid_password",
                "Unprocessable Content",
            ),
            (
                AuthError::WeakPassword,
                422,
                "weak_password",
                "Unprocessable Content",
            ),
            (AuthError::EmailTaken, 409, "email_taken", "Conflict"),
            (
                AuthError::InvalidCredentials,
                401,
                "invalid_credentials",
                "Unauthorized",
            ),
            (
                AuthError::AccountDisabled,
                403,
                "account_disabled",
                "Forbidden",
            ),
            (AuthError::AccountLocked, 403, "account_locked", "Forbidden"),
            (
                AuthError::MissingToken,
                401,
                "missing_token",
                "Unauthorized",
            ),
            (
                AuthError::InvalidToken,
                401,
                "invalid_token",
                "Unauthorized",
            ),
            (
                AuthError::TokenExpired,
                401,
                "token_expired",
                "Unauthorized",
            ),
            (
                AuthError::TooManyRequests {
                    retry_after_secs: 1,
                },
                429,
                "too_many_requests",
                "Too Many Requests",
            ),
            (
                AuthError::ServiceUnavailable {
                    retry_after_secs: 1,
                },
                503,
                "service_unavailable",
                "Service Unavailable",
            ),
            (AuthError::LinkInvalid, 400, "link_invalid", "Bad Request"),
            (AuthError::LinkExpired, 400, "link_expired", "Bad Request"),
            (
                AuthError::EmailNotVerified,
                403,
                "email_not_verified",
                "Forbidden",
            ),
            (AuthError::WrongPassword, 403, "wrong_password", "Forbidden"),
            (
                AuthError::SessionNotFound,
                404,
                "session_not_found",
                "Not Found",
            ),
            (
                AuthError::MailUnavailable,
                503,
                "mail_unavailable",
                "Service Unavailable",
            ),
            (AuthError::NotFound, 404, "not_found", "Not Found"),
            (
                AuthError::MethodNotAllowed { allow: "GET" },
                405,
                "method_not_allowed",
                "Method Not Allowed",
            ),
            (
                AuthError::MfaRequired(MfaToken("t".into())),
                401,
                "mfa_required",
                "Unauthorized",
            ),
            (AuthError::InvalidCode, 401, "invalid_code", "Unauthorized"),
            (
                AuthError::InvalidMfaToken,
                401,
                "invalid_token",
                "Unauthorized",
            ),
            (
                AuthError::MfaAlreadyEnabled,
                409,
                "mfa_already_enabled",
                "Conflict",
            ),
            (AuthError::MfaNotPending, 409, "mfa_not_pending", "Conflict"),
            (AuthError::MfaNotEnabled, 409, "mfa_not_enabled", "Conflict"),
            (
                AuthError::Internal,
                500,
                "internal_error",
                "Internal Server Error",
            ),
        ]
    }

    fn position(e: &AuthError) -> usize {
        match e {
            AuthError::InvalidJson => 0,
            AuthError::InvalidRequest(_) => 1,
            AuthError::PayloadTooLarge => 2,
            AuthError::UnsupportedMediaType => 3,
            AuthError::InvalidEmail(_) => 4,
            AuthError::InvalidPassword(_) => 5,
            AuthError::WeakPassword => 6,
            AuthError::EmailTaken => 7,
            AuthError::InvalidCredentials => 8,
            AuthError::AccountDisabled => 9,
            AuthError::AccountLocked => 10,
            AuthError::MissingToken => 11,
            AuthError::InvalidToken => 12,
            AuthError::TokenExpired => 13,
            AuthError::TooManyRequests { .. } => 14,
            AuthError::ServiceUnavailable { .. } => 15,
            AuthError::LinkInvalid => 16,
            AuthError::LinkExpired => 17,
            AuthError::EmailNotVerified => 18,
            AuthError::WrongPassword => 19,
            AuthError::SessionNotFound => 20,
            AuthError::MailUnavailable => 21,
            AuthError::NotFound => 22,
            AuthError::MethodNotAllowed { .. } => 23,
            AuthError::MfaRequired(_) => 24,
            AuthError::InvalidCode => 25,
            AuthError::InvalidMfaToken => 26,
            AuthError::MfaAlreadyEnabled => 27,
            AuthError::MfaNotPending => 28,
            AuthError::MfaNotEnabled => 29,
            AuthError::Internal => 30,
        }
    }

    #[test]
    fn every_variant_has_the_status_code_and_title_of_the_contract() {
        let contract = contract();
        let positions: Vec<usize> = contract.iter().map(|(e, ..)| position(e)).collect();
        assert_eq!(positions, (0..contract.len()).collect::<Vec<_>>());
        for (e, status, code, title) in &contract {
            assert_eq!(e.status(), *status, "{e:?}");
            assert_eq!(e.code(), *code, "{e:?}");
            assert_eq!(e.title(), *title, "{e:?}");
        }
    }

    #[test]
    fn details_are_sentences_without_internals() {
        for (e, ..) in contract() {
            let detail = e.detail();
            assert!(
                detail.ends_with('.') && detail.len() > 10,
                "{e:?}: {detail:?}"
            );
            let lower = detail.to_lowercase();
            for internal in ["sql", "postgres", "panic", "error:", "tokio", "select "] {
                assert!(!lower.contains(internal), "{e:?}: {detail:?}");
            }
        }
        assert_eq!(
            AuthError::InvalidEmail("it is empty").detail(),
            "The email address is not valid: it is empty."
        );
        assert_eq!(
            AuthError::InvalidRequest("The field `email` is required.".into()).detail(),
            "The field `email` is required."
        );
    }

    #[test]
    fn only_429_and_a_temporary_503_carry_a_retry_after() {
        for (e, status, ..) in contract() {
            // Mail being off is the configuration, not a passing fault: no time to retry at.
            let expected = match status {
                429 | 503 if e != AuthError::MailUnavailable => Some(1),
                _ => None,
            };
            assert_eq!(e.retry_after_secs(), expected, "{e:?}");
        }
        assert_eq!(
            AuthError::ServiceUnavailable {
                retry_after_secs: 2
            }
            .retry_after_secs(),
            Some(2)
        );
    }

    #[test]
    fn an_mfa_token_is_never_printed() {
        let error = AuthError::MfaRequired(MfaToken("secret-token-value".into()));
        assert!(!format!("{error:?} {error}").contains("secret-token-value"));
    }

    #[test]
    fn a_missing_row_is_a_500_not_a_retryable_503() {
        assert_eq!(
            AuthError::from(crate::db::DbError::NoRow("store::example")),
            AuthError::Internal
        );
        assert_eq!(
            AuthError::from(crate::db::DbError::Unavailable),
            AuthError::ServiceUnavailable {
                retry_after_secs: crate::db::RETRY_AFTER_SECS
            }
        );
    }
}
