//! Rows of the batch metadata tables. Their queries are [`JobRepository`](super::JobRepository)'s,
//! which owns their semantics (statuses, the live-execution guard, checkpoints).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::counts::StepCounts;
use super::schema::{
    batch_item_failure, batch_job_execution, batch_job_instance, batch_step_execution,
};
use super::status::BatchStatus;

/// A job instance: job name + hash of the identifying parameters.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = batch_job_instance)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct JobInstance {
    /// Primary key.
    pub id: i64,
    /// The job's name, e.g. `exampleSyncJob`.
    pub job_name: String,
    /// Hash of the identifying parameters (unique with `job_name`).
    pub job_key: String,
    /// The identifying parameters as JSON.
    pub parameters: String,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
}

/// One run attempt of a job instance.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = batch_job_execution)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct JobExecution {
    /// Primary key.
    pub id: i64,
    /// The instance.
    pub job_instance_id: i64,
    /// The execution's status.
    #[diesel(deserialize_as = String)]
    pub status: BatchStatus,
    /// COMPLETED, COMPLETED_WITH_FAILURES, FAILED, NOOP, ...
    pub exit_code: String,
    /// Error or summary text.
    pub exit_message: Option<String>,
    /// All parameters of this run as JSON.
    pub parameters: String,
    /// `host:pid` of the process running it.
    pub owner: Option<String>,
    /// `job_instance_id` while live, NULL otherwise (UNIQUE: one live execution per instance).
    pub live_instance_id: Option<i64>,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
    /// Started (UTC).
    pub start_time: Option<NaiveDateTime>,
    /// Ended (UTC).
    pub end_time: Option<NaiveDateTime>,
    /// Heartbeat (UTC).
    pub last_updated: NaiveDateTime,
}

/// One step of one job execution.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = batch_step_execution)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct StepExecution {
    /// Primary key.
    pub id: i64,
    /// The job execution.
    pub job_execution_id: i64,
    /// The step's name.
    pub step_name: String,
    /// Step status.
    #[diesel(deserialize_as = String)]
    pub status: BatchStatus,
    /// Its counts, domain counters included.
    #[diesel(embed)]
    pub counts: StepCounts,
    /// The checkpoint as JSON.
    pub execution_context: String,
    /// Exit code.
    pub exit_code: String,
    /// Error or summary text.
    pub exit_message: Option<String>,
    /// Started (UTC).
    pub start_time: NaiveDateTime,
    /// Ended (UTC).
    pub end_time: Option<NaiveDateTime>,
    /// Last change (UTC); of a claimed partition, its lease.
    pub last_updated: NaiveDateTime,
    /// Of a partition: its manager step execution.
    pub partition_of: Option<i64>,
    /// Of a partition: the first key of its range.
    pub range_from: Option<i64>,
    /// Of a partition: the last key of its range (inclusive).
    pub range_to: Option<i64>,
    /// Of a claimed partition: the worker process holding it.
    pub owner: Option<String>,
    /// How often the partition was claimed.
    pub claim_count: i32,
}

/// An item that failed in a step (a partial failure).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = batch_item_failure)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct ItemFailure {
    /// Primary key.
    pub id: i64,
    /// The job execution it failed in.
    pub job_execution_id: i64,
    /// The instance (so a re-run can find the failures of earlier executions).
    pub job_instance_id: i64,
    /// The step.
    pub step_name: String,
    /// The item's key, e.g. a user id.
    pub item_key: String,
    /// The error.
    pub error: String,
    /// Attempts made.
    pub attempts: i32,
    /// Recorded (UTC).
    pub created_at: NaiveDateTime,
    /// Set when a later run processed the item successfully.
    pub resolved_at: Option<NaiveDateTime>,
}
