//! A per-key token bucket: `per_minute` tokens, refilled evenly over a minute. Used to
//! slow presented-prescription lookups per pharmacy certificate, so that sweeping
//! numbers and birth dates takes days and shows in the audit log long before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Keys remembered at most; full buckets are forgotten first when it is reached.
const MAX_KEYS: usize = 100_000;

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute` requests a minute per key (at least one).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter { per_minute: f64::from(per_minute.max(1)), buckets: Mutex::default() }
    }

    /// Take one request for `key`: Ok, or Err with the whole seconds until one is allowed.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = self.per_minute / 60.0;
        if b.len() >= MAX_KEYS && !b.contains_key(key) {
            let cap = self.per_minute;
            b.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < cap);
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_gets_its_rate_and_others_are_unaffected() {
        let r = RateLimiter::new(30);
        let t0 = Instant::now();
        for _ in 0..30 {
            assert_eq!(r.take_at("a", t0), Ok(()));
        }
        let wait = r.take_at("a", t0).unwrap_err();
        assert_eq!(wait, 2, "one token every two seconds");
        assert_eq!(r.take_at("b", t0), Ok(()), "another certificate has its own bucket");
        assert_eq!(r.take_at("a", t0 + Duration::from_secs(2)), Ok(()), "refilled");
        assert!(r.take_at("a", t0 + Duration::from_secs(2)).is_err());
    }
}
