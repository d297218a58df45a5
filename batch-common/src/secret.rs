//! Values that must never be printed: they redact themselves in `Debug` and `Display`.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret (password, token, webhook URL). `Debug` and `Display` print `[REDACTED]`; the value is
/// reachable only through [`Secret::expose`], which makes every use easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The wrapped value. Never log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(Secret(s))
    }
}

impl<'de> Deserialize<'de> for Secret<url::Url> {
    /// Parses a URL without ever echoing it in the error (the whole URL may be the secret).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let url = url::Url::parse(s.trim()).map_err(|e| {
            serde::de::Error::custom(format_args!("invalid URL ({e}); the value is not shown"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(serde::de::Error::custom(format_args!(
                "unsupported URL scheme `{}` (expected http or https); the value is not shown",
                url.scheme()
            )));
        }
        Ok(Secret(url))
    }
}

impl<T> serde::Serialize for Secret<T> {
    /// Serializes as `"[REDACTED]"`, so a dumped configuration never carries the secret.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[REDACTED]")
    }
}

/// A URL that may carry a password (e.g. `redis://:pw@host`). `Display`/`Debug` show `***`
/// instead of the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(url::Url);

impl RedactedUrl {
    /// Parses a URL, requiring one of `schemes`.
    pub fn parse(input: &str, schemes: &[&str]) -> Result<Self, String> {
        let url = url::Url::parse(input.trim())
            .map_err(|e| format!("invalid URL `{}`: {e}", core_domain::db::redact(input)))?;
        if !schemes.contains(&url.scheme()) {
            return Err(format!(
                "unsupported URL scheme `{}` in `{}` (expected {})",
                url.scheme(),
                core_domain::db::redact(input),
                schemes.join(" or ")
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "the host is missing in `{}`",
                core_domain::db::redact(input)
            ));
        }
        Ok(RedactedUrl(url))
    }

    /// The full URL, password included. Only for handing to a client; never log it.
    pub fn expose(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&core_domain::db::redact(self.0.as_str()))
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedUrl({self})")
    }
}

impl serde::Serialize for RedactedUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[REDACTED]\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redacted_url_hides_the_password_only() {
        let u = RedactedUrl::parse("redis://user:s3cret@cache.local:6380/2", &["redis"]).unwrap();
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("cache.local:6380"), "{shown}");
        assert_eq!(u.expose().password(), Some("s3cret"));
        let err = RedactedUrl::parse("http://user:s3cret@x", &["redis"]).unwrap_err();
        assert!(err.contains("`http`") && !err.contains("s3cret"), "{err}");
    }
}
