//! The conflict housekeeping worker of `duplex run` against the lab: the peer's conflicts
//! reach this side's log once, the carrier is emptied, resolved entries past retention are
//! pruned while open ones stay, and the clock offset shows in status and metrics.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, Pair, EXAMPLE_TABLES, FAST_DAEMON};
use tokio_postgres::Client;

const TWENTY_SECONDS: Duration = Duration::from_secs(20);

/// Log a conflict as the in-stream trigger of `side` would, `age_days` ago, resolved or not.
async fn log_conflict(c: &Client, side: &str, key: &str, age_days: i32, resolved: bool) {
    c.execute(
        "INSERT INTO duplex.conflict_log (table_name, record_id, conflict_type, main_version,
             cloud_version, policy, winner, resolved_by, resolved_at, created_at, detected_on,
             conflict_key)
         VALUES ('public.User', '[\"u1\"]', 'update_update', '{\"name\":\"a\"}',
                 '{\"name\":\"b\"}', 'last_write_wins', 'CLOUD',
                 CASE WHEN $4 THEN 'LAST_WRITE_WINS' END,
                 CASE WHEN $4 THEN now() - make_interval(days => $3) END,
                 now() - make_interval(days => $3), $1, $2)",
        &[&side, &key, &age_days, &resolved],
    )
    .await
    .expect("logging a conflict");
}

async fn entries(c: &Client, key: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM duplex.conflict_log WHERE conflict_key = $1",
        &[&key],
    )
    .await
    .expect("counting conflict-log entries")
    .get(0)
}

async fn housekeeping_cycles(d: &Daemon) -> u64 {
    let (_, v) = d.get("/api/sync/status").await;
    v["conflicts"]["cycles"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn the_peers_conflicts_reach_this_side_once_and_the_carrier_and_old_resolved_entries_go() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);

    // Seen by cloud only; seen by both sides; an old resolved and an old open one on main.
    log_conflict(&cloud, "cloud", "only-cloud", 0, true).await;
    log_conflict(&cloud, "cloud", "open-on-cloud", 0, false).await;
    log_conflict(&cloud, "cloud", "both", 0, true).await;
    log_conflict(&main, "main", "both", 0, true).await;
    log_conflict(&main, "main", "old-resolved", 200, true).await;
    log_conflict(&main, "main", "old-open", 200, false).await;
    main.execute(
        "INSERT INTO duplex.change_meta (rel, key, op, inc) VALUES ('public.User', '[\"u1\"]', 'U', '0')",
        &[],
    )
    .await
    .expect("writing a carrier row");
    main.batch_execute(
        "INSERT INTO duplex.tombstone (rel, key, inc, deleted_at) VALUES
           ('public.User', '[\"old\"]', '0', now() - interval '30 days'),
           ('public.User', '[\"new\"]', '0', now())",
    )
    .await
    .expect("writing tombstones");

    let d = pair.start_daemon("main", &[]).await;
    wait_until(
        "cloud's conflicts merged into main",
        TWENTY_SECONDS,
        || async {
            entries(&main, "only-cloud").await == 1 && entries(&main, "open-on-cloud").await == 1
        },
    )
    .await;
    // Two more cycles re-read nothing new and duplicate nothing.
    let after = housekeeping_cycles(&d).await;
    wait_until("two more housekeeping cycles", TWENTY_SECONDS, || async {
        housekeeping_cycles(&d).await >= after + 2
    })
    .await;
    for key in ["only-cloud", "open-on-cloud", "both"] {
        assert_eq!(entries(&main, key).await, 1, "{key} on main");
    }
    let kept = main
        .query_one(
            "SELECT detected_on, resolved_by IS NOT NULL, resolved_at IS NULL
               FROM duplex.conflict_log WHERE conflict_key = 'open-on-cloud'",
            &[],
        )
        .await
        .expect("reading the merged entry");
    assert_eq!(
        (kept.get::<_, String>(0), kept.get(1), kept.get(2)),
        ("cloud".to_string(), false, true),
        "the merged entry keeps where it was detected and that it is open"
    );
    // Merging is one-way per daemon: cloud's log is left as it was.
    assert_eq!(entries(&cloud, "old-resolved").await, 0);

    let carried: i64 = main
        .query_one("SELECT count(*) FROM duplex.change_meta", &[])
        .await
        .expect("counting carrier rows")
        .get(0);
    assert_eq!(carried, 0, "change_meta emptied");
    assert_eq!(
        entries(&main, "old-resolved").await,
        0,
        "old resolved pruned"
    );
    assert_eq!(entries(&main, "old-open").await, 1, "open entries are kept");
    // Replication is CONNECTED, so tombstones past retention (7 days by default) go.
    wait_until("the old tombstone collected", TWENTY_SECONDS, || async {
        let keys: Vec<String> = main
            .query("SELECT key FROM duplex.tombstone ORDER BY key", &[])
            .await
            .expect("reading tombstones")
            .iter()
            .map(|r| r.get(0))
            .collect();
        keys == ["[\"new\"]"]
    })
    .await;

    let (_, status) = d.get("/api/sync/status").await;
    let c = &status["conflicts"];
    assert!(c["merged_total"].as_u64() >= Some(2), "{c}");
    assert!(c["log_pruned_total"].as_u64() >= Some(1), "{c}");
    assert!(c["change_meta_deleted_total"].as_u64() >= Some(1), "{c}");
    assert!(c["tombstones_deleted_total"].as_u64() >= Some(1), "{c}");
    // Both lab clusters run on this host: one clock, so the offset is within the round trip.
    let offset = c["clock"]["offset_ms"].as_f64().expect("offset measured");
    let round_trip = c["clock"]["round_trip_ms"].as_f64().expect("round trip");
    assert!(offset.abs() <= round_trip + 50.0, "{c}");
    assert!(c["clock"]["measured_at"].is_string(), "{c}");

    let (code, metrics) = d.call("GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("duplex_clock_offset_ms "), "{metrics}");
    assert!(
        metrics.contains("duplex_housekeeping_rows_total{what=\"conflicts_merged\"}"),
        "{metrics}"
    );
    let (stopped, _) = d.stop().await;
    assert!(stopped, "duplex run exits 0 on SIGTERM");
}
