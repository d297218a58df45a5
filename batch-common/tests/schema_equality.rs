//! The base migration sets (the runtime's metadata, the shared entities) pass the schema check
//! every owner gets (`batch_testkit::schema`): the same schema on all three backends, matching
//! batch-common's `repository/schema.rs` and core-domain's `schema.rs`, each set creating exactly
//! its own tables. The unique keys the spec names exist.

use batch_common::repository::{BASE_MIGRATIONS, METADATA_MIGRATIONS};
use batch_testkit::schema::{check_migration_sets, parse_schema_rs};
use core_domain::migrate::DOMAIN_MIGRATIONS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_schemas_are_equal_and_match_schema_rs() {
    let (_, uniques) = check_migration_sets(BASE_MIGRATIONS).await;

    let domain = parse_schema_rs(DOMAIN_MIGRATIONS.schema);
    assert!(
        domain.len() >= 5,
        "parsed only {} tables from core-domain's schema.rs",
        domain.len()
    );
    let metadata = parse_schema_rs(METADATA_MIGRATIONS.schema);
    assert_eq!(
        metadata.keys().collect::<Vec<_>>(),
        [
            "batch_item_failure",
            "batch_job_execution",
            "batch_job_instance",
            "batch_step_execution"
        ],
        "tables parsed from batch-common's repository/schema.rs"
    );

    // The unique keys the spec names exist.
    let key = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    for (table, cols) in [
        ("point_balance", key(&["user_id"])),
        ("daily_point_report", key(&["user_id", "report_date"])),
        ("asset_history", key(&["user_id", "snapshot_day"])),
        ("batch_job_instance", key(&["job_name", "job_key"])),
        ("batch_job_execution", key(&["live_instance_id"])),
        (
            "batch_step_execution",
            key(&["job_execution_id", "step_name"]),
        ),
    ] {
        assert!(
            uniques.get(table).is_some_and(|k| k.contains(&cols)),
            "missing UNIQUE{cols:?} on {table}: {:?}",
            uniques.get(table)
        );
    }
}

/// The parser understands any primary key, composite ones included.
#[test]
fn schema_sources_with_composite_keys_parse() {
    let src = "diesel::table! {\n    monthly_total (user_id, period) {\n        user_id -> BigInt,\n        period -> Varchar,\n        #[sql_name = \"type\"]\n        kind -> Nullable<Text>,\n    }\n}\n";
    let tables = parse_schema_rs(src);
    let cols = &tables["monthly_total"];
    assert_eq!(cols.len(), 3, "{tables:?}");
    assert_eq!(cols["type"], ("Text".to_owned(), true));
    assert_eq!(core_domain::migrate::schema_tables(src), ["monthly_total"]);
    assert_eq!(
        batch_testkit::schema::parse_primary_keys(src)["monthly_total"],
        ["user_id", "period"]
    );
}
