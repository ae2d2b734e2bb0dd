//! Backoff between attempts: exponential, capped, with full jitter.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long to wait before retrying a failed attempt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the second attempt, in ms (default 1000).
    #[serde(default = "default_initial")]
    pub initial_ms: u64,
    /// The longest delay, in ms (default 60000).
    #[serde(default = "default_max")]
    pub max_ms: u64,
}

fn default_initial() -> u64 {
    1000
}

fn default_max() -> u64 {
    60_000
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: default_initial(),
            max_ms: default_max(),
        }
    }
}

/// The delay after `failed_attempts` failures: a uniformly random value in
/// `[d/2, d]` where `d = min(max, initial · 2^(failed_attempts-1))`. Half the
/// delay is kept so retries never bunch at zero; the rest spreads a herd.
pub fn delay_ms(initial_ms: i64, max_ms: i64, failed_attempts: i64, random: u64) -> i64 {
    let exp = failed_attempts.clamp(1, 40) - 1;
    let d = initial_ms
        .max(0)
        .saturating_mul(1_i64 << exp.min(40))
        .min(max_ms.max(0));
    let half = d / 2;
    half + (random % (d - half + 1) as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_stay_capped_and_jitter_within_bounds() {
        for r in [0, 1, 7, u64::MAX] {
            let d1 = delay_ms(1000, 60_000, 1, r);
            assert!((500..=1000).contains(&d1), "{d1}");
            let d3 = delay_ms(1000, 60_000, 3, r);
            assert!((2000..=4000).contains(&d3), "{d3}");
            let d30 = delay_ms(1000, 60_000, 30, r);
            assert!((30_000..=60_000).contains(&d30), "{d30}");
        }
        assert_eq!(delay_ms(0, 0, 5, 3), 0);
    }
}
