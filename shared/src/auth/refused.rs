//! The networks this instance has seen the address window refuse, until their wait ends.
//!
//! The window is counted by the statement that does a route's work, and register hashes the
//! password (and may ask the breach API) before that statement: without this memory a client
//! over its window would cost an argon2 run per request. For a network remembered here,
//! register checks the window first, in a statement of its own (counted or refused and
//! audited, as always), and only then hashes. Only what the database said is remembered.

use chrono::{DateTime, Utc};
use std::{collections::HashMap, sync::Mutex};

/// Networks remembered at most: a flood from many networks cannot grow the memory without bound.
const CAPACITY: usize = 4096;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Refused {
    until: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Refused {
    /// Remembers that `network` must wait `secs` from `now`. The database rounds its wait up
    /// to whole seconds: the second it may have added is not remembered, so this memory never
    /// outlasts the window's refusal (the database decides that last second).
    pub fn remember(&self, network: &str, secs: u64, now: DateTime<Utc>) {
        let Some(until) = i64::try_from(secs.saturating_sub(1))
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .and_then(|wait| now.checked_add_signed(wait))
            .filter(|until| *until > now)
        else {
            return;
        };
        let mut map = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CAPACITY {
            map.retain(|_, until| *until > now);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(network.to_owned(), until);
    }

    /// The whole seconds `network` still has to wait, if it is remembered.
    pub fn wait(&self, network: &str, now: DateTime<Utc>) -> Option<u64> {
        let mut map = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = *map.get(network)?;
        if until <= now {
            map.remove(network);
            return None;
        }
        let millis = u64::try_from((until - now).num_milliseconds()).unwrap_or(0);
        Some(millis.div_ceil(1000).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_remembered_until_its_wait_ends() {
        let refused = Refused::default();
        let now = Utc::now();
        assert_eq!(refused.wait("203.0.113.1", now), None);
        refused.remember("203.0.113.1", 30, now);
        assert_eq!(
            refused.wait("203.0.113.1", now),
            Some(29),
            "less the database's rounding"
        );
        let later = now + chrono::Duration::milliseconds(10_500);
        assert_eq!(refused.wait("203.0.113.1", later), Some(19), "rounded up");
        assert_eq!(refused.wait("198.51.100.1", later), None, "another network");
        let over = now + chrono::Duration::seconds(29);
        assert_eq!(refused.wait("203.0.113.1", over), None);
        refused.remember("203.0.113.2", 1, now);
        assert_eq!(
            refused.wait("203.0.113.2", now),
            None,
            "a 1 s wait is the database's"
        );
        refused.remember("203.0.113.3", u64::MAX, now);
        // No overflow: a wait beyond any date is not remembered, the database decides.
        assert_eq!(refused.wait("203.0.113.3", now), None);
    }

    #[test]
    fn the_memory_is_bounded() {
        let refused = Refused::default();
        let now = Utc::now();
        for i in 0..(CAPACITY + 10) {
            refused.remember(&format!("10.0.{}.{}", i / 256, i % 256), 60, now);
        }
        let len = refused.until.lock().map(|m| m.len()).unwrap_or(0);
        assert!(len <= CAPACITY, "{len}");
    }
}
