//! The one time unit both services store: microseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, in every backend and every message.
pub type Micros = i64;

/// Now, in [`Micros`]; a clock set before 1970 reads as the epoch.
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The moment `age` before now, in [`Micros`]: the cutoff of a grace or retention period
/// (an age beyond what `Micros` holds is before every stored time).
pub fn micros_ago(age: Duration) -> Micros {
    now_micros().saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX))
}
