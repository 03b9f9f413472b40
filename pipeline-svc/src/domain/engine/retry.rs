//! Retry policies of steps: how often a failed step runs again, how long it waits before
//! each run, and which failures are final at once.

use std::time::Duration;

use crate::error::Error;

/// Kinds of step failure a policy may declare final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Bad input: running again cannot help.
    InvalidInput,
    /// The world is not in the state the step needs (a refused guard, a missing alias).
    FailedPrecondition,
    /// Not found, already exists, or any other kind of failure.
    Other,
}

impl FailureKind {
    pub fn of(e: &Error) -> Self {
        match e {
            Error::Invalid(_) => Self::InvalidInput,
            Error::Precondition(_) => Self::FailedPrecondition,
            _ => Self::Other,
        }
    }
}

/// How a step is retried: at most `max_attempts` runs in all; before run `n + 1` it waits
/// `initial_backoff × multiplier^(n-1)`, at most `max_backoff`, less up to `jitter` of it
/// at random (so that retries of many operations spread out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// 0 to 1: the share of each delay that is random.
    pub jitter: f64,
    /// Failures that end the step at once, whatever attempts remain.
    pub non_retryable: &'static [FailureKind],
}

/// Bad input and failed preconditions do not change by waiting.
pub const FINAL_BY_DEFAULT: &[FailureKind] =
    &[FailureKind::InvalidInput, FailureKind::FailedPrecondition];

impl Default for RetryPolicy {
    /// Six runs over about six seconds: long enough for a database or registry restart.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.1,
            non_retryable: FINAL_BY_DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// Whether a step that failed with `e` on run `attempt` (1-based) runs again.
    pub fn retries(&self, e: &Error, attempt: u32) -> bool {
        attempt < self.max_attempts && !self.non_retryable.contains(&FailureKind::of(e))
    }

    /// The largest wait before run `attempt + 1`, without jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The wait before run `attempt + 1`: the ceiling, less a random share of it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return ceiling;
        }
        let cut = fastrand::f64() * jitter;
        ceiling.mul_f64(1.0 - cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every delay lies between (1 - jitter) of its ceiling and the ceiling, and the
        /// ceilings grow to the maximum and stay there.
        #[test]
        fn delays_stay_within_the_policy(
            initial_ms in 1u64..2000,
            max_ms in 1u64..60_000,
            multiplier in 1.0f64..4.0,
            jitter in 0.0f64..1.0,
            attempt in 1u32..40,
        ) {
            let p = RetryPolicy {
                initial_backoff: Duration::from_millis(initial_ms),
                max_backoff: Duration::from_millis(max_ms),
                multiplier,
                jitter,
                ..RetryPolicy::default()
            };
            let ceiling = p.ceiling(attempt);
            prop_assert!(ceiling <= p.max_backoff);
            prop_assert!(p.ceiling(attempt + 1) >= ceiling);
            let d = p.delay(attempt);
            prop_assert!(d <= ceiling);
            prop_assert!(d.as_secs_f64() >= ceiling.as_secs_f64() * (1.0 - jitter) - 1e-9);
        }
    }

    #[test]
    fn final_failures_are_not_retried() {
        let p = RetryPolicy::default();
        assert!(!p.retries(&Error::Precondition("guard".into()), 1));
        assert!(!p.retries(&Error::invalid("f", "bad"), 1));
        assert!(p.retries(&Error::internal("lost connection"), 1));
        assert!(!p.retries(&Error::internal("lost connection"), p.max_attempts));
        assert_eq!(p.ceiling(1), p.initial_backoff);
        assert_eq!(p.ceiling(2), p.initial_backoff * 2);
    }
}
