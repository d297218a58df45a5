#![doc = include_str!("../README.md")]

// Every type has one public path. The Spring Batch concepts are public modules whose items are
// reached through them (`batch_common::step::ChunkStep`, `batch_common::repository::JobRepository`,
// ...); the small shared types below live in private modules and are re-exported here.
mod clock;
pub mod config;
mod descriptor;
mod error;
pub mod job;
pub mod launcher;
pub mod listener;
pub mod metrics;
pub mod module;
pub mod notify;
pub mod params;
pub mod redis;
pub mod repository;
mod result;
mod retry;
pub mod schedule;
mod secret;
pub mod step;

#[cfg(any(test, feature = "mock"))]
pub use clock::MockClock;
pub use clock::{Clock, ClockExt, FixedClock, ManualClock, SystemClock, day_window_utc};
pub use error::{Transient, is_transient};
pub use result::{BatchResult, ExitCode, StepResult};
pub use retry::{Retried, RetryPolicy, RetrySchedule};
pub use secret::{RedactedUrl, Secret};
