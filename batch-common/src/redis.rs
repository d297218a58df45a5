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
#[error(
    "cannot reach Redis at {target} ({source}). Start it, or point the launcher elsewhere with [redis] url / BATCH__REDIS__URL (or [redis] cluster_nodes / BATCH__REDIS__CLUSTER_NODES for a cluster)"
)]
pub struct RedisUnreachable {
    /// Where the launcher looked (passwords redacted).
    pub target: String,
    /// The client's error (in the message, not chained, so it is printed once).
    pub source: RedisError,
}

/// Connects as configured: the cluster client if `cluster_nodes` is set, else the single node.
/// Fails fast (one short retry) with [`RedisUnreachable`] if nothing answers a `PING`.
pub async fn connect(settings: &RedisSettings) -> Result<RedisConn, RedisUnreachable> {
    if settings.cluster_nodes.is_empty() {
        let target = settings.url.to_string();
        let unreachable = |source| RedisUnreachable {
            target: target.clone(),
            source,
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
        let unreachable = |source| RedisUnreachable {
            target: format!("cluster {target}"),
            source,
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

/// True for Redis errors a retry may cure: I/O errors (reset, refused, timeout, dropped — the
/// first command after a reconnect included), `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`.
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
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

/// Converts a Redis error for the runtime: transient ones are wrapped in [`Transient`] so the
/// chunk is retried.
pub fn classify(e: RedisError) -> anyhow::Error {
    if is_transient_redis(&e) {
        Transient::new(e).into()
    } else {
        e.into()
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

    #[tokio::test]
    async fn unreachable_redis_says_where_it_looked() {
        let mut settings = crate::BatchProperties::load_from(None, Vec::new())
            .unwrap()
            .redis;
        settings.url = crate::RedactedUrl::parse("redis://:pw@127.0.0.1:1", &["redis"]).unwrap();
        settings.connect_timeout = Duration::from_millis(300);
        let err = connect(&settings).await.unwrap_err().to_string();
        assert!(err.contains("redis://:***@127.0.0.1:1"), "{err}");
        assert!(err.contains("BATCH__REDIS__URL"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
    }
}
