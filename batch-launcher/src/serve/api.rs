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
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use batch_common::ExitCode;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::operator_api;
use super::service::{KickOutcome, Service};
use crate::launch::LaunchFailure;
use crate::views::execution_view;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<LaunchFailure> for ApiError {
    fn from(e: LaunchFailure) -> Self {
        let (status, code) = match &e {
            LaunchFailure::UnknownJob { .. } => (StatusCode::NOT_FOUND, "unknown_job"),
            LaunchFailure::Parameters(_) => (StatusCode::BAD_REQUEST, "bad_parameters"),
            LaunchFailure::Setup { .. } => (StatusCode::SERVICE_UNAVAILABLE, "setup_failed"),
            LaunchFailure::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "database"),
            LaunchFailure::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The largest request body accepted (a kick's parameters are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A body the framework could not read: too large (413) or broken off.
pub(super) fn body_rejection(r: &BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else {
        ApiError::new(r.status(), "bad_body", r.body_text())
    }
}

pub(super) fn path_rejection(r: &PathRejection) -> ApiError {
    ApiError::new(r.status(), "bad_path", r.body_text())
}

pub(super) fn query_rejection(r: &QueryRejection) -> ApiError {
    ApiError::new(r.status(), "bad_query", r.body_text())
}

/// A state-changing request's body must be JSON: a declared `Content-Type` other than
/// `application/json` (parameters such as `charset=utf-8` allowed), or a non-empty body without
/// one, is refused with 415. A request without a body and without a type is fine.
pub(super) fn require_json(headers: &HeaderMap, body_is_empty: bool) -> Result<(), ApiError> {
    let unsupported = |what: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{what}; send the body as `Content-Type: application/json`"),
        )
    };
    match headers.get(header::CONTENT_TYPE) {
        None if body_is_empty => Ok(()),
        None => Err(unsupported(
            "the request has a body but no Content-Type".to_owned(),
        )),
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            let essence = text.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(unsupported(format!(
                    "Content-Type `{}` is not supported",
                    text.chars().take(100).collect::<String>()
                )))
            }
        }
    }
}

pub(super) fn db_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database",
        format!("the batch database failed: {e}"),
    )
}

/// Proof that the request carried the right bearer token.
#[derive(Debug)]
pub struct Authorized;

impl FromRequestParts<Arc<Service>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        check_token(&parts.headers, service)
            .map(|()| Authorized)
            .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why))
    }
}

/// `Ok` if the headers carry `Authorization: Bearer <server.token>`, else why not.
fn check_token(headers: &HeaderMap, service: &Service) -> Result<(), &'static str> {
    let Some(expected) = service.props().server.token.as_ref() else {
        return Err("no token is configured (server.token)");
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or("missing `Authorization: Bearer <token>` header")?;
    // Compare digests: equal length, and no early exit that times the prefix.
    if Sha256::digest(given.as_bytes()) == Sha256::digest(expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err("wrong bearer token")
    }
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickRequest {
    /// Job parameters, `name: value` (strings, numbers or booleans).
    #[serde(default)]
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

/// A request body that must be a JSON object of `T`'s shape (`expected` shows it): an empty
/// body is `T::default()`; anything else — an array, a string, a number, `null`, broken JSON,
/// an unknown field — is 400 naming what is wrong and where. (serde would read a struct from
/// a JSON array too: `[]` must not pass as `{}`.)
pub(super) fn parse_object<T: Default + for<'de> Deserialize<'de>>(
    body: &[u8],
    expected: &str,
) -> Result<T, ApiError> {
    let bad = |what: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("request body{what} (expected {expected})"),
        )
    };
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(T::default());
    };
    if *first != b'{' {
        let kind = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(_)) => "an array",
            Ok(serde_json::Value::String(_)) => "a string",
            Ok(serde_json::Value::Number(_)) => "a number",
            Ok(serde_json::Value::Bool(_)) => "a boolean",
            Ok(serde_json::Value::Null) => "null",
            _ => "not JSON",
        };
        return Err(bad(format!(": must be a JSON object, got {kind}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // A syntax error has no field path (serde_path_to_error says `?`); serde_json's message
        // already gives the line and column.
        let at = if path == "." || path == "?" || !e.inner().is_data() {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        bad(format!("{at}: {}", e.inner()))
    })?;
    Ok(value)
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
    match service.kick(&name, given, request.rerun).await? {
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

async fn execution(
    _auth: Authorized,
    State(service): State<Arc<Service>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|r| path_rejection(&r))?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("execution id `{id}` is not a number"),
        )
    })?;
    let repo = service.repository();
    let Some(e) = repo.execution(id).await.map_err(db_error)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_execution",
            format!("execution {id} does not exist"),
        ));
    };
    let Some(i) = repo.instance(e.job_instance_id).await.map_err(db_error)? else {
        return Err(db_error(format!(
            "execution {id} has no instance {}",
            e.job_instance_id
        )));
    };
    let view = execution_view(repo, &e, &i).await.map_err(db_error)?;
    Ok(axum::Json(view).into_response())
}

/// Default and maximum of `?limit=`.
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 1000;

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

async fn metrics(_auth: Authorized, State(service): State<Arc<Service>>) -> Response {
    let text = service.render_metrics().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    (StatusCode::OK, headers, text).into_response()
}
