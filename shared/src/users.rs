//! The SQL of the `users` table; nothing else in the code base touches it. Each function is
//! one statement, one round trip.

use crate::{
    db::{Db, DbError},
    email::Email,
};
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::Type};
use uuid::Uuid;

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
) -> Result<User, InsertError> {
    let id = Uuid::new_v4();
    let inserted = db
        .query_opt(
            "INSERT INTO users (id, email, hashed_password) VALUES ($1, $2, $3) \
             RETURNING id, email, is_active, created_at",
            &[
                (&id, Type::UUID),
                (&email.as_str(), Type::TEXT),
                (&hashed_password, Type::TEXT),
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

/// The user with this normalized email, with the password hash.
pub async fn find_by_email(db: &Db, email: &Email) -> Result<Option<UserWithHash>, DbError> {
    let row = db
        .query_opt(
            "SELECT id, email, is_active, created_at, hashed_password FROM users WHERE email = $1",
            &[(&email.as_str(), Type::TEXT)],
        )
        .await?;
    row.map(|row| {
        Ok(UserWithHash {
            user: user_from(&row)?,
            hashed_password: row.try_get("hashed_password").map_err(DbError::Query)?,
        })
    })
    .transpose()
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
