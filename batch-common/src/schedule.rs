//! Cron schedules of `[schedule]`, evaluated in `[batch] timezone`, and the scheduler loop of
//! `serve`.
//!
//! Expressions have six fields, `sec min hour day-of-month month day-of-week` (an optional
//! seventh is the year), as in Spring's `@Scheduled(cron = ...)`; a five-field Unix expression
//! (`min hour dom month dow`) is accepted too and fires at second 0. `"0 0 1 * * *"` is 01:00
//! every day in the business time zone.
//!
//! The [`Scheduler`] sleeps on the injected [`Clock`] until the next due tick and hands each due
//! `(job, tick)` to a callback, which must not block (it spawns the run). It never fires a tick
//! twice, and after a long pause (a suspended machine) it fires each late job once, not once per
//! tick it slept through. What happened while the process was down is decided by
//! [`MissedTicks`], from the job repository, by the caller.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// The scheduler never sleeps longer than this at once, so a wall clock that jumps (a suspended
/// machine, an NTP step) is noticed within it.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A `[schedule]` entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "schedule.{job} = \"{expression}\": {reason} (expected `sec min hour day-of-month month day-of-week`, e.g. \"0 0 1 * * *\"; env BATCH__SCHEDULE__{job})"
)]
pub struct ScheduleError {
    /// The job (the key under `[schedule]`).
    pub job: String,
    /// The expression as written.
    pub expression: String,
    /// Why it was refused.
    pub reason: String,
}

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
}

impl CronSchedule {
    /// Parses a six- or seven-field expression (or a five-field Unix one, at second 0).
    pub fn parse(expression: &str) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expression}"),
            6 | 7 => expression.to_owned(),
            n => return Err(format!("{n} fields; a cron expression has 5, 6 or 7")),
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| e.to_string())?;
        if schedule.upcoming(Utc).next().is_none() {
            return Err("it never fires again".to_owned());
        }
        Ok(CronSchedule {
            expression: expression.to_owned(),
            schedule,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first tick strictly after `after`, with the fields read in `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last tick at or before `at`, with the fields read in `tz`.
    pub fn last_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // `after(x).next_back()` is the last tick strictly before x; ticks are whole seconds.
        let x = at.with_timezone(&tz) + chrono::Duration::milliseconds(1);
        self.schedule
            .after(&x)
            .next_back()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// What `serve` does at start-up about a tick that fell while it was not running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedTicks {
    /// Run the job once at start-up if its last tick has no execution started at or after it
    /// (launches from Jenkins or another process count). Safe to repeat: job instances are
    /// identified by their date, so a run that already completed is a no-op.
    #[default]
    RunOnce,
    /// Ignore it; wait for the next tick.
    Skip,
}

/// One scheduled job.
#[derive(Debug, Clone)]
pub struct ScheduledJob {
    /// The job's name.
    pub job: String,
    /// When it runs.
    pub cron: CronSchedule,
}

/// Fires the ticks of scheduled jobs on an injected clock.
pub struct Scheduler {
    clock: Arc<dyn Clock>,
    tz: Tz,
    jobs: Vec<ScheduledJob>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("tz", &self.tz)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for the `[schedule]` map (job name → expression) in `tz`. Every entry is
    /// parsed; the first bad one is the error. Whether the names are known jobs is the caller's
    /// business (it knows the registry).
    pub fn from_config(
        schedule: &BTreeMap<String, String>,
        tz: Tz,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ScheduleError> {
        let mut jobs = Vec::with_capacity(schedule.len());
        for (job, expression) in schedule {
            let cron = CronSchedule::parse(expression).map_err(|reason| ScheduleError {
                job: job.clone(),
                expression: expression.clone(),
                reason,
            })?;
            jobs.push(ScheduledJob {
                job: job.clone(),
                cron,
            });
        }
        Ok(Scheduler { clock, tz, jobs })
    }

    /// The scheduled jobs.
    pub fn jobs(&self) -> &[ScheduledJob] {
        &self.jobs
    }

    /// The time zone the expressions are read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Each job's next tick after now.
    pub fn next_ticks(&self) -> Vec<(String, Option<DateTime<Utc>>)> {
        let now = self.clock.now();
        self.jobs
            .iter()
            .map(|j| (j.job.clone(), j.cron.next_after(now, self.tz)))
            .collect()
    }

    /// Each job's last tick at or before now (for the missed-tick check at start-up).
    pub fn last_ticks(&self) -> Vec<(String, Option<DateTime<Utc>>)> {
        let now = self.clock.now();
        self.jobs
            .iter()
            .map(|j| (j.job.clone(), j.cron.last_at_or_before(now, self.tz)))
            .collect()
    }

    /// Runs until `cancel`: at each due tick calls `on_tick(job, tick)`. Ticks already past when
    /// this starts are not fired (that is [`MissedTicks`]' business).
    pub async fn run<F>(&self, cancel: &CancellationToken, mut on_tick: F)
    where
        F: FnMut(&str, DateTime<Utc>) + Send,
    {
        let start = self.clock.now();
        let mut next: Vec<Option<DateTime<Utc>>> = self
            .jobs
            .iter()
            .map(|j| j.cron.next_after(start, self.tz))
            .collect();
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let Some(soonest) = next.iter().flatten().min().copied() else {
                // Nothing will ever fire again.
                cancel.cancelled().await;
                return;
            };
            let now = self.clock.now();
            if soonest > now {
                let wait = (soonest - now).to_std().unwrap_or_default().min(MAX_SLEEP);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.clock.sleep(wait) => {}
                }
                continue;
            }
            for (job, slot) in self.jobs.iter().zip(next.iter_mut()) {
                if let Some(tick) = *slot
                    && tick <= now
                {
                    on_tick(&job.job, tick);
                    // The next tick after *now*: ticks slept through are not fired one by one.
                    *slot = job.cron.next_after(now.max(tick), self.tz);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use chrono::NaiveDate;
    use chrono_tz::Asia::Seoul;
    use std::sync::Mutex;

    fn kst(y: i32, m: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        use chrono::TimeZone as _;
        Seoul
            .from_local_datetime(
                &NaiveDate::from_ymd_opt(y, m, d)
                    .unwrap()
                    .and_hms_opt(h, mi, s)
                    .unwrap(),
            )
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn expressions_are_read_in_the_business_time_zone() {
        let c = CronSchedule::parse("0 0 1 * * *").unwrap();
        let now = kst(2026, 11, 21, 0, 59, 59);
        assert_eq!(c.next_after(now, Seoul), Some(kst(2026, 11, 21, 1, 0, 0)));
        assert_eq!(
            c.next_after(kst(2026, 11, 21, 1, 0, 0), Seoul),
            Some(kst(2026, 11, 22, 1, 0, 0))
        );
        assert_eq!(
            c.last_at_or_before(kst(2026, 11, 21, 1, 0, 0), Seoul),
            Some(kst(2026, 11, 21, 1, 0, 0))
        );
        assert_eq!(
            c.last_at_or_before(kst(2026, 11, 21, 0, 59, 59), Seoul),
            Some(kst(2026, 11, 20, 1, 0, 0))
        );
        // 01:00 KST is 16:00 UTC the day before.
        assert_eq!(
            kst(2026, 11, 21, 1, 0, 0).to_rfc3339(),
            "2026-11-20T16:00:00+00:00"
        );
        // Five fields: Unix cron at second 0.
        let unix = CronSchedule::parse("30 4 * * *").unwrap();
        assert_eq!(
            unix.next_after(now, Seoul),
            Some(kst(2026, 11, 21, 4, 30, 0))
        );
    }

    #[test]
    fn bad_entries_name_the_job_and_the_expression() {
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(kst(2026, 11, 21, 0, 0, 0)));
        for (expr, needle) in [
            ("0 0 25 * * *", "0 0 25 * * *"),
            ("every day", "2 fields"),
            ("0 0 1 * * * * *", "8 fields"),
        ] {
            let map = BTreeMap::from([("exampleSyncJob".to_owned(), expr.to_owned())]);
            let e = Scheduler::from_config(&map, Seoul, clock.clone()).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("schedule.exampleSyncJob") && text.contains(needle),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_due_tick_fires_once_at_its_time() {
        // FixedClock::sleep moves the clock forward and returns at once.
        let clock = Arc::new(FixedClock::new(kst(2026, 11, 21, 0, 59, 58)));
        let map = BTreeMap::from([
            ("exampleSyncJob".to_owned(), "0 0 1 * * *".to_owned()),
            ("exampleRefreshJob".to_owned(), "0 0 4 * * *".to_owned()),
        ]);
        let scheduler = Scheduler::from_config(&map, Seoul, clock.clone()).unwrap();
        let fired = Mutex::new(Vec::new());
        let cancel = CancellationToken::new();
        let until = kst(2026, 11, 22, 2, 0, 0);
        scheduler
            .run(&cancel, |job, tick| {
                fired.lock().unwrap().push((job.to_owned(), tick));
                if tick >= until {
                    cancel.cancel();
                }
            })
            .await;
        // Each tick exactly once, in order, at its local time; stopped by the first after `until`.
        let fired = fired.into_inner().unwrap();
        assert_eq!(
            fired,
            vec![
                ("exampleSyncJob".to_owned(), kst(2026, 11, 21, 1, 0, 0)),
                ("exampleRefreshJob".to_owned(), kst(2026, 11, 21, 4, 0, 0)),
                ("exampleSyncJob".to_owned(), kst(2026, 11, 22, 1, 0, 0)),
                ("exampleRefreshJob".to_owned(), kst(2026, 11, 22, 4, 0, 0)),
            ]
        );
    }

    #[tokio::test]
    async fn ticks_slept_through_fire_once() {
        let clock = Arc::new(FixedClock::new(kst(2026, 11, 21, 0, 0, 0)));
        let map = BTreeMap::from([("everyMinute".to_owned(), "0 * * * * *".to_owned())]);
        let scheduler = Scheduler::from_config(&map, Seoul, clock.clone()).unwrap();
        let fired = Mutex::new(Vec::new());
        let cancel = CancellationToken::new();
        scheduler
            .run(&cancel, |_, tick| {
                let mut fired = fired.lock().unwrap();
                fired.push(tick);
                match fired.len() {
                    // The machine sleeps for ten minutes right after the first tick.
                    1 => clock.advance(chrono::Duration::minutes(10)),
                    3 => cancel.cancel(),
                    _ => {}
                }
            })
            .await;
        let fired = fired.into_inner().unwrap();
        assert_eq!(
            fired,
            vec![
                kst(2026, 11, 21, 0, 1, 0),
                // Late, once, for all the ticks slept through ...
                kst(2026, 11, 21, 0, 2, 0),
                // ... then on time again.
                kst(2026, 11, 21, 0, 12, 0),
            ]
        );
    }
}
