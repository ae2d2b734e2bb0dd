//! Token buckets: each agent and each tool may make `burst` calls at once and
//! `per_second` a second after that.
//!
//! Buckets live in memory, per process, keyed by agent or tool; time comes from
//! the injected clock so tests move it by hand. A refused call learns when the
//! next token arrives.

use std::collections::HashMap;
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A rate: a bucket of `burst` tokens refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Calls allowed at once (the bucket's size, at least 1).
    pub burst: u32,
    /// Tokens added per second (at least 1).
    pub per_second: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Buckets by key.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Takes one token from `key`'s bucket, or says in how many milliseconds one
    /// will be there.
    pub(crate) fn take(&self, key: &str, rate: Rate, now_ms: i64) -> Result<(), u64> {
        let burst = f64::from(rate.burst.max(1));
        let per_ms = f64::from(rate.per_second.max(1)) / 1000.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        let elapsed = (now_ms - b.at_ms).max(0) as f64;
        b.tokens = (b.tokens + elapsed * per_ms).min(burst);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_ms).ceil().max(1.0) as u64)
        }
    }

    /// Gives back a token taken for a call that was then refused for another reason.
    pub(crate) fn give_back(&self, key: &str, rate: Rate) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(f64::from(rate.burst.max(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let l = Limiter::default();
        let rate = Rate {
            burst: 2,
            per_second: 10,
        };
        assert!(l.take("a", rate, 0).is_ok());
        assert!(l.take("a", rate, 0).is_ok());
        assert_eq!(l.take("a", rate, 0), Err(100));
        assert_eq!(l.take("a", rate, 50), Err(50));
        assert!(l.take("a", rate, 100).is_ok());
        assert!(l.take("b", rate, 100).is_ok(), "buckets are per key");
    }
}
