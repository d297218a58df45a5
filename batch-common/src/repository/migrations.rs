//! The batch metadata's migrations (`migrations/batch/{sqlite,postgres,mysql}`), and the sets
//! every database of the platform has, whatever domain modules are registered.

use core_domain::MigrationSet;
use core_domain::migrate::DOMAIN_MIGRATIONS;
use diesel_migrations::embed_migrations;

/// The batch metadata tables (`batch_job_instance`, `batch_job_execution`,
/// `batch_step_execution`, `batch_item_failure`).
pub static METADATA_MIGRATIONS: MigrationSet = MigrationSet {
    name: "batch",
    schema: include_str!("schema.rs"),
    sqlite: embed_migrations!("../migrations/batch/sqlite"),
    postgres: embed_migrations!("../migrations/batch/postgres"),
    mysql: embed_migrations!("../migrations/batch/mysql"),
};

/// The sets every database of the platform needs, in the order they apply: the runtime's
/// metadata, then the shared entities (core-domain's). A launcher appends each registered
/// module's own set ([`crate::module::migration_sets`]); hand the result to
/// [`Database::connect`](core_domain::Database::connect) and to `core_domain::migrate`'s
/// `run_pending` / `pending`.
pub const BASE_MIGRATIONS: &[&MigrationSet] = &[&METADATA_MIGRATIONS, &DOMAIN_MIGRATIONS];
