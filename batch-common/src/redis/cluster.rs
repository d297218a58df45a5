//! A Redis Cluster connection that replaces itself when it stops answering.
//!
//! redis 1.8.1's cluster connection can get stuck after a failover (`CLUSTER FAILOVER
//! TAKEOVER`): when many concurrent calls (the sync's script calls) are the first to meet the
//! moved slots, every call on that connection may wait for the response timeout, on every
//! retry, for good (measured: 2 runs in 5 of `batch-point`'s failover test failed with each
//! chunk retry timing out for a minute), while a new connection works at once. Its slot
//! refresh runs under the connection's lock, in the task that also polls the requests waiting
//! for that lock, which is where it seems to wedge. No option of the client (retries,
//! timeouts, `max_connection_attempts`, no periodic topology refresh in 1.8.1) gets it out of
//! that state. So [`ClusterConn`] keeps the `ClusterClient` beside the connection, and a call
//! that fails the way a stuck or outdated connection fails (timeout, I/O, `MOVED` surfacing to
//! the caller, no connection for a slot) makes a new connection — which reads the topology
//! afresh — before its error goes back to the caller (transient, so the chunk is retried, on
//! the new connection). A stuck connection therefore costs one `response_timeout`.
//!
//! Renewals are once per generation: every clone shares one [`Renewable`]; calls that started on
//! generation *g* and fail together make one new connection (the first; the others wait for it
//! and return), and a renewal that fails counts too, so a cluster that is down is asked once per
//! round of retries, not once per failed call.

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// A connection of type `C` that can be replaced, numbered by generation, shared by clones.
#[derive(Debug)]
pub(crate) struct Renewable<C> {
    current: std::sync::Mutex<(u64, C)>,
    renewing: tokio::sync::Mutex<()>,
}

impl<C: Clone> Renewable<C> {
    pub(crate) fn new(conn: C) -> Self {
        Renewable {
            current: std::sync::Mutex::new((0, conn)),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// The current generation and a clone of its connection.
    pub(crate) fn get(&self) -> (u64, C) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    /// Replaces the connection of generation `seen` by `connect()`'s, unless another caller
    /// already renewed it (then returns at once, or when that renewal is done). A failed
    /// `connect` keeps the connection but ends the generation too. True if this call renewed.
    pub(crate) async fn renew<F, Fut, E>(&self, seen: u64, connect: F) -> Result<bool, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let _renewing = self.renewing.lock().await;
        if self.get().0 != seen {
            return Ok(false);
        }
        let result = connect().await;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.0 = seen + 1;
        match result {
            Ok(conn) => {
                current.1 = conn;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

/// True for an error that a stuck or outdated cluster connection returns: a timeout, an I/O or
/// connection error, a redirection the client gave up following, no connection for a slot, or a
/// node that is not the master it was (`READONLY`, `MASTERDOWN`, `CLUSTERDOWN`).
pub(crate) fn calls_for_a_new_connection(e: &RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// A Redis Cluster connection: multiplexed and cheap to clone (clones share the connection and
/// its renewals), replaced by a new one after a failure that a stuck or outdated connection
/// causes (see the module's documentation).
#[derive(Clone)]
pub struct ClusterConn {
    shared: std::sync::Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    conn: Renewable<ClusterConnection>,
    /// The longest a renewal may take (connect + topology).
    renew_within: Duration,
}

impl ClusterConn {
    pub(crate) fn new(
        client: ClusterClient,
        conn: ClusterConnection,
        renew_within: Duration,
    ) -> Self {
        ClusterConn {
            shared: std::sync::Arc::new(Shared {
                client,
                conn: Renewable::new(conn),
                renew_within,
            }),
        }
    }

    /// The number of renewals so far (failed ones included).
    pub fn generation(&self) -> u64 {
        self.shared.conn.get().0
    }

    /// Runs `call` on the current connection; after a failure that calls for it, renews the
    /// connection (once per generation) before returning the error.
    async fn run<T, F, Fut>(&self, call: F) -> RedisResult<T>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (generation, conn) = self.shared.conn.get();
        let result = call(conn).await;
        if let Err(e) = &result
            && calls_for_a_new_connection(e)
        {
            self.renew(generation, e).await;
        }
        result
    }

    async fn renew(&self, generation: u64, cause: &RedisError) {
        let shared = &self.shared;
        let renewed = shared
            .conn
            .renew(generation, || async {
                tracing::warn!(
                    generation,
                    error = %cause,
                    "Redis Cluster call failed; connecting to the cluster again (topology read afresh)"
                );
                match tokio::time::timeout(shared.renew_within, shared.client.get_async_connection())
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
                }
            })
            .await;
        match renewed {
            Ok(true) => tracing::info!(
                generation = generation + 1,
                "Redis Cluster connection renewed"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "cannot connect to the Redis Cluster again; keeping the connection, the next failure tries again"
            ),
        }
    }

    /// Sends `cmd` where `routing` says (see `ClusterConnection::route_command`).
    pub async fn route_command(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        self.run(|mut c| async move { c.route_command(cmd, routing).await })
            .await
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.run(move |mut c| async move { c.req_packed_command(cmd).await }))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(
            self.run(move |mut c| async move { c.req_packed_commands(cmd, offset, count).await }),
        )
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_failures_renew_once_per_generation() {
        let renewable = Arc::new(Renewable::new(0_u32));
        let connects = Arc::new(AtomicUsize::new(0));
        let (seen, _) = renewable.get();
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let (renewable, connects) = (renewable.clone(), connects.clone());
                tokio::spawn(async move {
                    renewable
                        .renew(seen, || async {
                            connects.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(1)
                        })
                        .await
                })
            })
            .collect();
        let mut renewed = 0;
        for c in calls {
            renewed += usize::from(c.await.unwrap().unwrap());
        }
        assert_eq!((renewed, connects.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(renewable.get(), (1, 1));
        // A late failure of generation 0 does not renew again; one of generation 1 does.
        assert!(
            !renewable
                .renew(0, || async { Ok::<_, ()>(9) })
                .await
                .unwrap()
        );
        assert!(
            renewable
                .renew(1, || async { Ok::<_, ()>(2) })
                .await
                .unwrap()
        );
        assert_eq!(renewable.get(), (2, 2));
    }

    #[tokio::test]
    async fn a_failed_renewal_ends_the_generation_and_keeps_the_connection() {
        let renewable = Renewable::new("old");
        assert_eq!(
            renewable.renew(0, || async { Err("down") }).await,
            Err("down")
        );
        assert_eq!(renewable.get(), (1, "old"));
        // The calls that failed with it do not try again; the next round does.
        assert_eq!(
            renewable.renew(0, || async { Ok::<_, &str>("new") }).await,
            Ok(false)
        );
        assert_eq!(
            renewable.renew(1, || async { Ok::<_, &str>("new") }).await,
            Ok(true)
        );
        assert_eq!(renewable.get(), (2, "new"));
    }

    #[test]
    fn what_calls_for_a_new_connection() {
        let io = |k: std::io::ErrorKind| -> RedisError { std::io::Error::from(k).into() };
        assert!(calls_for_a_new_connection(&io(
            std::io::ErrorKind::TimedOut
        )));
        assert!(calls_for_a_new_connection(&io(
            std::io::ErrorKind::ConnectionReset
        )));
        let none: RedisError =
            (ErrorKind::ClusterConnectionNotFound, "No connections found").into();
        assert!(calls_for_a_new_connection(&none));
        let moved = redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:6381\r\n")
            .unwrap()
            .extract_error()
            .unwrap_err();
        assert_eq!(moved.kind(), ErrorKind::Server(ServerErrorKind::Moved));
        assert!(calls_for_a_new_connection(&moved));
        let noscript = redis::parse_redis_value(b"-NOSCRIPT No matching script\r\n")
            .unwrap()
            .extract_error()
            .unwrap_err();
        assert!(!calls_for_a_new_connection(&noscript));
        let typ: RedisError = (ErrorKind::UnexpectedReturnType, "bad").into();
        assert!(!calls_for_a_new_connection(&typ));
    }
}
