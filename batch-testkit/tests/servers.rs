//! The throwaway servers of `batch_testkit::servers`, checked with the command-line clients:
//! TLS-only PostgreSQL and MariaDB (verified as `localhost`; refused without TLS, with another
//! CA, or as `127.0.0.1`), their data across `restart()`, passwords, TLS Redis, a plain Redis
//! that keeps its RDB across restarts, and a TLS Redis Cluster.

// The tests' names start with `throwaway::`, so `cargo test -- throwaway::` runs them alone.
mod throwaway {
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use batch_testkit::servers::{
        MariaDbServer, PgServer, Pki, RedisServer, RedisTlsCluster, RedisTlsServer,
    };

    /// Runs a client: (success, stdout, stderr).
    fn run(cmd: &mut Command) -> (bool, String, String) {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `psql <conninfo> -c <sql>`, without a password prompt or the caller's PG* variables.
    fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
        let mut cmd = Command::new("psql");
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        run(cmd
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-w", "-At", "-d", conninfo, "-c", sql]))
    }

    fn pg_conninfo(pg: &PgServer, host: &str, tls: &str) -> String {
        format!(
            "host={host} port={} user=postgres dbname=postgres {tls}",
            pg.port()
        )
    }

    fn verify_full(ca: &Path) -> String {
        format!("sslmode=verify-full sslrootcert={}", ca.display())
    }

    fn timed<T>(what: &str, start: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let value = start();
        eprintln!("{what} started in {:?}", t.elapsed());
        value
    }

    #[test]
    fn postgres_is_tls_only_and_keeps_its_data_across_restarts() {
        let pki = timed("Pki", Pki::new);
        let mut pg = timed("PgServer (TLS)", || PgServer::start(Some(&pki)));

        let (ok, out, err) = psql(
            &pg_conninfo(&pg, "localhost", &verify_full(&pki.ca_cert())),
            "select 1",
        );
        assert!(ok && out == "1", "verify-full as localhost: {out} {err}");
        let (ok, out, err) = psql(
            &pg_conninfo(&pg, "localhost", "sslmode=disable"),
            "select 1",
        );
        assert!(
            !ok && err.contains("no encryption"),
            "sslmode=disable: {out} {err}"
        );
        let (ok, out, err) = psql(
            &pg_conninfo(&pg, "localhost", &verify_full(&pki.other_ca_cert())),
            "select 1",
        );
        assert!(
            !ok && err.contains("certificate verify failed"),
            "other CA: {out} {err}"
        );
        let (ok, out, err) = psql(
            &pg_conninfo(&pg, "127.0.0.1", &verify_full(&pki.ca_cert())),
            "select 1",
        );
        assert!(
            !ok && err.contains("does not match host name"),
            "as 127.0.0.1: {out} {err}"
        );

        // url() is a libpq URL psql takes as is.
        pg.create_database("kept");
        let url = pg.url_for("kept", "localhost", &pg.tls_params());
        assert!(
            url.starts_with(&format!(
                "postgres://postgres@localhost:{}/kept?sslmode=verify-full&sslrootcert=",
                pg.port()
            )),
            "{url}"
        );
        let (ok, out, err) = psql(&url, "create table t (x int); insert into t values (42)");
        assert!(ok, "{url}: {out} {err}");

        let port = pg.port();
        let t = Instant::now();
        pg.restart();
        eprintln!("PgServer restarted in {:?}", t.elapsed());
        assert_eq!(pg.port(), port);
        let (ok, out, err) = psql(&url, "select x from t");
        assert!(ok && out == "42", "after restart: {out} {err}");
        assert_eq!(pg.sql("kept", "select count(*) from t").trim(), "1");

        pg.stop();
        let (ok, _, _) = psql(&url, "select 1");
        assert!(!ok, "stopped, yet answering");
        pg.start_again();
        let (ok, out, err) = psql(&url, "select x from t");
        assert!(ok && out == "42", "after start_again: {out} {err}");
    }

    #[test]
    fn postgres_with_a_password() {
        let pg = timed("PgServer (password)", || {
            PgServer::start_with(None, Some("pg s3cret/pw"))
        });
        let conninfo = pg_conninfo(&pg, "127.0.0.1", "sslmode=disable");
        let (ok, out, err) = psql(&conninfo, "select 1");
        assert!(
            !ok && err.contains("password"),
            "without the password: {out} {err}"
        );
        let (ok, out, err) = psql(&pg.url("127.0.0.1", ""), "select 1");
        assert!(ok && out == "1", "{}: {out} {err}", pg.url("127.0.0.1", ""));
        assert!(pg.url("h", "").contains("pg%20s3cret%2Fpw@h:"));
        assert_eq!(pg.password(), Some("pg s3cret/pw"));
    }

    /// `mariadb --no-defaults --protocol=TCP --host <host> --port <port> -uroot <args> -e <sql>`.
    fn mariadb(db: &MariaDbServer, host: &str, args: &[&str], sql: &str) -> (bool, String, String) {
        run(Command::new("mariadb")
            .arg("--no-defaults")
            .args([
                "--protocol=TCP",
                "--connect-timeout=10",
                "-N",
                "-B",
                "-uroot",
            ])
            .args(["--host", host, "--port", &db.port().to_string()])
            .args(args)
            .args(["-e", sql]))
    }

    #[test]
    fn mariadb_is_tls_only_and_keeps_its_data_across_restarts() {
        let pki = timed("Pki", Pki::new);
        let mut db = timed("MariaDbServer (TLS)", || MariaDbServer::start(Some(&pki)));
        let ca = pki.ca_cert().to_string_lossy().into_owned();
        let other = pki.other_ca_cert().to_string_lossy().into_owned();
        let verify = ["--ssl-ca", &ca, "--ssl-verify-server-cert"];

        let (ok, out, err) = mariadb(&db, "localhost", &verify, "show status like 'Ssl_version'");
        assert!(
            ok && out.starts_with("Ssl_version\tTLSv1."),
            "verified as localhost: {out} {err}"
        );
        let (ok, out, err) = mariadb(&db, "localhost", &["--skip-ssl"], "select 1");
        assert!(
            !ok && err.contains("Access denied"),
            "--skip-ssl: {out} {err}"
        );
        let (ok, out, err) = mariadb(
            &db,
            "localhost",
            &["--ssl-ca", &other, "--ssl-verify-server-cert"],
            "select 1",
        );
        assert!(
            !ok && err.contains("TLS/SSL error"),
            "other CA: {out} {err}"
        );
        let (ok, out, err) = mariadb(&db, "127.0.0.1", &verify, "select 1");
        assert!(
            !ok && err.contains("TLS/SSL error"),
            "as 127.0.0.1: {out} {err}"
        );

        db.create_database("kept");
        let (ok, out, err) = mariadb(
            &db,
            "localhost",
            &verify,
            "create table kept.t (x int); insert into kept.t values (42)",
        );
        assert!(ok, "{out} {err}");
        assert_eq!(
            db.url_for("kept", "localhost", &db.tls_params()),
            format!(
                "mysql://root@localhost:{}/kept?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
                db.port(),
                db.ca_file().unwrap().display()
            )
        );

        let port = db.port();
        let t = Instant::now();
        db.restart();
        eprintln!("MariaDbServer restarted in {:?}", t.elapsed());
        assert_eq!(db.port(), port);
        let (ok, out, err) = mariadb(&db, "localhost", &verify, "select x from kept.t");
        assert!(ok && out == "42", "after restart: {out} {err}");
        assert_eq!(db.sql("kept", "select count(*) from t").trim(), "1");
    }

    #[test]
    fn mariadb_with_a_password() {
        let db = timed("MariaDbServer (password)", || {
            MariaDbServer::start_with(None, Some("my s3cret'pw"))
        });
        let (ok, out, err) = mariadb(&db, "127.0.0.1", &[], "select 1");
        assert!(
            !ok && err.contains("Access denied"),
            "without the password: {out} {err}"
        );
        let (ok, out, err) = mariadb(&db, "127.0.0.1", &["--password=my s3cret'pw"], "select 1");
        assert!(ok && out == "1", "with the password: {out} {err}");
        assert!(
            db.url("h", "")
                .starts_with("mysql://root:my%20s3cret%27pw@h:")
        );
    }

    fn redis_cli(ca: &Path, host: &str, port: u16, args: &[&str]) -> (bool, String, String) {
        run(Command::new("redis-cli")
            .env_remove("REDISCLI_AUTH")
            .arg("--tls")
            .arg("--cacert")
            .arg(ca)
            .args(["-h", host, "-p", &port.to_string()])
            .args(args))
    }

    #[test]
    fn redis_over_tls() {
        let pki = timed("Pki", Pki::new);
        let redis = timed("RedisTlsServer", || RedisTlsServer::start(&pki));
        assert_eq!(redis.url(), format!("rediss://localhost:{}", redis.port()));
        let (_, out, err) = redis_cli(&pki.ca_cert(), "localhost", redis.port(), &["ping"]);
        assert_eq!(out, "PONG", "{err}");
        let (_, out, err) = redis_cli(&pki.other_ca_cert(), "localhost", redis.port(), &["ping"]);
        assert!(
            out.is_empty() && err.contains("certificate verify failed"),
            "other CA: {out} {err}"
        );
        let (_, out, _) = run(Command::new("redis-cli").args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port().to_string(),
            "ping",
        ]));
        assert_ne!(out, "PONG", "answered without TLS");

        let secret = timed("RedisTlsServer (password)", || {
            RedisTlsServer::start_with(&pki, Some("redis s3cret"))
        });
        let (_, out, _) = redis_cli(&pki.ca_cert(), "localhost", secret.port(), &["ping"]);
        assert!(out.starts_with("NOAUTH"), "{out}");
        assert_eq!(secret.cli(&["ping"]).trim(), "PONG");
        assert_eq!(
            secret.url(),
            format!("rediss://:redis%20s3cret@localhost:{}", secret.port())
        );
    }

    #[test]
    fn redis_keeps_its_rdb_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = timed("RedisServer", || RedisServer::start_with_rdb(dir.path()));
        assert_eq!(redis.cli(&["debug", "populate", "100000"]).trim(), "OK");
        redis.restart();
        assert!(redis.rdb_file().exists());
        assert_eq!(redis.cli(&["dbsize"]).trim(), "100000");
        redis.stop();
        redis.start_again_loading();
        let start = Instant::now();
        while redis.is_loading() {
            assert!(start.elapsed().as_secs() < 30, "still loading");
        }
        assert_eq!(redis.cli(&["dbsize"]).trim(), "100000");
    }

    #[test]
    fn redis_cluster_over_tls() {
        let cluster = timed("RedisTlsCluster (3 masters)", || RedisTlsCluster::start(3));
        assert_eq!(cluster.urls().len(), 3);
        for (url, port) in cluster.urls().iter().zip(cluster.ports()) {
            assert_eq!(url, &format!("rediss://127.0.0.1:{port}"));
            let (_, out, err) =
                redis_cli(&cluster.ca_file(), "127.0.0.1", *port, &["cluster", "info"]);
            assert!(out.contains("cluster_state:ok"), "{out} {err}");
        }
        let port = cluster.ports()[0];
        let (_, out, err) = redis_cli(
            &cluster.ca_file(),
            "127.0.0.1",
            port,
            &["-c", "set", "k{1}", "v"],
        );
        assert_eq!(out, "OK", "{err}");
        let (_, out, err) = redis_cli(
            &cluster.ca_file(),
            "127.0.0.1",
            port,
            &["-c", "get", "k{1}"],
        );
        assert_eq!(out, "v", "{err}");
        let (_, out, err) = redis_cli(&cluster.pki().other_ca_cert(), "127.0.0.1", port, &["ping"]);
        assert!(
            out.is_empty() && err.contains("certificate verify failed"),
            "other CA: {out} {err}"
        );
    }
}
