//! The verifying scanner on the lab's real clusters: divergence made behind replication's
//! back is found, settled by policy and logged once; rows in flight are not differences.

mod common;

use std::time::Duration;

use common::{insert_user, text, Pair};
use serde_json::Value;
use tokio_postgres::Client;

/// Run `sql` on `c` under a replication origin of the test's own, so it is not replicated
/// (divergence behind replication's back), then leave and drop the origin.
async fn behind(pair: &Pair, c: &Client, sql: &str) {
    let origin = format!("duplex_t_{}_behind", pair.id);
    c.batch_execute(&format!(
        "SELECT pg_replication_origin_create('{origin}') WHERE pg_replication_origin_oid('{origin}') IS NULL;
         SELECT pg_replication_origin_session_setup('{origin}');"
    ))
    .await
    .expect("using a replication origin");
    let result = c.batch_execute(sql).await;
    // An origin holds one of the cluster's few replication state slots until dropped.
    c.batch_execute(&format!(
        "SELECT pg_replication_origin_session_reset(); SELECT pg_replication_origin_drop('{origin}')"
    ))
    .await
    .expect("leaving and dropping the replication origin");
    result.expect("writing behind replication's back");
}

/// Make `c`'s session hold duplex's first repair origin, as a repair running elsewhere
/// would. Another test may hold it for a moment: wait for it like duplex does.
async fn hold_first_repair_origin(c: &Client) {
    c.batch_execute(
        "SELECT pg_replication_origin_create('duplex_repair')
          WHERE pg_replication_origin_oid('duplex_repair') IS NULL",
    )
    .await
    .expect("creating duplex_repair");
    common::wait_until(
        "duplex_repair to be free",
        Duration::from_secs(30),
        || async {
            c.batch_execute("SELECT pg_replication_origin_session_setup('duplex_repair')")
                .await
                .is_ok()
        },
    )
    .await;
}

/// Scanner entries: (table, key, type, winner, resolved_by).
async fn scanner_log(c: &Client) -> Vec<(String, String, String, Option<String>, Option<String>)> {
    c.query(
        "SELECT table_name, record_id, conflict_type, winner, resolved_by
           FROM duplex.conflict_log WHERE detected_by = 'scanner' ORDER BY table_name, record_id",
        &[],
    )
    .await
    .expect("reading conflict_log")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

async fn scan_json(pair: &Pair, args: &[&str]) -> Value {
    let mut all = vec!["scan", "--json"];
    all.extend_from_slice(args);
    let out = pair.run("main", &all).await;
    assert!(out.status.success(), "{:?}", text(&out));
    serde_json::from_slice(&out.stdout).expect("scan --json is JSON")
}

async fn name(c: &Client, id: &str) -> Option<Option<String>> {
    c.query_opt(r#"SELECT "name" FROM "User" WHERE "id" = $1"#, &[&id])
        .await
        .expect("reading User")
        .map(|r| r.get(0))
}

async fn users_equal(pair: &Pair) {
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    assert_eq!(
        Pair::row_hashes(&main, r#""User""#).await,
        Pair::row_hashes(&cloud, r#""User""#).await
    );
}

#[tokio::test]
async fn divergence_behind_replication_s_back_is_settled_by_policy_and_logged_once() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for i in 1..=6 {
        insert_user(&main, &format!("u{i}"), Some("first")).await;
    }
    main.batch_execute(
        r#"INSERT INTO "Group" ("id", "name", "ownerId") VALUES ('g1', 'team', 'u1');
           INSERT INTO "GroupMember" ("groupId", "userId") VALUES ('g1', 'u1'), ('g1', 'u2');"#,
    )
    .await
    .expect("seeding");
    pair.wait_caught_up(Duration::from_secs(20)).await;

    // last_write_wins by "updatedAt": the later write wins, whichever side made it.
    behind(&pair, &main, r#"UPDATE "User" SET "name" = 'main later', "updatedAt" = '2030-01-01 10:00:09+00' WHERE "id" = 'u1';
                            UPDATE "User" SET "name" = 'main earlier', "updatedAt" = '2030-01-01 10:00:01+00' WHERE "id" = 'u4';
                            INSERT INTO "User" ("id", "email") VALUES ('u8', 'u8@example.com');
                            DELETE FROM "User" WHERE "id" = 'u3';"#).await;
    behind(&pair, &cloud, r#"UPDATE "User" SET "name" = 'cloud later', "updatedAt" = '2030-01-01 10:00:09+00' WHERE "id" = 'u2';
                             UPDATE "User" SET "name" = 'cloud later', "updatedAt" = '2030-01-01 10:00:05+00' WHERE "id" = 'u4';
                             INSERT INTO "User" ("id", "email") VALUES ('u7', 'u7@example.com');
                             UPDATE "GroupMember" SET "role" = 'admin' WHERE "userId" = 'u2';"#).await;

    let dry = scan_json(&pair, &["--dry-run"]).await;
    assert_eq!(dry["differences"], 7, "{dry}");
    assert!(
        scanner_log(&main).await.is_empty(),
        "a dry run logs nothing"
    );

    // Another repair holds duplex's first origin on both sides: this one takes the next.
    let busy = [pair.main().await, pair.cloud().await];
    for c in &busy {
        hold_first_repair_origin(c).await;
    }
    let v = scan_json(&pair, &[]).await;
    drop(busy);
    assert_eq!(v["differences"], 7, "{v}");
    assert_eq!(v["repaired"], 7, "{v}");
    assert_eq!(v["logged"], 7, "{v}");
    users_equal(&pair).await;
    assert_eq!(
        Pair::row_hashes(&main, r#""GroupMember""#).await,
        Pair::row_hashes(&cloud, r#""GroupMember""#).await
    );
    for c in [&main, &cloud] {
        assert_eq!(name(c, "u1").await, Some(Some("main later".into())));
        assert_eq!(name(c, "u2").await, Some(Some("cloud later".into())));
        assert_eq!(name(c, "u4").await, Some(Some("cloud later".into())));
        assert_eq!(name(c, "u3").await, None, "main's delete wins");
        assert!(name(c, "u7").await.is_some() && name(c, "u8").await.is_some());
    }
    let role: String = cloud
        .query_one(
            r#"SELECT "role" FROM "GroupMember" WHERE "userId" = 'u2'"#,
            &[],
        )
        .await
        .expect("reading GroupMember")
        .get(0);
    assert_eq!(role, "member", "GroupMember is main_authoritative");

    let log = scanner_log(&main).await;
    let short: Vec<(&str, &str, &str, Option<&str>)> = log
        .iter()
        .map(|(t, k, ty, w, _)| (t.as_str(), k.as_str(), ty.as_str(), w.as_deref()))
        .collect();
    assert_eq!(
        short,
        vec![
            (
                "public.GroupMember",
                r#"["g1", "u2"]"#,
                "update_update",
                Some("MAIN")
            ),
            ("public.User", r#"["u1"]"#, "update_update", Some("MAIN")),
            ("public.User", r#"["u2"]"#, "update_update", Some("CLOUD")),
            ("public.User", r#"["u3"]"#, "delete_update", Some("DELETED")),
            ("public.User", r#"["u4"]"#, "update_update", Some("CLOUD")),
            ("public.User", r#"["u7"]"#, "missing_on_main", Some("CLOUD")),
            ("public.User", r#"["u8"]"#, "missing_on_cloud", Some("MAIN")),
        ]
    );
    assert!(
        log.iter().all(|e| e.4.is_some()),
        "resolved by policy: {log:?}"
    );

    // Repairs were written under duplex_repair: nothing travels back, nothing new.
    pair.wait_caught_up(Duration::from_secs(20)).await;
    users_equal(&pair).await;
    let again = scan_json(&pair, &[]).await;
    assert_eq!(again["differences"], 0, "{again}");
    assert_eq!(again["logged"], 0, "{again}");
    assert_eq!(scanner_log(&main).await.len(), 7);
}

#[tokio::test]
async fn a_later_update_of_a_row_the_other_side_deleted_converges_after_one_scan() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user(&main, "u1", Some("first")).await;
    pair.wait_caught_up(Duration::from_secs(20)).await;
    behind(&pair, &main, r#"DELETE FROM "User" WHERE "id" = 'u1'"#).await;
    // Replicated, but skipped on main as update_missing: the sides now differ.
    cloud
        .batch_execute(r#"UPDATE "User" SET "name" = 'later', "updatedAt" = now() + interval '1 minute' WHERE "id" = 'u1'"#)
        .await
        .expect("updating on cloud");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    assert!(!common::user_exists(&main, "u1").await);
    assert!(common::user_exists(&cloud, "u1").await);

    let v = scan_json(&pair, &["--table", "User"]).await;
    assert_eq!(v["repaired"], 1, "{v}");
    for c in [&main, &cloud] {
        assert!(!common::user_exists(c, "u1").await, "the delete wins");
    }
    let again = scan_json(&pair, &["--table", "User"]).await;
    assert_eq!(again["differences"], 0, "{again}");
}

#[tokio::test]
async fn a_truncate_on_one_side_is_reported_once_and_not_auto_resolved() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.batch_execute(
        r#"INSERT INTO "User" ("id", "email") SELECT 'u' || i, 'u' || i || '@x' FROM generate_series(1, 300) i"#,
    )
    .await
    .expect("seeding");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    cloud
        .batch_execute(r#"TRUNCATE "User" CASCADE"#)
        .await
        .expect("truncating on cloud");

    for _ in 0..2 {
        let v = scan_json(&pair, &["--table", "public.User"]).await;
        assert_eq!(v["tables"][0]["truncated"], "cloud", "{v}");
        assert_eq!(v["repaired"], 0, "{v}");
    }
    let n: i64 = main
        .query_one(r#"SELECT count(*) FROM "User""#, &[])
        .await
        .expect("counting")
        .get(0);
    assert_eq!(n, 300, "main's rows are untouched");
    let open: Vec<(String, String)> = main
        .query(
            "SELECT table_name, conflict_type FROM duplex.conflict_log WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .expect("reading conflict_log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        open,
        vec![("public.User".to_string(), "truncate".to_string())]
    );

    let out = pair.run("main", &["integrity"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("integrity FAILED: public.User"), "{stdout}");
    assert!(stdout.contains("TRUNCATED on cloud"), "{stdout}");
}

/// Tables with awkward keys and values, created on both sides before setup.
const ODD_TABLES: &str = r#"
CREATE TABLE "Odd ""Name""" (
    "k1" text NOT NULL, "k2" integer NOT NULL,
    "t" text, "j" jsonb, "n" numeric, "ts" timestamptz,
    "updatedAt" timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("k1", "k2")
);
"#;

#[tokio::test]
async fn null_empty_and_null_text_numeric_scale_differ_but_jsonb_order_and_time_zones_do_not() {
    let pair = Pair::new().await;
    for c in [pair.main().await, pair.cloud().await] {
        c.batch_execute(ODD_TABLES).await.expect("creating tables");
    }
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.batch_execute(
        r#"INSERT INTO "Odd ""Name""" ("k1", "k2", "t", "j", "n", "ts", "updatedAt")
           SELECT 'key ' || i, i % 3, '', '{"a": 1, "b": 2}', 1.0, '2030-01-01 12:00:00+00',
                  '2030-01-01 00:00:00+00'
             FROM generate_series(1, 40) i"#,
    )
    .await
    .expect("seeding");
    pair.wait_caught_up(Duration::from_secs(20)).await;

    behind(
        &pair,
        &cloud,
        r#"SET TimeZone = 'Pacific/Auckland';
           UPDATE "Odd ""Name""" SET "t" = NULL WHERE "k1" = 'key 1';
           UPDATE "Odd ""Name""" SET "t" = 'null' WHERE "k1" = 'key 2';
           UPDATE "Odd ""Name""" SET "n" = 1.00 WHERE "k1" = 'key 3';
           UPDATE "Odd ""Name""" SET "j" = '{"b": 2, "a": 1}' WHERE "k1" = 'key 4';
           UPDATE "Odd ""Name""" SET "ts" = '2030-01-02 01:00:00+13' WHERE "k1" = 'key 5';
           UPDATE "Odd ""Name""" SET "j" = '{"b": 2, "a": 1, "c": null}' WHERE "k1" = 'key 6';"#,
    )
    .await;
    behind(
        &pair,
        &main,
        r#"SET TimeZone = 'America/Los_Angeles';
           UPDATE "Odd ""Name""" SET "ts" = '2030-01-01 04:00:00-08' WHERE "k1" = 'key 5';"#,
    )
    .await;

    let v = scan_json(&pair, &["--table", r#"Odd "Name""#, "--dry-run"]).await;
    let t = &v["tables"][0];
    assert_eq!(t["method"], "binary", "{v}");
    assert_eq!(t["confirmed"], 4, "{v}");
    let keys: Vec<String> = t["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| c["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        keys,
        vec![
            r#"["key 1", 1]"#,
            r#"["key 2", 2]"#,
            r#"["key 3", 0]"#,
            r#"["key 6", 0]"#
        ]
    );
    // Same updatedAt on both sides: main wins every difference.
    let v = scan_json(&pair, &["--table", r#"Odd "Name""#]).await;
    assert_eq!(v["repaired"], 4, "{v}");
    for c in [&main, &cloud] {
        c.batch_execute("SET TimeZone = 'UTC'")
            .await
            .expect("session");
    }
    let whole = r#"SELECT array_agg(h ORDER BY h) FROM (SELECT md5(to_jsonb(x.*)::text) AS h FROM "Odd ""Name""" x) s"#;
    let m: Vec<String> = main.query_one(whole, &[]).await.expect("hashing").get(0);
    let c: Vec<String> = cloud.query_one(whole, &[]).await.expect("hashing").get(0);
    assert_eq!(m, c);
    let n: String = cloud
        .query_one(
            r#"SELECT "n"::text FROM "Odd ""Name""" WHERE "k1" = 'key 3'"#,
            &[],
        )
        .await
        .expect("reading")
        .get(0);
    assert_eq!(n, "1.0");

    // Numbers reach the losing side exactly as the winner holds them: scale kept, and
    // more digits than a 64-bit float has.
    behind(
        &pair,
        &main,
        r#"UPDATE "Odd ""Name""" SET "n" = 12345678901234567890.120 WHERE "k1" = 'key 7';
           UPDATE "Odd ""Name""" SET "n" = 2.50, "j" = '{"x": 0.10000000000000000001}' WHERE "k1" = 'key 8';"#,
    )
    .await;
    let v = scan_json(&pair, &["--table", r#"Odd "Name""#]).await;
    assert_eq!(v["repaired"], 2, "{v}");
    let exact = r#"SELECT "n"::text || ' ' || "j"::text FROM "Odd ""Name""" WHERE "k1" IN ('key 7', 'key 8') ORDER BY "k1""#;
    let m: Vec<String> = main
        .query(exact, &[])
        .await
        .expect("reading")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let c: Vec<String> = cloud
        .query(exact, &[])
        .await
        .expect("reading")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        m,
        vec![
            r#"12345678901234567890.120 {"a": 1, "b": 2}"#.to_string(),
            r#"2.50 {"x": 0.10000000000000000001}"#.to_string()
        ]
    );
    assert_eq!(c, m);
    let v = scan_json(&pair, &["--table", r#"Odd "Name""#]).await;
    assert_eq!(v["differences"], 0, "{v}");
}

#[tokio::test]
async fn rows_in_flight_under_steady_writes_are_not_reported() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        c.batch_execute(r#"SET synchronous_commit = off"#)
            .await
            .expect("session");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for (side, c) in [("m", main), ("c", cloud)] {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut every = tokio::time::interval(Duration::from_millis(20));
            while !stop.is_cancelled() {
                every.tick().await;
                i += 1;
                let id = format!("{side}{}", i % 200);
                // Insert or update own rows: no true conflicts, only rows in flight.
                c.execute(
                    r#"INSERT INTO "User" ("id", "email", "name") VALUES ($1, $1 || '@x', $2)
                       ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name", "updatedAt" = now()"#,
                    &[&id, &format!("v{i}")],
                )
                .await
                .expect("writing");
            }
            i
        }));
    }
    let started = std::time::Instant::now();
    let mut passes = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let out = pair
            .run("main", &["scan", "--json", "--table", "User"])
            .await;
        assert!(out.status.success(), "{:?}", text(&out));
        passes += 1;
    }
    stop.cancel();
    let mut writes = 0;
    for w in writers {
        writes += w.await.expect("writer");
    }
    assert!(writes > 500, "only {writes} writes");
    assert!(passes >= 2, "only {passes} scans");
    let main = pair.main().await;
    assert_eq!(
        scanner_log(&main).await,
        vec![],
        "{passes} scans during {writes} writes; every entry: {:?}",
        Pair::conflicts(&main).await
    );
    pair.wait_caught_up(Duration::from_secs(20)).await;
    users_equal(&pair).await;
}

#[tokio::test]
async fn the_daemon_scans_on_its_own_and_answers_scan_and_integrity_over_the_api() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    behind(
        &pair,
        &cloud,
        r#"INSERT INTO "User" ("id", "email") VALUES ('u9', 'u9@example.com')"#,
    )
    .await;
    let d = pair.start_daemon("main", &[]).await;
    // A pass at start-up, and one on every immediate-sync signal (`duplex trigger`).
    let (code, _) = d.post("/api/sync/trigger").await;
    assert_eq!(code, 200);
    common::wait_until(
        "the scanner copies u9 to main",
        Duration::from_secs(60),
        || common::user_exists(&main, "u9"),
    )
    .await;
    // The pass that copied u9 shows in status and metrics once it has finished.
    common::wait_until(
        "status shows the pass that repaired u9",
        Duration::from_secs(30),
        || async {
            let (_, v) = d.get("/api/sync/status").await;
            v["scanner"]["last_pass"]["repaired"].as_u64() >= Some(1)
        },
    )
    .await;
    let (_, v) = d.get("/api/sync/status").await;
    let scanner = &v["scanner"];
    assert_eq!(scanner["runs_here"], true, "{v}");
    assert!(scanner["passes"].as_u64() >= Some(1), "{v}");
    assert_eq!(scanner["failures"], 0, "{v}");
    assert!(
        scanner["last_pass"]["differences"].as_u64() >= Some(1),
        "{v}"
    );
    assert_eq!(
        scanner["last_pass"]["table_errors"],
        serde_json::json!([]),
        "{v}"
    );
    let (code, metrics) = d.call("GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for name in [
        "duplex_scan_passes_total ",
        "duplex_scan_failures_total 0",
        "duplex_scan_last_pass_timestamp_seconds ",
        "duplex_scan_last_pass_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }
    let (code, v) = d.post("/api/sync/integrity-check").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checksum"], true, "{v}");
    let (code, v) = d.post("/api/sync/scan?table=User&dry_run=true").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["differences"], 0, "{v}");
    let (code, v) = d.post("/api/sync/scan?dry_run=true&full=true").await;
    assert_eq!(code, 200, "{v}");
    assert!(
        v["tables"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["mode"] == "full")),
        "{v}"
    );
    let (code, _) = d.call("POST", "/api/sync/scan", "wrong").await;
    assert_eq!(code, 401);

    // Only main repairs: cloud's API refuses a repairing pass.
    let c = pair.start_daemon("cloud", &[]).await;
    let (code, v) = c.post("/api/sync/scan").await;
    assert_eq!(code, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("scanner_role"),
        "{v}"
    );
    // Cloud's worker never scans, and says so.
    let (_, v) = c.get("/api/sync/status").await;
    assert_eq!(v["scanner"]["runs_here"], false, "{v}");
    assert_eq!(v["scanner"]["passes"], 0, "{v}");
    let (_, metrics) = c.call("GET", "/metrics", "").await;
    assert!(
        !metrics
            .as_str()
            .unwrap_or_default()
            .contains("duplex_scan_passes_total"),
        "{metrics}"
    );
    let log = scanner_log(&main).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].2, "missing_on_main");
    let _ = cloud;
    assert!(c.stop().await.0);
    assert!(d.stop().await.0);
}

#[tokio::test]
async fn after_a_full_pass_later_passes_look_only_at_what_changed_and_still_repair_it() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for i in 1..=5 {
        insert_user(&main, &format!("u{i}"), Some("first")).await;
    }
    pair.wait_caught_up(Duration::from_secs(20)).await;
    let user = |v: &Value| {
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "public.User")
            .cloned()
            .unwrap()
    };

    let first = scan_json(&pair, &[]).await;
    assert_eq!(user(&first)["mode"], "full", "{first}");
    let second = scan_json(&pair, &[]).await;
    let u = user(&second);
    assert_eq!(u["mode"], "incremental", "{second}");
    assert_eq!(u["equal"], true, "{second}");
    assert!(u["changed_keys"].as_u64().unwrap() <= 5, "{u}");
    // No index on "updatedAt": by commit timestamps, and the report says how to do better.
    assert!(
        u["changes_by"]
            .as_str()
            .unwrap()
            .contains("commit timestamps"),
        "{u}"
    );
    assert!(
        u["hint"]
            .as_str()
            .unwrap()
            .contains(r#"CREATE INDEX CONCURRENTLY ON "public"."User" ("updatedAt")"#),
        "{u}"
    );

    // Divergence behind replication's back, after the last pass: an update on cloud, a
    // row only on main, a delete on main.
    behind(&pair, &cloud, r#"UPDATE "User" SET "name" = 'cloud later', "updatedAt" = '2030-01-01 10:00:09+00' WHERE "id" = 'u2';"#).await;
    behind(
        &pair,
        &main,
        r#"INSERT INTO "User" ("id", "email") VALUES ('u9', 'u9@example.com');
                            DELETE FROM "User" WHERE "id" = 'u3';"#,
    )
    .await;
    let third = scan_json(&pair, &[]).await;
    let u = user(&third);
    assert_eq!(u["mode"], "incremental", "{third}");
    assert_eq!(u["confirmed"], 3, "{third}");
    assert_eq!(u["repaired"], 3, "{third}");
    users_equal(&pair).await;
    for c in [&main, &cloud] {
        assert_eq!(name(c, "u2").await, Some(Some("cloud later".into())));
        assert!(name(c, "u9").await.is_some());
        assert_eq!(name(c, "u3").await, None);
    }

    // On demand, every row again.
    let full = scan_json(&pair, &["--full"]).await;
    let u = user(&full);
    assert_eq!(u["mode"], "full", "{full}");
    assert_eq!(u["equal"], true, "{full}");
    assert_eq!(u["main_count"], 5, "{full}");
}

/// A pause during a pass stops the daemon's pass before its next table: what was already
/// being settled finishes, the remaining tables wait for a pass after `resume`.
#[tokio::test]
async fn a_pause_during_the_daemon_s_pass_stops_it_before_the_next_table() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user(&main, "u1", Some("owner")).await;
    pair.wait_caught_up(Duration::from_secs(20)).await;
    // Two differences behind replication's back, in "Group" (compared before "User") and
    // in "User": both on cloud only, so the scanner copies them to main.
    behind(
        &pair,
        &cloud,
        r#"INSERT INTO "Group" ("id", "name", "ownerId") VALUES ('g9', 'cloud''s group', 'u1');
           INSERT INTO "User" ("id", "email") VALUES ('u9', 'u9@example.com')"#,
    )
    .await;
    // Hold the copy of g9 on main: an uncommitted insert of the same key makes the
    // scanner's insert wait for this transaction.
    let mut blocker = pair.main().await;
    let tx = blocker.transaction().await.expect("BEGIN");
    tx.batch_execute(
        r#"INSERT INTO "Group" ("id", "name", "ownerId") VALUES ('g9', 'in the way', 'u1')"#,
    )
    .await
    .expect("holding g9");
    let d = pair.start_daemon("main", &[]).await;
    common::wait_until(
        "the scanner's copy of g9 waits for the lock",
        Duration::from_secs(60),
        || async {
            main.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND application_name LIKE 'duplex%'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
        },
    )
    .await;
    let (code, v) = d.post("/api/sync/pause").await;
    assert_eq!(code, 200, "{v}");
    tx.rollback().await.expect("ROLLBACK");
    common::wait_until(
        "the interrupted pass is reported",
        Duration::from_secs(60),
        || async {
            let (_, v) = d.get("/api/sync/status").await;
            !v["scanner"]["last_pass"].is_null()
        },
    )
    .await;
    let (_, v) = d.get("/api/sync/status").await;
    let pass = &v["scanner"]["last_pass"];
    let skipped: Vec<&str> = pass["skipped_tables"]
        .as_array()
        .expect("skipped_tables")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        skipped
            .iter()
            .any(|t| t.contains("User") && t.contains("sync was paused")),
        "{v}"
    );
    // What was being settled finished; the next table was left alone.
    let group: i64 = main
        .query_one(
            r#"SELECT count(*) FROM "Group" WHERE "id" = 'g9' AND "name" = 'cloud''s group'"#,
            &[],
        )
        .await
        .expect("reading Group")
        .get(0);
    assert_eq!(group, 1, "g9 was not copied to main: {v}");
    assert!(!common::user_exists(&main, "u9").await, "{v}");
    // After resume, the next pass settles the rest.
    let (code, _) = d.post("/api/sync/resume").await;
    assert_eq!(code, 200);
    let (code, _) = d.post("/api/sync/trigger").await;
    assert_eq!(code, 200);
    common::wait_until("u9 copied after resume", Duration::from_secs(60), || {
        common::user_exists(&main, "u9")
    })
    .await;
    assert!(d.stop().await.0);
}

/// The pid of a `duplex_scanner` session on `c`'s database waiting for a lock, once there
/// is one.
async fn scanner_waiting_for_a_lock(c: &Client) -> i32 {
    const WAITING: &str = "SELECT pid FROM pg_stat_activity
      WHERE datname = current_database() AND application_name = 'duplex_scanner'
        AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = c
            .query_opt(WAITING, &[])
            .await
            .expect("reading pg_stat_activity")
        {
            return r.get(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scanner did not wait for the test's lock within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start `duplex scan` for main, wait until it blocks on a lock on `blocked_on`, kill it
/// with SIGKILL (by PID) and wait for it to be gone.
async fn kill_scan_while_it_waits(pair: &Pair, blocked_on: &Client) {
    let mut scan = pair
        .duplex("main", &["scan", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting duplex scan");
    let pid = scan.id().expect("the scan's pid");
    scanner_waiting_for_a_lock(blocked_on).await;
    // SIGKILL, as `kill -9 <pid>`.
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(killed.success(), "kill -9 {pid}");
    let status = tokio::time::timeout(Duration::from_secs(10), scan.wait())
        .await
        .expect("the scan to exit after SIGKILL")
        .expect("waiting for the scan");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
}

async fn scanner_entries(c: &Client) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT count(*), count(DISTINCT record_id) FROM duplex.conflict_log
              WHERE detected_by = 'scanner'",
            &[],
        )
        .await
        .expect("counting conflict_log");
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn a_scan_killed_while_comparing_or_repairing_is_finished_by_the_next_without_repairing_or_logging_twice(
) {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.batch_execute(
        r#"INSERT INTO "User" ("id", "email", "name", "updatedAt")
           SELECT 'u' || i, 'u' || i || '@x', 'first', '2030-01-01 10:00:00+00'
             FROM generate_series(1, 1200) i"#,
    )
    .await
    .expect("seeding");
    pair.wait_caught_up(Duration::from_secs(30)).await;
    // 1,200 differences, more than one repair batch: cloud's later write wins u1..u600
    // (repaired on main, the side that logs), main's wins u601..u1200 (repaired on cloud).
    behind(
        &pair,
        &cloud,
        r#"UPDATE "User" SET "name" = 'cloud later', "updatedAt" = '2030-01-01 10:00:09+00'
            WHERE substr("id", 2)::int <= 600"#,
    )
    .await;
    behind(
        &pair,
        &main,
        r#"UPDATE "User" SET "name" = 'main later', "updatedAt" = '2030-01-01 10:00:09+00'
            WHERE substr("id", 2)::int > 600"#,
    )
    .await;

    // Killed while comparing: the table is locked on main, so the scan waits for it.
    let holder = pair.main().await;
    holder
        .batch_execute(r#"BEGIN; LOCK TABLE "User" IN ACCESS EXCLUSIVE MODE"#)
        .await
        .expect("locking User");
    kill_scan_while_it_waits(&pair, &main).await;
    holder.batch_execute("ROLLBACK").await.expect("unlocking");
    assert_eq!(scanner_entries(&main).await, (0, 0), "nothing settled yet");

    // Killed while repairing: one row that cloud loses, u999, is locked on cloud. It is
    // the greatest key, in the last batch: earlier batches are repaired by then.
    let holder = pair.cloud().await;
    holder
        .batch_execute(r#"BEGIN; SELECT 1 FROM "User" WHERE "id" = 'u999' FOR UPDATE"#)
        .await
        .expect("locking u999 on cloud");
    kill_scan_while_it_waits(&pair, &cloud).await;
    let (logged, keys) = scanner_entries(&main).await;
    assert!(
        logged > 0 && logged < 1200,
        "killed in the middle: {logged} settled"
    );
    assert_eq!(logged, keys, "each difference logged once");
    assert_eq!(
        name(&cloud, "u999").await,
        Some(Some("first".into())),
        "the blocked repair wrote nothing"
    );
    holder.batch_execute("ROLLBACK").await.expect("unlocking");
    drop(holder);

    // The next scan settles the rest, each once.
    let v = scan_json(&pair, &[]).await;
    assert_eq!(v["repaired"], 1200 - logged, "{v}");
    assert_eq!(v["logged"], 1200 - logged, "{v}");
    assert_eq!(scanner_entries(&main).await, (1200, 1200));
    users_equal(&pair).await;
    for c in [&main, &cloud] {
        assert_eq!(name(c, "u1").await, Some(Some("cloud later".into())));
        assert_eq!(name(c, "u999").await, Some(Some("main later".into())));
    }
    let again = scan_json(&pair, &["--full"]).await;
    assert_eq!(again["differences"], 0, "{again}");
    assert_eq!(scanner_entries(&main).await, (1200, 1200));
}

#[tokio::test]
async fn a_row_the_application_keeps_locked_fails_alone_and_is_repaired_by_the_next_scan() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for i in 1..=5 {
        insert_user(&main, &format!("u{i}"), Some("first")).await;
    }
    pair.wait_caught_up(Duration::from_secs(20)).await;
    // Main's later writes win: every repair goes to cloud, in one batch.
    behind(
        &pair,
        &main,
        r#"UPDATE "User" SET "name" = 'main later', "updatedAt" = '2030-01-01 10:00:09+00'"#,
    )
    .await;
    let holder = pair.cloud().await;
    holder
        .batch_execute(r#"BEGIN; SELECT 1 FROM "User" WHERE "id" = 'u3' FOR UPDATE"#)
        .await
        .expect("locking u3 on cloud");

    // The batch waits for u3 past lock_timeout and fails; then row by row, only u3 fails.
    let out = pair
        .run("main", &["scan", "--json", "--table", "User"])
        .await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("scan --json is JSON");
    assert_eq!(out.status.code(), Some(1), "{v}");
    let t = &v["tables"][0];
    assert_eq!(t["repaired"], 4, "{v}");
    assert_eq!(t["logged"], 4, "{v}");
    let errors = t["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{v}");
    assert!(
        errors[0].as_str().unwrap_or("").starts_with(r#"["u3"]: "#),
        "{v}"
    );
    assert_eq!(name(&cloud, "u2").await, Some(Some("main later".into())));
    assert_eq!(name(&cloud, "u3").await, Some(Some("first".into())));

    holder.batch_execute("ROLLBACK").await.expect("unlocking");
    let v = scan_json(&pair, &["--table", "User"]).await;
    assert_eq!(v["repaired"], 1, "{v}");
    assert_eq!(v["logged"], 1, "{v}");
    users_equal(&pair).await;
    assert_eq!(scanner_log(&main).await.len(), 5);
}

#[tokio::test]
async fn with_an_index_on_updated_at_incremental_passes_find_changes_by_it_and_full_passes_catch_the_rest(
) {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        c.batch_execute(r#"CREATE INDEX "User_updatedAt_idx" ON "User" ("updatedAt")"#)
            .await
            .expect("creating the index on updatedAt");
    }
    for i in 1..=5 {
        insert_user(&main, &format!("u{i}"), Some("first")).await;
    }
    // Stamped long ago, so that no pass's window (which reaches a minute back) holds them.
    main.batch_execute(r#"UPDATE "User" SET "updatedAt" = '2001-01-01 00:00:00+00'"#)
        .await
        .expect("stamping the users");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    let user = |v: &Value| {
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "public.User")
            .cloned()
            .unwrap()
    };
    // `duplex check` says which way each table's incremental passes go, and how to get
    // the fast one.
    let (stdout, _) = text(&pair.run("main", &["check"]).await);
    for side in ["main", "cloud"] {
        assert!(
            stdout.contains(&format!(
                r#"ok    {side}: incremental scan of public.User: by the index on "updatedAt""#
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(r#"main: incremental scan of public.JumpLog: by commit timestamps (every row's commit time is read): no index on "updatedAt""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"CREATE INDEX CONCURRENTLY ON "public"."JumpLog" ("updatedAt")"#),
        "{stdout}"
    );

    let first = scan_json(&pair, &[]).await;
    assert_eq!(user(&first)["mode"], "full", "{first}");

    // Behind replication's back: an update on cloud that bumps "updatedAt", a new row on
    // main (its "updatedAt" defaults to now()), a delete on main (a tombstone); and an
    // update on cloud that sets "updatedAt" to a past value, which an incremental pass
    // by "updatedAt" cannot see.
    behind(&pair, &cloud, r#"UPDATE "User" SET "name" = 'cloud later', "updatedAt" = now() + interval '1 hour' WHERE "id" = 'u2';
                             UPDATE "User" SET "name" = 'old stamp', "updatedAt" = '2001-01-02 00:00:00+00' WHERE "id" = 'u4';"#).await;
    behind(
        &pair,
        &main,
        r#"INSERT INTO "User" ("id", "email") VALUES ('u9', 'u9@example.com');
           DELETE FROM "User" WHERE "id" = 'u3';"#,
    )
    .await;
    let second = scan_json(&pair, &[]).await;
    let u = user(&second);
    assert_eq!(u["mode"], "incremental", "{second}");
    assert!(
        u["changes_by"]
            .as_str()
            .unwrap()
            .contains(r#"index on "updatedAt""#),
        "{u}"
    );
    assert!(u.get("hint").is_none(), "{u}");
    assert_eq!(u["confirmed"], 3, "{second}");
    assert_eq!(u["repaired"], 3, "{second}");
    for c in [&main, &cloud] {
        assert_eq!(name(c, "u2").await, Some(Some("cloud later".into())));
        assert!(name(c, "u9").await.is_some());
        assert_eq!(name(c, "u3").await, None);
    }
    // The write with a past "updatedAt" is still there: the daily full pass finds it
    // (and, last_write_wins, cloud's later stamp wins).
    assert_eq!(u["changed_keys"], 3, "{second}");
    assert_eq!(name(&main, "u4").await, Some(Some("first".into())));
    assert_eq!(name(&cloud, "u4").await, Some(Some("old stamp".into())));
    let full = scan_json(&pair, &["--full"]).await;
    let u = user(&full);
    assert_eq!(u["mode"], "full", "{full}");
    assert_eq!(u["confirmed"], 1, "{full}");
    assert_eq!(u["repaired"], 1, "{full}");
    users_equal(&pair).await;
    assert_eq!(name(&main, "u4").await, Some(Some("old stamp".into())));
}

#[tokio::test]
async fn integer_keys_in_one_sequence_range_per_side_are_bucketed_and_every_difference_is_found() {
    let pair = Pair::new().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        c.batch_execute(r#"CREATE TABLE "Event" ("id" bigint PRIMARY KEY, "note" text)"#)
            .await
            .expect("creating Event");
    }
    pair.setup_both().await;
    // Main's rows in 1..20000, cloud's in a range of its own a trillion keys up, as two
    // sequences that never collide would leave them; a third of the notes NULL.
    main.batch_execute(
        r#"INSERT INTO "Event"
           SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END FROM generate_series(1, 20000) i;
           INSERT INTO "Event"
           SELECT 1000000000000 + i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END FROM generate_series(1, 20000) i;"#,
    )
    .await
    .expect("seeding Event");
    pair.wait_caught_up(Duration::from_secs(30)).await;
    for c in [&main, &cloud] {
        c.batch_execute(r#"ANALYZE "Event""#)
            .await
            .expect("analysing");
    }
    let event = |v: &Value| {
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "public.Event")
            .cloned()
            .unwrap()
    };
    let equal = scan_json(&pair, &["--dry-run", "--table", "Event"]).await;
    assert_eq!(event(&equal)["equal"], true, "{equal}");

    // Behind replication's back on cloud, in both ranges: NULL -> '', text -> NULL, a
    // delete, and rows only cloud has, one of them far beyond both ranges.
    behind(
        &pair,
        &cloud,
        r#"UPDATE "Event" SET "note" = '' WHERE "id" IN (3, 1000000000003, 19998);
           UPDATE "Event" SET "note" = NULL WHERE "id" IN (10, 1000000000010);
           DELETE FROM "Event" WHERE "id" IN (7000, 1000000007000);
           INSERT INTO "Event" VALUES (20001, 'x'), (1000000020001, NULL), (9000000000000000, 'far');"#,
    )
    .await;
    let mut want: Vec<String> = [
        3i64,
        10,
        7000,
        19998,
        20001,
        1000000000003,
        1000000000010,
        1000000007000,
        1000000020001,
        9000000000000000,
    ]
    .iter()
    .map(|k| format!("[{k}]"))
    .collect();
    want.sort();
    let found = scan_json(&pair, &["--dry-run", "--table", "Event"]).await;
    let t = event(&found);
    assert_eq!(t["mode"], "full", "{found}");
    assert_eq!(t["confirmed"], 10, "{found}");
    let mut keys: Vec<String> = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, want, "{found}");
    // Hashes of buckets and of the few small ranges that differ, not of 40,000 rows.
    assert!(t["bytes_read"].as_u64().unwrap() < 400_000, "{t}");

    let out = pair
        .run("main", &["integrity", "--checksum", "--table", "Event"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let fixed = scan_json(&pair, &["--table", "Event"]).await;
    assert_eq!(event(&fixed)["repaired"], 10, "{fixed}");
    let out = pair
        .run("main", &["integrity", "--checksum", "--table", "Event"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[tokio::test]
async fn text_keys_of_a_larger_table_are_cut_at_sampled_keys_and_every_difference_is_found() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    // Enough rows for the first level to be cut at sampled keys (more than 16 parts).
    main.batch_execute(
        r#"INSERT INTO "User" ("id", "email", "name")
           SELECT 'u' || lpad(i::text, 6, '0'), 'u' || i || '@x', CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' END
             FROM generate_series(1, 30000) i"#,
    )
    .await
    .expect("seeding");
    pair.wait_caught_up(Duration::from_secs(60)).await;
    behind(
        &pair,
        &cloud,
        r#"UPDATE "User" SET "name" = '' WHERE "id" IN ('u000003', 'u015000', 'u029997');
           DELETE FROM "User" WHERE "id" = 'u020000';
           INSERT INTO "User" ("id", "email") VALUES ('u999999', 'late@x'), ('a', 'first@x');"#,
    )
    .await;
    let found = scan_json(&pair, &["--dry-run", "--table", "User"]).await;
    let t = found["tables"][0].clone();
    assert_eq!(t["mode"], "full", "{found}");
    let mut keys: Vec<String> = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            r#"["a"]"#,
            r#"["u000003"]"#,
            r#"["u015000"]"#,
            r#"["u020000"]"#,
            r#"["u029997"]"#,
            r#"["u999999"]"#
        ],
        "{found}"
    );
    assert_eq!(t["confirmed"], 6, "{found}");
}

/// `[conflicts] scan_duty_percent` makes the scanner wait after its statements, and the
/// report says for how long; by default it never waits.
#[tokio::test]
async fn the_throttle_waits_between_statements_only_when_configured() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let main = pair.main().await;
    for i in 1..=3 {
        insert_user(&main, &format!("u{i}"), Some("first")).await;
    }
    pair.wait_caught_up(Duration::from_secs(20)).await;
    let throttled = |v: &Value| {
        v["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .map(|t| t["throttled_seconds"].as_f64().expect("throttled_seconds"))
            .sum::<f64>()
    };
    let v = scan_json(&pair, &["--dry-run", "--full"]).await;
    assert_eq!(throttled(&v), 0.0, "{v}");
    pair.set_config(&format!(
        "{}\n[conflicts]\nscan_duty_percent = 20\n",
        common::EXAMPLE_TABLES
    ));
    let v = scan_json(&pair, &["--dry-run", "--full"]).await;
    assert!(throttled(&v) > 0.0, "{v}");
    assert_eq!(v["differences"], 0, "{v}");
    // Out of range: refused by name, nothing scanned.
    pair.set_config(&format!(
        "{}\n[conflicts]\nscan_duty_percent = 0\n",
        common::EXAMPLE_TABLES
    ));
    let out = pair.run("main", &["scan", "--dry-run"]).await;
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(stderr.contains("conflicts.scan_duty_percent"), "{stderr}");
}

#[tokio::test]
async fn thousands_of_differences_spread_over_a_table_of_millions_are_all_found() {
    // Big enough (2.2M rows) that the first level's buckets hold about 270 rows, and
    // differences in a third of them: the scanner takes a second, finer grouped pass.
    let pair = Pair::new().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        c.batch_execute(
            r#"CREATE TABLE "Reading" ("id" bigint PRIMARY KEY, "v" int, "note" text)"#,
        )
        .await
        .expect("creating Reading");
    }
    pair.setup_both().await;
    let load = r#"INSERT INTO "Reading"
        SELECT i, i % 1000, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' END
          FROM generate_series(1, 2200000) i"#;
    // The same rows on both sides, written behind replication's back on each.
    let (a, b) = tokio::join!(behind(&pair, &main, load), behind(&pair, &cloud, load));
    let ((), ()) = (a, b);
    for c in [&main, &cloud] {
        c.batch_execute(r#"ANALYZE "Reading""#)
            .await
            .expect("analysing");
    }
    // 3,000 scattered differences on cloud: changed values, NULL -> '', deletes, inserts.
    behind(
        &pair,
        &cloud,
        r#"UPDATE "Reading" SET "v" = -1 WHERE "id" % 733 = 1 AND "id" <= 733 * 1000;
           UPDATE "Reading" SET "note" = '' WHERE "id" % 733 = 2 AND "id" % 3 = 0 AND "id" <= 733 * 3000;
           DELETE FROM "Reading" WHERE "id" % 733 = 5 AND "id" <= 733 * 500;
           INSERT INTO "Reading" SELECT 3000000 + i, 0, NULL FROM generate_series(1, 500) i;"#,
    )
    .await;
    let want: i64 = cloud
        .query_one(
            r#"SELECT (SELECT count(*) FROM "Reading" WHERE "v" = -1)
                    + (SELECT count(*) FROM "Reading" WHERE "note" = '')
                    + 500 + 500"#,
            &[],
        )
        .await
        .expect("counting the differences")
        .get(0);
    assert!(want > 2500, "{want}");
    let found = scan_json(&pair, &["--dry-run", "--table", "Reading"]).await;
    let t = found["tables"][0].clone();
    assert_eq!(t["mode"], "full", "{found}");
    assert_eq!(t["confirmed"], want, "{t}");
    let keys: std::collections::HashSet<String> = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    for k in ["[1]", "[734]", "[5]", "[3000001]", "[3000500]"] {
        assert!(keys.contains(k), "{k} not found");
    }
    assert_eq!(keys.len() as i64, want);
}

/// Rows of a table with identity and generated columns (`common::LINE`) are copied
/// without the generated columns (the server computes them) and with the identity's value.
#[tokio::test]
async fn rows_with_generated_and_identity_always_columns_are_repaired() {
    let pair = Pair::new().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    pair.create(common::LINE).await;
    pair.setup_both().await;
    main.batch_execute(r#"INSERT INTO "Line" (qty, price) VALUES (1, 10), (2, 10), (3, 10)"#)
        .await
        .expect("seeding Line");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    behind(
        &pair,
        &main,
        r#"UPDATE "Line" SET qty = 7, "updatedAt" = '2030-01-01 10:00:09+00' WHERE id = 1"#,
    )
    .await;
    behind(
        &pair,
        &cloud,
        r#"UPDATE "Line" SET qty = 8, "updatedAt" = '2030-01-01 10:00:09+00' WHERE id = 2;
           INSERT INTO "Line" (id, qty, price) OVERRIDING SYSTEM VALUE VALUES (10, 5, 2)"#,
    )
    .await;
    let v = scan_json(&pair, &["--table", "Line"]).await;
    assert_eq!(v["differences"], 3, "{v}");
    assert_eq!(v["repaired"], 3, "{v}");
    assert_eq!(v["logged"], 3, "{v}");
    assert_eq!(
        Pair::row_hashes(&main, r#""Line""#).await,
        Pair::row_hashes(&cloud, r#""Line""#).await
    );
    for c in [&main, &cloud] {
        for (id, total) in [(1, "70"), (2, "80"), (3, "30"), (10, "10")] {
            assert_eq!(common::line_total(c, id).await.as_deref(), Some(total));
        }
    }
    let again = scan_json(&pair, &["--table", "Line"]).await;
    assert_eq!(again["differences"], 0, "{again}");
}
