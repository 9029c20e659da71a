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
    let (code, v) = d.post("/api/sync/integrity-check").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checksum"], true, "{v}");
    let (code, v) = d.post("/api/sync/scan?table=User&dry_run=true").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["differences"], 0, "{v}");
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
