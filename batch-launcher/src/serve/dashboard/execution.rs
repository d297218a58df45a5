//! An execution's page (parameters, timings, steps with their counts and domain counters,
//! partitions, the operator buttons) and its item failures, paged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use batch_common::repository::{BatchStatus, StepCounts, heartbeat_age_secs};

use super::auth::SignedIn;
use super::html::{
    Esc, Nav, Refused, badge, csrf_field, duration, html, layout, local, local_opt, message_page,
    seconds,
};
use crate::serve::service::Service;

/// Failures per page.
const FAILURES_PAGE: i64 = 50;

/// A line above the execution: what an action did, or why it was refused.
#[derive(Debug)]
pub(super) enum Notice {
    /// It was done.
    Done(String),
    /// It was refused.
    Refused(String),
}

/// The `{id}` of an execution path; a 404 page when it is not a number.
pub(super) fn execution_id(id: Result<Path<String>, PathRejection>) -> Result<i64, Refused> {
    let text = id.map(|Path(p)| p).unwrap_or_default();
    text.parse().map_err(|_| {
        Refused::new(
            StatusCode::NOT_FOUND,
            "No such execution",
            format!("execution `{text}` does not exist"),
        )
    })
}

/// `GET /ui/executions/{id}`.
pub(super) async fn execution(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let id = match execution_id(id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let notice = match query.get("done").map(String::as_str) {
        Some("stop") => Some(Notice::Done(
            "Stop requested: the run stops after its current chunk.".to_owned(),
        )),
        Some("abandon") => Some(Notice::Done("Marked FAILED (abandoned).".to_owned())),
        Some("restart") => Some(Notice::Done("Restarted from the checkpoints.".to_owned())),
        Some("run") => Some(Notice::Done("Started.".to_owned())),
        _ => None,
    };
    execution_page(&service, &session, id, StatusCode::OK, notice.as_ref()).await
}

/// The page of execution `id` with `status` and a notice.
pub(super) async fn execution_page(
    service: &Service,
    session: &SignedIn,
    id: i64,
    status: StatusCode,
    notice: Option<&Notice>,
) -> Response {
    let tz = service.props.batch.timezone;
    let repo = service.repository();
    let failed = |e: &dyn std::fmt::Display| {
        message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Database unavailable",
            &format!("the batch database failed: {e}"),
        )
    };
    let e = match repo.execution(id).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            return message_page(
                StatusCode::NOT_FOUND,
                "No such execution",
                &format!("execution {id} does not exist"),
            );
        }
        Err(err) => return failed(&err),
    };
    let job = match repo.instance(e.job_instance_id).await {
        Ok(Some(i)) => i.job_name,
        Ok(None) => return failed(&format!("execution {id} has no instance")),
        Err(err) => return failed(&err),
    };
    let steps = match repo.step_executions(id).await {
        Ok(s) => s,
        Err(err) => return failed(&err),
    };
    let failures = repo.count_failures(id).await.unwrap_or(0);
    let now = service.clock.now().naive_utc();
    let live = e.live_instance_id.is_some();
    let mut body = String::new();
    match notice {
        Some(Notice::Done(m)) => {
            let _ = write!(body, "<p class=\"notice\" role=\"status\">{}</p>", Esc(m));
        }
        Some(Notice::Refused(m)) => {
            let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", Esc(m));
        }
        None => {}
    }
    let _ = write!(
        body,
        "<h1>Execution {id} <small>{job}</small></h1><p class=\"status\" data-live=\"{live}\">{status}</p>",
        job = Esc(&job),
        status = badge(e.status.as_str()),
    );
    // The operator buttons, by state (the server decides anyway and says why it refuses).
    let action = |verb: &str, label: &str, extra: &str| {
        format!(
            "<form method=\"post\" action=\"/ui/executions/{id}/{verb}\">{}{extra}<button type=\"submit\" class=\"{verb}\">{label}</button></form>",
            csrf_field(&session.csrf)
        )
    };
    body.push_str("<div class=\"actions\">");
    if live {
        body.push_str(&action("stop", "Stop", ""));
        body.push_str(&action(
            "abandon",
            "Abandon",
            "<label class=\"check\"><input type=\"checkbox\" name=\"force\" value=\"true\"> force</label>",
        ));
    } else if matches!(
        e.status,
        BatchStatus::Stopped | BatchStatus::Failed | BatchStatus::Unknown
    ) {
        body.push_str(&action("restart", "Restart", ""));
    }
    let _ = write!(
        body,
        "<a class=\"button\" href=\"/ui/executions/{id}/failures\">Failures ({failures})</a></div>"
    );
    let params: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&e.parameters).unwrap_or_default();
    body.push_str("<div class=\"grid\"><section><h2>Parameters</h2><dl>");
    for (k, v) in &params {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let _ = write!(body, "<dt>{}</dt><dd><code>{}</code></dd>", Esc(k), Esc(&v));
    }
    let took = e.start_time.map_or_else(
        || "—".to_owned(),
        |s| duration(seconds(s, e.end_time.unwrap_or(now))),
    );
    let read: i64 = steps.iter().map(|s| s.counts.read_count).sum();
    let rate = e.start_time.map_or_else(
        || "—".to_owned(),
        |s| {
            format!(
                "{:.1}",
                read as f64 / seconds(s, e.end_time.unwrap_or(now)).max(0.001)
            )
        },
    );
    let _ = write!(
        body,
        "</dl></section><section><h2>Timings</h2><dl><dt>Created</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>\
<dt>Ended</dt><dd>{}</dd><dt>Duration</dt><dd>{}</dd><dt>Items/s</dt><dd>{}</dd><dt>Owner</dt><dd>{}</dd>\
<dt>Heartbeat</dt><dd>{} ({:.0} s ago)</dd><dt>Exit</dt><dd><code>{}</code></dd></dl><p class=\"muted\">Times in {}</p></section></div>",
        Esc(&local(e.created_at, tz)),
        Esc(&local_opt(e.start_time, tz)),
        Esc(&local_opt(e.end_time, tz)),
        Esc(&took),
        Esc(&rate),
        Esc(e.owner.as_deref().unwrap_or("—")),
        Esc(&local(e.last_updated, tz)),
        heartbeat_age_secs(&e, now),
        Esc(&e.exit_code),
        Esc(tz.name()),
    );
    // The instance's executions: where a restart came from and went to.
    if let Ok(all) = repo.executions_of_instance(e.job_instance_id).await
        && all.len() > 1
    {
        let _ = write!(
            body,
            "<p class=\"instance\">Executions of instance {}: ",
            e.job_instance_id
        );
        for other in &all {
            if other.id == id {
                let _ = write!(body, "<strong>#{id}</strong> ");
            } else {
                let _ = write!(
                    body,
                    "<a href=\"/ui/executions/{o}\">#{o}</a> {} ",
                    badge(other.status.as_str()),
                    o = other.id
                );
            }
        }
        body.push_str("</p>");
    }
    if let Some(m) = &e.exit_message {
        let _ = write!(body, "<h2>Message</h2><pre>{}</pre>", Esc(m));
    }
    body.push_str("<h2>Steps</h2><div class=\"scroll\"><table><thead><tr><th>Step</th><th>Status</th><th>Read</th><th>Written</th><th>Filtered</th><th>Skipped</th><th>Commits</th><th>Rollbacks</th><th>Retries</th><th>Counters</th><th>Duration</th></tr></thead><tbody>");
    for s in &steps {
        let took = duration(seconds(s.start_time, s.end_time.unwrap_or(now)));
        body.push_str(&step_row(&s.step_name, s.status, &s.counts, &took, ""));
        match repo.partitions(s.id).await {
            Ok(parts) => {
                for p in &parts {
                    let range = format!(
                        "{}..={} · {} · claims {}",
                        p.range_from.map_or("?".into(), |v| v.to_string()),
                        p.range_to.map_or("?".into(), |v| v.to_string()),
                        p.owner.as_deref().unwrap_or("unclaimed"),
                        p.claim_count
                    );
                    let took = duration(seconds(p.start_time, p.end_time.unwrap_or(now)));
                    body.push_str(&step_row(&p.step_name, p.status, &p.counts, &took, &range));
                }
            }
            Err(err) => return failed(&err),
        }
    }
    body.push_str("</tbody></table></div>");
    html(
        status,
        layout(
            &format!("Execution {id}"),
            Nav::Executions,
            Some(&session.csrf),
            &body,
        ),
    )
}

/// A row of the steps table; a partition's row carries its range, owner and claims.
fn step_row(
    name: &str,
    status: BatchStatus,
    c: &StepCounts,
    took: &str,
    partition: &str,
) -> String {
    let counters = c
        .counters
        .0
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let name = if partition.is_empty() {
        format!("{}", Esc(name))
    } else {
        format!(
            "<span class=\"partition\">{}</span><br><small>{}</small>",
            Esc(name),
            Esc(partition)
        )
    };
    format!(
        "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
        badge(status.as_str()),
        c.read_count,
        c.write_count,
        c.filter_count,
        c.skip_count,
        c.commit_count,
        c.rollback_count,
        c.retry_count,
        Esc(&counters),
        Esc(took),
    )
}

/// `GET /ui/executions/{id}/failures?after=`.
pub(super) async fn failures(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let id = match execution_id(id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let tz = service.props.batch.timezone;
    let after = match query.get("after").map(|v| v.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            return message_page(
                StatusCode::BAD_REQUEST,
                "Bad page",
                "after: expected a failure id (a number from 0)",
            );
        }
    };
    let repo = service.repository();
    let page = async {
        let Some(_) = repo.execution(id).await? else {
            return Ok(None);
        };
        let total = repo.count_failures(id).await?;
        let page = repo.failures_page(id, after, FAILURES_PAGE).await?;
        Ok::<_, core_domain::DbError>(Some((total, page)))
    };
    let (total, page) = match page.await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return message_page(
                StatusCode::NOT_FOUND,
                "No such execution",
                &format!("execution {id} does not exist"),
            );
        }
        Err(e) => {
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                &format!("the batch database failed: {e}"),
            );
        }
    };
    let mut body = format!(
        "<h1>Failures of <a href=\"/ui/executions/{id}\">execution {id}</a></h1><p class=\"muted\">{total} item failure{} in all (times in {})</p>",
        if total == 1 { "" } else { "s" },
        Esc(tz.name())
    );
    body.push_str("<div class=\"scroll\"><table class=\"failures\"><thead><tr><th>#</th><th>Step</th><th>Item</th><th>Error</th><th>Attempts</th><th>Recorded</th><th>Resolved</th></tr></thead><tbody>");
    for f in &page {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.id,
            Esc(&f.step_name),
            Esc(&f.item_key),
            Esc(&f.error),
            f.attempts,
            Esc(&local(f.created_at, tz)),
            Esc(&local_opt(f.resolved_at, tz)),
        );
    }
    body.push_str("</tbody></table></div><nav class=\"pager\">");
    if after > 0 {
        let _ = write!(
            body,
            "<a href=\"/ui/executions/{id}/failures\">first page</a>"
        );
    }
    if page.len() as i64 >= FAILURES_PAGE
        && let Some(last) = page.last()
    {
        let _ = write!(
            body,
            "<a href=\"/ui/executions/{id}/failures?after={}\">next page →</a>",
            last.id
        );
    }
    body.push_str("</nav>");
    html(
        StatusCode::OK,
        layout(
            &format!("Failures of execution {id}"),
            Nav::Executions,
            Some(&session.csrf),
            &body,
        ),
    )
}
