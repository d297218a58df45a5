//! End-to-end tests of the built `batch-launcher` binary: exit codes, output, rows.

mod cli;
