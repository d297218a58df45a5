//! Runtime tests: the launch rules, restart, retries, item failures and the repository, each on
//! SQLite, PostgreSQL and MySQL. Process-level tests (SIGKILL, racing launchers) are in
//! `batch-testkit/tests/process.rs`. Notifications against a local Slack webhook are in
//! `notify.rs`; Redis over TLS against throwaway TLS servers in `redis_tls.rs`.

mod concurrent_step;
mod external_writer;
mod keyset;
mod migrations;
mod notify;
mod partitions;
mod redis_tls;
mod runtime;
mod schema_equality;
mod transient;
