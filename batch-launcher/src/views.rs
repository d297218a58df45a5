//! What `history --json` and the HTTP API show of an execution: one view for both.

use batch_common::JobRepository;
use core_domain::DbError;

/// One execution with its steps as JSON: `history --json` and the HTTP API show the same view.
pub async fn execution_view(
    repo: &JobRepository,
    e: &batch_common::repository::JobExecution,
    i: &batch_common::repository::JobInstance,
) -> Result<serde_json::Value, DbError> {
    let steps = repo.step_executions(e.id).await?;
    Ok(serde_json::json!({
        "execution_id": e.id,
        "job_name": i.job_name,
        "job_instance_id": i.id,
        "status": e.status,
        "exit_code": e.exit_code,
        "exit_message": e.exit_message,
        "parameters": serde_json::from_str::<serde_json::Value>(&e.parameters).unwrap_or_default(),
        "owner": e.owner,
        "created_at": e.created_at,
        "start_time": e.start_time,
        "end_time": e.end_time,
        "last_updated": e.last_updated,
        "steps": steps.iter().map(|s| serde_json::json!({
            "name": s.step_name, "status": s.status, "read": s.read_count, "written": s.write_count,
            "filtered": s.filter_count, "skipped": s.skip_count, "commits": s.commit_count,
            "rollbacks": s.rollback_count, "retries": s.retry_count,
            "counters": serde_json::from_str::<serde_json::Value>(&s.counters).unwrap_or_default(),
        })).collect::<Vec<_>>(),
    }))
}
