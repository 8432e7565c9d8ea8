//! The per-source-network window (docs/api.md "Limits against guessing"), checked by the
//! statement that does a route's work, so that it costs no round trip of its own.
//!
//! Such a statement starts with [`windowed!`]: a materialized CTE `w` that calls
//! `auth_window` (migrations/V5) with the window's six parameters, `$1`–`$6`; the statement's
//! own parameters follow from `$7`. Its work is gated on `w.wait IS NULL`, and it returns
//! `w.wait` (NULL: counted; else the seconds to wait, the refusal's audit row written).
//! A function called through a `LATERAL` subquery is gated by `WHERE w.wait IS NULL OFFSET 0`:
//! the fence keeps the subquery a plan of its own, where that condition is a one-time filter
//! evaluated before the function runs.
//!
//! `auth_window` takes its network's advisory lock for the rest of the transaction, so the
//! requests of one network (one NAT, say) take turns for the length of their statement, a
//! few milliseconds, rather than of the window check alone. They cannot deadlock: each
//! statement takes that lock first, and only that one.

use crate::{
    db::{DbError, Param},
    origin::Origin,
};
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::Type};
use uuid::Uuid;

/// Statement text guarded by the window: see the module docs.
macro_rules! windowed {
    ($rest:literal) => {
        concat!(
            "WITH w AS MATERIALIZED (SELECT auth_window($1, $2, $3, $4, $5, $6) AS wait)",
            $rest
        )
    };
}
pub(crate) use windowed;

/// One request's place in its source network's window.
#[derive(Debug, Clone)]
pub struct Window<'a> {
    /// `None` without a source address or with the window off: nothing is counted.
    network: Option<String>,
    limit: i32,
    now: DateTime<Utc>,
    /// Names the request, so a retry after a lost answer is not counted twice.
    request: Uuid,
    route: &'static str,
    user_agent: Option<&'a str>,
}

impl<'a> Window<'a> {
    /// The window of a request from `origin` to `route`, `limit` requests a minute (0: off).
    pub fn new(origin: &'a Origin, limit: u32, route: &'static str, now: DateTime<Utc>) -> Self {
        Self {
            network: (limit > 0).then(|| origin.refusal_source()).flatten(),
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
            now,
            request: Uuid::new_v4(),
            route,
            user_agent: origin.user_agent.as_deref(),
        }
    }

    /// `$1`–`$6` of a [`windowed!`] statement, followed by the statement's own.
    pub(crate) fn with<'p>(&'p self, rest: &[Param<'p>]) -> Vec<Param<'p>> {
        let mut params: Vec<Param<'p>> = vec![
            (&self.network, Type::TEXT),
            (&self.limit, Type::INT4),
            (&self.now, Type::TIMESTAMPTZ),
            (&self.request, Type::UUID),
            (&self.route, Type::TEXT),
            (&self.user_agent, Type::TEXT),
        ];
        params.extend_from_slice(rest);
        params
    }

    /// The moment the window counts the request at.
    pub fn now(&self) -> &DateTime<Utc> {
        &self.now
    }

    /// The counted network, `None` when nothing is counted.
    pub fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }

    /// The route, for logs.
    pub fn route(&self) -> &'static str {
        self.route
    }
}

/// A request the window refused: the seconds until a slot frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited(pub u64);

/// `Err` when the window refused the request (`wait` of a [`windowed!`] row).
pub(crate) fn counted(row: &Row) -> Result<Result<(), Limited>, DbError> {
    let wait: Option<i32> = row.try_get("wait").map_err(DbError::Query)?;
    Ok(match wait {
        None => Ok(()),
        Some(secs) => Err(Limited(u64::try_from(secs.max(1)).unwrap_or(1))),
    })
}
