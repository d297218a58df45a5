//! The web dashboard of `serve`, under `/ui`, on the API's address: server-rendered HTML with
//! a little JavaScript, everything embedded in the binary.
//!
//! | route | page |
//! |---|---|
//! | `GET /` | 303 to `/ui` |
//! | `GET /ui` | every registered job: schedule (cron, time zone, next fire time), last outcome, a chart of its last runs, a run-now form |
//! | `GET /ui/executions?job=&status=&from=&to=&page=` | executions, filtered and paged |
//! | `GET /ui/executions/{id}` | parameters, timings, steps with counts and counters, partitions, the operator buttons |
//! | `GET /ui/executions/{id}/failures?after=` | its item failures, paged |
//! | `GET`, `POST /ui/login`; `POST /ui/logout` | sign in with the server token, sign out |
//! | `POST /ui/executions/{id}/stop`, `/restart`, `/abandon`; `POST /ui/jobs/{name}/run` | the operator verbs and a run |
//! | `GET /ui/assets/{file}` | the stylesheet and the script |
//!
//! Sign-in and its protections: [`auth`]. Without a session a page redirects (303) to
//! `/ui/login` and a POST is refused (403).

mod actions;
mod auth;
mod chart;
mod execution;
mod html;
mod pages;

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::service::Service;

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// The dashboard's routes, to merge into the API's router.
pub(super) fn routes() -> Router<Arc<Service>> {
    let sessions = Arc::new(auth::Sessions::new(auth::SESSION_TTL));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(pages::jobs))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(auth::login_form).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route("/ui/executions", get(pages::executions))
        .route("/ui/executions/{id}", get(execution::execution))
        .route("/ui/executions/{id}/failures", get(execution::failures))
        .route("/ui/executions/{id}/stop", post(actions::stop))
        .route("/ui/executions/{id}/restart", post(actions::restart))
        .route("/ui/executions/{id}/abandon", post(actions::abandon))
        .route("/ui/jobs/{name}/run", post(actions::run))
        .route("/ui/assets/{file}", get(asset))
        .layer(Extension(sessions))
}

/// `GET /ui/assets/{file}`: the embedded stylesheet and script (no session needed: the sign-in
/// page uses them).
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => {
            return html::message_page(StatusCode::NOT_FOUND, "Not found", "no such asset");
        }
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
