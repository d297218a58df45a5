//! Redis for every domain: one connection type over a single node or a Cluster, built from
//! `[redis]` (plain or TLS), and the classification of Redis errors into transient (retry the
//! chunk) or not.
//!
//! - `cluster.rs`: [`ClusterConn`], the cluster connection that replaces itself when it stops
//!   answering (after a failover);
//! - `unreachable.rs`: [`RedisUnreachable`], what failed when connecting, in words.

mod cluster;
mod unreachable;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

pub use cluster::ClusterConn;
pub use unreachable::RedisUnreachable;

use crate::config::RedisSettings;
use crate::error::Transient;

/// A Redis connection: a reconnecting single-node connection or a cluster connection. Both are
/// multiplexed and cheap to clone; commands from clones are pipelined on the same sockets.
#[derive(Clone)]
pub enum RedisConn {
    /// A single node (`[redis] url`).
    Single(ConnectionManager),
    /// A Redis Cluster (`[redis] cluster_nodes`).
    Cluster(ClusterConn),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    /// True for a cluster connection (scripts must then touch keys of one slot per call).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis error in an `anyhow` chain, printed once. The redis crate's `Display` of an I/O,
/// parse or server error already shows the inner error, which it also returns as `source()`, so
/// `{:#}` printed it twice ("Connection refused (os error 111): Connection refused (os error
/// 111)"); this drops a source whose text the message already holds.
#[derive(Debug)]
pub struct RedisCommandError(pub RedisError);

impl std::fmt::Display for RedisCommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for RedisCommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let inner = std::error::Error::source(&self.0)?;
        if self.0.to_string().contains(&inner.to_string()) {
            inner.source()
        } else {
            Some(inner)
        }
    }
}

/// The TLS set-up of `urls`: whether they ask for TLS (`rediss://`) and whether verification is
/// off (`#insecure` at the end, redis-rs's convention). A cluster's nodes must agree.
fn tls_of(urls: &[&crate::RedactedUrl]) -> Result<(bool, bool), RedisError> {
    let tls = urls.iter().any(|u| u.expose().scheme() == "rediss");
    let insecure: Vec<bool> = urls
        .iter()
        .map(|u| u.expose().fragment() == Some("insecure"))
        .collect();
    if insecure.contains(&true) && insecure.contains(&false) {
        return Err((
            ErrorKind::InvalidClientConfig,
            "some nodes end in #insecure and some do not; write it on every node or none",
        )
            .into());
    }
    Ok((tls, tls && insecure.contains(&true)))
}

/// The CA certificates of `[redis] ca_file` for the client (`None`: the system's trust store).
fn root_certificates(
    settings: &RedisSettings,
) -> Result<Option<redis::TlsCertificates>, RedisError> {
    let Some(path) = &settings.ca_file else {
        return Ok(None);
    };
    // Checked when the settings were loaded; read again here, the file may have changed since.
    core_domain::tls::read_ca_file(path)
        .map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "[redis] ca_file", e)))?;
    let pem = std::fs::read(path).map_err(|e| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "[redis] ca_file",
            format!("cannot read `{}`: {e}", path.display()),
        ))
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// Warns, once per process, that the servers' certificates are not verified.
fn warn_insecure(target: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target_url = %target,
            "Redis TLS certificate verification is OFF (#insecure in the URL): the connection is encrypted but the server is not authenticated; [redis] ca_file is not used. Only for tests"
        );
    }
}

/// Connects as configured: the cluster client if `cluster_nodes` is set, else the single node;
/// over TLS for `rediss://` URLs, verifying the servers' certificates and host names against
/// `ca_file` (or the system's trust store) unless the URLs end in `#insecure`. Fails fast (one
/// short retry) with [`RedisUnreachable`] if nothing answers a `PING`; its message says whether
/// the host, the certificate or its name failed.
pub async fn connect(settings: &RedisSettings) -> Result<RedisConn, RedisUnreachable> {
    core_domain::tls::install_crypto_provider();
    if settings.cluster_nodes.is_empty() {
        let target = settings.url.to_string();
        let (tls, insecure) = tls_of(&[&settings.url]).unwrap_or((false, false));
        let unreachable = |cause| RedisUnreachable {
            target: target.clone(),
            cause,
            tls,
        };
        let url = settings.url.expose().as_str();
        let client = if tls && !insecure {
            match root_certificates(settings).map_err(unreachable)? {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            }
        } else {
            redis::Client::open(url)
        }
        .map_err(unreachable)?;
        if insecure {
            warn_insecure(&target);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unreachable)?;
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unreachable)?;
        Ok(RedisConn::Single(conn))
    } else {
        let target = settings
            .cluster_nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let nodes: Vec<&crate::RedactedUrl> = settings.cluster_nodes.iter().collect();
        let tls = nodes.iter().any(|u| u.expose().scheme() == "rediss");
        let unreachable = |cause| RedisUnreachable {
            target: format!("cluster {target}"),
            cause,
            tls,
        };
        let (tls, insecure) = tls_of(&nodes).map_err(unreachable)?;
        let urls: Vec<String> = nodes.iter().map(|u| u.expose().to_string()).collect();
        let mut builder = redis::cluster::ClusterClient::builder(urls)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.response_timeout)
            .retries(2);
        if tls
            && !insecure
            && let Some(certs) = root_certificates(settings).map_err(unreachable)?
        {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(unreachable)?;
        if insecure {
            warn_insecure(&target);
        }
        let conn = client.get_async_connection().await.map_err(unreachable)?;
        let mut conn = RedisConn::Cluster(ClusterConn::new(
            client,
            conn,
            settings.connect_timeout + settings.response_timeout,
        ));
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unreachable)?;
        Ok(conn)
    }
}

/// The key of the one node in the identity of a single-node connection.
pub const SINGLE_NODE: &str = "node";

/// `serve`'s health check of the Redis in `[redis]`: PING over a connection kept between
/// checks (a new one after a failure), within `connect_timeout + response_timeout`. A domain
/// whose jobs use Redis registers it in its module's `health_checks`.
pub struct RedisHealth {
    settings: RedisSettings,
    conn: tokio::sync::Mutex<Option<RedisConn>>,
}

impl std::fmt::Debug for RedisHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHealth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisHealth {
    /// The check of the Redis `settings` point at.
    pub fn new(settings: RedisSettings) -> Self {
        RedisHealth {
            settings,
            conn: tokio::sync::Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl crate::module::HealthCheck for RedisHealth {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), String> {
        let deadline = self.settings.connect_timeout + self.settings.response_timeout;
        let check = async {
            let mut slot = self.conn.lock().await;
            if slot.is_none() {
                *slot = Some(connect(&self.settings).await.map_err(|e| e.to_string())?);
            }
            let conn = slot.as_mut().expect("just set");
            let pong: Result<String, _> = redis::cmd("PING").query_async(conn).await;
            match pong {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Reconnect next time.
                    *slot = None;
                    Err(e.to_string())
                }
            }
        };
        tokio::time::timeout(deadline, check)
            .await
            .map_err(|_| format!("no answer within {deadline:?}"))?
    }
}

/// The identity of the server(s) behind `conn`: every master's address and its `run_id` (from
/// `INFO server`; the address is [`SINGLE_NODE`] on a single-node connection). A `run_id` is
/// random per server process, so it changes when a server restarts (an empty dataset when it
/// has no persistence) and differs on another server (a promoted replica, a failover behind one
/// address). A server that reports no `run_id` (some Redis-compatible servers) maps to `""`.
/// On a cluster the `INFO` goes to every master concurrently; a node's error fails the call.
pub async fn server_identity(
    conn: &mut RedisConn,
) -> Result<std::collections::BTreeMap<String, String>, RedisError> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server");
    let mut identity = std::collections::BTreeMap::new();
    match conn {
        RedisConn::Single(c) => {
            let info: String = cmd.query_async(c).await?;
            identity.insert(SINGLE_NODE.to_owned(), run_id_of(&info).to_owned());
        }
        RedisConn::Cluster(c) => {
            use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
            let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            // Without a response policy the reply maps each master's address to its answer.
            let reply = c.route_command(cmd, routing).await?;
            let Value::Map(nodes) = reply else {
                return Err((
                    ErrorKind::UnexpectedReturnType,
                    "INFO to all masters",
                    format!("expected a map of node to reply, got {reply:?}"),
                )
                    .into());
            };
            for (addr, info) in nodes {
                let addr: String = redis::from_redis_value(addr.extract_error()?)?;
                let info: String = redis::from_redis_value(info.extract_error()?)?;
                identity.insert(addr, run_id_of(&info).to_owned());
            }
        }
    }
    Ok(identity)
}

/// The `run_id` field of an `INFO server` reply (`""` if it has none).
pub fn run_id_of(info: &str) -> &str {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map_or("", str::trim)
}

/// True for Redis errors a retry may cure — what servers send while they restart or fail over:
/// I/O errors (reset, refused, timeout, dropped — the first command after a reconnect included),
/// `LOADING` (a restarted server reading its data), `READONLY` (the node written to was demoted
/// to a replica; its address will point at a master again), `MASTERDOWN` (a replica that lost
/// its master), `TRYAGAIN` (a slot migrating), `CLUSTERDOWN`, a cluster redirection the client
/// gave up following (`MOVED`, `ASK`: the topology changed; the cluster connection renews
/// itself) and no cluster connection for a slot.
pub fn is_transient_redis(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

/// Converts a Redis error for the runtime: transient ones are wrapped in [`Transient`] so the
/// chunk is retried.
pub fn classify(e: RedisError) -> anyhow::Error {
    if is_transient_redis(&e) {
        Transient::new(RedisCommandError(e)).into()
    } else {
        RedisCommandError(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(is_transient_redis(&io));
        assert!(crate::is_transient(&classify(io)));
        let typ: RedisError = (ErrorKind::UnexpectedReturnType, "bad").into();
        assert!(!is_transient_redis(&typ));
        assert!(!crate::is_transient(&classify(typ)));
    }

    #[test]
    fn run_id_is_read_from_info_server() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\nrun_id:73a3ecf8622ebc0e\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info), "73a3ecf8622ebc0e");
        assert_eq!(run_id_of("# Server\r\nredis_version:7.0.15\r\n"), "");
    }

    #[tokio::test]
    async fn unreachable_redis_says_where_it_looked() {
        let mut settings = crate::config::BatchProperties::load_from(None, Vec::new(), &[])
            .unwrap()
            .redis;
        settings.url = crate::RedactedUrl::parse("redis://:pw@127.0.0.1:1", &["redis"]).unwrap();
        settings.connect_timeout = Duration::from_millis(300);
        let err = connect(&settings).await.unwrap_err().to_string();
        assert!(err.contains("redis://:***@127.0.0.1:1"), "{err}");
        assert!(err.contains("BATCH__REDIS__URL"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
        // The cause is printed once, also as a chain.
        let err = anyhow::Error::new(connect(&settings).await.unwrap_err());
        let shown = format!("{err:#}");
        assert_eq!(shown.matches("refused").count(), 1, "{shown}");
    }

    fn settings(url: &str) -> RedisSettings {
        let mut settings = crate::config::BatchProperties::load_from(None, Vec::new(), &[])
            .unwrap()
            .redis;
        settings.url = crate::RedactedUrl::parse(url, &["redis", "rediss"]).unwrap();
        settings.connect_timeout = Duration::from_millis(1500);
        settings.response_timeout = Duration::from_millis(1500);
        settings
    }

    #[tokio::test]
    async fn a_plain_url_to_a_tls_only_server_says_to_write_rediss() {
        // What a TLS-only Redis port does with a plain client: reads, finds no TLS, hangs up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt as _;
                    let mut buf = [0_u8; 64];
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let err = connect(&settings(&format!("redis://127.0.0.1:{port}")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("write rediss://"), "{err}");
    }

    #[tokio::test]
    async fn a_tls_url_to_a_plain_server_says_it_may_not_speak_tls() {
        // The local Redis (scripts/services.sh) speaks no TLS.
        let url = local_redis_url();
        let err = connect(&settings(&url.replace("redis://", "rediss://")))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not speak TLS (then write redis://)"),
            "{err}"
        );
        assert!(!err.contains("certificate"), "{err}");
    }

    /// The local Redis's URL (the tests' default).
    fn local_redis_url() -> String {
        std::env::var("BATCH_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    #[tokio::test]
    async fn cluster_nodes_must_agree_on_insecure() {
        let mut s = settings("redis://127.0.0.1:1");
        s.cluster_nodes = ["rediss://127.0.0.1:1/#insecure", "rediss://127.0.0.1:2"]
            .iter()
            .map(|u| crate::RedactedUrl::parse(u, &["rediss"]).unwrap())
            .collect();
        let err = connect(&s).await.unwrap_err().to_string();
        assert!(
            err.contains("#insecure") && err.contains("every node or none"),
            "{err}"
        );
    }

    #[test]
    fn a_classified_error_prints_its_cause_once() {
        let refused: RedisError =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        let shown = format!("{:#}", classify(refused).context("writing chunk 3"));
        assert_eq!(shown.matches("refused").count(), 1, "{shown}");
        let server: RedisError =
            (ErrorKind::UnexpectedReturnType, "bad", "detail".to_owned()).into();
        let shown = format!("{:#}", classify(server));
        assert_eq!(shown.matches("detail").count(), 1, "{shown}");
    }
}
