//! Transient-error classification against errors that real servers send: a backend terminated by
//! PostgreSQL (57P01, what a fast shutdown, a failover or `pg_terminate_backend` sends), a
//! connection killed by MariaDB, and a Redis replica that lost its master (`READONLY`,
//! `MASTERDOWN`) or a cluster node that serves no slot (`CLUSTERDOWN`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_common::is_transient;
use batch_common::redis::{classify, is_transient_redis};
use batch_testkit::db_test;
use core_domain::{Backend, DbConnection};
use redis::ErrorKind::Server as ServerError;
use redis::ServerErrorKind::{ClusterDown, MasterDown, ReadOnly};

/// The server's id of a MySQL/MariaDB connection.
#[derive(diesel::QueryableByName)]
struct ConnectionId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

db_test!(async fn a_connection_ended_by_the_server_is_transient(db) {
    let mut victim = DbConnection::establish(db.url()).await?;
    victim.batch_execute("SELECT 1").await?;
    let (kill, backend) = match db.backend() {
        // SQLite has no server to end a connection.
        Backend::Sqlite => return Ok(()),
        Backend::Postgres => (
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.url().database_name()
            ),
            "postgres",
        ),
        Backend::Mysql => {
            // The victim's own id: the database may have other connections (the test's pool).
            let id: ConnectionId = core_domain::dispatch!(&mut victim, c =>
                diesel_async::RunQueryDsl::get_result(
                    diesel::sql_query("SELECT CAST(CONNECTION_ID() AS SIGNED) AS id"),
                    c,
                )
                .await)?;
            (format!("KILL {}", id.id), "mysql")
        }
    };
    let mut killer = DbConnection::establish(db.url()).await?;
    killer.batch_execute(&kill).await?;
    // The victim's next statements fail with what the server and driver report; every one of
    // them must be classified transient (a retry on a new connection cures it).
    let mut errors = Vec::new();
    for _ in 0..2 {
        if let Err(e) = victim.batch_execute("SELECT 1").await {
            errors.push(e);
        }
    }
    assert!(!errors.is_empty(), "{backend}: the killed connection still works");
    for e in errors {
        let text = e.to_string();
        assert!(is_transient(&anyhow::Error::new(e)), "{backend}: not transient: {text}");
    }
    // And a new connection works: the server is fine.
    DbConnection::establish(db.url()).await?.batch_execute("SELECT 1").await?;
    Ok(())
});

/// A throwaway `redis-server` on a free port, shut down on drop.
struct Server(Child, u16);

impl Server {
    fn start(args: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("transient-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server(child, port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.1))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis_error(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &mut redis::Cmd,
) -> redis::RedisError {
    cmd.query_async::<redis::Value>(conn)
        .await
        .expect_err("the server refuses the command")
}

#[tokio::test]
async fn redis_replica_and_cluster_errors_are_transient() {
    // A replica whose master is gone: writes are READONLY, reads MASTERDOWN (stale data not served).
    let replica = Server::start(&[
        "--replicaof",
        "127.0.0.1",
        "1",
        "--replica-serve-stale-data",
        "no",
    ]);
    let mut conn = replica.conn().await;
    let readonly = redis_error(&mut conn, redis::cmd("SET").arg("k").arg("v")).await;
    assert_eq!(readonly.kind(), ServerError(ReadOnly), "{readonly}");
    let masterdown = redis_error(&mut conn, redis::cmd("GET").arg("k")).await;
    assert_eq!(masterdown.kind(), ServerError(MasterDown), "{masterdown}");
    // A cluster node that serves no slot: CLUSTERDOWN.
    let node = Server::start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes-transient.conf",
    ]);
    let mut conn = node.conn().await;
    let clusterdown = redis_error(&mut conn, redis::cmd("GET").arg("k")).await;
    assert_eq!(
        clusterdown.kind(),
        ServerError(ClusterDown),
        "{clusterdown}"
    );
    for e in [readonly, masterdown, clusterdown] {
        assert!(is_transient_redis(&e), "{e}");
        assert!(is_transient(&classify(e)));
    }
    // A connection reset: the server is gone.
    let gone = Server::start(&[]);
    let mut conn = gone.conn().await;
    drop(gone);
    let reset = redis_error(&mut conn, &mut redis::cmd("PING")).await;
    assert!(is_transient_redis(&reset), "{reset}");
    // A wrong command is not transient.
    let ok = Server::start(&[]);
    let mut conn = ok.conn().await;
    let wrong = redis_error(&mut conn, redis::cmd("INCR").arg("a").arg("b")).await;
    assert!(!is_transient(&classify(wrong)));
}
