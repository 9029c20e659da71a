//! Provisioning and replication both ways, on the lab's real clusters.

mod common;

use std::time::Duration;

use common::{insert_user, text, user_name, wait_until, Pair};
use tokio_postgres::Client;

const FIVE_SECONDS: Duration = Duration::from_secs(5);

/// Statistics views are cluster-wide: keep to this test's database.
const THIS_DB: &str = "WHERE subid IN (SELECT oid FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))";

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn setup_twice_is_a_no_op_and_dry_run_changes_nothing() {
    let pair = Pair::new().await;

    // The TLS mode of REMOTE_DB_URL reaches the subscription's connection string.
    let out = pair
        .duplex("cloud", &["setup", "--dry-run"])
        .env(
            "REMOTE_DB_URL",
            format!(
                "{}?sslmode=disable",
                common::url(common::main_port(), &pair.db)
            ),
        )
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("sslmode=''disable''"), "{stdout}");
    assert!(
        stdout.contains("CREATE SUBSCRIPTION \"duplex_main_to_cloud\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("CREATE PUBLICATION \"duplex_main_to_cloud\""),
        "{stdout}"
    );
    assert!(stdout.contains("copy_data = true"), "{stdout}");
    assert!(
        !stdout.contains(common::REPLICATION_PASSWORD),
        "dry run printed the password"
    );
    assert!(
        pair.replication_objects().await.is_empty(),
        "--dry-run created objects"
    );

    pair.setup_both().await;
    let before = pair.replication_objects().await;
    assert_eq!(
        before,
        vec![
            format!("cloud publication duplex_cloud_to_main"),
            format!("cloud publication duplex_cloud_to_main_meta"),
            format!("cloud slot {}", pair.slot("main")),
            format!("cloud subscription duplex_main_to_cloud"),
            format!("main publication duplex_main_to_cloud"),
            format!("main publication duplex_main_to_cloud_meta"),
            format!("main slot {}", pair.slot("cloud")),
            format!("main subscription duplex_cloud_to_main"),
        ]
    );
    let logged = count(&pair.main().await, "SELECT count(*) FROM duplex.sync_log").await;

    for role in ["cloud", "main"] {
        let out = pair.run(role, &["setup"]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "nothing to do: replication into {role} is already set up"
            )),
            "second setup for {role} was not a no-op:\n{stdout}"
        );
        let out = pair.run(role, &["setup", "--dry-run"]).await;
        assert!(text(&out).0.contains("nothing to do"), "{:?}", text(&out));
    }
    assert_eq!(pair.replication_objects().await, before);
    assert_eq!(
        count(&pair.main().await, "SELECT count(*) FROM duplex.sync_log").await,
        logged
    );
}

#[tokio::test]
async fn inserts_updates_and_deletes_replicate_both_ways_within_five_seconds() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);

    insert_user(&main, "from-main", Some("Ada")).await;
    wait_until("main's insert visible on cloud", FIVE_SECONDS, || async {
        user_name(&cloud, "from-main").await.is_some()
    })
    .await;
    insert_user(&cloud, "from-cloud", Some("Grace")).await;
    wait_until("cloud's insert visible on main", FIVE_SECONDS, || async {
        user_name(&main, "from-cloud").await.is_some()
    })
    .await;

    main.execute(
        r#"UPDATE "User" SET "name" = 'Ada L.' WHERE "id" = 'from-main'"#,
        &[],
    )
    .await
    .unwrap();
    wait_until("main's update visible on cloud", FIVE_SECONDS, || async {
        user_name(&cloud, "from-main").await == Some(Some("Ada L.".into()))
    })
    .await;
    cloud
        .execute(
            r#"UPDATE "User" SET "name" = 'Grace H.' WHERE "id" = 'from-cloud'"#,
            &[],
        )
        .await
        .unwrap();
    wait_until("cloud's update visible on main", FIVE_SECONDS, || async {
        user_name(&main, "from-cloud").await == Some(Some("Grace H.".into()))
    })
    .await;

    main.execute(r#"DELETE FROM "User" WHERE "id" = 'from-cloud'"#, &[])
        .await
        .unwrap();
    wait_until("main's delete visible on cloud", FIVE_SECONDS, || async {
        user_name(&cloud, "from-cloud").await.is_none()
    })
    .await;
    cloud
        .execute(r#"DELETE FROM "User" WHERE "id" = 'from-main'"#, &[])
        .await
        .unwrap();
    wait_until("cloud's delete visible on main", FIVE_SECONDS, || async {
        user_name(&main, "from-main").await.is_none()
    })
    .await;
}

#[tokio::test]
async fn existing_rows_on_main_are_copied_to_cloud_once() {
    let pair = Pair::new().await;
    let main = pair.main().await;
    for i in 0..25 {
        insert_user(&main, &format!("seed-{i}"), Some("seed")).await;
    }
    pair.setup_both().await;
    let cloud = pair.cloud().await;
    assert_eq!(count(&cloud, r#"SELECT count(*) FROM "User""#).await, 25);
    // Copied rows must not come back to main as duplicates.
    insert_user(&cloud, "marker", Some("after copy")).await;
    wait_until("cloud's marker on main", FIVE_SECONDS, || async {
        user_name(&main, "marker").await.is_some()
    })
    .await;
    assert_eq!(count(&main, r#"SELECT count(*) FROM "User""#).await, 26);
    assert_eq!(
        count(&main, &format!("SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::bigint FROM pg_stat_subscription_stats {THIS_DB}")).await,
        0
    );
}

async fn table_activity(c: &Client) -> (i64, i64, i64) {
    c.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let r = c
        .query_one(
            r#"SELECT (SELECT count(*) FROM "User"),
                      n_tup_ins + n_tup_upd + n_tup_del,
                      (SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::bigint
                         FROM pg_stat_subscription_stats
                        WHERE subid IN (SELECT oid FROM pg_subscription WHERE subdbid =
                              (SELECT oid FROM pg_database WHERE datname = current_database())))
                 FROM pg_stat_user_tables WHERE relname = 'User'"#,
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test]
async fn one_insert_on_each_side_does_not_loop() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user(&main, "m1", Some("main row")).await;
    insert_user(&cloud, "c1", Some("cloud row")).await;
    for c in [&main, &cloud] {
        wait_until("both rows on both sides", FIVE_SECONDS, || async {
            count(c, r#"SELECT count(*) FROM "User""#).await == 2
        })
        .await;
    }
    // Statistics are flushed about once a second: wait until they count both rows.
    for c in [&main, &cloud] {
        wait_until("statistics flushed", Duration::from_secs(30), || async {
            table_activity(c).await.1 >= 2
        })
        .await;
    }
    let before = (table_activity(&main).await, table_activity(&cloud).await);
    assert_eq!(before.0 .0, 2);
    assert_eq!(before.1 .0, 2);
    assert_eq!(before.0 .2, 0, "apply errors on main");
    assert_eq!(before.1 .2, 0, "apply errors on cloud");
    // A loop would keep re-applying the rows: let both directions deliver everything
    // written so far (twice: an echo of an echo), then the counters must not have moved.
    for _ in 0..2 {
        pair.wait_caught_up(Duration::from_secs(20)).await;
    }
    let after = (table_activity(&main).await, table_activity(&cloud).await);
    assert_eq!(before, after, "rows kept changing: replication loops");
}

#[tokio::test]
async fn excluded_tables_stay_local_and_quoted_identifiers_replicate() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.batch_execute(
        r#"INSERT INTO "User" ("id", "email") VALUES ('u1', 'u1@example.com');
           INSERT INTO "Device" ("id", "name", "userId") VALUES ('d1', 'altimeter', 'u1');
           INSERT INTO "DeviceFileIndex" ("deviceId", "path", "fileSize", "modifiedAt")
                VALUES ('d1', '/sd/jump1.bin', 10, now());
           INSERT INTO "DeviceCommandQueue" ("deviceId", "command") VALUES ('d1', 'sync');
           INSERT INTO "JumpLog" ("id", "userId", "deviceId", "jumpNumber", "altitude",
                                  "freefallTime", "storageUrl", "hash", "fileSize", "updatedAt")
                VALUES ('j1', 'u1', 'd1', 1, 4000, 60, 's3://duplex-main/jumps/u1/j1.bin',
                        repeat('ab', 32), 10, '2026-01-02 03:04:05+00');"#,
    )
    .await
    .unwrap();
    // The JumpLog row was committed after the local-only rows: once it arrived, they would
    // have arrived too if they replicated.
    wait_until("JumpLog on cloud", FIVE_SECONDS, || async {
        count(
            &cloud,
            r#"SELECT count(*) FROM "JumpLog" WHERE "id" = 'j1'"#,
        )
        .await
            == 1
    })
    .await;
    let updated: String = cloud
        .query_one(
            r#"SELECT "updatedAt"::text FROM "JumpLog" WHERE "id" = 'j1'"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(updated, "2026-01-02 03:04:05+00");
    assert_eq!(
        count(&cloud, r#"SELECT count(*) FROM "DeviceFileIndex""#).await,
        0
    );
    assert_eq!(
        count(&cloud, r#"SELECT count(*) FROM "DeviceCommandQueue""#).await,
        0
    );
    assert_eq!(
        count(&main, r#"SELECT count(*) FROM "DeviceFileIndex""#).await,
        1
    );
}

#[tokio::test]
async fn status_and_check_report_both_directions_replicating() {
    let pair = Pair::new().await;
    let out = pair.run("main", &["check"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check passed before setup:\n{stdout}"
    );
    assert!(stdout.contains("run `duplex setup`"), "{stdout}");

    pair.setup_both().await;
    // Main's apply worker starts a moment after its setup returns.
    wait_until("check passes", Duration::from_secs(10), || async {
        pair.run("main", &["check"]).await.status.success()
    })
    .await;
    for role in ["main", "cloud"] {
        let out = pair.run(role, &["check", "--json"]).await;
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "check failed for {role}:\n{stdout}\n{stderr}"
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "error"));
    }
    let out = pair.run("main", &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in status["directions"].as_array().unwrap() {
        assert_eq!(d["subscription"]["enabled"], true, "{d}");
        assert_eq!(d["subscription"]["running"], true, "{d}");
        assert_eq!(d["slot"]["active"], true, "{d}");
        assert!(d["lag_bytes"].as_i64().is_some(), "{d}");
    }
    let out = pair.run("cloud", &["status"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(stdout.matches("state: replicating").count(), 2, "{stdout}");
}

/// The tables recorded in `duplex.replicated_table` on one side, as `schema.table`.
async fn recorded(c: &Client) -> Vec<String> {
    c.query(
        "SELECT schema_name || '.' || table_name FROM duplex.replicated_table ORDER BY 1",
        &[],
    )
    .await
    .expect("reading duplex.replicated_table")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn check_without_the_setup_configuration_names_the_tables_setup_would_start_replicating() {
    let pair = Pair::new().await;
    pair.set_config("[tables]\ninclude = [\"User\", \"Group\", \"GroupMember\"]\n");
    pair.setup_both().await;
    let set_up = vec!["public.Group", "public.GroupMember", "public.User"];
    assert_eq!(recorded(&pair.main().await).await, set_up);
    assert_eq!(recorded(&pair.cloud().await).await, set_up);

    // With the configuration setup used, check passes (once main's apply worker runs).
    wait_until("check passes", Duration::from_secs(10), || async {
        pair.run("main", &["check"]).await.status.success()
    })
    .await;
    let out = pair.run("main", &["check"]).await;
    assert!(
        text(&out).0.contains(
            "ok    tables: 3 table(s) configured, the same as the tables recorded at setup in duplex.replicated_table"
        ),
        "{}",
        text(&out).0
    );

    // Without --config the selection is every table of schema public: wider than set up.
    let out = pair
        .duplex_without_config("main", &["check"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let extra = "public.Device, public.DeviceCommandQueue, public.DeviceFileIndex, public.FormationParticipant, public.FormationSkydive, public.JumpLog";
    assert!(
        stdout.contains(&format!(
            "ERROR tables: configured but not replicated: {extra}\n      -> to start replicating them run `duplex setup` with this configuration (cloud first, then main): that widens replication"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("The configuration in use selects every table of schema public (the default when no --config file sets [tables]); it was compared with the tables recorded at setup in duplex.replicated_table."),
        "{stdout}"
    );
    // Only that finding speaks of setup, and it says what setup would do: no generic advice,
    // no per-table findings about the tables that do not replicate.
    let advising: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("duplex setup`") && !l.contains("widens replication"))
        .collect();
    assert!(advising.is_empty(), "{advising:?}\n{stdout}");
    assert!(!stdout.contains("conflicts on public.JumpLog"), "{stdout}");
    assert!(
        stdout.contains("ok    main: publication duplex_main_to_cloud: 3 table(s)"),
        "{stdout}"
    );
    let out = pair
        .duplex_without_config("main", &["check", "--json"])
        .output()
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["subject"], "tables");

    // status says the same, without making replication unhealthy.
    let out = pair
        .duplex_without_config("main", &["status"])
        .output()
        .await
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("  configured but not replicated: {extra}\n")),
        "{stdout}"
    );
    // The scanner compares only what replicates: it never copies the other tables' rows.
    let out = pair
        .duplex_without_config("main", &["scan", "--dry-run", "--json"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let scan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let scanned: Vec<&str> = scan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(scanned, set_up, "{stdout}");
    assert!(
        scan["skipped_tables"].as_array().unwrap().iter().any(|s| s
            .as_str()
            .unwrap()
            .starts_with("public.DeviceFileIndex: configured but not replicated")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_with_a_narrower_configuration_names_the_tables_setup_would_stop_replicating() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    pair.set_config(
        "[tables]\ninclude = [\"User\", \"Device\"]\n[conflicts.tables.\"Device\"]\npolicy = \"main_authoritative\"\n",
    );
    let dropped = "public.FormationParticipant, public.FormationSkydive, public.Group, public.GroupMember, public.JumpLog";
    let out = pair.run("cloud", &["check"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "ERROR tables: replicated but not in the configuration: {dropped}\n      -> `duplex setup` with this configuration would stop replicating them"
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains("configured but not replicated"),
        "{stdout}"
    );

    // Set up by an older duplex (nothing recorded): the publication is what replicates.
    let main = pair.main().await;
    main.batch_execute("DELETE FROM duplex.replicated_table")
        .await
        .unwrap();
    let out = pair.run("main", &["check"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ERROR tables: replicated but not in the configuration: {dropped}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("it was compared with publication duplex_main_to_cloud (no selection was recorded here by `duplex setup`)."),
        "{stdout}"
    );

    // A publication changed by hand is named as such, table by table.
    pair.set_config(common::EXAMPLE_TABLES);
    pair.cloud()
        .await
        .batch_execute(r#"ALTER PUBLICATION duplex_cloud_to_main DROP TABLE "JumpLog""#)
        .await
        .unwrap();
    let out = pair.run("main", &["check"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "ok    tables: 7 table(s) configured, the same as publication duplex_main_to_cloud"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("ERROR cloud: publication duplex_cloud_to_main: differs from publication duplex_main_to_cloud (no selection was recorded here by `duplex setup`): does not publish public.JumpLog\n      -> it was changed outside `duplex setup`, or a setup did not finish: run `duplex setup` with INSTANCE_ROLE=main to set it to the configured tables again"),
        "{stdout}"
    );
    // Setup restores it and records the selection again.
    let out = pair.run("main", &["setup"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "main and cloud: record the 7 replicated table(s) in duplex.replicated_table"
        ),
        "{stdout}"
    );
    assert_eq!(recorded(&main).await.len(), 7);
    wait_until("check passes", Duration::from_secs(10), || async {
        pair.run("main", &["check"]).await.status.success()
    })
    .await;
}
