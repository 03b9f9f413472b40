//! Retries of calls that failed in transit.
//!
//! With several replicas behind a balanced channel, a replica that dies takes the calls in
//! flight on it down, and until the channel's probe drops it (within about a second) new
//! calls may still pick it. Such failures are worth retrying, but only for calls that are
//! safe to send twice: idempotent ones, or ones that first check whether the lost attempt
//! took effect (the `replay` flag says when that may be the case).

use std::{future::Future, time::Duration};

use tonic::{Code, Status};

/// A failure of the connection rather than an answer of the server: refused or reset
/// connections (UNAVAILABLE), and a stream cut mid-call, which tonic reports as UNKNOWN
/// with the transport error as its source (statuses a server sends carry no source).
pub fn failed_in_transit(s: &Status) -> bool {
    use std::error::Error as _;
    s.code() == Code::Unavailable || (s.code() == Code::Unknown && s.source().is_some())
}

/// How often, and how patiently, a call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The pause after the first failure, doubled after each further one.
    pub first_backoff: Duration,
}

impl Retry {
    /// Six attempts over about 3 s: well past a balanced channel's probe interval (1 s),
    /// so that a lost replica is out of the pool before the last one.
    pub const TRANSIENT: Retry = Retry {
        attempts: 6,
        first_backoff: Duration::from_millis(100),
    };

    /// Runs `attempt` until it succeeds, fails with an answer of the server, or fails in
    /// transit [`Retry::attempts`] times in a row; the last status is returned. The flag
    /// `attempt` gets is `true` when an earlier attempt failed in transit and so may have
    /// taken effect: a call that a replay would apply twice checks that first.
    pub async fn run<T, F, Fut>(&self, call: &str, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.first_backoff;
        let mut n = 1;
        loop {
            match attempt(n > 1).await {
                Err(s) if n < self.attempts && failed_in_transit(&s) => {
                    tracing::warn!(call, attempt = n, error = %s, "call failed in transit; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    n += 1;
                }
                done => return done,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(attempts: u32) -> Retry {
        Retry {
            attempts,
            first_backoff: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn transit_failures_are_retried_and_flagged_as_replays() {
        let mut seen = Vec::new();
        let got = quick(6)
            .run("test", |replay| {
                seen.push(replay);
                let n = seen.len();
                async move {
                    if n < 3 {
                        Err(Status::unavailable("connection refused"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(got.unwrap(), 3);
        assert_eq!(seen, [false, true, true]);
    }

    #[tokio::test]
    async fn answers_of_the_server_are_final_and_attempts_are_bounded() {
        let mut calls = 0;
        let got: Result<(), _> = quick(6)
            .run("test", |_| {
                calls += 1;
                async { Err(Status::aborted("revision moved")) }
            })
            .await;
        assert_eq!((got.unwrap_err().code(), calls), (Code::Aborted, 1));

        let mut calls = 0;
        let got: Result<(), _> = quick(4)
            .run("test", |_| {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            })
            .await;
        assert_eq!((got.unwrap_err().code(), calls), (Code::Unavailable, 4));
    }
}
