//! The jobs page (every registered job: schedule, last outcome, a chart of its last runs and a
//! form to run it now) and the list of executions (filtered by job, status and date; paged).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use batch_common::job::{ParamDefault, ParamKind, ParameterSpec};
use batch_common::repository::{BatchStatus, ExecutionFilter, JobExecution};
use batch_common::schedule::CronSchedule;
use chrono::{NaiveDate, TimeZone as _};

use super::auth::SignedIn;
use super::chart::{RunPoint, runs_chart};
use super::html::{
    Esc, Nav, Refused, badge, csrf_field, duration, html, layout, local, local_opt, message_page,
    query_value, seconds,
};
use crate::serve::service::Service;

/// How many runs the chart shows.
const CHART_RUNS: i64 = 20;
/// Executions per page of the list.
const PAGE_SIZE: i64 = 25;

/// What the run form of one job showed when the server refused it: the values given and why.
#[derive(Debug, Default)]
pub(super) struct RunFormState {
    /// The job.
    pub(super) job: String,
    /// The values typed, by parameter.
    pub(super) values: BTreeMap<String, String>,
    /// Why it was refused.
    pub(super) error: String,
}

/// `GET /ui`.
pub(super) async fn jobs(session: SignedIn, State(service): State<Arc<Service>>) -> Response {
    jobs_page(&service, &session, StatusCode::OK, None).await
}

/// The jobs page with `status`, and the refused run form if any.
pub(super) async fn jobs_page(
    service: &Service,
    session: &SignedIn,
    status: StatusCode,
    refused: Option<&RunFormState>,
) -> Response {
    let tz = service.props.batch.timezone;
    let now = service.clock.now();
    let repo = service.repository();
    let mut body = String::from("<h1>Jobs</h1><div class=\"cards\">");
    for job in &service.jobs {
        let d = job.descriptor;
        let schedule = match service.props.schedule_for(d.name) {
            None => "<span class=\"muted\">not scheduled</span>".to_owned(),
            Some(expr) => {
                let next = CronSchedule::parse(expr)
                    .ok()
                    .and_then(|c| c.next_after(now, tz))
                    .map_or_else(
                        || "never".to_owned(),
                        |t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
                    );
                format!(
                    "<code>{}</code> ({}) · next <time>{}</time>",
                    Esc(expr),
                    Esc(tz.name()),
                    Esc(&next)
                )
            }
        };
        let history = match repo.history(Some(d.name), CHART_RUNS).await {
            Ok(h) => h,
            Err(e) => return db_failed(&e),
        };
        let last = history.first().map_or_else(
            || "<span class=\"muted\">never run</span>".to_owned(),
            |(e, _)| {
                format!(
                    "{} <a href=\"/ui/executions/{}\">#{}</a> {}",
                    badge(e.status.as_str()),
                    e.id,
                    e.id,
                    Esc(&local_opt(e.end_time.or(e.start_time), tz))
                )
            },
        );
        let mut points = Vec::new();
        for (e, _) in history.iter().rev() {
            if let Some(p) = run_point(service, e).await {
                points.push(p);
            }
        }
        let form_state = refused.filter(|r| r.job == d.name);
        let _ = write!(
            body,
            "<section class=\"card\" id=\"job-{name}\"><h2>{name}</h2><p class=\"muted\">{desc}</p>\
<dl><dt>Schedule</dt><dd>{schedule}</dd><dt>Last run</dt><dd>{last}</dd></dl>\
<h3>Last runs</h3>{chart}{form}<p><a href=\"/ui/executions?job={q}\">All executions of {name}</a></p></section>",
            name = Esc(d.name),
            desc = Esc(d.description),
            chart = runs_chart(d.name, &points),
            form = run_form(d.name, d.parameters, &session.csrf, form_state),
            q = query_value(d.name),
        );
    }
    body.push_str("</div>");
    html(
        status,
        layout("Jobs", Nav::Jobs, Some(&session.csrf), &body),
    )
}

/// A finished run's duration and rate, for the chart.
async fn run_point(service: &Service, e: &JobExecution) -> Option<RunPoint> {
    let (start, end) = (e.start_time?, e.end_time?);
    let secs = seconds(start, end).max(0.001);
    let steps = service.repository().step_executions(e.id).await.ok()?;
    let read: i64 = steps.iter().map(|s| s.counts.read_count).sum();
    Some(RunPoint {
        id: e.id,
        status: e.status.as_str().to_owned(),
        seconds: secs,
        items_per_sec: read as f64 / secs,
    })
}

/// The run-now form of a job: a field per declared parameter (empty = its default).
fn run_form(
    job: &str,
    params: &[ParameterSpec],
    csrf: &str,
    refused: Option<&RunFormState>,
) -> String {
    let mut fields = String::new();
    for p in params {
        let id = format!("run-{job}-{}", p.name);
        let name = format!("p.{}", p.name);
        let value = refused
            .and_then(|r| r.values.get(p.name))
            .map_or("", String::as_str);
        let input = match p.kind {
            ParamKind::Bool => select(&id, &name, &["true", "false"], value),
            ParamKind::OneOf(names) => select(&id, &name, names, value),
            kind => format!(
                "<input id=\"{id}\" name=\"{name}\" value=\"{v}\" placeholder=\"{ph}\"{req}>",
                id = Esc(&id),
                name = Esc(&name),
                v = Esc(value),
                ph = Esc(&kind.to_string()),
                req = if p.default == ParamDefault::Required {
                    " required"
                } else {
                    ""
                },
            ),
        };
        let _ = write!(
            fields,
            "<div class=\"field\"><label for=\"{id}\">{pname}</label>{input}<small>{kind}; default: {default}{ident}. {desc}</small></div>",
            id = Esc(&id),
            pname = Esc(p.name),
            kind = Esc(&p.kind.to_string()),
            default = Esc(&p.default.to_string()),
            ident = if p.identifying { "; identifying" } else { "" },
            desc = Esc(p.description),
        );
    }
    let error = refused.map_or_else(String::new, |r| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", Esc(&r.error))
    });
    format!(
        "<details class=\"run\"{open}><summary>Run now</summary>{error}\
<form method=\"post\" action=\"/ui/jobs/{job_path}/run\" class=\"run-form\">{csrf}{fields}\
<div class=\"field check\"><input id=\"run-{job}-rerun\" type=\"checkbox\" name=\"rerun\" value=\"true\">\
<label for=\"run-{job}-rerun\">rerun a completed instance</label></div>\
<button type=\"submit\">Run {job}</button></form></details>",
        open = if refused.is_some() { " open" } else { "" },
        job_path = Esc(&query_value(job)),
        job = Esc(job),
        csrf = csrf_field(csrf),
    )
}

fn select(id: &str, name: &str, options: &[&str], value: &str) -> String {
    let mut out = format!(
        "<select id=\"{}\" name=\"{}\"><option value=\"\">(default)</option>",
        Esc(id),
        Esc(name)
    );
    for o in options {
        let _ = write!(
            out,
            "<option{}>{}</option>",
            if *o == value { " selected" } else { "" },
            Esc(o)
        );
    }
    out.push_str("</select>");
    out
}

fn db_failed(e: &dyn std::fmt::Display) -> Response {
    message_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
        &format!("the batch database failed: {e}"),
    )
}

/// `GET /ui/executions?job=&status=&from=&to=&page=`.
pub(super) async fn executions(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let tz = service.props.batch.timezone;
    let given = |k: &str| query.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let bad = |what: String| Refused::new(StatusCode::BAD_REQUEST, "Bad filter", what);
    let mut filter = ExecutionFilter::default();
    if let Some(job) = given("job") {
        if service.job(job).is_none() {
            return bad(format!("unknown job `{job}`")).into_response();
        }
        filter.job_name = Some(job.to_owned());
    }
    if let Some(s) = given("status") {
        match s.parse::<BatchStatus>() {
            Ok(s) => filter.status = Some(s),
            Err(e) => return bad(e).into_response(),
        }
    }
    let day = |k: &str| -> Result<Option<NaiveDate>, Refused> {
        given(k)
            .map(|v| {
                v.parse::<NaiveDate>()
                    .map_err(|_| bad(format!("{k} `{v}`: expected a date YYYY-MM-DD")))
            })
            .transpose()
    };
    let (from, to) = match (day("from"), day("to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    // Days are read in the business time zone; the stored times are UTC.
    let midnight = |d: NaiveDate| {
        tz.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.naive_utc())
    };
    filter.created_from = from.and_then(midnight);
    filter.created_before = to.and_then(|d| d.succ_opt()).and_then(midnight);
    let page = match given("page").map(str::parse::<i64>) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return bad("page: expected a number from 1".to_owned()).into_response(),
    };
    let found = match service
        .repository()
        .search_executions(&filter, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        .await
    {
        Ok(f) => f,
        Err(e) => return db_failed(&e),
    };
    let value = |k: &str| given(k).unwrap_or("").to_owned();
    let mut body = String::from("<h1>Executions</h1><form method=\"get\" class=\"filters\">");
    let jobs: Vec<&str> = service.jobs.iter().map(|j| j.descriptor.name).collect();
    let statuses = [
        "STARTING",
        "STARTED",
        "STOPPING",
        "STOPPED",
        "COMPLETED",
        "FAILED",
        "UNKNOWN",
    ];
    let _ = write!(
        body,
        "<div class=\"field\"><label for=\"f-job\">Job</label>{}</div>\
<div class=\"field\"><label for=\"f-status\">Status</label>{}</div>\
<div class=\"field\"><label for=\"f-from\">From</label><input id=\"f-from\" type=\"date\" name=\"from\" value=\"{}\"></div>\
<div class=\"field\"><label for=\"f-to\">To</label><input id=\"f-to\" type=\"date\" name=\"to\" value=\"{}\"></div>\
<button type=\"submit\">Filter</button></form>",
        select("f-job", "job", &jobs, &value("job")).replace("(default)", "all"),
        select("f-status", "status", &statuses, &value("status")).replace("(default)", "all"),
        Esc(&value("from")),
        Esc(&value("to")),
    );
    let _ = write!(
        body,
        "<p class=\"muted\">{} execution{} (times in {})</p>",
        found.total,
        if found.total == 1 { "" } else { "s" },
        Esc(tz.name())
    );
    body.push_str("<div class=\"scroll\"><table><thead><tr><th>#</th><th>Job</th><th>Status</th><th>Parameters</th><th>Created</th><th>Duration</th><th>Exit</th></tr></thead><tbody>");
    for (e, i) in &found.rows {
        let params = parameters_text(&e.parameters);
        let took = e.start_time.map_or_else(String::new, |s| {
            duration(seconds(
                s,
                e.end_time.unwrap_or(service.clock.now().naive_utc()),
            ))
        });
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/executions/{id}\">{id}</a></td><td>{job}</td><td>{status}</td><td><code>{params}</code></td><td>{created}</td><td>{took}</td><td>{exit}</td></tr>",
            id = e.id,
            job = Esc(&i.job_name),
            status = badge(e.status.as_str()),
            params = Esc(&params),
            created = Esc(&local(e.created_at, tz)),
            took = Esc(&took),
            exit = Esc(&e.exit_code),
        );
    }
    body.push_str("</tbody></table></div>");
    let pages = (found.total + PAGE_SIZE - 1) / PAGE_SIZE;
    let link = |p: i64| {
        let mut q: Vec<String> = ["job", "status", "from", "to"]
            .iter()
            .filter_map(|k| given(k).map(|v| format!("{k}={}", query_value(v))))
            .collect();
        q.push(format!("page={p}"));
        format!("/ui/executions?{}", q.join("&"))
    };
    body.push_str("<nav class=\"pager\">");
    if page > 1 {
        let _ = write!(body, "<a href=\"{}\">← newer</a>", Esc(&link(page - 1)));
    }
    let _ = write!(body, "<span>page {page} of {}</span>", pages.max(1));
    if page < pages {
        let _ = write!(body, "<a href=\"{}\">older →</a>", Esc(&link(page + 1)));
    }
    body.push_str("</nav>");
    html(
        StatusCode::OK,
        layout("Executions", Nav::Executions, Some(&session.csrf), &body),
    )
}

/// Stored parameters (a JSON object) as `key=value` words.
pub(super) fn parameters_text(json: &str) -> String {
    serde_json::from_str::<BTreeMap<String, serde_json::Value>>(json)
        .map(|m| {
            m.iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| json.to_owned())
}
