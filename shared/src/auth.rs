//! The three operations — register, login, current user — as plain async functions on
//! [`AppState`]. No Lambda or HTTP types here: `http` parses requests into these arguments and
//! renders the results. Each outcome is logged once, as a structured event.

use crate::{
    AppState,
    db::DbError,
    email::{Email, mask},
    error::AuthError,
    password::{self, NewPassword},
    token::{IssuedToken, TokenRejection},
    users::{self, InsertError, User},
};

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

fn db_failure(error: DbError) -> AuthError {
    match error {
        DbError::Unavailable => AuthError::ServiceUnavailable {
            retry_after_secs: crate::db::RETRY_AFTER_SECS,
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

/// Registers a new account: validates the email and the password, hashes the password and
/// inserts the row, letting the unique index settle races.
pub async fn register(state: &AppState, credentials: Credentials) -> Result<User, AuthError> {
    let rejected = |reason: &'static str, error: AuthError| {
        tracing::info!(event = "register.rejected", reason, email = %mask(credentials.email.trim()));
        error
    };
    let email = Email::parse(&credentials.email).map_err(|e| rejected("invalid_email", e))?;
    let password = NewPassword::parse(
        &credentials.password,
        &email,
        state.config.password_min_length,
    )
    .map_err(|e| match e {
        AuthError::WeakPassword => rejected("weak_password", e),
        e => rejected("invalid_password", e),
    })?;
    let hash = state.passwords.hash(&password).await?;
    match users::insert_user(&state.db, &email, &hash).await {
        Ok(user) => {
            tracing::info!(event = "user.registered", user_id = %user.id, email = %email.masked());
            Ok(user)
        }
        Err(InsertError::EmailTaken) => Err(rejected("email_taken", AuthError::EmailTaken)),
        Err(InsertError::Db(e)) => Err(db_failure(e)),
    }
}

/// Logs in: finds the account, checks the password (against a dummy hash when there is no
/// account, so both failures take the same time), rehashes a hash weaker than the current
/// parameters, and issues an access token.
pub async fn login(state: &AppState, credentials: Credentials) -> Result<IssuedToken, AuthError> {
    let password = password::normalize(&credentials.password);
    let failed = |reason: &'static str, user_id: Option<uuid::Uuid>| {
        tracing::info!(
            event = "login.failed",
            reason,
            user_id = user_id.map(tracing::field::display),
            email = %mask(credentials.email.trim()),
        );
        AuthError::InvalidCredentials
    };
    let Ok(email) = Email::parse(&credentials.email) else {
        state.passwords.verify(&password, None).await?;
        return Err(failed("malformed_email", None));
    };
    let found = users::find_by_email(&state.db, &email)
        .await
        .map_err(db_failure)?;
    let Some(found) = found else {
        state.passwords.verify(&password, None).await?;
        return Err(failed("unknown_email", None));
    };
    let user = &found.user;
    if !state
        .passwords
        .verify(&password, Some(&found.hashed_password))
        .await?
    {
        return Err(failed("bad_password", Some(user.id)));
    }
    if !user.is_active {
        tracing::info!(event = "login.failed", reason = "account_disabled", user_id = %user.id, email = %email.masked());
        return Err(AuthError::AccountDisabled);
    }
    if state.passwords.needs_rehash(&found.hashed_password) {
        rehash(state, user, &found.hashed_password, &password).await;
    }
    let token = state.tokens.issue(user.id).map_err(|error| {
        tracing::error!(%error, "token signing failed");
        AuthError::Internal
    })?;
    tracing::info!(event = "login.succeeded", user_id = %user.id);
    Ok(token)
}

/// Upgrades a stored hash to the current parameters. A failure here must not fail the login.
async fn rehash(state: &AppState, user: &User, old: &str, password: &str) {
    let Ok(new) = state.passwords.rehash(password).await else {
        return;
    };
    match users::update_password_hash(&state.db, user.id, old, &new).await {
        Ok(changed) => tracing::info!(event = "password.rehashed", user_id = %user.id, changed),
        Err(_) => tracing::warn!(event = "password.rehash_failed", user_id = %user.id),
    }
}

/// The user a bearer token names, re-read so that a deleted or disabled account stops
/// working at once.
pub async fn current_user(state: &AppState, bearer: &str) -> Result<User, AuthError> {
    let rejected = |reason: &'static str, user_id: Option<uuid::Uuid>| {
        tracing::info!(
            event = "token.rejected",
            reason,
            user_id = user_id.map(tracing::field::display)
        );
    };
    let user_id = state.tokens.verify(bearer).map_err(|rejection| {
        rejected(rejection.reason(), None);
        match rejection {
            TokenRejection::Expired => AuthError::TokenExpired,
            _ => AuthError::InvalidToken,
        }
    })?;
    match users::find_by_id(&state.db, user_id)
        .await
        .map_err(db_failure)?
    {
        Some(user) if user.is_active => Ok(user),
        Some(user) => {
            rejected("user_inactive", Some(user.id));
            Err(AuthError::InvalidToken)
        }
        None => {
            rejected("user_gone", Some(user_id));
            Err(AuthError::InvalidToken)
        }
    }
}
