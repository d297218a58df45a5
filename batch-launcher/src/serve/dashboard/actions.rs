//! The buttons and the run form: stop, restart and abandon an execution, and run a job now —
//! through [`crate::operator`] and [`Service::kick`] exactly as the API does, counted in
//! `batch_operator_actions_total` the same way, and refused with the same messages (shown on the
//! page, with the API's status code).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Redirect, Response};
use batch_common::{ClockExt as _, ExitCode};

use super::auth::{SignedIn, check_post};
use super::execution::{Notice, execution_id, execution_page};
use super::html::{Refused, message_page};
use super::pages::{RunFormState, jobs_page};
use crate::launch::LaunchFailure;
use crate::operator::{self, OperatorError};
use crate::serve::service::{KickOutcome, Service};

/// The status code the API answers a refusal with.
fn refusal_status(e: &OperatorError) -> StatusCode {
    match e {
        OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
        OperatorError::NotRunning { .. }
        | OperatorError::Running { .. }
        | OperatorError::StillAlive { .. } => StatusCode::CONFLICT,
        OperatorError::Completed { .. } => StatusCode::BAD_REQUEST,
        OperatorError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn launch_status(e: &LaunchFailure) -> StatusCode {
    match e {
        LaunchFailure::UnknownJob { .. } => StatusCode::NOT_FOUND,
        LaunchFailure::Parameters(_) => StatusCode::BAD_REQUEST,
        LaunchFailure::Setup { .. } | LaunchFailure::Database(_) | LaunchFailure::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The execution page again, with the refusal at its top and the API's status.
async fn refused(service: &Service, session: &SignedIn, id: i64, e: &OperatorError) -> Response {
    if matches!(e, OperatorError::NotFound(_)) {
        return message_page(StatusCode::NOT_FOUND, "No such execution", &e.to_string());
    }
    let notice = Notice::Refused(e.to_string());
    execution_page(service, session, id, refusal_status(e), Some(&notice)).await
}

fn to_execution(id: i64, done: &str) -> Response {
    Redirect::to(&format!("/ui/executions/{id}?done={done}")).into_response()
}

/// The checks every action starts with: its form (origin, CSRF) and its execution id.
fn checked(
    session: &SignedIn,
    headers: &HeaderMap,
    body: &[u8],
    id: Result<Path<String>, PathRejection>,
) -> Result<(super::auth::Form, i64), Refused> {
    let form = check_post(session, headers, body)?;
    Ok((form, execution_id(id)?))
}

/// `POST /ui/executions/{id}/stop`.
pub(super) async fn stop(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, id) = match checked(&session, &headers, &body, id) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let outcome = operator::stop(service.repository(), id, service.clock.now_naive_utc()).await;
    service
        .count_operator_action(id, "stop", OperatorError::label_of(&outcome))
        .await;
    match outcome {
        Ok(_) => to_execution(id, "stop"),
        Err(e) => refused(&service, &session, id, &e).await,
    }
}

/// `POST /ui/executions/{id}/restart`.
pub(super) async fn restart(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, id) = match checked(&session, &headers, &body, id) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let outcome = operator::restart_target(service.repository(), id).await;
    service
        .count_operator_action(id, "restart", OperatorError::label_of(&outcome))
        .await;
    let (job, params) = match outcome {
        Ok(t) => t,
        Err(e) => return refused(&service, &session, id, &e).await,
    };
    let notice = |m: String| Notice::Refused(m);
    match service.kick(&job, params, false).await {
        Ok(KickOutcome::Started { execution_id, .. }) => to_execution(execution_id, "restart"),
        // Someone launched it between the check and the launch.
        Ok(KickOutcome::NotStarted(r)) => {
            let status = if r.exit_code == ExitCode::AlreadyRunning {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            let n = notice(r.message.unwrap_or_else(|| "nothing to restart".into()));
            execution_page(&service, &session, id, status, Some(&n)).await
        }
        Err(e) => {
            let n = notice(e.to_string());
            execution_page(&service, &session, id, launch_status(&e), Some(&n)).await
        }
    }
}

/// `POST /ui/executions/{id}/abandon` (form field `force=true` to abandon a fresh one).
pub(super) async fn abandon(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, id) = match checked(&session, &headers, &body, id) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let force = form.get("force") == Some("true");
    let outcome = operator::abandon(
        service.repository(),
        id,
        service.props.batch.stale_after,
        force,
        service.clock.now_naive_utc(),
    )
    .await;
    service
        .count_operator_action(id, "abandon", OperatorError::label_of(&outcome))
        .await;
    match outcome {
        Ok(_) => to_execution(id, "abandon"),
        Err(e) => refused(&service, &session, id, &e).await,
    }
}

/// `POST /ui/jobs/{name}/run`: fields `p.<parameter>` (empty = the default) and `rerun=true`.
/// Parameters are resolved and validated by [`Service::kick`], as for the API; a refusal is
/// shown next to the form (400 for parameters).
pub(super) async fn run(
    session: SignedIn,
    State(service): State<Arc<Service>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match check_post(&session, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let name = name.map(|Path(n)| n).unwrap_or_default();
    let Some(job) = service.job(&name).map(|j| j.descriptor.name) else {
        service
            .metrics()
            .operator_action("unknown", "run", "not_found");
        return message_page(
            StatusCode::NOT_FOUND,
            "No such job",
            &format!("unknown job `{name}` (known: {})", service.job_names()),
        );
    };
    let typed: BTreeMap<String, String> = form
        .0
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("p.")?.to_owned(), v.trim().to_owned())))
        .collect();
    let given: BTreeMap<String, String> = typed
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let rerun = form.get("rerun") == Some("true");
    let outcome = service.kick(job, given, rerun).await;
    let label = match &outcome {
        Ok(KickOutcome::Started { .. }) => "accepted",
        Ok(KickOutcome::NotStarted(r)) if r.exit_code == ExitCode::AlreadyRunning => "refused",
        Ok(KickOutcome::NotStarted(_)) => "noop",
        Err(LaunchFailure::UnknownJob { .. }) => "not_found",
        Err(_) => "refused",
    };
    service.metrics().operator_action(job, "run", label);
    let (status, error) = match outcome {
        Ok(KickOutcome::Started { execution_id, .. }) => return to_execution(execution_id, "run"),
        Ok(KickOutcome::NotStarted(r)) if r.exit_code == ExitCode::AlreadyRunning => (
            StatusCode::CONFLICT,
            r.message
                .unwrap_or_else(|| "the instance is running".to_owned()),
        ),
        Ok(KickOutcome::NotStarted(r)) => (
            StatusCode::OK,
            r.message.unwrap_or_else(|| {
                "nothing to do: the instance completed (tick rerun to run it again)".to_owned()
            }),
        ),
        Err(e) => (launch_status(&e), e.to_string()),
    };
    let state = RunFormState {
        job: job.to_owned(),
        values: typed,
        error,
    };
    jobs_page(&service, &session, status, Some(&state)).await
}
