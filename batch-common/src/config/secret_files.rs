//! Secrets given as files, and passwords put into URLs, resolved on the merged configuration
//! tree before any section is deserialized.
//!
//! Container platforms hand secrets over as files (Kubernetes secret volumes, Docker secrets), so
//! every secret setting `section.key` — the runtime's [`RUNTIME_SECRET_KEYS`](super::RUNTIME_SECRET_KEYS)
//! and each module's [`SettingsSection::SECRET_KEYS`](super::SettingsSection::SECRET_KEYS) — may
//! also be given as `section.key_file` (`BATCH__SECTION__KEY_FILE`), a path whose content is the
//! value, like the official PostgreSQL image's `POSTGRES_PASSWORD_FILE`:
//! - one trailing newline (`\n` or `\r\n`) is trimmed, nothing else; an empty file, one that
//!   cannot be read, is not UTF-8 or is larger than [`MAX_SECRET_FILE`] is an error naming
//!   `section.key_file`, where it was set and the path, never the content;
//! - `key` and `key_file` both set (in the config file or the environment, the defaults do not
//!   count) is an error naming both;
//! - the content replaces `key` in the tree, so it goes through exactly the parsing and
//!   validation of a value given directly; an error about it names `key`, the `key_file` that
//!   set it and the path.
//!
//! Secret values set by environment variables are kept as the text written (the environment
//! layer would read `0123` as the number 123).
//!
//! Then `database.password` is put into `database.url`'s password, and `redis.password` into
//! `redis.url`'s and every `redis.cluster_nodes` URL's, percent-encoded ([`with_password`]).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use config::{Value, ValueKind};

use super::check::{ConfigError, Origins, SecretFile, env_name};
use crate::secret::Secret;

/// The largest secret file read: a secret file holds one value.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// What resolving found: where secrets were read from (by dotted key), and the secret values
/// an error message must never show.
#[derive(Default)]
pub(crate) struct Resolved {
    pub(crate) read_from: BTreeMap<String, SecretFile>,
    pub(crate) hidden: Vec<Secret<String>>,
}

/// Resolves every `<secret>_file` key of `top` (sections by name). `secret_keys` are dotted (`section.key`); `env` holds the `BATCH__*` variables.
pub(crate) fn resolve(
    top: &mut BTreeMap<String, Value>,
    secret_keys: &[&str],
    origins: &Origins<'_>,
    env: &config::Map<String, String>,
) -> Result<Resolved, ConfigError> {
    let mut resolved = Resolved::default();
    for full in secret_keys {
        let Some((section, key)) = full.split_once('.') else {
            continue;
        };
        let Some(Value {
            kind: ValueKind::Table(table),
            ..
        }) = top.get_mut(section)
        else {
            continue;
        };
        // A secret is text: keep what the variable says, not what the env layer parsed it as.
        let var = env_name(full);
        if let Some((_, raw)) = env.iter().find(|(k, _)| k.eq_ignore_ascii_case(&var)) {
            table.insert(key.to_owned(), text(raw.clone()));
        }
        let file_key = format!("{key}_file");
        let Some(path) = table.remove(&file_key) else {
            continue;
        };
        let full_file = format!("{full}_file");
        match (origins.origin(&full_file), origins.origin(full)) {
            (Some(_), Some(direct)) => {
                return Err(origins.invalid(
                    &full_file,
                    format!(
                        "`{full}` is set too ({direct}); give the secret either directly or as a file, not both"
                    ),
                ));
            }
            // A value set explicitly wins over a file named only by the defaults.
            (None, Some(_)) => continue,
            _ => {}
        }
        let path = match path.into_string() {
            Ok(p) if !p.trim().is_empty() => PathBuf::from(p),
            _ => {
                return Err(
                    origins.invalid(&full_file, "expected the path of a file holding the secret")
                );
            }
        };
        let value = read_secret(&path).map_err(|m| origins.invalid(&full_file, m))?;
        table.insert(key.to_owned(), text(value.clone()));
        resolved.hidden.push(Secret::new(value));
        resolved.read_from.insert(
            (*full).to_owned(),
            SecretFile {
                file_key: full_file,
                path,
            },
        );
    }
    Ok(resolved)
}

/// Puts `database.password` into `database.url`, and `redis.password` into `redis.url` and
/// every `redis.cluster_nodes` URL (after [`resolve`], so `origins` knows the files); the
/// passwords join `hidden`.
pub(crate) fn apply_passwords(
    top: &mut BTreeMap<String, Value>,
    origins: &Origins<'_>,
    hidden: &mut Vec<Secret<String>>,
) -> Result<(), ConfigError> {
    apply_password(top, "database", &["url"], origins, hidden)?;
    apply_password(top, "redis", &["url", "cluster_nodes"], origins, hidden)
}

fn text(s: String) -> Value {
    Value::new(None, ValueKind::String(s))
}

/// The secret in the file at `path`: its content less one trailing `\n` or `\r\n`. The error
/// names the path and why, never the content.
pub(crate) fn read_secret(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "`{shown}` is larger than {} KiB; a secret file holds one value",
            MAX_SECRET_FILE / 1024
        ));
    }
    let Ok(content) = String::from_utf8(bytes) else {
        return Err(format!("`{shown}` is not UTF-8 text"));
    };
    let value = content
        .strip_suffix("\r\n")
        .or_else(|| content.strip_suffix('\n'))
        .unwrap_or(&content);
    if value.is_empty() {
        return Err(format!("`{shown}` is empty"));
    }
    Ok(value.to_owned())
}

/// Puts `section.password` into the URLs of `url_keys` (a string, or a list of them).
fn apply_password(
    top: &mut BTreeMap<String, Value>,
    section: &str,
    url_keys: &[&str],
    origins: &Origins<'_>,
    hidden: &mut Vec<Secret<String>>,
) -> Result<(), ConfigError> {
    let Some(Value {
        kind: ValueKind::Table(table),
        ..
    }) = top.get_mut(section)
    else {
        return Ok(());
    };
    // Not text, or empty: left to the section's own check, which rejects it.
    let Some(password) = table
        .get("password")
        .and_then(|v| v.clone().into_string().ok())
        .filter(|p| !p.is_empty())
    else {
        return Ok(());
    };
    let password_key = format!("{section}.password");
    let encoded = encode_userinfo(&password);
    for url_key in url_keys {
        let Some(value) = table.get_mut(*url_key) else {
            continue;
        };
        // `cluster_nodes` is a list: its URLs are named by index.
        let list = matches!(value.kind, ValueKind::Array(_));
        let urls: Vec<&mut Value> = if list {
            match &mut value.kind {
                ValueKind::Array(items) => items.iter_mut().collect(),
                _ => Vec::new(),
            }
        } else {
            vec![value]
        };
        for (i, value) in urls.into_iter().enumerate() {
            let Ok(url) = value.clone().into_string() else {
                continue;
            };
            if url.trim().is_empty() {
                continue;
            }
            let named = if list {
                format!("{section}.{url_key}[{i}]")
            } else {
                format!("{section}.{url_key}")
            };
            let scheme = url
                .split_once(':')
                .map(|(s, _)| s.trim().to_ascii_lowercase());
            if scheme.as_deref() == Some("sqlite") {
                return Err(origins.invalid(
                    &password_key,
                    format!("is set, but `{named}` is a sqlite:// URL, which takes no password"),
                ));
            }
            match with_password(&url, &password) {
                Ok(Some(with)) => *value = text(with),
                // Not URL-shaped: the URL's own check rejects it, as without a password.
                Ok(None) => {}
                Err(AlreadyHasPassword) => {
                    return Err(origins.invalid(
                        &password_key,
                        format!(
                            "is set, but `{named}` already holds a password; give it in one place"
                        ),
                    ));
                }
            }
        }
    }
    hidden.push(Secret::new(password));
    hidden.push(Secret::new(encoded));
    Ok(())
}

/// The URL already holds a password (`user:pw@`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AlreadyHasPassword;

/// `url` with `password` as its password, percent-encoded (everything but `A-Z a-z 0-9 - . _ ~`),
/// the rest of the URL byte for byte as written: `postgres://app@db/x` + `p@ss` →
/// `postgres://app:p%40ss@db/x`. `Ok(None)` when `url` is not `scheme://…`.
pub(crate) fn with_password(
    url: &str,
    password: &str,
) -> Result<Option<String>, AlreadyHasPassword> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = match authority.rfind('@') {
        Some(at) => (&authority[..at], &authority[at + 1..]),
        None => ("", authority),
    };
    if user.contains(':') {
        return Err(AlreadyHasPassword);
    }
    Ok(Some(format!(
        "{scheme}://{user}:{}@{host}{tail}",
        encode_userinfo(password)
    )))
}

/// Percent-encodes every byte but the unreserved characters of RFC 3986.
fn encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
