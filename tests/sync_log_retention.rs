//! `duplex.sync_log` retention against the lab: old entries go in batches, and the entries
//! a restart reads back (the latest of each alert kind, the open disconnection and the
//! transition before it, the latest success of each kind of work) stay, so pruning never
//! changes what `duplex run` restores; the daemon prunes at start and says how many.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_addr, wait_until, Pair, EXAMPLE_TABLES, FAST_DAEMON};
use duplex::store::sync_log;
use tokio::io::AsyncBufReadExt;
use tokio_postgres::Client;

const THIRTY_SECONDS: Duration = Duration::from_secs(30);

/// The pair's `role` database with duplex's schema (what `duplex run` applies at start).
async fn migrated(pair: &Pair, role: &str) -> Client {
    let mut c = match role {
        "main" => pair.main().await,
        _ => pair.cloud().await,
    };
    duplex::store::migrations::migrate(&mut c)
        .await
        .expect("applying duplex's migrations");
    c
}

/// Log an entry `age_days` old; returns its id.
async fn log(
    c: &Client,
    sync_type: &str,
    status: &str,
    details: serde_json::Value,
    age_days: i32,
) -> i64 {
    c.query_one(
        "INSERT INTO duplex.sync_log (sync_type, status, details, created_at)
         VALUES ($1, $2, $3, now() - make_interval(days => $4)) RETURNING id",
        &[&sync_type, &status, &details, &age_days],
    )
    .await
    .expect("writing sync_log")
    .get(0)
}

async fn alert(c: &Client, kind: &str, status: &str, age_days: i32) -> i64 {
    log(
        c,
        "alert",
        status,
        serde_json::json!({ "kind": kind }),
        age_days,
    )
    .await
}

async fn transition(c: &Client, to: &str, age_days: i32) -> i64 {
    log(
        c,
        "connection",
        "INFO",
        serde_json::json!({ "to": to }),
        age_days,
    )
    .await
}

async fn ids(c: &Client) -> Vec<i64> {
    c.query("SELECT id FROM duplex.sync_log ORDER BY id", &[])
        .await
        .expect("reading sync_log")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What a restart reads back, in comparable form.
async fn restored(c: &Client) -> (Vec<String>, String, String) {
    let alerts = sync_log::latest_alerts(c)
        .await
        .expect("latest alerts")
        .into_iter()
        .map(|a| format!("{} {} {}", a.kind, a.status, a.created_at))
        .collect();
    let open = format!(
        "{:?}",
        sync_log::open_disconnection(c)
            .await
            .expect("open disconnection")
    );
    let success = format!(
        "{:?}",
        sync_log::last_success(c).await.expect("last success")
    );
    (alerts, open, success)
}

/// Prune like the daemon, with batches of `batch`: until one comes back short.
async fn prune_all(c: &Client, days: i32, batch: i64) -> Vec<u64> {
    let mut sizes = Vec::new();
    loop {
        let n = sync_log::prune_older_than(c, days, batch)
            .await
            .expect("pruning sync_log");
        sizes.push(n);
        if n < batch as u64 {
            return sizes;
        }
    }
}

#[tokio::test]
async fn pruning_deletes_old_entries_but_never_what_a_restart_reads_back() {
    let pair = Pair::new().await;
    let c = migrated(&pair, "main").await;

    // Alert kinds: one cleared long ago (its RESOLVED entry is the latest), one still
    // raised from long ago, one raised again recently, and an entry without a kind.
    let a_raised = alert(&c, "a", "WARNING", 50).await;
    let a_resolved = alert(&c, "a", "RESOLVED", 45).await;
    let b_raised = alert(&c, "b", "CRITICAL", 40).await;
    let c_old = alert(&c, "c", "WARNING", 40).await;
    let c_new = alert(&c, "c", "WARNING", 1).await;
    let kindless = log(&c, "alert", "INFO", serde_json::json!({}), 40).await;
    // Successes: the latest of each type stays, even when old.
    let setup_older = log(&c, "setup", "SUCCESS", serde_json::json!({}), 60).await;
    let setup_latest = log(&c, "setup", "SUCCESS", serde_json::json!({}), 40).await;
    let scan_old = log(&c, "scan", "SUCCESS", serde_json::json!({}), 40).await;
    let scan_new = log(&c, "scan", "SUCCESS", serde_json::json!({}), 0).await;
    let integrity_failed = log(&c, "integrity", "FAILED", serde_json::json!({}), 40).await;
    // An outage that is still open: the CONNECTED before it and its first DISCONNECTED
    // stay, and the latest connection entry.
    let before = transition(&c, "DISCONNECTED", 70).await;
    let connected = transition(&c, "CONNECTED", 60).await;
    let went_down = transition(&c, "DISCONNECTED", 50).await;
    let retry = transition(&c, "RECONNECTING", 45).await;
    let down_again = transition(&c, "DISCONNECTED", 44).await;
    let latest_connection = transition(&c, "RECONNECTING", 40).await;
    // Plenty of old noise, more than two batches, and a recent entry.
    c.execute(
        "INSERT INTO duplex.sync_log (sync_type, status, created_at)
         SELECT 'control', 'INFO', now() - interval '31 days' - g * interval '1 minute'
           FROM generate_series(1, 25) g",
        &[],
    )
    .await
    .expect("writing old entries");
    let recent = log(&c, "control", "INFO", serde_json::json!({}), 29).await;

    let before_prune = restored(&c).await;
    assert_eq!(
        before_prune.0.len(),
        3,
        "three alert kinds: {:?}",
        before_prune.0
    );
    assert!(before_prune.1.starts_with("Some("), "{before_prune:?}");

    let sizes = prune_all(&c, 30, 10).await;
    assert_eq!(sizes, vec![10, 10, 10, 4], "9 old entries and 25 of noise");
    assert_eq!(restored(&c).await, before_prune);
    let mut kept = vec![
        a_resolved,
        b_raised,
        c_new,
        setup_latest,
        scan_new,
        connected,
        went_down,
        latest_connection,
        recent,
    ];
    kept.sort();
    assert_eq!(ids(&c).await, kept);
    for gone in [
        a_raised,
        c_old,
        kindless,
        setup_older,
        scan_old,
        integrity_failed,
        before,
        retry,
        down_again,
    ] {
        assert!(!ids(&c).await.contains(&gone), "{gone} should be gone");
    }

    // Nothing left to prune: a second pass deletes nothing and changes nothing.
    assert_eq!(prune_all(&c, 30, 10).await, vec![0]);
    assert_eq!(restored(&c).await, before_prune);
}

#[tokio::test]
async fn without_any_connected_transition_the_first_disconnection_stays() {
    let pair = Pair::new().await;
    let c = migrated(&pair, "main").await;
    let first = transition(&c, "DISCONNECTED", 90).await;
    let _retry = transition(&c, "RECONNECTING", 80).await;
    let second = transition(&c, "DISCONNECTED", 70).await;
    let open = sync_log::open_disconnection(&c).await.expect("reading");
    assert!(open.is_some());

    assert_eq!(prune_all(&c, 30, 1000).await, vec![1]);
    assert_eq!(ids(&c).await, vec![first, second]);
    assert_eq!(
        sync_log::open_disconnection(&c).await.expect("reading"),
        open
    );

    // Once the peer is back, the outage's entries may go: only the CONNECTED stays.
    let back = transition(&c, "CONNECTED", 60).await;
    assert_eq!(
        sync_log::open_disconnection(&c).await.expect("reading"),
        None
    );
    assert_eq!(prune_all(&c, 30, 1000).await, vec![2]);
    assert_eq!(ids(&c).await, vec![back]);
    assert_eq!(
        sync_log::open_disconnection(&c).await.expect("reading"),
        None
    );
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect("counting").get(0)
}

#[tokio::test]
async fn the_daemon_prunes_old_entries_at_start_and_keeps_the_latest_alert() {
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}{FAST_DAEMON}sync_log_retention_days = 1\n"
    ));
    // Cloud: its scanner idles (scanner_role is main), so no worker logs a `setup` or
    // alert entry of the kinds below while the test runs.
    let c = migrated(&pair, "cloud").await;
    c.execute(
        "INSERT INTO duplex.sync_log (sync_type, status, created_at)
         SELECT 'control', 'INFO', now() - interval '2 days'
           FROM generate_series(1, 2500)",
        &[],
    )
    .await
    .expect("writing old entries");
    let kept_alert = alert(&c, "retention_test", "WARNING", 10).await;
    let old_setup = log(&c, "setup", "SUCCESS", serde_json::json!({}), 20).await;
    let latest_setup = log(&c, "setup", "SUCCESS", serde_json::json!({}), 10).await;
    let recent = log(&c, "control", "INFO", serde_json::json!({}), 0).await;

    // The daemon's log goes to a pipe that a task drains (a full pipe would block it).
    let mut child = pair
        .duplex("cloud", &["run"])
        .env("DUPLEX_HTTP_ADDR", free_addr().to_string())
        .env("DUPLEX_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting duplex run");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = stderr.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let logged = |what: &'static str| {
        let stderr = stderr.clone();
        move || {
            let found = stderr.lock().map(|s| s.contains(what)).unwrap_or(false);
            async move { found }
        }
    };

    wait_until(
        "the daemon to log what it pruned",
        THIRTY_SECONDS,
        logged("pruned 2501 sync_log entries past daemon.sync_log_retention_days = 1"),
    )
    .await;
    let old = "SELECT count(*) FROM duplex.sync_log WHERE created_at < now() - interval '1 day'";
    assert_eq!(count(&c, old).await, 2, "only the kept ones are old");
    let present = ids(&c).await;
    for id in [kept_alert, latest_setup, recent] {
        assert!(present.contains(&id), "{id} should stay");
    }
    assert!(!present.contains(&old_setup), "the older setup entry goes");
    let alerts = sync_log::latest_alerts(&c).await.expect("latest alerts");
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "retention_test" && a.status == "WARNING"),
        "the raised alert still reads back after a restart"
    );

    // Stop the daemon this test started, by PID.
    let pid = child.id().expect("daemon pid") as i32;
    // SAFETY: sending a signal to our own child process by PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("duplex run did not exit within 10 s of SIGTERM")
        .expect("waiting for duplex run");
    let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(status.success(), "duplex run exited with {status}:\n{log}");
    assert!(!log.contains("tick failed"), "{log}");
}
