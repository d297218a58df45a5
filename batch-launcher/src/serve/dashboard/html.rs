//! The pieces every page is made of: HTML escaping, the page layout, the answer's headers, and
//! how times and durations are shown.

use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Tz;

/// A value written into HTML text or a quoted attribute: `&`, `<`, `>`, `"` and `'` escaped.
/// Every value a page shows goes through it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Esc<'a>(pub(super) &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// `value` percent-encoded for a query string.
pub(super) fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Where the page is, for the navigation's highlight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    /// The jobs page.
    Jobs,
    /// The executions list and an execution's pages.
    Executions,
    /// Signed out (the sign-in page): no navigation.
    None,
}

/// A whole page: `title`, the navigation (with the sign-out form, which needs the session's
/// `csrf` token), and `body` (already HTML).
pub(super) fn layout(title: &str, nav: Nav, csrf: Option<&str>, body: &str) -> String {
    let link = |href: &str, label: &str, here: bool| {
        format!(
            "<a href=\"{href}\"{}>{label}</a>",
            if here { " aria-current=\"page\"" } else { "" }
        )
    };
    let menu = if nav == Nav::None {
        String::new()
    } else {
        let signout = csrf.map_or_else(String::new, |c| {
            format!(
                "<form method=\"post\" action=\"/ui/logout\" class=\"signout\">{}<button type=\"submit\">Sign out</button></form>",
                csrf_field(c)
            )
        });
        format!(
            "<nav>{}{}</nav>{signout}",
            link("/ui", "Jobs", nav == Nav::Jobs),
            link("/ui/executions", "Executions", nav == Nav::Executions),
        )
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · batch</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\">\
<script src=\"/ui/assets/app.js\" defer></script></head>\
<body><header><a class=\"brand\" href=\"/ui\">batch</a>{menu}</header>\
<main>{body}</main></body></html>\n",
        Esc(title)
    )
}

/// The hidden field that carries the session's CSRF token in every form that changes state.
pub(super) fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        Esc(csrf)
    )
}

/// An HTML answer with `status`: never cached, never framed, scripts and styles only from the
/// dashboard itself.
pub(super) fn html(status: StatusCode, page: String) -> Response {
    let mut response = (status, page).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A page that only says what went wrong, with `status`.
pub(super) fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/ui\">Jobs</a> · <a href=\"/ui/executions\">Executions</a></p>",
        Esc(title),
        Esc(message)
    );
    html(status, layout(title, Nav::Executions, None, &body))
}

/// A request refused before anything was done: answered with [`message_page`].
#[derive(Debug)]
pub(super) struct Refused {
    /// The answer's status.
    pub(super) status: StatusCode,
    /// The page's title.
    pub(super) title: &'static str,
    /// What and why.
    pub(super) message: String,
}

impl Refused {
    /// A refusal with `status`, `title` and `message`.
    pub(super) fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Refused {
            status,
            title,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        message_page(self.status, self.title, &self.message)
    }
}

/// A stored UTC time shown in the business time zone.
pub(super) fn local(t: NaiveDateTime, tz: Tz) -> String {
    Utc.from_utc_datetime(&t)
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// An optional stored time, `—` when absent.
pub(super) fn local_opt(t: Option<NaiveDateTime>, tz: Tz) -> String {
    t.map_or_else(|| "—".to_owned(), |t| local(t, tz))
}

/// Seconds as `850 ms`, `12.3 s`, `4 min 05 s` or `2 h 03 min`.
pub(super) fn duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let s = secs.round() as i64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as i64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// Seconds between two stored times.
pub(super) fn seconds(from: NaiveDateTime, to: NaiveDateTime) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// A status as a badge (its class colours it).
pub(super) fn badge(status: &str) -> String {
    format!(
        "<span class=\"badge s-{}\">{}</span>",
        Esc(&status.to_ascii_lowercase()),
        Esc(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            Esc("<script>alert('x&y')</script>\"").to_string(),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(duration(7380.0), "2 h 03 min");
    }
}
