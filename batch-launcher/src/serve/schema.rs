//! The shapes of the API's bodies for its OpenAPI description (`GET /openapi.json`): what the
//! handlers accept and answer, as `utoipa` schemas. The handlers build the same JSON; the CI
//! check (`scripts/api_check.sh`, schemathesis) drives the running server from this document
//! and fails on any answer that does not match it.

#![allow(dead_code)] // Fields are read by the schema derive only.

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// Every error answer.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// A stable code, e.g. `unknown_execution`, `bad_body`, `not_running`.
    pub error: String,
    /// What was wrong and why, naming the field or value.
    pub message: String,
}

/// A job parameter's value in a kick: a string, a number or a boolean (sent to the job as text).
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub enum ParamScalar {
    /// Text, e.g. `"2026-11-20"`.
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

/// Links of a started execution.
#[derive(ToSchema, serde::Serialize)]
pub struct Links {
    /// The execution's own URL path.
    #[serde(rename = "self")]
    pub self_: String,
}

/// 202: a run started (a kick, a restart).
#[derive(ToSchema)]
pub struct Started {
    /// The new execution.
    pub execution_id: i64,
    /// Its job instance.
    pub job_instance_id: i64,
    /// The job.
    pub job_name: String,
    /// `STARTED`.
    pub status: String,
    /// The execution a restart resumed (restart only).
    pub restarted_from: Option<i64>,
    /// Where to follow it.
    pub links: Links,
}

/// 409 of a kick: the instance is running.
#[derive(ToSchema)]
pub struct AlreadyRunning {
    /// `already_running`.
    pub error: String,
    /// Which execution runs it, where.
    pub message: Option<String>,
    /// The running execution.
    pub execution_id: Option<i64>,
    /// The instance.
    pub job_instance_id: Option<i64>,
}

/// One step of a run's result.
#[derive(ToSchema)]
pub struct StepResult {
    /// The step.
    pub name: String,
    /// Its status.
    pub status: String,
    /// Items read.
    pub read_count: i64,
    /// Items written.
    pub write_count: i64,
    /// Items filtered.
    pub filter_count: i64,
    /// Items skipped (item failures).
    pub skip_count: i64,
    /// Chunks committed.
    pub commit_count: i64,
    /// Chunks rolled back.
    pub rollback_count: i64,
    /// Retries.
    pub retry_count: i64,
    /// Domain counters.
    pub counters: BTreeMap<String, i64>,
    /// Wall time.
    pub duration_ms: i64,
    /// Error or summary.
    pub message: Option<String>,
}

/// 200 of a kick: nothing ran (NOOP: the instance completed already).
#[derive(ToSchema)]
pub struct RunResult {
    /// The job.
    pub job_name: String,
    /// The instance.
    pub job_instance_id: Option<i64>,
    /// The execution, if one ran.
    pub execution_id: Option<i64>,
    /// The parameters.
    pub parameters: BTreeMap<String, String>,
    /// NOOP, COMPLETED, FAILED, ...
    pub status: String,
    /// The launcher's exit code, by name (`COMPLETED`, `FAILED`, `USAGE`, ...).
    pub exit_code: String,
    /// Why.
    pub message: Option<String>,
    /// Start (UTC, RFC 3339).
    pub started_at: Option<String>,
    /// End (UTC, RFC 3339).
    pub ended_at: Option<String>,
    /// Wall time.
    pub duration_ms: i64,
    /// Steps that ran.
    pub steps: Vec<StepResult>,
    /// Item failures recorded.
    pub item_failures: i64,
}

/// A partition's key range.
#[derive(ToSchema)]
pub struct KeyRange {
    /// First key.
    pub from: Option<i64>,
    /// Last key (inclusive).
    pub to: Option<i64>,
}

/// A step (or a partition of one) in the execution view.
#[derive(ToSchema)]
pub struct StepView {
    /// The step (`<step>:partition<i>` for a partition).
    pub name: String,
    /// Its status.
    pub status: String,
    /// Items read.
    pub read: i64,
    /// Items written.
    pub written: i64,
    /// Items filtered.
    pub filtered: i64,
    /// Items skipped (item failures).
    pub skipped: i64,
    /// Chunks committed.
    pub commits: i64,
    /// Chunks rolled back.
    pub rollbacks: i64,
    /// Retries.
    pub retries: i64,
    /// Domain counters.
    pub counters: BTreeMap<String, i64>,
    /// Of a partitioned step: its partitions.
    #[schema(no_recursion)]
    pub partitions: Option<Vec<StepView>>,
    /// Of a partition: its key range.
    pub range: Option<KeyRange>,
    /// Of a partition: the worker holding it (`host:pid:slot`).
    pub owner: Option<String>,
    /// Of a partition: its lease (UTC).
    pub lease_renewed_at: Option<String>,
    /// Of a partition: how often it was claimed.
    pub claims: Option<i64>,
    /// Of a partition: its error or summary.
    pub exit_message: Option<String>,
}

/// An execution with its steps (`GET /executions/{id}`, `history --json`).
#[derive(ToSchema)]
pub struct ExecutionView {
    /// The execution.
    pub execution_id: i64,
    /// Its job.
    pub job_name: String,
    /// Its instance.
    pub job_instance_id: i64,
    /// STARTING, STARTED, STOPPING, STOPPED, COMPLETED, FAILED, ...
    pub status: String,
    /// Its exit code.
    pub exit_code: String,
    /// Error or summary.
    pub exit_message: Option<String>,
    /// Every parameter, as text.
    pub parameters: BTreeMap<String, String>,
    /// The process running (or that ran) it, `host:pid`.
    pub owner: Option<String>,
    /// Created (UTC, `YYYY-MM-DDTHH:MM:SS[.f]`).
    pub created_at: String,
    /// Started (UTC).
    pub start_time: Option<String>,
    /// Ended (UTC).
    pub end_time: Option<String>,
    /// Its last heartbeat (UTC).
    pub last_updated: String,
    /// Its steps.
    pub steps: Vec<StepView>,
}

/// `GET /jobs/{name}/executions`.
#[derive(ToSchema)]
pub struct JobExecutions {
    /// The job.
    pub job_name: String,
    /// Newest first.
    pub executions: Vec<ExecutionView>,
}

/// 202 of `stop`.
#[derive(ToSchema)]
pub struct StopAccepted {
    /// The execution.
    pub execution_id: i64,
    /// `STOPPING`.
    pub status: String,
    /// A stop had been requested before.
    pub already_requested: bool,
    /// The process running it, `host:pid`.
    pub owner: Option<String>,
    /// Seconds since its last heartbeat (past `batch.stale_after`: its process is gone).
    pub heartbeat_age_seconds: f64,
    /// Where to follow it.
    pub links: Links,
}

/// One item failure.
#[derive(ToSchema)]
pub struct FailureView {
    /// Its id (the `after` of the next page).
    pub id: i64,
    /// The step.
    pub step: String,
    /// The item's key, e.g. a user id.
    pub item_key: String,
    /// The error.
    pub error: String,
    /// Attempts made.
    pub attempts: i64,
    /// Recorded (UTC).
    pub created_at: String,
    /// When a later run processed the item (UTC).
    pub resolved_at: Option<String>,
}

/// `GET /executions/{id}/failures`.
#[derive(ToSchema)]
pub struct FailuresPage {
    /// The execution.
    pub execution_id: i64,
    /// All its failures.
    pub total: i64,
    /// This page, by id.
    pub failures: Vec<FailureView>,
    /// The `after` of the next page; null on the last one.
    pub next_after: Option<i64>,
}

/// `GET /health`: `status`, `database` and each module's check (e.g. `redis`), each `ok` or
/// why not (`unavailable` without the token).
#[derive(ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `ok`, or why not.
    pub database: String,
}
