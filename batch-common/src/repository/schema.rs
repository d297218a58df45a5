//! The batch metadata tables, owned by the runtime: one portable diesel schema for SQLite,
//! PostgreSQL and MySQL.
//!
//! Written by hand (not generated) so that one file serves every backend. The migrations in
//! `migrations/batch/{sqlite,postgres,mysql}` must produce exactly these tables and columns; the
//! `schema_equality` integration test enforces it on all three backends. No table here refers to
//! a business entity, nor any entity to these tables.

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
        /// The heartbeat; of a claimed partition, its lease (renewed by its owner).
        last_updated -> Timestamp,
        /// Of a partition (a worker step execution): its manager step execution. NULL otherwise.
        partition_of -> Nullable<BigInt>,
        /// Of a partition: the first key of its range.
        range_from -> Nullable<BigInt>,
        /// Of a partition: the last key of its range (inclusive).
        range_to -> Nullable<BigInt>,
        /// Of a claimed partition: the worker process holding it (`host:pid:tag`).
        owner -> Nullable<Varchar>,
        /// How often the partition was claimed (more than 1: re-claimed).
        claim_count -> Integer,
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
    batch_job_instance,
    batch_job_execution,
    batch_step_execution,
    batch_item_failure,
);
