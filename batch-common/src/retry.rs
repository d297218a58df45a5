//! Retrying transient failures: one backoff policy for the whole runtime.
//!
//! A [`RetryPolicy`] is capped exponential backoff with jitter (the delays come from the `backon`
//! crate), bounded twice: by a number of attempts and by a time budget measured on the injected
//! [`Clock`] from the first failure. The budget is what lets a chunk ride out a Redis restart or a
//! database failover of some seconds without giving the step up; the attempt count is a safety
//! net for failures that come back at once.
//!
//! ```text
//! let mut schedule = policy.schedule();
//! loop {
//!     match op().await {
//!         Err(e) if is_transient(&e) => match schedule.next_delay(clock.now()) {
//!             Some(delay) => clock.sleep(delay).await,
//!             None => return Err(e),    // attempts or budget used up
//!         },
//!         other => return other,
//!     }
//! }
//! ```

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};

/// How a failing operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The first delay; each further delay doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
    /// The time budget from the first failure: no attempt is started after it has passed.
    /// `None`: only `max_attempts` bounds the retries.
    pub max_elapsed: Option<Duration>,
    /// Randomise every delay (up to +100%, still capped at `max_backoff`), so that processes
    /// failing together do not retry in lockstep.
    pub jitter: bool,
}

impl RetryPolicy {
    /// A policy without retries.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        max_elapsed: None,
        jitter: false,
    };

    /// Starts the delays of one operation (a fresh schedule per operation).
    pub fn schedule(&self) -> RetrySchedule {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        RetrySchedule {
            policy: *self,
            delays: builder.build(),
            attempts: 1,
            first_failure: None,
        }
    }

    /// The delay before retry number `retry` (1-based) without jitter: the initial backoff doubled
    /// `retry − 1` times, capped.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The retry state of one operation: how many attempts were made and when the first one failed.
#[derive(Debug)]
pub struct RetrySchedule {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
    attempts: u32,
    first_failure: Option<DateTime<Utc>>,
}

impl RetrySchedule {
    /// After a failed attempt that ended at `now`: the delay before the next attempt, or `None`
    /// when the attempts are used up or the next attempt would start after the time budget.
    pub fn next_delay(&mut self, now: DateTime<Utc>) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts {
            return None;
        }
        let first = *self.first_failure.get_or_insert(now);
        let delay = self
            .delays
            .next()
            .unwrap_or(self.policy.max_backoff)
            .min(self.policy.max_backoff);
        if let Some(budget) = self.policy.max_elapsed {
            let elapsed = (now - first).to_std().unwrap_or_default();
            if elapsed.saturating_add(delay) > budget {
                return None;
            }
        }
        self.attempts += 1;
        Some(delay)
    }

    /// Attempts made or started so far (1 before the first failure).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time since the first failure, as of `now` (zero before any failure).
    pub fn elapsed(&self, now: DateTime<Utc>) -> Duration {
        self.first_failure
            .map(|first| (now - first).to_std().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// The outcome of [`RetryPolicy::run`]: the last attempt's result and how many attempts failed.
#[derive(Debug)]
pub struct Retried<T> {
    /// The result of the last attempt.
    pub result: anyhow::Result<T>,
    /// Failed attempts (each one a rollback for a transactional operation); the retries are
    /// these minus one when the result is an error.
    pub failures: u32,
}

impl RetryPolicy {
    /// Runs `op` (given the number of failed attempts so far) until it succeeds, fails with an
    /// error that is not transient ([`crate::is_transient`]), or the policy is used up. Each
    /// retry is a `warn` line, a used-up policy an `error` line, both naming `step` and `what`.
    pub async fn run<T, F, Fut>(
        &self,
        clock: &dyn crate::Clock,
        step: &str,
        what: &str,
        mut op: F,
    ) -> Retried<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut schedule = self.schedule();
        let mut failures = 0;
        loop {
            match op(failures).await {
                Ok(v) => {
                    return Retried {
                        result: Ok(v),
                        failures,
                    };
                }
                Err(e) => {
                    failures += 1;
                    match next_delay(&mut schedule, &e, clock, step, what) {
                        Some(delay) => clock.sleep(delay).await,
                        None => {
                            return Retried {
                                result: Err(e),
                                failures,
                            };
                        }
                    }
                }
            }
        }
    }
}

/// After a failed attempt: the delay before the next one if `e` is transient and the schedule
/// allows another attempt (logged as a warning), else `None` (logged when a transient error
/// used the policy up, so the log says why the step gives up).
pub fn next_delay(
    schedule: &mut RetrySchedule,
    e: &anyhow::Error,
    clock: &dyn crate::Clock,
    step: &str,
    what: &str,
) -> Option<Duration> {
    if !crate::is_transient(e) {
        return None;
    }
    let now = clock.now();
    match schedule.next_delay(now) {
        Some(delay) => {
            tracing::warn!(
                step, attempt = schedule.attempts() - 1, delay_ms = delay.as_millis() as u64,
                error = %format!("{e:#}"), "transient error {what}; retrying"
            );
            Some(delay)
        }
        None => {
            tracing::error!(
                step, attempts = schedule.attempts(),
                elapsed_ms = schedule.elapsed(now).as_millis() as u64,
                error = %format!("{e:#}"),
                "transient error {what}; retry attempts or batch.chunk_retry_max_elapsed used up"
            );
            None
        }
    }
}

impl crate::config::RuntimeSettings {
    /// The chunk retry policy of `[batch]`: `chunk_retry_attempts`, `chunk_retry_backoff` up to
    /// `chunk_retry_max_backoff` with jitter, within `chunk_retry_max_elapsed`.
    pub fn chunk_retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.chunk_retry_attempts.get(),
            initial_backoff: self.chunk_retry_backoff,
            max_backoff: self.chunk_retry_max_backoff,
            max_elapsed: Some(self.chunk_retry_max_elapsed),
            jitter: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, budget: Option<u64>, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: budget.map(Duration::from_secs),
            jitter,
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut s = policy(100, None, false).schedule();
        let delays: Vec<u128> = (0..8)
            .map(|_| s.next_delay(at(0)).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(s.attempts(), 9);
        let p = policy(100, None, false);
        assert_eq!(p.nominal_delay(1), Duration::from_millis(200));
        assert_eq!(p.nominal_delay(4), Duration::from_millis(1600));
        assert_eq!(p.nominal_delay(40), Duration::from_secs(5));
    }

    #[test]
    fn attempts_bound_the_retries() {
        let mut s = policy(3, None, false).schedule();
        assert!(s.next_delay(at(0)).is_some());
        assert!(s.next_delay(at(0)).is_some());
        assert_eq!(s.next_delay(at(0)), None);
        assert_eq!(RetryPolicy::NONE.schedule().next_delay(at(0)), None);
    }

    #[test]
    fn the_budget_counts_from_the_first_failure() {
        let mut s = policy(1000, Some(60), false).schedule();
        let mut now = 5_000; // the first failure, after a slow first attempt
        let mut retries = 0;
        while let Some(d) = s.next_delay(at(now)) {
            now += d.as_millis() as i64 + 100; // each attempt takes 100 ms and fails
            retries += 1;
        }
        // 0.2+0.4+0.8+1.6+3.2 s, then 5 s each: the last retry starts within 60 s of the first failure.
        assert!((14..=16).contains(&retries), "{retries}");
        assert!(
            s.elapsed(at(now)) <= Duration::from_secs(61),
            "{:?}",
            s.elapsed(at(now))
        );
        assert!(
            s.elapsed(at(now)) >= Duration::from_secs(55),
            "{:?}",
            s.elapsed(at(now))
        );
    }

    #[test]
    fn jitter_stays_within_nominal_and_cap() {
        for _ in 0..50 {
            let p = policy(100, None, true);
            let mut s = p.schedule();
            for retry in 1..=10 {
                let d = s.next_delay(at(0)).unwrap();
                let nominal = p.nominal_delay(retry);
                assert!(
                    d >= nominal && d <= (nominal * 2).min(p.max_backoff),
                    "{retry}: {d:?}"
                );
            }
        }
    }
}
