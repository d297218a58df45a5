//! `redis::connect` over TLS against real TLS-only servers (batch-testkit's): a single node and a
//! cluster verified against the test CA, refused with the other CA or by a host name the
//! certificate is not for — each in words that say what failed — and `#insecure` accepted.

use std::path::Path;

use batch_common::RedactedUrl;
use batch_common::config::{BatchProperties, RedisSettings};
use batch_common::redis::{RedisConn, connect};
use batch_testkit::servers::{Pki, RedisTlsCluster, RedisTlsServer};
use redis::AsyncCommands;

fn settings(url: &str, cluster: &[String], ca_file: Option<&Path>) -> RedisSettings {
    let mut s = BatchProperties::load_from(None, Vec::new(), &[])
        .unwrap()
        .redis;
    s.url = RedactedUrl::parse(url, &["redis", "rediss"]).unwrap();
    s.cluster_nodes = cluster
        .iter()
        .map(|u| RedactedUrl::parse(u, &["redis", "rediss"]).unwrap())
        .collect();
    s.ca_file = ca_file.map(Path::to_path_buf);
    s.connect_timeout = std::time::Duration::from_secs(3);
    s.response_timeout = std::time::Duration::from_secs(3);
    s
}

/// Writes and reads a few keys (spread over the slots on a cluster).
async fn round_trip(mut conn: RedisConn) {
    for i in 0..20 {
        let key = format!("redis-tls-test:{i}");
        let _: () = conn.set_ex(&key, i, 60).await.unwrap();
        let back: i64 = conn.get(&key).await.unwrap();
        assert_eq!(back, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_is_verified_against_the_ca_file() {
    let pki = Pki::new();
    let server = RedisTlsServer::start_with(&pki, Some("tls s3cret"));
    let ca = server.ca_file();

    // The CA that signed the certificate, the name it is for.
    let conn = connect(&settings(&server.url(), &[], Some(&ca)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
    assert!(!conn.is_cluster());
    round_trip(conn).await;

    // Another CA: the certificate is not trusted.
    let err = connect(&settings(&server.url(), &[], Some(&pki.other_ca_cert())))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(err.contains("BATCH__REDIS__CA_FILE"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // The right CA, a name the certificate is not for (it lists localhost only).
    let by_ip = server.url_with_host("127.0.0.1");
    let err = connect(&settings(&by_ip, &[], Some(&ca)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid for the host name"), "{err}");
    assert!(!err.contains("trusted CA"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // No CA file: the system's trust store, which does not know the test CA.
    let err = connect(&settings(&server.url(), &[], None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not signed by a trusted CA"), "{err}");

    // #insecure: no verification at all (the other CA would be ignored, and so is the name).
    let insecure = format!("{by_ip}#insecure");
    let conn = connect(&settings(&insecure, &[], None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    round_trip(conn).await;

    // The TLS port with a plain URL: the server hangs up.
    let plain = by_ip.replace("rediss://", "redis://");
    let err = connect(&settings(&plain, &[], None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("write rediss://"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_verified_against_the_ca_file_on_every_node() {
    let cluster = RedisTlsCluster::start(3);
    let urls = cluster.urls();
    let anywhere = "redis://127.0.0.1:1";

    let conn = connect(&settings(anywhere, &urls, Some(&cluster.ca_file())))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(conn.is_cluster());
    // Every master answers over TLS (the nodes found from the topology are verified too).
    let identity = batch_common::redis::server_identity(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(identity.len(), 3, "{identity:?}");
    round_trip(conn).await;

    let err = connect(&settings(
        anywhere,
        &urls,
        Some(&cluster.pki().other_ca_cert()),
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(
        err.starts_with("cannot connect to Redis at cluster rediss://"),
        "{err}"
    );

    let insecure: Vec<String> = urls.iter().map(|u| format!("{u}#insecure")).collect();
    let conn = connect(&settings(anywhere, &insecure, None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    round_trip(conn).await;
}
