//! Redis for every domain: one connection type over a single node or a Cluster, built from
//! `[redis]`, and the classification of Redis errors into transient (retry the chunk) or not.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use crate::config::RedisSettings;
use crate::error::Transient;

/// A Redis connection: a reconnecting single-node connection or a cluster connection. Both are
/// multiplexed and cheap to clone; commands from clones are pipelined on the same sockets.
#[derive(Clone)]
pub enum RedisConn {
    /// A single node (`[redis] url`).
    Single(ConnectionManager),
    /// A Redis Cluster (`[redis] cluster_nodes`).
    Cluster(ClusterConnection),
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

/// Redis could not be reached; the message says where the launcher looked and how to change it.
#[derive(Debug, thiserror::Error)]
#[error("{}", unreachable_message(target, cause))]
pub struct RedisUnreachable {
    /// Where the launcher looked (passwords redacted).
    pub target: String,
    /// The client's error (in the message, not chained, so it is printed once; a field named
    /// `source` would be chained by thiserror).
    pub cause: RedisError,
}

fn unreachable_message(target: &str, cause: &RedisError) -> String {
    if cause.kind() == ErrorKind::AuthenticationFailed {
        format!(
            "Redis at {target} refused the login ({cause}). Set the right user and password in [redis] url / BATCH__REDIS__URL (redis://USER:PASSWORD@host:port)"
        )
    } else {
        format!(
            "cannot reach Redis at {target} ({cause}). Start it, or point the launcher elsewhere with [redis] url / BATCH__REDIS__URL (or [redis] cluster_nodes / BATCH__REDIS__CLUSTER_NODES for a cluster)"
        )
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

/// Connects as configured: the cluster client if `cluster_nodes` is set, else the single node.
/// Fails fast (one short retry) with [`RedisUnreachable`] if nothing answers a `PING`.
pub async fn connect(settings: &RedisSettings) -> Result<RedisConn, RedisUnreachable> {
    if settings.cluster_nodes.is_empty() {
        let target = settings.url.to_string();
        let unreachable = |cause| RedisUnreachable {
            target: target.clone(),
            cause,
        };
        let client = redis::Client::open(settings.url.expose().as_str()).map_err(unreachable)?;
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
        let unreachable = |cause| RedisUnreachable {
            target: format!("cluster {target}"),
            cause,
        };
        let nodes: Vec<String> = settings
            .cluster_nodes
            .iter()
            .map(|u| u.expose().to_string())
            .collect();
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.response_timeout)
            .retries(2)
            .build()
            .map_err(unreachable)?;
        let mut conn = client.get_async_connection().await.map_err(unreachable)?;
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unreachable)?;
        Ok(RedisConn::Cluster(conn))
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
/// its master), `TRYAGAIN` (a slot migrating) and `CLUSTERDOWN`.
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
