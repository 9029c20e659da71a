//! Test support: per-test databases on the lab clusters, a guard that drops them (with
//! their subscriptions and slots) even when the test fails, and a runner for the binary.
#![allow(dead_code)]

use std::future::Future;
use std::process::Output;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// The lab's first port: `DUPLEX_LAB_PORT_BASE` as scripts/lab.sh reads it (`lab.sh env`
/// exports it), default 55432. Main is on it, cloud +1, pg15 +2, replica +3, small +4.
pub fn port_base() -> u16 {
    match std::env::var("DUPLEX_LAB_PORT_BASE") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            panic!("DUPLEX_LAB_PORT_BASE={v} is not a port number: use the value scripts/lab.sh env exports")
        }),
        _ => 55432,
    }
}

/// The main cluster's port.
pub fn main_port() -> u16 {
    port_base()
}

/// The cloud cluster's port.
pub fn cloud_port() -> u16 {
    port_base() + 1
}

/// The PostgreSQL 15 fixture's port.
pub fn pg15_port() -> u16 {
    port_base() + 2
}

/// The wal_level=replica fixture's port.
pub fn replica_port() -> u16 {
    port_base() + 3
}

/// The fixture with PostgreSQL's default worker limits (4 logical replication workers).
pub fn small_port() -> u16 {
    port_base() + 4
}

/// Where the lab's clusters (and their server logs, `<side>.log`) live: `DUPLEX_LAB_DIR`,
/// else scripts/lab.sh's default (/var/lib/duplex-lab as root, else
/// ~/.local/share/duplex/lab).
pub fn lab_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("DUPLEX_LAB_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if unsafe { libc::geteuid() } == 0 {
        return "/var/lib/duplex-lab".into();
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share")
        });
    data.join("duplex/lab")
}

/// The replication password tests give duplex: the lab's, so the demo and the tests agree.
pub const REPLICATION_PASSWORD: &str = "lab-replication-secret";

fn lab_password() -> String {
    std::env::var("DUPLEX_LAB_PASSWORD").unwrap_or_else(|_| "lab-secret".into())
}

/// URL of database `db` on the lab cluster at `port`.
pub fn url(port: u16, db: &str) -> String {
    format!(
        "postgres://postgres:{}@127.0.0.1:{port}/{db}",
        lab_password()
    )
}

/// Connect with a URL of the test's own (another user, say).
pub async fn connect_url(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect ({e})"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Connect to `db` on the cluster at `port`.
pub async fn connect(port: u16, db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&url(port, db), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach the lab cluster on port {port} ({e}): run scripts/lab.sh up (and up-fixtures)")
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Poll `check` until it returns true, failing the test after `timeout`. Returns how long
/// it took.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's pair of databases, one on each cluster, with unique slot names.
pub struct Pair {
    /// Unique suffix.
    pub id: String,
    /// Database name (same on both clusters).
    pub db: String,
    /// Port of the "main" cluster.
    pub main_port: u16,
    /// Port of the "cloud" cluster.
    pub cloud_port: u16,
    /// TOML configuration file passed with --config.
    pub config_path: std::path::PathBuf,
}

/// The example app's schema.
pub const APP_SCHEMA: &str = include_str!("../../sql/examples/app-schema.sql");

/// Default test configuration: the example app's syncable tables and policies.
pub const EXAMPLE_TABLES: &str = r#"
[tables]
schema = "public"
exclude = ["DeviceFileIndex", "DeviceCommandQueue"]

[conflicts.tables."Device"]
policy = "main_authoritative"
"#;

impl Pair {
    /// Fresh databases on main and cloud, loaded with the example schema.
    pub async fn new() -> Pair {
        Self::on(main_port(), cloud_port(), true).await
    }

    /// Fresh databases on the clusters at the given ports; `schema` loads the example app.
    pub async fn on(main_port: u16, cloud_port: u16, schema: bool) -> Pair {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db = format!("duplex_t_{id}");
        let config_path = std::env::temp_dir().join(format!("{db}.toml"));
        std::fs::write(&config_path, EXAMPLE_TABLES).expect("writing test config");
        let pair = Pair {
            id,
            db,
            main_port,
            cloud_port,
            config_path,
        };
        for port in [main_port, cloud_port] {
            let admin = connect(port, "postgres").await;
            admin
                .batch_execute(&format!("CREATE DATABASE {}", pair.db))
                .await
                .expect("creating test database");
            if schema {
                connect(port, &pair.db)
                    .await
                    .batch_execute(APP_SCHEMA)
                    .await
                    .expect("loading the example schema");
            }
        }
        pair
    }

    /// Replace the table configuration.
    pub fn set_config(&self, toml: &str) {
        std::fs::write(&self.config_path, toml).expect("writing test config");
    }

    /// Client for the main database.
    pub async fn main(&self) -> Client {
        connect(self.main_port, &self.db).await
    }

    /// Client for the cloud database.
    pub async fn cloud(&self) -> Client {
        connect(self.cloud_port, &self.db).await
    }

    /// Slot name for the subscription of `role`.
    pub fn slot(&self, role: &str) -> String {
        match role {
            "main" => format!("duplex_t_{}_c2m", self.id),
            _ => format!("duplex_t_{}_m2c", self.id),
        }
    }

    /// A `duplex` command for `role` with this pair's environment.
    pub fn duplex(&self, role: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.duplex_without_config(role, &[]);
        cmd.arg("--config").arg(&self.config_path).args(args);
        cmd
    }

    /// The same without `--config`: the default table selection (every table of schema
    /// public) and no conflict policies.
    pub fn duplex_without_config(&self, role: &str, args: &[&str]) -> tokio::process::Command {
        let (local, remote) = match role {
            "main" => (self.main_port, self.cloud_port),
            _ => (self.cloud_port, self.main_port),
        };
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"));
        for (var, _) in duplex::config::ENV_KEYS {
            cmd.env_remove(var);
        }
        cmd.env_remove("DATABASE_URL")
            .env("INSTANCE_ROLE", role)
            .env("LOCAL_DB_URL", url(local, &self.db))
            .env("REMOTE_DB_URL", url(remote, &self.db))
            .env("REPLICATION_SLOT_NAME", self.slot(role))
            .env("DUPLEX_REPLICATION_PASSWORD", REPLICATION_PASSWORD)
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Run `duplex` for `role` and return its output.
    pub async fn run(&self, role: &str, args: &[&str]) -> Output {
        self.duplex(role, args)
            .output()
            .await
            .expect("running the duplex binary")
    }

    /// Run `duplex setup` for cloud then main, failing the test on any error.
    pub async fn setup_both(&self) {
        for role in ["cloud", "main"] {
            let out = self.run(role, &["setup"]).await;
            assert!(
                out.status.success(),
                "duplex setup ({role}) failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Names of subscriptions, publications and slots that belong to this pair's databases.
    pub async fn replication_objects(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (side, port) in [("main", self.main_port), ("cloud", self.cloud_port)] {
            let c = connect(port, &self.db).await;
            for (kind, sql) in [
                ("publication", "SELECT pubname::text FROM pg_publication"),
                ("subscription", "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                ("slot", "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()"),
            ] {
                for row in c.query(sql, &[]).await.expect("listing objects") {
                    found.push(format!("{side} {kind} {}", row.get::<_, String>(0)));
                }
            }
        }
        found.sort();
        found
    }
}

/// Text of a process's stdout and stderr.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cleanup(db: String, ports: [u16; 2]) {
    // Subscriptions first (each pins a slot on the other cluster), then slots, then the
    // databases themselves.
    for port in ports {
        let Ok((c, conn)) = tokio_postgres::connect(&url(port, &db), NoTls).await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let subs = c
            .query("SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[])
            .await
            .unwrap_or_default();
        for row in subs {
            let name: String = row.get(0);
            let q = format!("\"{name}\"");
            let _ = c
                .batch_execute(&format!("ALTER SUBSCRIPTION {q} DISABLE"))
                .await;
            let _ = c
                .batch_execute(&format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"))
                .await;
            let _ = c.batch_execute(&format!("DROP SUBSCRIPTION {q}")).await;
        }
    }
    for port in ports {
        let Ok((c, conn)) = tokio_postgres::connect(&url(port, "postgres"), NoTls).await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        for _ in 0..50 {
            let _ = c
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                      WHERE database = $1 AND active_pid IS NOT NULL",
                    &[&db],
                )
                .await;
            let left = c
                .query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                      WHERE database = $1 AND NOT active",
                    &[&db],
                )
                .await;
            let remaining: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    &[&db],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            if left.is_ok() && remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let db = self.db.clone();
        let ports = [self.main_port, self.cloud_port];
        let _ = std::fs::remove_file(&self.config_path);
        // Drop runs inside the test's runtime: clean up on a thread with its own.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(cleanup(db, ports));
        });
        let _ = handle.join();
    }
}

/// Daemon settings for tests: one-second cycles, short backoff without jitter.
pub const FAST_DAEMON: &str = r#"
[daemon]
monitor_interval_secs = 1
reconnect_backoff_secs = [1, 1, 2]
reconnect_max_secs = 2
reconnect_jitter = 0.0
"#;

/// A `duplex run` started by a test; stopped by the test (by PID) or, failing that, killed
/// when dropped.
pub struct Daemon {
    child: tokio::process::Child,
    /// API address.
    pub addr: std::net::SocketAddr,
    /// Admin token.
    pub token: String,
}

/// A free loopback port.
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local address")
}

impl Pair {
    /// Start `duplex run` for `role`; returns once its API answers.
    pub async fn start_daemon(&self, role: &str, env: &[(&str, &str)]) -> Daemon {
        self.start_daemon_limited(role, env, None).await
    }

    /// Like [`Pair::start_daemon`], with both limits on open files (`ulimit -n`) set to
    /// `nofile` when given, as on a host with that hard limit.
    pub async fn start_daemon_limited(
        &self,
        role: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        let addr = free_addr();
        // `duplex run` refuses tokens shorter than 32 characters.
        let token = format!("test-admin-token-{}-{}", self.id, self.id);
        let mut cmd = self.duplex(role, &["run"]);
        cmd.env("DUPLEX_HTTP_ADDR", addr.to_string())
            .env("DUPLEX_ADMIN_TOKEN", &token)
            .env("DUPLEX_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        if let Some(n) = nofile {
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe
            // and reads `lim`, a plain value copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("starting duplex run");
        let mut daemon = Daemon { child, addr, token };
        let d = &mut daemon;
        let start = Instant::now();
        loop {
            if d.child.try_wait().expect("checking duplex run").is_some() {
                panic!("duplex run exited during start-up");
            }
            if duplex::cli::api_call(d.addr, "GET", "/health/sync", "")
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "duplex run did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        daemon
    }
}

impl Daemon {
    /// `GET path` with the admin token: status and JSON (or text) body.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call("GET", path, &self.token.clone()).await
    }

    /// `POST path` with the admin token.
    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        self.call("POST", path, &self.token.clone()).await
    }

    /// Any request with any token.
    pub async fn call(&self, method: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
        let (code, body) = duplex::cli::api_call(self.addr, method, path, token)
            .await
            .expect("calling the API");
        let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        (code, value)
    }

    /// Run `duplex <args>` for `role` of `pair`, pointed at this daemon's API.
    pub async fn cli(&self, pair: &Pair, role: &str, args: &[&str]) -> Output {
        pair.duplex(role, args)
            .env("DUPLEX_HTTP_ADDR", self.addr.to_string())
            .env("DUPLEX_ADMIN_TOKEN", &self.token)
            .output()
            .await
            .expect("running duplex against the daemon")
    }

    /// The connection state the daemon reports.
    pub async fn state(&self) -> String {
        let (_, v) = self.get("/api/sync/status").await;
        v["connection_state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Monitor cycles completed so far (`duplex_monitor_cycles_total` on /metrics); reading
    /// it does not start a cycle, unlike a trigger.
    pub async fn monitor_cycles(&self) -> u64 {
        let (_, body) = self.call("GET", "/metrics", "").await;
        body.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("duplex_monitor_cycles_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// SIGTERM by PID; returns whether it exited 0 and how long it took.
    pub async fn stop(mut self) -> (bool, Duration) {
        let pid = self.child.id().expect("daemon pid") as i32;
        let start = Instant::now();
        // SAFETY: sending a signal to our own child process by PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("duplex run did not exit within 10 s of SIGTERM")
            .expect("waiting for duplex run");
        (status.success(), start.elapsed())
    }
}

/// `sync_log` rows of the local database of `role`: (sync_type, status, message, details).
pub async fn sync_log(c: &Client) -> Vec<(String, String, String, serde_json::Value)> {
    c.query(
        "SELECT sync_type, status, coalesce(error_message, ''), details FROM duplex.sync_log ORDER BY id",
        &[],
    )
    .await
    .expect("reading sync_log")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Insert an example-app user with id `id` (email derived from it) and `name`.
pub async fn insert_user(c: &Client, id: &str, name: Option<&str>) {
    c.execute(
        r#"INSERT INTO "User" ("id", "email", "name") VALUES ($1, $1 || '@example.com', $2)"#,
        &[&id, &name],
    )
    .await
    .expect("inserting User");
}

/// Whether user `id` exists.
pub async fn user_exists(c: &Client, id: &str) -> bool {
    c.query_opt(r#"SELECT 1 FROM "User" WHERE "id" = $1"#, &[&id])
        .await
        .expect("reading User")
        .is_some()
}

impl Pair {
    /// Cut the link both ways: disable both subscriptions (each side keeps taking writes;
    /// the slots keep every change).
    pub async fn partition(&self) {
        self.set_subscriptions("DISABLE").await;
    }

    /// Restore the link and wait until each side has applied everything the other
    /// committed: each slot's confirmed position reaches its publisher's current WAL.
    pub async fn heal(&self) {
        self.set_subscriptions("ENABLE").await;
        self.wait_caught_up(Duration::from_secs(60)).await;
    }

    /// `ENABLE` or `DISABLE` both subscriptions.
    async fn set_subscriptions(&self, action: &str) {
        for (c, sub) in [
            (self.main().await, "duplex_cloud_to_main"),
            (self.cloud().await, "duplex_main_to_cloud"),
        ] {
            c.batch_execute(&format!("ALTER SUBSCRIPTION {sub} {action}"))
                .await
                .unwrap_or_else(|e| panic!("ALTER SUBSCRIPTION {sub} {action}: {e}"));
        }
    }

    /// Run `ddl` (a table's `CREATE TABLE`) on both sides, before `setup_both`.
    pub async fn create(&self, ddl: &str) {
        for c in [self.main().await, self.cloud().await] {
            c.batch_execute(ddl)
                .await
                .expect("creating a table on both sides");
        }
    }

    /// Wait until both directions have confirmed everything their publisher wrote so far.
    pub async fn wait_caught_up(&self, timeout: Duration) {
        self.wait_applied_on("cloud", timeout).await;
        self.wait_applied_on("main", timeout).await;
    }

    /// Wait until `role` ("main" or "cloud") has confirmed everything its peer wrote so
    /// far (the other direction may be cut).
    pub async fn wait_applied_on(&self, role: &str, timeout: Duration) {
        let publisher = if role == "main" {
            self.cloud().await
        } else {
            self.main().await
        };
        let slot = self.slot(role);
        let target: String = publisher
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("reading the WAL position")
            .get(0);
        wait_until(&format!("slot {slot} caught up"), timeout, || async {
            publisher
                .query_one(
                    "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot, &target],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        })
        .await;
    }

    /// `(key, md5 of the whole row)` of every row of `table` (quoted name) on one side.
    pub async fn row_hashes(c: &Client, table: &str) -> Vec<(String, String)> {
        c.query(
            &format!("SELECT md5(to_jsonb(t)::text), md5(t::text) FROM {table} t ORDER BY 1"),
            &[],
        )
        .await
        .expect("hashing rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// Conflict log entries on `c`: (table, record_id, type, winner, resolved_by).
    pub async fn conflicts(
        c: &Client,
    ) -> Vec<(String, String, String, Option<String>, Option<String>)> {
        c.query(
            "SELECT table_name, record_id, conflict_type, winner, resolved_by
               FROM duplex.conflict_log ORDER BY id",
            &[],
        )
        .await
        .expect("reading conflict_log")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
    }
}

/// This database's subscriptions, for queries against cluster-wide views
/// (`pg_subscription` is a shared catalog: every test database has a subscription with
/// the same name).
const OWN_SUBS: &str = "SELECT oid FROM pg_subscription
  WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())";

impl Pair {
    /// Sum of `apply_error_count` over this database's subscriptions on both sides.
    pub async fn apply_error_count(&self) -> i64 {
        let mut total = 0;
        for c in [self.main().await, self.cloud().await] {
            let n: i64 = c
                .query_one(
                    &format!(
                        "SELECT coalesce(sum(apply_error_count), 0)::bigint
                           FROM pg_stat_subscription_stats WHERE subid IN ({OWN_SUBS})"
                    ),
                    &[],
                )
                .await
                .expect("reading pg_stat_subscription_stats")
                .get(0);
            total += n;
        }
        total
    }

    /// Whether every subscription of this database is enabled, on both sides (and there is
    /// at least one on each).
    pub async fn subscriptions_enabled(&self) -> bool {
        for c in [self.main().await, self.cloud().await] {
            let (n, enabled): (i64, i64) = c
                .query_one(
                    &format!(
                        "SELECT count(*), count(*) FILTER (WHERE subenabled)
                           FROM pg_subscription WHERE oid IN ({OWN_SUBS})"
                    ),
                    &[],
                )
                .await
                .map(|r| (r.get(0), r.get(1)))
                .expect("reading pg_subscription");
            if n == 0 || n != enabled {
                return false;
            }
        }
        true
    }

    /// Enable both subscriptions again without waiting for them to catch up.
    pub async fn heal_nowait(&self) {
        self.main()
            .await
            .batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main ENABLE")
            .await
            .expect("enabling main's subscription");
        self.cloud()
            .await
            .batch_execute("ALTER SUBSCRIPTION duplex_main_to_cloud ENABLE")
            .await
            .expect("enabling cloud's subscription");
    }

    /// Break the link of this pair only, without stopping a cluster: terminate this
    /// database's apply workers and the walsenders of its slots on both sides. PostgreSQL
    /// restarts them by itself (after `wal_retrieve_retry_interval`). Returns how many
    /// backends were terminated.
    pub async fn terminate_replication_workers(&self) -> i64 {
        let mut n = 0;
        for c in [self.main().await, self.cloud().await] {
            let k: i64 = c
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (
                           SELECT pid FROM pg_stat_subscription
                            WHERE subid IN ({OWN_SUBS}) AND pid IS NOT NULL
                           UNION
                           SELECT active_pid FROM pg_replication_slots
                            WHERE database = current_database() AND active_pid IS NOT NULL) p"
                    ),
                    &[],
                )
                .await
                .expect("terminating replication workers")
                .get(0);
            n += k;
        }
        n
    }

    /// Conflict log entries with their merge key: (conflict_key, table, record_id, type,
    /// winner, resolved_by, main_version, cloud_version).
    pub async fn conflict_entries(c: &Client) -> Vec<ConflictEntry> {
        c.query(
            "SELECT coalesce(conflict_key, ''), table_name, record_id, conflict_type,
                    coalesce(winner, ''), coalesce(resolved_by, ''),
                    coalesce(main_version::text, 'null'), coalesce(cloud_version::text, 'null')
               FROM duplex.conflict_log ORDER BY id",
            &[],
        )
        .await
        .expect("reading conflict_log")
        .iter()
        .map(|r| ConflictEntry {
            key: r.get(0),
            table: r.get(1),
            record_id: r.get(2),
            kind: r.get(3),
            winner: r.get(4),
            resolved_by: r.get(5),
            main_version: r.get(6),
            cloud_version: r.get(7),
        })
        .collect()
    }
}

/// One `duplex.conflict_log` row, as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictEntry {
    /// conflict_key (the merge key).
    pub key: String,
    /// table_name.
    pub table: String,
    /// record_id.
    pub record_id: String,
    /// conflict_type.
    pub kind: String,
    /// winner.
    pub winner: String,
    /// resolved_by.
    pub resolved_by: String,
    /// main_version as text.
    pub main_version: String,
    /// cloud_version as text.
    pub cloud_version: String,
}

/// A tiny TCP proxy in the test process, so a test can make one database unreachable for
/// one duplex process without touching the shared lab clusters. `stop` closes the listener
/// and every connection through it; `resume` listens on the same port again.
pub struct Proxy {
    /// Port to point a URL at.
    pub port: u16,
    target: u16,
    tasks: Option<tokio::task::JoinSet<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target`, already running.
    pub async fn start(target: u16) -> Proxy {
        let port = free_addr().port();
        let mut p = Proxy {
            port,
            target,
            tasks: None,
        };
        p.resume().await;
        p
    }

    /// Listen again (after `stop`).
    pub async fn resume(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let target = self.target;
        let mut set = tokio::task::JoinSet::new();
        let conns =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let handles = conns.clone();
        set.spawn(async move {
            // The connections are aborted with the listener (see the guard below).
            let _guard = AbortAll(handles.clone());
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                handles.lock().unwrap().push(task.abort_handle());
            }
        });
        self.tasks = Some(set);
    }

    /// Close the listener and every connection through it.
    pub async fn stop(&mut self) {
        if let Some(mut set) = self.tasks.take() {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }

    /// `postgres://...@127.0.0.1:<proxy port>/db`.
    pub fn url(&self, db: &str) -> String {
        url(self.port, db)
    }
}

struct AbortAll(std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>);
impl Drop for AbortAll {
    fn drop(&mut self) {
        if let Ok(v) = self.0.lock() {
            for h in v.iter() {
                h.abort();
            }
        }
    }
}

/// The name of user `id`: `None` when the row is missing.
pub async fn user_name(c: &Client, id: &str) -> Option<Option<String>> {
    c.query_opt(r#"SELECT "name" FROM "User" WHERE "id" = $1"#, &[&id])
        .await
        .expect("reading User")
        .map(|r| r.get(0))
}

/// Set user `id`'s name with an explicit `"updatedAt"` (`at`, timestamptz text).
pub async fn set_name(c: &Client, id: &str, name: &str, at: &str) {
    c.execute(
        r#"UPDATE "User" SET "name" = $2, "updatedAt" = $3::text::timestamptz WHERE "id" = $1"#,
        &[&id, &name, &at],
    )
    .await
    .expect("updating User");
}

/// Drops a role a test created on both lab clusters when dropped (after the pair, whose
/// databases hold its grants: declare it before the pair).
pub struct DropRole(pub String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let user = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                for port in [main_port(), cloud_port()] {
                    let _ = connect(port, "postgres")
                        .await
                        .batch_execute(&format!("DROP ROLE IF EXISTS {user}"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A table with an identity column `GENERATED ALWAYS`, a stored and a virtual generated
/// column, and an updated-at column (last_write_wins unless configured otherwise).
pub const LINE: &str = r#"CREATE TABLE "Line" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    qty int NOT NULL,
    price numeric NOT NULL,
    total numeric GENERATED ALWAYS AS (qty * price) STORED,
    doubled int GENERATED ALWAYS AS (qty * 2) VIRTUAL,
    "updatedAt" timestamptz NOT NULL DEFAULT clock_timestamp())"#;

/// `total` (generated: qty * price) of "Line" `id`, as text.
pub async fn line_total(c: &Client, id: i64) -> Option<String> {
    c.query_opt(r#"SELECT total::text FROM "Line" WHERE id = $1"#, &[&id])
        .await
        .expect("reading Line")
        .map(|r| r.get(0))
}
