#![doc = include_str!("../README.md")]

pub mod clock;
pub mod config;
pub mod descriptor;
pub mod error;
pub mod job;
pub mod launcher;
pub mod listener;
pub mod metrics;
pub mod module;
pub mod notify;
pub mod params;
pub mod result;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod step;

#[cfg(any(test, feature = "mock"))]
pub use clock::MockClock;
pub use clock::{Clock, ClockExt, FixedClock, SystemClock, day_window_utc};
pub use config::{BatchProperties, ConfigError};
pub use error::{Transient, is_transient};
pub use job::{Job, JobBuilder, JobDescriptor, JobEnv, ParamKind, ParameterSpec};
pub use launcher::{JobLauncher, LaunchError, LaunchOptions};
pub use listener::{JobListener, JobRunInfo};
#[cfg(any(test, feature = "mock"))]
pub use notify::MockNotifier;
pub use notify::{Notification, Notifier, NotifyListener, SlackNotifier};
pub use params::{JobParameters, ParamValue, ParameterError};
pub use result::{BatchResult, ExitCode, StepResult};
pub use retry::{Retried, RetryPolicy, RetrySchedule};
pub use secret::{RedactedUrl, Secret};
pub mod redis;
pub mod repository;
pub use repository::{BatchStatus, JobRepository};
