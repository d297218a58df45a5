//! What `history --json` and the HTTP API show of an execution: one view for both, partitions
//! of partitioned steps included.

use batch_common::repository::JobRepository;
use batch_common::repository::{BatchStatus, StepCounts, StepExecution};
use core_domain::DbError;

/// One execution with its steps as JSON: `history --json` and the HTTP API show the same view.
pub async fn execution_view(
    repo: &JobRepository,
    e: &batch_common::repository::JobExecution,
    i: &batch_common::repository::JobInstance,
) -> Result<serde_json::Value, DbError> {
    let mut steps = Vec::new();
    for s in repo.step_executions(e.id).await? {
        let mut view = step_view(&s.step_name, s.status, &s.counts);
        let partitions = repo.partitions(s.id).await?;
        if !partitions.is_empty() {
            view["partitions"] = partitions.iter().map(partition_view).collect();
        }
        steps.push(view);
    }
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
        "steps": steps,
    }))
}

/// [`execution_view`] of `e`, its instance read from the repository.
pub async fn execution_view_of(
    repo: &JobRepository,
    e: &batch_common::repository::JobExecution,
) -> Result<serde_json::Value, DbError> {
    let i = repo.instance(e.job_instance_id).await?.ok_or_else(|| {
        DbError::Other(format!(
            "execution {} has no instance {}",
            e.id, e.job_instance_id
        ))
    })?;
    execution_view(repo, e, &i).await
}

/// One step in the view: its counts under the API's short names.
fn step_view(name: &str, status: BatchStatus, c: &StepCounts) -> serde_json::Value {
    serde_json::json!({
        "name": name, "status": status, "read": c.read_count, "written": c.write_count,
        "filtered": c.filter_count, "skipped": c.skip_count, "commits": c.commit_count,
        "rollbacks": c.rollback_count, "retries": c.retry_count, "counters": c.counters,
    })
}

/// One partition of a partitioned step: its range, status, counts, owner and lease (the owner's
/// last heartbeat), and how often it was claimed.
fn partition_view(p: &StepExecution) -> serde_json::Value {
    let mut view = step_view(&p.step_name, p.status, &p.counts);
    view["range"] = serde_json::json!({ "from": p.range_from, "to": p.range_to });
    view["owner"] = serde_json::json!(p.owner);
    view["lease_renewed_at"] = serde_json::json!(p.last_updated);
    view["claims"] = serde_json::json!(p.claim_count);
    view["exit_message"] = serde_json::json!(p.exit_message);
    view
}

/// One item failure in the views (`failures --json`, `GET /executions/{id}/failures`).
pub fn failure_view(f: &batch_common::repository::ItemFailure) -> serde_json::Value {
    serde_json::json!({
        "id": f.id,
        "step": f.step_name,
        "item_key": f.item_key,
        "error": f.error,
        "attempts": f.attempts,
        "created_at": f.created_at,
        "resolved_at": f.resolved_at,
    })
}

/// A page of an execution's item failures: `next_after` is the `after` of the next page
/// (absent on the last page).
pub fn failures_page_view(
    execution_id: i64,
    total: i64,
    page: &[batch_common::repository::ItemFailure],
    limit: i64,
) -> serde_json::Value {
    let next_after = (page.len() as i64 >= limit)
        .then(|| page.last().map(|f| f.id))
        .flatten();
    serde_json::json!({
        "execution_id": execution_id,
        "total": total,
        "failures": page.iter().map(failure_view).collect::<Vec<_>>(),
        "next_after": next_after,
    })
}
