//! Field (de)serializers shared by every settings section, the runtime's and the domains':
//! durations written like `30s`, time zones, URLs checked for their scheme (and redacted).

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serializer};

use crate::secret::RedactedUrl;

/// A duration written like `500ms`, `30s`, `5m`, `48h`, `1h30m`:
/// `#[serde(with = "batch_common::config::de::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `500ms`, `30s`, `5m`, `48h`, `1h30m`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "invalid duration `{s}` ({e}); write it like 500ms, 30s, 5m, 48h"
            ))
        })
    }

    /// Writes the duration as `deserialize` reads it.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// A duration greater than zero.
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = duration::deserialize(d)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom("must be greater than 0"));
    }
    Ok(value)
}

/// Serializes a value by its `Display` form.
pub fn ser_display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An IANA time zone name.
pub fn time_zone<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse::<Tz>().map_err(|_| {
        serde::de::Error::custom(format_args!(
            "unknown time zone `{s}` (expected an IANA name such as Asia/Seoul or UTC)"
        ))
    })
}

/// A `redis://` or `rediss://` URL.
pub fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<RedactedUrl, D::Error> {
    let s = String::deserialize(d)?;
    RedactedUrl::parse(&s, &["redis", "rediss"]).map_err(serde::de::Error::custom)
}

/// A list of `redis://` / `rediss://` URLs (empty entries ignored).
pub fn redis_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RedactedUrl>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| RedactedUrl::parse(s, &["redis", "rediss"]).map_err(serde::de::Error::custom))
        .collect()
}

/// An `http://` or `https://` URL.
pub fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<RedactedUrl, D::Error> {
    let s = String::deserialize(d)?;
    RedactedUrl::parse(&s, &["http", "https"]).map_err(serde::de::Error::custom)
}
