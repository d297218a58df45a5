//! Signing in: the server token, typed once into the sign-in form, is exchanged for a session —
//! a random id in an `HttpOnly; SameSite=Strict` cookie that expires, kept in memory with its
//! expiry and its CSRF token. Every form that changes state carries that CSRF token in a hidden
//! field, and a request whose `Origin` names another host is refused. The token never appears in
//! a URL or a log line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::html::{Esc, Nav, Refused, html, layout, message_page};
use crate::serve::service::Service;

/// The session cookie's name.
pub(super) const COOKIE: &str = "batch_session";

/// How long a session lasts after sign-in.
pub(super) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Wrong tokens accepted per [`FAILURE_WINDOW`] before sign-in answers 429 until the window
/// has passed: guessing the token through the form is slowed to this rate (the bearer API is
/// not affected).
pub(super) const MAX_FAILURES: usize = 10;

/// The window of [`MAX_FAILURES`].
pub(super) const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The signed-in sessions of this process (lost on restart: everyone signs in again).
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    /// By the SHA-256 of the session id.
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// When the recent wrong tokens were sent (at most [`MAX_FAILURES`], oldest first).
    failures: Mutex<std::collections::VecDeque<DateTime<Utc>>>,
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires_at: DateTime<Utc>,
}

impl Sessions {
    /// No sessions; each lasts `ttl`.
    pub(super) fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Seconds until sign-in is accepted again, if [`MAX_FAILURES`] wrong tokens came within
    /// the last [`FAILURE_WINDOW`] before `now`.
    fn throttled(&self, now: DateTime<Utc>) -> Option<u64> {
        let window = chrono::Duration::from_std(FAILURE_WINDOW).unwrap_or_default();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        while failures.front().is_some_and(|t| *t + window <= now) {
            failures.pop_front();
        }
        (failures.len() >= MAX_FAILURES).then(|| {
            let oldest = failures.front().copied().unwrap_or(now);
            ((oldest + window - now).num_seconds()).max(1) as u64
        })
    }

    /// Records a wrong token at `now`.
    fn failed(&self, now: DateTime<Utc>) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.push_back(now);
        while failures.len() > MAX_FAILURES {
            failures.pop_front();
        }
    }

    /// A new session from `now`: its id (for the cookie).
    fn create(&self, now: DateTime<Utc>) -> std::io::Result<String> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let expires_at = now + chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|_, s| s.expires_at > now);
        live.insert(digest(&id), Session { csrf, expires_at });
        Ok(id)
    }

    /// The CSRF token of session `id` if it exists and has not expired at `now`.
    fn find(&self, id: &str, now: DateTime<Utc>) -> Option<String> {
        let key = digest(id);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(&key) {
            Some(s) if s.expires_at > now => Some(s.csrf.clone()),
            Some(_) => {
                live.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remove(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.remove(&digest(id));
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// 32 random bytes from the operating system, as hex.
fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The session cookie of a request.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// A request of a signed-in operator: the session's CSRF token, which its pages put into every
/// form. Without a session a page is answered with a redirect (303) to the sign-in page, a POST
/// with 403.
#[derive(Debug)]
pub(super) struct SignedIn {
    /// The session's CSRF token.
    pub(super) csrf: String,
}

impl FromRequestParts<Arc<Service>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let sessions = parts.extensions.get::<Arc<Sessions>>();
        let csrf = sessions.and_then(|s| {
            session_cookie(&parts.headers).and_then(|id| s.find(id, service.clock.now()))
        });
        match csrf {
            Some(csrf) => Ok(SignedIn { csrf }),
            None if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(Redirect::to("/ui/login").into_response())
            }
            None => Err(message_page(
                StatusCode::FORBIDDEN,
                "Not signed in",
                "This action needs a session: sign in first.",
            )),
        }
    }
}

/// The fields of a form body (`application/x-www-form-urlencoded`).
#[derive(Debug, Default)]
pub(super) struct Form(pub(super) Vec<(String, String)>);

impl Form {
    /// The first value of `name`.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a form body; anything but `application/x-www-form-urlencoded` is 415.
pub(super) fn read_form(headers: &HeaderMap, body: &[u8]) -> Result<Form, Refused> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = kind.split(';').next().unwrap_or("").trim();
    if !body.is_empty() && !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Refused::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported form",
            "Forms are sent as application/x-www-form-urlencoded.",
        ));
    }
    Ok(Form(
        url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

/// A request that changes state must come from the dashboard's own pages: an `Origin` header,
/// when there is one, must name this server's host (`Host`), and `Sec-Fetch-Site`, when there is
/// one, must not be `cross-site`.
pub(super) fn check_origin(headers: &HeaderMap) -> Result<(), Refused> {
    let refuse = |why: &str| {
        Err(Refused::new(
            StatusCode::FORBIDDEN,
            "Refused",
            format!("{why}: a cross-site request is not accepted."),
        ))
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        });
        match (origin_host, host) {
            (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => {}
            _ => return refuse("the request's Origin is not this server"),
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return refuse("the request comes from another site");
    }
    Ok(())
}

/// The checks of every state-changing request of a signed-in operator: its origin, then the
/// CSRF token of its form against the session's. Returns the form.
pub(super) fn check_post(
    session: &SignedIn,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Form, Refused> {
    check_origin(headers)?;
    let form = read_form(headers, body)?;
    let given = form.get("csrf").unwrap_or("");
    if given.is_empty() || digest(given) != digest(&session.csrf) {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or does not match this session; reload the page and try again.",
        ));
    }
    Ok(form)
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", Esc(e))
    });
    let body = format!(
        "<section class=\"login\"><h1>Sign in</h1>{error}\
<form method=\"post\" action=\"/ui/login\">\
<label for=\"token\">Server token (<code>server.token</code>)</label>\
<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
<button type=\"submit\">Sign in</button></form></section>"
    );
    html(status, layout("Sign in", Nav::None, None, &body))
}

/// `GET /ui/login`.
pub(super) async fn login_form(
    State(service): State<Arc<Service>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
) -> Response {
    let signed_in = session_cookie(&headers)
        .and_then(|id| sessions.find(id, service.clock.now()))
        .is_some();
    if signed_in {
        return Redirect::to("/ui").into_response();
    }
    login_page(StatusCode::OK, None)
}

/// `POST /ui/login`: the token against `server.token` (compared as digests), then a new
/// session and its cookie.
pub(super) async fn login(
    State(service): State<Arc<Service>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match check_origin(&headers).and_then(|()| read_form(&headers, &body)) {
        Ok(f) => f,
        Err(refused) => return refused.into_response(),
    };
    let now = service.clock.now();
    if let Some(wait) = sessions.throttled(now) {
        tracing::warn!(
            retry_after_s = wait,
            "dashboard: sign-in refused (too many wrong tokens)"
        );
        let mut page = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many wrong tokens in the last minute. Try again in {wait} s."
            )),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            page.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return page;
    }
    let given = form.get("token").unwrap_or("").trim();
    let expected = service.props.server.token.as_ref();
    let ok =
        expected.is_some_and(|t| !given.is_empty() && digest(given) == digest(t.expose().trim()));
    if !ok {
        sessions.failed(now);
        tracing::warn!("dashboard: sign-in refused (wrong token)");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("Wrong token. Use the server's token (server.token)."),
        );
    }
    let id = match sessions.create(service.clock.now()) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "dashboard: no random bytes for a session");
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in failed",
                "The operating system gave no random bytes for a session.",
            );
        }
    };
    tracing::info!("dashboard: signed in");
    // Behind TLS (`[server] public_url` is https), the cookie travels only over TLS.
    let secure = service
        .props
        .server
        .public_url
        .as_ref()
        .is_some_and(|u| u.scheme() == "https");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `POST /ui/logout`: ends the session and clears its cookie.
pub(super) async fn logout(
    session: SignedIn,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = check_post(&session, &headers, &body) {
        return refused.into_response();
    }
    if let Some(id) = session_cookie(&headers) {
        sessions.remove(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("batch_session=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"),
    );
    response
}
