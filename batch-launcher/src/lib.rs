//! The launcher's library: everything `main.rs` wires, importable by tests and benchmarks.

pub mod cli;
pub mod demo;
pub mod jobs;
pub mod logging;
pub mod progress;
pub mod run;
pub mod serve;
