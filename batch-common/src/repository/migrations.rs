//! The batch metadata's migrations (`migrations/batch/{sqlite,postgres,mysql}`), and every set the
//! runtime applies, in order.

use core_domain::MigrationSet;
use core_domain::migrate::DOMAIN_MIGRATIONS;
use diesel_migrations::embed_migrations;

/// The batch metadata tables (`batch_job_instance`, `batch_job_execution`,
/// `batch_step_execution`, `batch_item_failure`).
pub static METADATA_MIGRATIONS: MigrationSet = MigrationSet {
    name: "batch",
    sqlite: embed_migrations!("../migrations/batch/sqlite"),
    postgres: embed_migrations!("../migrations/batch/postgres"),
    mysql: embed_migrations!("../migrations/batch/mysql"),
};

/// Every migration set a database of the batch platform needs, in the order they apply: the
/// business entities (core-domain's), then the batch metadata. Hand it to
/// [`Database::connect`](core_domain::Database::connect) and to `core_domain::migrate`'s
/// `run_pending` / `pending`.
pub const ALL_MIGRATIONS: &[&MigrationSet] = &[&DOMAIN_MIGRATIONS, &METADATA_MIGRATIONS];
