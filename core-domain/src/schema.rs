//! The business entities' tables: one portable diesel schema for SQLite, PostgreSQL and MySQL.
//!
//! Written by hand (not generated) so that one file serves every backend. The migrations in
//! `migrations/domain/{sqlite,postgres,mysql}` must produce exactly these tables and columns;
//! batch-common's `schema_equality` integration test enforces it on all three backends. The batch
//! metadata tables (`batch_job_instance`, ...) are batch-common's (`batch_common::repository::schema`).

diesel::table! {
    /// Users of the asset service; only `ACTIVE` ones are refreshed.
    users (id) {
        id -> BigInt,
        name -> Varchar,
        /// `ACTIVE` or `INACTIVE`.
        status -> Varchar,
        current_asset_history_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// The authoritative point balance per user; `version` is the optimistic-lock counter.
    point_balance (id) {
        id -> BigInt,
        user_id -> BigInt,
        balance -> BigInt,
        version -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// Point transactions (EARN, USE, CANCEL).
    point (id) {
        id -> BigInt,
        user_id -> BigInt,
        amount -> BigInt,
        /// `EARN`, `USE` or `CANCEL` (column `type`).
        #[sql_name = "type"]
        point_type -> Varchar,
        description -> Nullable<Varchar>,
        balance_snapshot -> BigInt,
        point_balance_id -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// One row per user and business day with point activity.
    daily_point_report (id) {
        id -> BigInt,
        user_id -> BigInt,
        report_date -> Date,
        earn_amount -> BigInt,
        use_amount -> BigInt,
        cancel_amount -> BigInt,
        balance_snapshot -> BigInt,
        earn_count -> BigInt,
        use_count -> BigInt,
        cancel_count -> BigInt,
        first_transaction_at -> Timestamp,
        last_transaction_at -> Timestamp,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// One asset snapshot per user per day.
    asset_history (id) {
        id -> BigInt,
        user_id -> BigInt,
        snapshot_day -> Date,
        total_amount -> BigInt,
        cash_amount -> BigInt,
        investment_amount -> BigInt,
        currency -> Varchar,
        net_flow -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    users,
    point_balance,
    point,
    daily_point_report,
    asset_history,
);
