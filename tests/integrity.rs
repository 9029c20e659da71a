//! `duplex integrity` on the lab's real clusters: the cutover gate.

mod common;

use std::time::Duration;

use common::{text, Pair};
use serde_json::Value;

#[tokio::test]
async fn equal_tables_pass_and_one_changed_row_fails_naming_the_table_and_key_range() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.batch_execute(
        r#"INSERT INTO "User" ("id", "email", "name")
           SELECT 'u' || lpad(i::text, 4, '0'), 'u' || i || '@x', CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' END
             FROM generate_series(1, 2000) i"#,
    )
    .await
    .expect("seeding");
    pair.wait_caught_up(Duration::from_secs(30)).await;

    let out = pair.run("main", &["integrity", "--checksum"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("integrity OK"), "{stdout}");
    assert!(
        stdout.contains("public.User: main 2000 cloud 2000 delta +0, checksum match"),
        "{stdout}"
    );

    let first = pair
        .run("main", &["integrity", "--checksum", "--json"])
        .await;
    let second = pair
        .run("cloud", &["integrity", "--checksum", "--json"])
        .await;
    assert_eq!(
        first.stdout, second.stdout,
        "--json is stable and the same from either side"
    );
    let v: Value = serde_json::from_slice(&first.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|t| t["table"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    // One row changed behind replication's back (NULL -> '' on a NULL-bearing column).
    let origin = format!("duplex_t_{}_behind", pair.id);
    cloud
        .batch_execute(&format!(
            "SELECT pg_replication_origin_create('{origin}');
             SELECT pg_replication_origin_session_setup('{origin}');
             UPDATE \"User\" SET \"name\" = '' WHERE \"id\" = 'u1500';
             SELECT pg_replication_origin_session_reset();
             SELECT pg_replication_origin_drop('{origin}');"
        ))
        .await
        .expect("changing a row behind replication's back");

    let out = pair.run("main", &["integrity", "--checksum"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("integrity FAILED: public.User"), "{stdout}");
    assert!(stdout.contains("checksum differ"), "{stdout}");
    let out = pair
        .run(
            "main",
            &["integrity", "--checksum", "--json", "--table", "User"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let t = &v["tables"][0];
    assert_eq!(t["table"], "public.User");
    assert_eq!(
        (
            t["main_count"].as_i64(),
            t["cloud_count"].as_i64(),
            t["delta"].as_i64()
        ),
        (Some(2000), Some(2000), Some(0))
    );
    assert_eq!(t["checksum"], "differ");
    let ranges = t["differing_ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 1, "{v}");
    let (from, to) = (
        ranges[0]["from"].as_str().unwrap_or_default(),
        ranges[0]["to"].as_str().unwrap_or("[\"~\"]"),
    );
    assert!(
        from <= "[\"u1500\"]" && "[\"u1500\"]" < to,
        "{from} .. {to}"
    );
    assert!(ranges[0]["main_rows"].as_i64().unwrap_or(0) <= 256, "{v}");

    // Counts alone cannot see it; the FAILED entry is in sync_log.
    let counts = pair.run("main", &["integrity"]).await;
    assert_eq!(counts.status.code(), Some(0), "{:?}", text(&counts));
    let failed: i64 = main
        .query_one(
            "SELECT count(*) FROM duplex.sync_log WHERE sync_type = 'integrity' AND status = 'FAILED'
               AND error_message LIKE '%public.User%'",
            &[],
        )
        .await
        .expect("reading sync_log")
        .get(0);
    assert_eq!(failed, 2);
}
