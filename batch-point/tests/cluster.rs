//! The sync through a real Redis Cluster on loopback, started and stopped here: three masters,
//! and three masters with a replica each whose master fails over mid-sync.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_common::ExitCode;
use batch_testkit::{TestDb, TestRedis};
use core_domain::Backend;
use core_domain::models::{NewPointBalance, PointBalance};
use redis::AsyncCommands;

use crate::{props, run_job, seoul, ts};

/// `redis-server --cluster-enabled yes` processes (`masters` × (1 + `replicas`)) without
/// persistence, on free ports; killed on drop.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(masters: usize, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..masters * (1 + replicas))
            .map(|_| crate::free_port())
            .collect();
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
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
            cluster.wait(
                || {
                    let info = cli(*port, &["info", "replication"]);
                    info.contains("role:master") || info.contains("master_link_status:up")
                },
                "replica in sync",
            );
        }
        cluster
    }

    /// (master port, its replica's port) pairs, from `CLUSTER NODES`.
    fn pairs(&self) -> Vec<(u16, u16)> {
        let nodes = cli(self.ports[0], &["cluster", "nodes"]);
        let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
        let port_of =
            |addr: &str| -> u16 { addr.split(['@', ':']).nth(1).unwrap().parse().unwrap() };
        let mut pairs = Vec::new();
        for l in &lines {
            if l[2].contains("slave") {
                let master = lines.iter().find(|m| m[0] == l[3]).expect("its master");
                pairs.push((port_of(master[1]), port_of(l[1])));
            }
        }
        pairs
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
    let cluster = Cluster::start(3, 0);
    let db = TestDb::new(Backend::Sqlite).await;
    let redis = TestRedis::new().await; // only for its unique key prefix
    let mut p = (*props(&redis, 200)).clone();
    p.redis.cluster_nodes = cluster
        .urls()
        .iter()
        .map(|u| batch_common::RedactedUrl::parse(u, &["redis"]).unwrap())
        .collect();
    let p = Arc::new(p);
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
        (
            sync.counts.counters["created"],
            sync.counts.counters["skipped_newer"]
        ),
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

// A master fails over to a replica that missed its last writes: the sync notices that the
// master it wrote to is not a master any more and syncs again; newer cached versions are kept.
batch_testkit::db_test!(async fn a_failover_to_a_replica_that_missed_writes_is_resynced(db) {
    let cluster = Arc::new(Mutex::new(Cluster::start(3, 1)));
    let (urls, pairs) = {
        let c = cluster.lock().unwrap();
        // Every node must know the replicas as such before one can fail over.
        c.wait(|| c.pairs().len() == 3, "three master/replica pairs");
        (c.urls(), c.pairs())
    };
    let (master, replica) = pairs[0];
    let keys = TestRedis::new().await; // only for its unique key prefix
    let mut p = (*props(&keys, 300)).clone();
    p.redis.cluster_nodes = urls
        .iter()
        .map(|u| batch_common::RedactedUrl::parse(u, &["redis"]).unwrap())
        .collect();
    let p = Arc::new(p);
    let users = 12_000;
    let mut conn = db.conn().await;
    PointBalance::insert_many(
        &mut conn,
        (1..=users)
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
    let key = |u: i64| format!("{}point:balance:{u}", keys.prefix());
    // The user whose newer version is cached after the failover: synced before it, on the shard
    // that fails over.
    let nodes = cli(master, &["cluster", "nodes"]);
    let range = nodes
        .lines()
        .find(|l| l.contains("myself"))
        .and_then(|l| l.split(' ').nth(8))
        .expect("the master's slot range")
        .to_owned();
    let (lo, hi) = range.trim().split_once('-').expect("one slot range");
    let (lo, hi): (u16, u16) = (lo.parse()?, hi.parse()?);
    let newer_user = (1..users / 4)
        .find(|u| {
            let slot: u16 = cli(master, &["cluster", "keyslot", &key(*u)]).trim().parse().unwrap();
            (lo..=hi).contains(&slot)
        })
        .expect("a user on the failing shard");
    // A newer entry cached before the sync, on whichever master.
    let mut check = rc.clone();
    let _: () = check
        .hset_multiple(key(users - 1), &[("balance", "1"), ("version", "9")])
        .await
        .unwrap();
    // Every replica holds it before the run starts: a replica of a cluster this fresh may still
    // be catching up, and one that never got this entry would lose it at the failover (the
    // sync would then rightly create it from the database).
    {
        let offset = |port: u16, field: &str| -> i64 {
            cli(port, &["info", "replication"])
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(-1)
        };
        let c = cluster.lock().unwrap();
        for (m, r) in &pairs {
            let written = offset(*m, "master_repl_offset");
            c.wait(
                || offset(*r, "slave_repl_offset") >= written,
                "every replica to hold the newer entry",
            );
        }
    }

    // After a quarter the replica loses its link to the master and cannot get it back (a wrong
    // `masterauth`): it misses what follows. After half it takes over (`CLUSTER FAILOVER
    // TAKEOVER`); the old master becomes its replica and resyncs from it, so the writes the new
    // master missed are gone from the whole cluster. Then the online service caches a newer
    // version of a user on that shard. Every server stays up.
    let cut_off = Arc::new(AtomicBool::new(false));
    let failed_over = Arc::new(AtomicBool::new(false));
    let missed = Arc::new(AtomicI64::new(0));
    let listener: Arc<dyn batch_common::listener::JobListener> = {
        let (cluster, cut_off, failed_over, missed, settings, newer_key) = (
            cluster.clone(),
            cut_off.clone(),
            failed_over.clone(),
            missed.clone(),
            p.redis.clone(),
            key(newer_user),
        );
        Arc::new(crate::OnChunk(Box::new(move |read| {
            let (cluster, cut_off, failed_over, missed, settings, newer_key) = (
                cluster.clone(),
                cut_off.clone(),
                failed_over.clone(),
                missed.clone(),
                settings.clone(),
                newer_key.clone(),
            );
            Box::pin(async move {
                if read >= users / 4 && !cut_off.swap(true, Ordering::SeqCst) {
                    assert!(cli(replica, &["config", "set", "masterauth", "wrong"]).contains("OK"));
                    let killed = cli(master, &["client", "kill", "type", "replica"]);
                    assert_eq!(killed.trim(), "1", "replica link of {master}");
                }
                if read >= users / 2 && !failed_over.swap(true, Ordering::SeqCst) {
                    tokio::task::spawn_blocking(move || {
                        let c = cluster.lock().unwrap();
                        let written = cli(master, &["dbsize"]).trim().parse::<i64>().unwrap();
                        let kept = cli(replica, &["dbsize"]).trim().parse::<i64>().unwrap();
                        missed.store(written - kept, Ordering::SeqCst);
                        assert!(
                            cli(replica, &["cluster", "failover", "takeover"]).contains("OK"),
                            "takeover"
                        );
                        c.wait(
                            || {
                                cli(replica, &["info", "replication"]).contains("role:master")
                                    && cli(master, &["info", "replication"])
                                        .contains("master_link_status:up")
                                    && c.ports.iter().filter(|p| **p != replica).all(|p| {
                                        cli(*p, &["cluster", "nodes"]).lines().any(|l| {
                                            l.contains(&format!(":{replica}@"))
                                                && l.contains("master")
                                        })
                                    })
                            },
                            "the replica is master everywhere and the old master its replica",
                        );
                    })
                    .await
                    .unwrap();
                    // The online service caches a newer version, through a connection of its
                    // own (which reads the new topology): the job's connection gets no help, so
                    // its concurrent script calls are the first to meet the moved slots.
                    let mut online = batch_common::redis::connect(&settings)
                        .await
                        .expect("the online service's connection");
                    let _: () = online
                        .hset_multiple(&newer_key, &[("balance", "5"), ("version", "9")])
                        .await
                        .unwrap();
                }
            })
        })))
    };
    let result = crate::run_with(
        db,
        rc.clone(),
        p.clone(),
        &["date=2026-11-20"],
        Some(listener),
        &batch_common::launcher::LaunchOptions::default(),
    )
    .await;
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    assert!(failed_over.load(Ordering::SeqCst));
    let missed = missed.load(Ordering::SeqCst);
    assert!(missed > 100, "the replica missed only {missed} writes");
    let sync = crate::step(&result, "syncPointBalanceStep");
    assert_eq!(sync.counts.counters["cache_resets"], 1, "{sync:#?}");
    assert_eq!(sync.counts.counters["skipped_newer"], 2, "{sync:#?}");
    crate::assert_cache_matches_db(db, &rc, keys.prefix(), &[(newer_user, 5, 9), (users - 1, 1, 9)]).await;
    Ok(())
});
