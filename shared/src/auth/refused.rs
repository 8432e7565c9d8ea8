//! The networks this instance has seen the address window refuse, until their wait ends.
//!
//! The window is counted by the statement that does a route's work, and register hashes the
//! password (and may ask the breach API) before that statement: without this memory a client
//! over its window would still cost an argon2 run per request. A network remembered here is
//! answered `429` with the rest of its wait, before any work: no argon2, no round trip. Only
//! what the database said is remembered, so no request is refused that the window would have
//! let through; these answers are logged, and not audited (the first refusal was).

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
    /// Remembers that `network` must wait `secs` from `now`.
    pub fn remember(&self, network: &str, secs: u64, now: DateTime<Utc>) {
        let until = now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2));
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
        assert_eq!(refused.wait("203.0.113.1", now), Some(30));
        let later = now + chrono::Duration::milliseconds(10_500);
        assert_eq!(refused.wait("203.0.113.1", later), Some(20), "rounded up");
        assert_eq!(refused.wait("198.51.100.1", later), None, "another network");
        assert_eq!(
            refused.wait("203.0.113.1", now + chrono::Duration::seconds(30)),
            None
        );
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
