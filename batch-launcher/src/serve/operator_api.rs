//! The operator routes of the API ([`crate::operator`]'s verbs over HTTP), against an execution
//! running in any process on any machine:
//!
//! | route | answer |
//! |---|---|
//! | `POST /executions/{id}/stop` (no body, or `{}`) | 202 `{execution_id, status: "STOPPING", already_requested, owner, heartbeat_age_seconds}`; 409 `not_running`; 404 |
//! | `POST /executions/{id}/restart` (no body, or `{}`) | 202 `{execution_id, job_instance_id, job_name, status: "STARTED", restarted_from}` and `Location`; 409 `already_running`; 400 `completed` (use a kick with `"rerun": true`); 404 |
//! | `POST /executions/{id}/abandon` body `{"force": false}` (optional) | 200 the execution (FAILED); 409 `still_running` (fresh heartbeat) or `not_running`; 404 |
//! | `GET /executions/{id}/failures?limit=100&after=0` | 200 `{execution_id, total, failures: [...], next_after}`; 404 |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use batch_common::repository::MAX_FAILURES_PAGE;
use batch_common::{ClockExt, ExitCode};
use serde::Deserialize;

use super::http::{
    ApiError, Authorized, body_rejection, db_error, execution_id, parse_object, query_rejection,
    require_json,
};
use super::schema::{ErrorBody, ExecutionView, FailuresPage, Started, StopAccepted};
use super::service::{KickOutcome, Service};
use crate::operator::{self, OperatorError};
use crate::views::{execution_view_of, failures_page_view};

impl From<OperatorError> for ApiError {
    fn from(e: OperatorError) -> Self {
        let (status, code) = match &e {
            OperatorError::NotFound(_) => (StatusCode::NOT_FOUND, "unknown_execution"),
            OperatorError::NotRunning { .. } => (StatusCode::CONFLICT, "not_running"),
            OperatorError::Running { .. } => (StatusCode::CONFLICT, "already_running"),
            OperatorError::Completed { .. } => (StatusCode::BAD_REQUEST, "completed"),
            OperatorError::StillAlive { .. } => (StatusCode::CONFLICT, "still_running"),
            OperatorError::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "database"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Counts an operator action on execution `id` ([`Service::count_operator_action`]) and passes
/// its outcome on as the API's answer.
async fn counted<T>(
    service: &Service,
    id: i64,
    action: &str,
    outcome: Result<T, OperatorError>,
) -> Result<T, ApiError> {
    service
        .count_operator_action(id, action, OperatorError::label_of(&outcome))
        .await;
    outcome.map_err(ApiError::from)
}

/// A state-changing request's optional JSON-object body, as `T`.
fn optional_body<T: Default + for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    if headers.contains_key(header::CONTENT_TYPE) {
        require_json(headers, false)?;
    }
    let body = body.map_err(|r| body_rejection(&r))?;
    require_json(headers, body.is_empty())?;
    parse_object(&body, expected)
}

/// No fields: the body of `stop` and `restart`, if any, is `{}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// The body of `abandon`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AbandonRequest {
    /// Even if its heartbeat is recent (only when its process is known to be gone).
    #[serde(default)]
    force: bool,
}

/// `POST /executions/{id}/stop`.
#[utoipa::path(post, path = "/executions/{id}/stop", tag = "operator",
    summary = "Ask a running execution to stop after its current chunk, wherever it runs",
    params(("id" = i64, Path, description = "The execution id.")),
    request_body(content = Empty, content_type = "application/json"),
    responses(
        (status = 202, description = "STOPPING: its process stops it within a heartbeat.", body = StopAccepted),
        (status = 409, description = "It is not running.", body = ErrorBody),
        (status = 400, description = "A malformed id or body (not a JSON object of this shape).", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such execution.", body = ErrorBody),
        (status = 413, description = "A body over 64 KiB.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        (status = 503, description = "The batch database failed.", body = ErrorBody),
    ))]
pub(super) async fn stop(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = execution_id(id)?;
    let _: Empty = optional_body(&headers, body, "{}")?;
    let now = service.clock.now_naive_utc();
    let outcome = operator::stop(service.repository(), id, now).await;
    let stopped = counted(&service, id, "stop", outcome).await?;
    let body = serde_json::json!({
        "execution_id": id,
        "status": "STOPPING",
        "already_requested": stopped.already,
        "owner": stopped.execution.owner,
        "heartbeat_age_seconds": stopped.heartbeat_age_secs,
        "links": { "self": format!("/executions/{id}") },
    });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// `POST /executions/{id}/restart`.
#[utoipa::path(post, path = "/executions/{id}/restart", tag = "operator",
    summary = "Run a FAILED or STOPPED execution's instance again from its checkpoints, in serve",
    params(("id" = i64, Path, description = "The execution id.")),
    request_body(content = Empty, content_type = "application/json"),
    responses(
        (status = 202, description = "The new execution, running.", body = Started),
        (status = 409, description = "Its instance is running.", body = ErrorBody),
        (status = 400, description = "A malformed id or body (not a JSON object of this shape).", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such execution.", body = ErrorBody),
        (status = 413, description = "A body over 64 KiB.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        (status = 503, description = "The batch database failed.", body = ErrorBody),
    ))]
pub(super) async fn restart(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = execution_id(id)?;
    let _: Empty = optional_body(&headers, body, "{}")?;
    let outcome = operator::restart_target(service.repository(), id).await;
    let (job, params) = counted(&service, id, "restart", outcome).await?;
    match service.kick(&job, params, false).await? {
        KickOutcome::Started {
            execution_id,
            job_instance_id,
        } => {
            let location = format!("/executions/{execution_id}");
            let body = serde_json::json!({
                "execution_id": execution_id,
                "job_instance_id": job_instance_id,
                "job_name": job,
                "status": "STARTED",
                "restarted_from": id,
                "links": { "self": location },
            });
            let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Ok(response)
        }
        // Someone launched it between the check and the launch.
        KickOutcome::NotStarted(result) if result.exit_code == ExitCode::AlreadyRunning => {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_running",
                result.message.unwrap_or_default(),
            ))
        }
        KickOutcome::NotStarted(result) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "completed",
            result
                .message
                .unwrap_or_else(|| "nothing to restart".into()),
        )),
    }
}

/// `POST /executions/{id}/abandon`.
#[utoipa::path(post, path = "/executions/{id}/abandon", tag = "operator",
    summary = "Mark a dead execution FAILED (abandoned) so its instance can be restarted",
    params(("id" = i64, Path, description = "The execution id.")),
    request_body(content = AbandonRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The execution, FAILED.", body = ExecutionView),
        (status = 409, description = "Its heartbeat is fresh (`still_running`) or it is not running.", body = ErrorBody),
        (status = 400, description = "A malformed id or body (not a JSON object of this shape).", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such execution.", body = ErrorBody),
        (status = 413, description = "A body over 64 KiB.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        (status = 503, description = "The batch database failed.", body = ErrorBody),
    ))]
pub(super) async fn abandon(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = execution_id(id)?;
    let request: AbandonRequest = optional_body(&headers, body, "{\"force\": false}")?;
    let repo = service.repository();
    let now = service.clock.now_naive_utc();
    let outcome = operator::abandon(
        repo,
        id,
        service.props.batch.stale_after,
        request.force,
        now,
    )
    .await;
    let e = counted(&service, id, "abandon", outcome).await?;
    let view = execution_view_of(repo, &e).await.map_err(db_error)?;
    Ok(axum::Json(view).into_response())
}

/// Default size of a failures page.
const DEFAULT_FAILURES_PAGE: i64 = 100;

/// `GET /executions/{id}/failures?limit=&after=`.
#[utoipa::path(get, path = "/executions/{id}/failures", tag = "operator",
    summary = "An execution's item failures, a page at a time",
    params(
        ("id" = i64, Path, description = "The execution id."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)."),
        ("after" = Option<i64>, Query, minimum = 0, description = "Only failures with a larger id: the previous page's `next_after`."),
    ),
    responses(
        (status = 200, description = "One page.", body = FailuresPage),
        (status = 400, description = "A malformed id or query.", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such execution.", body = ErrorBody),
        (status = 503, description = "The batch database failed.", body = ErrorBody),
    ))]
pub(super) async fn failures(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = execution_id(id)?;
    let Query(query) = query.map_err(|r| query_rejection(&r))?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "after"))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown query parameter `{unknown}` (only `limit`, `after`)"),
        ));
    }
    let number =
        |name: &str, default: i64, range: std::ops::RangeInclusive<i64>| match query.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!(
                        "{name} `{v}`: expected a number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            },
        };
    let limit = number("limit", DEFAULT_FAILURES_PAGE, 1..=MAX_FAILURES_PAGE)?;
    let after = number("after", 0, 0..=i64::MAX)?;
    let repo = service.repository();
    if repo.execution(id).await.map_err(db_error)?.is_none() {
        return Err(OperatorError::NotFound(id).into());
    }
    let total = repo.count_failures(id).await.map_err(db_error)?;
    let page = repo
        .failures_page(id, after, limit)
        .await
        .map_err(db_error)?;
    Ok(axum::Json(failures_page_view(id, total, &page, limit)).into_response())
}
