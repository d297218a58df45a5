//! The sync through a real three-node Redis Cluster on loopback, started and stopped here.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_common::ExitCode;
use batch_testkit::{TestDb, TestRedis};
use core_domain::Backend;
use core_domain::models::{NewPointBalance, PointBalance};
use redis::AsyncCommands;

use crate::{props, run_job, seoul, ts};

/// Three `redis-server --cluster-enabled yes` processes and their slots; killed on drop.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let base = 21000 + (std::process::id() % 3000) as u16 * 3 % 9000;
        let ports: Vec<u16> = (0..3).map(|i| base + i).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            nodes.push(
                Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                    ])
                    .args([
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server (install redis-server: scripts/services.sh)"),
            );
        }
        let cluster = Cluster {
            nodes,
            ports,
            _dir: dir,
        };
        for port in &cluster.ports {
            cluster.wait(|| cli(*port, &["ping"]).contains("PONG"), "node up");
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for port in &cluster.ports {
            cluster.wait(
                || cli(*port, &["cluster", "info"]).contains("cluster_state:ok"),
                "cluster ok",
            );
        }
        cluster
    }

    fn wait(&self, mut ok: impl FnMut() -> bool, what: &str) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_through_a_redis_cluster() {
    let cluster = Cluster::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let redis = TestRedis::new().await; // only for its unique key prefix
    let mut p = (*props(&redis, 200)).clone();
    p.redis.cluster_nodes = cluster
        .urls()
        .iter()
        .map(|u| batch_common::RedactedUrl::parse(u, &["redis"]).unwrap())
        .collect();
    let p = std::sync::Arc::new(p);
    let mut conn = db.conn().await;
    let n = 1000;
    PointBalance::insert_many(
        &mut conn,
        (1..=n)
            .map(|u| NewPointBalance {
                user_id: u,
                balance: u * 3,
                version: 2,
                updated_at: ts("2026-11-20 00:00:00"),
            })
            .collect(),
    )
    .await
    .unwrap();
    drop(conn);
    let rc = batch_common::redis::connect(&p.redis)
        .await
        .expect("cluster connection");
    assert!(rc.is_cluster());
    // One entry is newer in the cache already.
    let mut check = rc.clone();
    let newer_key = format!("{}point:balance:7", redis.prefix());
    let _: () = check
        .hset_multiple(&newer_key, &[("balance", "1"), ("version", "5")])
        .await
        .unwrap();

    let result = run_job(&db, rc, p.clone(), seoul("2026-11-21 09:00:00"), &[], false).await;
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    let sync = crate::step(&result, "syncPointBalanceStep");
    assert_eq!(
        (sync.counters["created"], sync.counters["skipped_newer"]),
        (n - 1, 1)
    );
    for u in [1, 500, 999, 1000] {
        let key = format!("{}point:balance:{u}", redis.prefix());
        let bal: String = check.hget(&key, "balance").await.unwrap();
        assert_eq!(bal, (u * 3).to_string(), "{key}");
    }
    let kept: String = check.hget(&newer_key, "balance").await.unwrap();
    assert_eq!(kept, "1");
    // The keys really are spread over the three nodes.
    let per_node: Vec<i64> = cluster
        .ports
        .iter()
        .map(|p| cli(*p, &["dbsize"]).trim().parse().unwrap_or(0))
        .collect();
    assert!(per_node.iter().all(|&k| k > 100), "{per_node:?}");
}
