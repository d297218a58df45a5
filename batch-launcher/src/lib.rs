#![doc = include_str!("../README.md")]

pub mod cli;
pub mod demo;
pub mod jenkins;
pub mod launch;
pub mod logging;
pub mod modules;
pub mod operator;
mod operator_cli;
pub mod progress;
pub mod run;
pub mod serve;
pub mod views;
