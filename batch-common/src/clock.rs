//! The injected Clock. `Utc::now()` is called in exactly one place: [`SystemClock`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Where "now" comes from. Jobs and the runtime take a `&dyn Clock` (or `Arc<dyn Clock>`), so tests
/// pin time with [`FixedClock`] or a mockall `MockClock` (feature `mock`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Waits `duration` (retry intervals and backoffs). The system clock sleeps on tokio's timer;
    /// a test clock moves itself forward and returns at once, so tests never wait for real.
    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until told to move.
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    /// A clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        FixedClock(Mutex::new(at))
    }

    /// A clock showing the given local time in `tz` (e.g. 23:59:59 in Asia/Seoul).
    /// Panics if that local time does not exist (a DST gap): tests should not ask for one.
    pub fn at_local(tz: Tz, local: NaiveDateTime) -> Self {
        let at = tz
            .from_local_datetime(&local)
            .earliest()
            .unwrap_or_else(|| panic!("{local} does not exist in {tz}"));
        Self::new(at.with_timezone(&Utc))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the clock forward by `duration` and returns at once.
    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.advance(Duration::from_std(duration).unwrap_or(Duration::MAX));
        Box::pin(std::future::ready(()))
    }
}

/// A clock that moves only when told to, and whose [`sleep`](Clock::sleep) waits until the clock
/// has been moved to the sleep's end: a test drives time by hand and can see who is waiting
/// (a scheduler between ticks, a retry in its backoff), without waiting for real time.
/// ([`FixedClock`] instead moves itself forward on `sleep`, which suits code that only sleeps
/// to back off.)
pub struct ManualClock {
    now: tokio::sync::watch::Sender<DateTime<Utc>>,
    sleepers: std::sync::Arc<Mutex<std::collections::BTreeMap<u64, DateTime<Utc>>>>,
    next_id: std::sync::atomic::AtomicU64,
    registered: tokio::sync::Notify,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .field("sleeping_until", &self.sleeping_until())
            .finish()
    }
}

/// Removes a sleep from its [`ManualClock`]'s list when it ends or is dropped.
struct Sleeper {
    sleepers: std::sync::Arc<Mutex<std::collections::BTreeMap<u64, DateTime<Utc>>>>,
    id: u64,
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.sleepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock {
            now: tokio::sync::watch::Sender::new(at),
            sleepers: std::sync::Arc::default(),
            next_id: std::sync::atomic::AtomicU64::new(0),
            registered: tokio::sync::Notify::new(),
        }
    }

    /// Moves the clock to `at`, waking the sleeps that end at or before it.
    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }

    /// Moves the clock forward, waking the sleeps that end by then.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t += by);
    }

    /// When the sleeps still waiting (ending after now) end, soonest first.
    pub fn sleeping_until(&self) -> Vec<DateTime<Utc>> {
        let now = self.now();
        let mut ends: Vec<DateTime<Utc>> = self
            .sleepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .copied()
            .filter(|end| *end > now)
            .collect();
        ends.sort_unstable();
        ends
    }

    /// Waits until at least `n` sleeps are waiting for the clock (each ending after now): e.g.
    /// a scheduler that has handled everything due and gone back to sleep.
    pub async fn until_sleeping(&self, n: usize) {
        loop {
            let registered = self.registered.notified();
            let mut registered = std::pin::pin!(registered);
            registered.as_mut().enable();
            if self.sleeping_until().len() >= n {
                return;
            }
            registered.await;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    /// Waits until the clock has been moved to `now + duration` (returns at once for zero).
    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let end = Duration::from_std(duration)
            .ok()
            .and_then(|d| self.now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sleepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, end);
        let sleeper = Sleeper {
            sleepers: self.sleepers.clone(),
            id,
        };
        let mut now = self.now.subscribe();
        self.registered.notify_waiters();
        Box::pin(async move {
            let _sleeper = sleeper;
            // An error means the clock is gone: nothing will move it any more.
            let _ = now.wait_for(|t| *t >= end).await;
        })
    }
}

/// Business-day arithmetic in the configured time zone.
pub trait ClockExt: Clock {
    /// Today's date in `tz`.
    fn today_in(&self, tz: Tz) -> NaiveDate {
        self.now().with_timezone(&tz).date_naive()
    }

    /// Yesterday's date in `tz`.
    fn yesterday_in(&self, tz: Tz) -> NaiveDate {
        self.today_in(tz)
            .pred_opt()
            .expect("a date after 0001-01-01")
    }

    /// Now as a UTC `NaiveDateTime` at microsecond precision (what every backend stores exactly).
    fn now_naive_utc(&self) -> NaiveDateTime {
        core_domain::truncate_to_micros(self.now().naive_utc())
    }
}

impl<C: Clock + ?Sized> ClockExt for C {}

/// The UTC half-open window `[date 00:00, date+1 00:00)` of a business date in `tz`.
///
/// Midnight that does not exist (a DST jump at 00:00) resolves to the first instant after it.
pub fn day_window_utc(date: NaiveDate, tz: Tz) -> (NaiveDateTime, NaiveDateTime) {
    let start = local_midnight_utc(date, tz);
    let end = local_midnight_utc(date.succ_opt().expect("a date before 9999-12-31"), tz);
    (start, end)
}

fn local_midnight_utc(date: NaiveDate, tz: Tz) -> NaiveDateTime {
    let midnight = date.and_hms_opt(0, 0, 0).expect("00:00 exists");
    match tz.from_local_datetime(&midnight).earliest() {
        Some(t) => t.naive_utc(),
        // In a DST gap: step forward minute by minute to the first local time that exists.
        None => (1..=180)
            .find_map(|m| {
                tz.from_local_datetime(&(midnight + Duration::minutes(m)))
                    .earliest()
            })
            .map(|t| t.naive_utc())
            .expect("a DST gap shorter than 3 hours"),
    }
}

#[cfg(test)]
mod tests {
    use chrono_tz::Asia::Seoul;

    use super::*;

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn seoul_day_edges() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let (start, end) = day_window_utc(d, Seoul);
        assert_eq!(start, local("2026-11-19 15:00:00"));
        assert_eq!(end, local("2026-11-20 15:00:00"));

        // 23:59:59 KST on the 20th is still the 20th; 00:00:00 on the 21st is the next day.
        let late = FixedClock::at_local(Seoul, local("2026-11-20 23:59:59"));
        assert_eq!(late.today_in(Seoul), d);
        assert_eq!(late.yesterday_in(Seoul), d.pred_opt().unwrap());
        let midnight = FixedClock::at_local(Seoul, local("2026-11-21 00:00:00"));
        assert_eq!(midnight.today_in(Seoul), d.succ_opt().unwrap());
        assert_eq!(midnight.yesterday_in(Seoul), d);
        // ...although in UTC both instants are on the 20th.
        assert_eq!(late.now().date_naive(), midnight.now().date_naive());
    }

    #[test]
    fn dst_days_are_23_or_25_hours() {
        let ny = chrono_tz::America::New_York;
        let spring = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
        let (s, e) = day_window_utc(spring, ny);
        assert_eq!(e - s, Duration::hours(23));
        let fall = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let (s, e) = day_window_utc(fall, ny);
        assert_eq!(e - s, Duration::hours(25));
        // Midnight itself skipped (America/Santiago jumps 00:00 -> 01:00 in September).
        let santiago = chrono_tz::America::Santiago;
        let d = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let (s, e) = day_window_utc(d, santiago);
        assert!(e > s);
    }

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let c = FixedClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(c.now(), c.now());
        c.advance(Duration::seconds(90));
        assert_eq!(c.now(), Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 30).unwrap());
        c.set(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(
            c.today_in(chrono_tz::UTC),
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()
        );
    }

    #[tokio::test]
    async fn manual_clock_sleeps_until_moved() {
        let c = std::sync::Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ));
        c.sleep(std::time::Duration::ZERO).await;
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep(std::time::Duration::from_secs(60)).await }
        });
        c.until_sleeping(1).await;
        assert_eq!(
            c.sleeping_until(),
            vec![Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap()]
        );
        c.advance(Duration::seconds(59));
        assert!(!sleeper.is_finished());
        assert_eq!(c.sleeping_until().len(), 1);
        c.advance(Duration::seconds(1));
        sleeper.await.unwrap();
        assert!(c.sleeping_until().is_empty());
        assert_eq!(c.now(), Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap());
    }

    #[test]
    fn mocked_clock_drives_business_dates() {
        let mut mock = MockClock::new();
        mock.expect_now()
            .times(2)
            .return_const(Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap());
        // 15:00 UTC on the 20th is 00:00 KST on the 21st.
        assert_eq!(
            mock.today_in(Seoul),
            NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
        );
        assert_eq!(
            mock.yesterday_in(Seoul),
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
        );
    }
}
