//! The HTTP API of `serve` (axum). Every route but `/health` needs `Authorization: Bearer <token>`
//! with `[server] token`. Every error answer, including those of malformed requests (a body too
//! large: 413, an unsupported `Content-Type`: 415, a method a route does not have: 405), is JSON:
//! `{"error": "<code>", "message": "<what and why>"}`.
//!
//! A request that changes state (the kick, the operator verbs) sends its body, if any, as
//! `Content-Type: application/json` (a charset parameter may follow); any other declared type, or a
//! body without a type, is refused with 415 before anything runs. A body is at most
//! [`MAX_BODY_BYTES`].
//!
//! | route | answer |
//! |---|---|
//! | `POST /jobs/{name}/executions` body `{"parameters": {"date": "2026-11-20"}, "rerun": false}` (body optional) | 202 `{execution_id, job_instance_id, status: "STARTED"}` and `Location`; 200 with the result if the instance already completed (NOOP); 409 if it is running; 400 bad parameters; 404 unknown job |
//! | `GET /executions/{id}` | 200 the execution with its steps; 404 |
//! | `POST /executions/{id}/stop`, `/restart`, `/abandon`; `GET /executions/{id}/failures` | the operator verbs: see [`super::operator_api`] |
//! | `GET /jobs/{name}/executions?limit=N` | 200 newest first (default 20, at most 1000) |
//! | `GET /health` (no token needed; the reasons of a failure only with it) | 200 / 503 `{status, database, <each module check, e.g. redis>}` |
//! | `GET /metrics` | Prometheus text format 0.0.4 |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use batch_common::ExitCode;
use serde::Deserialize;

pub use super::http::{ApiError, Authorized, MAX_BODY_BYTES};
use super::http::{
    body_rejection, check_token, db_error, execution_id, parse_object, path_rejection,
    query_rejection, require_json,
};
use super::operator_api;
use super::schema::{
    AlreadyRunning, ErrorBody, ExecutionView, Health, JobExecutions, ParamScalar, RunResult,
    Started,
};
use super::service::{KickOutcome, Service};
use crate::launch::LaunchFailure;
use crate::views::{execution_view, execution_view_of};

/// The API's OpenAPI 3.1 description, generated from the handlers' annotations and the body
/// types ([`super::schema`]); served at `GET /openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "batch-launcher serve",
        description = "Kick job runs, follow executions, stop/restart/abandon them from anywhere, read health and metrics. Every route but /health, /openapi.json needs `Authorization: Bearer <server.token>`. Every error is JSON: {\"error\": code, \"message\": text}."
    ),
    paths(
        kick,
        job_executions,
        execution,
        operator_api::stop,
        operator_api::restart,
        operator_api::abandon,
        operator_api::failures,
        health,
        metrics,
        openapi_json
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "runs", description = "Start runs and follow them."),
        (name = "operator", description = "Spring Batch's JobOperator verbs, against an execution in any process on any machine."),
        (name = "service", description = "Health, metrics and this description.")
    )
)]
pub struct ApiDoc;

/// Adds the bearer-token scheme the document's `security` names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // Every request body may be left out (no body = the defaults), but one that is sent
        // must be the documented object (`null` is not).
        for item in openapi.paths.paths.values_mut() {
            if let Some(op) = item.post.as_mut()
                && let Some(body) = op.request_body.as_mut()
            {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    summary = "This API's OpenAPI description",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json", body = Object)))]
async fn openapi_json(State(service): State<Arc<Service>>) -> Response {
    axum::Json(openapi_for(&service.job_names_list())).into_response()
}

/// The document for a server running `jobs`: the `{name}` of the job routes is one of them.
pub fn openapi_for(jobs: &[&str]) -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    let mut doc = ApiDoc::openapi();
    let names = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(jobs.iter().copied()))
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in [item.get.as_mut(), item.post.as_mut()]
            .into_iter()
            .flatten()
        {
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "name" {
                    p.schema = Some(Schema::Object(names.clone()).into());
                }
            }
        }
    }
    doc
}

/// The routes.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/jobs/{name}/executions", post(kick).get(job_executions))
        .route("/executions/{id}", get(execution))
        .route("/executions/{id}/stop", post(operator_api::stop))
        .route("/executions/{id}/restart", post(operator_api::restart))
        .route("/executions/{id}/abandon", post(operator_api::abandon))
        .route("/executions/{id}/failures", get(operator_api::failures))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .merge(super::dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", method, uri.path()),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /health, /metrics, /executions/{id}, /executions/{id}/failures, /jobs/{name}/executions; POST /jobs/{name}/executions, /executions/{id}/stop, /restart, /abandon",
    )
}

/// The body of a kick.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KickRequest {
    /// Job parameters, `name: value` (strings, numbers or booleans), checked against the job's
    /// declared parameters (names, kinds, ranges; missing ones take their defaults).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, ParamScalar>)]
    parameters: BTreeMap<String, serde_json::Value>,
    /// Run a COMPLETED instance again.
    #[serde(default)]
    rerun: bool,
}

fn parse_kick(body: &[u8]) -> Result<KickRequest, ApiError> {
    parse_object(
        body,
        "{\"parameters\": {\"name\": \"value\"}, \"rerun\": false}",
    )
}

fn parameter_strings(
    raw: BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, ApiError> {
    raw.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_parameters",
                        format!(
                            "parameter `{k}`: expected a string, number or boolean, got {other}"
                        ),
                    ));
                }
            };
            Ok((k, text))
        })
        .collect()
}

#[utoipa::path(post, path = "/jobs/{name}/executions", tag = "runs",
    summary = "Start a run of a job (the kick)",
    params(("name" = String, Path, description = "The job, e.g. `pointBalanceSyncJob`.")),
    request_body(content = KickRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "A new execution, running.", body = Started,
            headers(("Location" = String, description = "The execution's path."))),
        (status = 200, description = "Nothing to do: the instance completed already (NOOP).", body = RunResult),
        (status = 400, description = "A body that is not a JSON object of this shape, or bad parameters (named).", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such job.", body = ErrorBody),
        (status = 409, description = "The instance is running (here, in Jenkins or anywhere).", body = AlreadyRunning),
        (status = 413, description = "A body over 64 KiB.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        (status = 503, description = "The database failed, the job could not be set up, or serve is shutting down.", body = ErrorBody),
    ))]
async fn kick(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|r| path_rejection(&r))?;
    if headers.contains_key(header::CONTENT_TYPE) {
        // A wrong type is refused before the body is read.
        require_json(&headers, false)?;
    }
    let body = body.map_err(|r| body_rejection(&r))?;
    require_json(&headers, body.is_empty())?;
    let request = parse_kick(&body)?;
    let given = parameter_strings(request.parameters)?;
    let outcome = service.kick(&name, given, request.rerun).await;
    // Counted under the job's name only when the job exists (a path is not a label value).
    let job = service.job(&name).map_or("unknown", |j| j.descriptor.name);
    let label = match &outcome {
        Ok(KickOutcome::Started { .. }) => "accepted",
        Ok(KickOutcome::NotStarted(r)) if r.exit_code == ExitCode::AlreadyRunning => "refused",
        Ok(KickOutcome::NotStarted(_)) => "noop",
        Err(LaunchFailure::UnknownJob { .. }) => "not_found",
        Err(_) => "refused",
    };
    service.metrics().operator_action(job, "run", label);
    match outcome? {
        KickOutcome::Started {
            execution_id,
            job_instance_id,
        } => {
            let location = format!("/executions/{execution_id}");
            let body = serde_json::json!({
                "execution_id": execution_id,
                "job_instance_id": job_instance_id,
                "job_name": name,
                "status": "STARTED",
                "links": { "self": location },
            });
            let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Ok(response)
        }
        KickOutcome::NotStarted(result) if result.exit_code == ExitCode::AlreadyRunning => {
            let body = serde_json::json!({
                "error": "already_running",
                "message": result.message,
                "execution_id": result.execution_id,
                "job_instance_id": result.job_instance_id,
            });
            Ok((StatusCode::CONFLICT, axum::Json(body)).into_response())
        }
        KickOutcome::NotStarted(result) => Ok((StatusCode::OK, axum::Json(result)).into_response()),
    }
}

#[utoipa::path(get, path = "/executions/{id}", tag = "runs",
    summary = "An execution with its steps, counts, counters and partitions",
    params(("id" = i64, Path, description = "The execution id.")),
    responses(
        (status = 200, description = "The execution.", body = ExecutionView),
        (status = 400, description = "A malformed id.", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such execution.", body = ErrorBody),
        (status = 503, description = "The batch database failed.", body = ErrorBody),
    ))]
async fn execution(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = execution_id(id)?;
    let repo = service.repository();
    let Some(e) = repo.execution(id).await.map_err(db_error)? else {
        return Err(crate::operator::OperatorError::NotFound(id).into());
    };
    let view = execution_view_of(repo, &e).await.map_err(db_error)?;
    Ok(axum::Json(view).into_response())
}

/// Default and maximum of `?limit=`.
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 1000;

#[utoipa::path(get, path = "/jobs/{name}/executions", tag = "runs",
    summary = "A job's executions, newest first",
    params(
        ("name" = String, Path, description = "The job."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many (default 20)."),
    ),
    responses(
        (status = 200, description = "Newest first.", body = JobExecutions),
        (status = 400, description = "A malformed query.", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such job.", body = ErrorBody),
        (status = 503, description = "The batch database failed.", body = ErrorBody),
    ))]
async fn job_executions(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|r| path_rejection(&r))?;
    let Query(query) = query.map_err(|r| query_rejection(&r))?;
    if service.job(&name).is_none() {
        return Err(ApiError::from(LaunchFailure::UnknownJob {
            name,
            known: service.job_names(),
        }));
    }
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "limit") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown query parameter `{unknown}` (only `limit`)"),
        ));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("limit `{v}`: expected a number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let repo = service.repository();
    let rows = repo.history(Some(&name), limit).await.map_err(db_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for (e, i) in &rows {
        out.push(execution_view(repo, e, i).await.map_err(db_error)?);
    }
    Ok(axum::Json(serde_json::json!({ "job_name": name, "executions": out })).into_response())
}

#[utoipa::path(get, path = "/health", tag = "service", security(()),
    summary = "Whether the database and each module's services (e.g. Redis) answer",
    responses(
        (status = 200, description = "Everything answers.", body = Health),
        (status = 503, description = "Something does not (why: only with the token).", body = Health),
    ))]
async fn health(State(service): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let (db, modules) = tokio::join!(service.check_database(), service.check_modules());
    let ok = db.is_ok() && modules.iter().all(|(_, r)| r.is_ok());
    // Anyone may ask whether it is up; only a caller with the token learns why not.
    let detailed = check_token(&headers, &service).is_ok();
    let show = |what: &str, r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(check = what, error = %e, "health check failed");
            if detailed {
                e.clone()
            } else {
                "unavailable".to_owned()
            }
        }
    };
    let mut body = serde_json::Map::new();
    body.insert(
        "status".into(),
        if ok { "ok" } else { "unavailable" }.into(),
    );
    body.insert("database".into(), show("database", &db).into());
    for (name, outcome) in &modules {
        body.insert((*name).into(), show(name, outcome).into());
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::Value::Object(body))).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    summary = "Prometheus metrics (text format 0.0.4)",
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain", body = String),
        (status = 401, description = "No or a wrong bearer token.", body = ErrorBody),
    ))]
async fn metrics(_auth: Authorized, State(service): State<Arc<Service>>) -> Response {
    let text = service.render_metrics().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    (StatusCode::OK, headers, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of [`router`] is in the document, with its methods; every operation that
    /// needs the token documents 401, and every one documents its error answers as JSON.
    #[test]
    fn the_document_covers_every_route() {
        let doc = openapi_for(&["aJob", "bJob"]);
        let json = serde_json::to_value(&doc).unwrap();
        let routes = [
            ("/jobs/{name}/executions", &["get", "post"][..]),
            ("/executions/{id}", &["get"]),
            ("/executions/{id}/stop", &["post"]),
            ("/executions/{id}/restart", &["post"]),
            ("/executions/{id}/abandon", &["post"]),
            ("/executions/{id}/failures", &["get"]),
            ("/health", &["get"]),
            ("/metrics", &["get"]),
            ("/openapi.json", &["get"]),
        ];
        let paths = json["paths"].as_object().unwrap();
        assert_eq!(paths.len(), routes.len(), "{:?}", paths.keys());
        for (path, methods) in routes {
            for m in methods {
                let op = &json["paths"][path][m];
                assert!(op.is_object(), "{m} {path} is not documented");
                let responses = op["responses"].as_object().unwrap();
                let public = matches!(path, "/health" | "/openapi.json");
                assert_eq!(responses.contains_key("401"), !public, "{m} {path}");
                for (code, r) in responses {
                    if code.starts_with('4') {
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        assert!(
                            schema == "#/components/schemas/ErrorBody"
                                || schema == "#/components/schemas/AlreadyRunning",
                            "{m} {path} {code}: {schema}"
                        );
                    }
                }
                if *m == "post" {
                    for code in ["400", "413", "415"] {
                        assert!(responses.contains_key(code), "{m} {path} {code}");
                    }
                    assert_eq!(op["requestBody"]["required"], false, "{m} {path}");
                }
            }
        }
        let names = &json["paths"]["/jobs/{name}/executions"]["post"]["parameters"][0]["schema"];
        assert_eq!(names["enum"], serde_json::json!(["aJob", "bJob"]));
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            json["components"]["schemas"]["KickRequest"]["additionalProperties"],
            false
        );
    }
}
