//! Stopping the cloud cluster: main's controller disconnects, backs off, reconnects, and
//! rows written meanwhile arrive. This stops a lab cluster, so it is the only test in this
//! binary (test binaries run one after another).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{insert_user, sync_log, wait_until, Pair, EXAMPLE_TABLES, FAST_DAEMON};

fn lab(args: &[&str]) {
    let status = Command::new(format!("{}/scripts/lab.sh", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .status()
        .expect("running scripts/lab.sh");
    assert!(status.success(), "scripts/lab.sh {args:?} failed");
}

/// Starts cloud again even when the test fails half-way.
struct CloudBack;
impl Drop for CloudBack {
    fn drop(&mut self) {
        let _ = Command::new(format!("{}/scripts/lab.sh", env!("CARGO_MANIFEST_DIR")))
            .args(["start", "cloud"])
            .status();
    }
}

#[tokio::test]
async fn losing_cloud_disconnects_backs_off_and_catches_up_after_restart() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    wait_until("CONNECTED", Duration::from_secs(10), || async {
        d.state().await == "CONNECTED"
    })
    .await;

    let _guard = CloudBack;
    lab(&["stop", "cloud", "immediate"]);
    // Two one-second cycles, plus a second for a cycle's own work on a busy machine.
    wait_until(
        "DISCONNECTED within two cycles",
        Duration::from_millis(2500),
        || async { d.state().await == "DISCONNECTED" },
    )
    .await;
    let (code, health) = d.call("GET", "/health/sync", "").await;
    assert_eq!(code, 503);
    assert!(
        health["reason"].as_str().unwrap().contains("DISCONNECTED"),
        "{health}"
    );
    let main = pair.main().await;
    let connected: bool = main
        .query_one("SELECT is_connected FROM duplex.sync_state", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!connected);
    let out = pair.run("main", &["status"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("cloud is unreachable"));

    for i in 0..20 {
        insert_user(&main, &format!("offline-{i}"), None).await;
    }
    // Stay down long enough for three reconnect attempts (1 s, 1 s, 2 s).
    wait_until(
        "three failed reconnect attempts",
        Duration::from_secs(15),
        || async {
            sync_log(&main)
                .await
                .iter()
                .filter(|(t, _, _, d)| {
                    t == "connection" && d["to"] == "RECONNECTING" && d["from"] == "DISCONNECTED"
                })
                .count()
                >= 3
        },
    )
    .await;

    // Walk the runbook: its query of retained WAL runs, then the peer comes back and a
    // trigger skips the rest of the backoff.
    let book = std::fs::read_to_string(format!(
        "{}/runbooks/peer-disconnected.md",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let query = "SELECT slot_name, wal_status, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) AS retained, pg_size_pretty(safe_wal_size) AS room FROM pg_replication_slots WHERE slot_name LIKE 'duplex%'";
    assert!(book.contains(query), "the runbook's query changed");
    assert!(!main.query(query, &[]).await.unwrap().is_empty());
    for step in [
        "scripts/lab.sh start cloud",
        "duplex trigger",
        "duplex status",
    ] {
        assert!(book.contains(step), "the runbook no longer says `{step}`");
    }
    lab(&["start", "cloud"]);
    let out = d.cli(&pair, "main", &["trigger"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cloud = pair.cloud().await;
    wait_until("offline rows on cloud", Duration::from_secs(30), || async {
        cloud
            .query_one(
                r#"SELECT count(*) FROM "User" WHERE "id" LIKE 'offline-%'"#,
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 20)
            .unwrap_or(false)
    })
    .await;
    wait_until("CONNECTED again", Duration::from_secs(30), || async {
        d.state().await == "CONNECTED"
    })
    .await;

    let log = sync_log(&main).await;
    let transitions: Vec<(String, String)> = log
        .iter()
        .filter(|(t, _, _, d)| t == "connection" && d.get("from").is_some())
        .map(|(_, _, _, d)| {
            (
                d["from"].as_str().unwrap().to_string(),
                d["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reconnect = transitions
        .iter()
        .rposition(|(f, t)| f == "RECONNECTING" && (t == "CONNECTED" || t == "DEGRADED"))
        .expect("a RECONNECTING -> CONNECTED/DEGRADED transition");
    assert_eq!(
        transitions[reconnect - 1],
        ("DISCONNECTED".into(), "RECONNECTING".into())
    );
    assert!(
        transitions.contains(&("CONNECTED".into(), "DISCONNECTED".into())),
        "{transitions:?}"
    );
    // Back to CONNECTED after the outage: the immediate sync cycle was signalled once.
    wait_until(
        "immediate sync signalled",
        Duration::from_secs(5),
        || async {
            sync_log(&main)
                .await
                .iter()
                .filter(|(_, _, _, d)| d["signal"] == "immediate_sync")
                .count()
                == 1
        },
    )
    .await;

    // Attempts were spaced by the schedule: 1 s, 1 s, then 2 s (no jitter in this config).
    let times: Vec<chrono::DateTime<chrono::Utc>> = main
        .query(
            "SELECT created_at FROM duplex.sync_log WHERE sync_type = 'connection'
                AND details->>'to' = 'RECONNECTING' AND details->>'from' = 'DISCONNECTED' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_seconds_f64())
        .collect();
    assert!(gaps.len() >= 2, "{gaps:?}");
    assert!(gaps[0] >= 0.9, "first gap {gaps:?}");
    assert!(
        gaps[1] >= 1.9,
        "second gap should follow the 2 s step: {gaps:?}"
    );
    let (ok, _) = d.stop().await;
    assert!(ok);
}
