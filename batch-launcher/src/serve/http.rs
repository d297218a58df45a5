//! What every route of the API shares: the JSON error answer, the bearer-token check, and the
//! readers of bodies, paths and queries that turn a malformed request into a 4xx in that format.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::service::Service;
use crate::launch::LaunchFailure;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An answer with `status`, the error `code` and a message saying what and why.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
pub(super) fn check_token(headers: &HeaderMap, service: &Service) -> Result<(), &'static str> {
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

/// The `{id}` of an execution route.
pub(super) fn execution_id(id: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = id.map_err(|r| path_rejection(&r))?;
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("execution id `{id}` is not a number"),
        )
    })
}
