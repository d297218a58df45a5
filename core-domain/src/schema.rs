//! The one portable diesel schema for SQLite, PostgreSQL and MySQL.
//!
//! Written by hand (not generated) so that one file serves every backend. The migrations in
//! `migrations/{sqlite,postgres,mysql}` must produce exactly these tables and columns; the
//! `schema_equality` integration test enforces it on all three backends.

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

diesel::table! {
    /// A job instance: job name plus a hash of its identifying parameters.
    batch_job_instance (id) {
        id -> BigInt,
        job_name -> Varchar,
        job_key -> Varchar,
        parameters -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// One attempt to run a job instance.
    batch_job_execution (id) {
        id -> BigInt,
        job_instance_id -> BigInt,
        status -> Varchar,
        exit_code -> Varchar,
        exit_message -> Nullable<Text>,
        parameters -> Text,
        owner -> Nullable<Varchar>,
        /// Equals `job_instance_id` while the execution is live, NULL otherwise (UNIQUE).
        live_instance_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        start_time -> Nullable<Timestamp>,
        end_time -> Nullable<Timestamp>,
        /// The heartbeat, refreshed while the execution runs.
        last_updated -> Timestamp,
    }
}

diesel::table! {
    /// One step of one job execution, with its counters and checkpoint.
    batch_step_execution (id) {
        id -> BigInt,
        job_execution_id -> BigInt,
        step_name -> Varchar,
        status -> Varchar,
        read_count -> BigInt,
        write_count -> BigInt,
        filter_count -> BigInt,
        skip_count -> BigInt,
        commit_count -> BigInt,
        rollback_count -> BigInt,
        retry_count -> BigInt,
        /// Domain counters as a JSON object (e.g. created / corrected / unchanged).
        counters -> Text,
        /// The checkpoint as JSON, saved only after a chunk's write succeeded.
        execution_context -> Text,
        exit_code -> Varchar,
        exit_message -> Nullable<Text>,
        start_time -> Timestamp,
        end_time -> Nullable<Timestamp>,
        last_updated -> Timestamp,
    }
}

diesel::table! {
    /// An item that failed (partial failure) in a step of an execution.
    batch_item_failure (id) {
        id -> BigInt,
        job_execution_id -> BigInt,
        job_instance_id -> BigInt,
        step_name -> Varchar,
        item_key -> Varchar,
        error -> Text,
        attempts -> Integer,
        created_at -> Timestamp,
        resolved_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(batch_job_execution -> batch_job_instance (job_instance_id));
diesel::joinable!(batch_step_execution -> batch_job_execution (job_execution_id));
diesel::joinable!(batch_item_failure -> batch_job_execution (job_execution_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    point_balance,
    point,
    daily_point_report,
    asset_history,
    batch_job_instance,
    batch_job_execution,
    batch_step_execution,
    batch_item_failure,
);
