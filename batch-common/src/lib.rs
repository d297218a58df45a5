#![doc = include_str!("../README.md")]

pub mod clock;
pub mod config;
pub mod job;
pub mod result;
pub mod secret;

#[cfg(any(test, feature = "mock"))]
pub use clock::MockClock;
pub use clock::{Clock, ClockExt, FixedClock, SystemClock, day_window_utc};
pub use config::{BatchProperties, ConfigError};
pub use job::{JobDescriptor, ParameterSpec};
pub use result::{BatchResult, ExitCode, StepResult};
pub use secret::{RedactedUrl, Secret};
