//! Manual conflict resolution on the lab's real clusters: a `manual` table keeps main's
//! version provisionally, and a person settles it with `duplex conflicts resolve` or the API.

mod common;

use common::{set_name, user_name};

use std::time::Duration;

use common::{insert_user, text, Pair, EXAMPLE_TABLES};
use serde_json::Value;
use tokio_postgres::Client;

fn manual_config() -> String {
    format!("{EXAMPLE_TABLES}\n[conflicts.tables.\"User\"]\npolicy = \"manual\"\n")
}

/// (id, resolved_by, resolution) of the entries for user `id`, on one side.
async fn entries(c: &Client, id: &str) -> Vec<(i64, Option<String>, Option<String>)> {
    c.query(
        "SELECT id, resolved_by, resolution FROM duplex.conflict_log
          WHERE table_name = 'public.User' AND record_id = $1 ORDER BY id",
        &[&format!("[\"{id}\"]")],
    )
    .await
    .expect("reading conflict_log")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A manual-policy pair with user `id` edited on both sides during a partition: returns
/// the conflict's id on main once both sides have logged it.
async fn update_update_conflict(pair: &Pair, id: &str) -> i64 {
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user(&main, id, Some("first")).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    pair.partition().await;
    set_name(&main, id, "main edit", "2030-01-01 10:00:05+00").await;
    // Later, so last-write-wins would pick cloud: manual must still apply main's.
    set_name(&cloud, id, "cloud edit", "2030-01-01 10:00:09+00").await;
    pair.heal().await;
    for c in [&main, &cloud] {
        assert_eq!(user_name(c, id).await, Some(Some("main edit".into())));
    }
    let on_main = entries(&main, id).await;
    assert_eq!(on_main.len(), 1, "{on_main:?}");
    for c in [&main, &cloud] {
        let e = entries(c, id).await;
        assert!(e.iter().all(|(_, by, _)| by.is_none()), "open: {e:?}");
    }
    on_main[0].0
}

/// `duplex conflicts resolve ID --use cloud` on main.
async fn resolve_with_cloud(pair: &Pair, id: i64) -> std::process::Output {
    pair.run(
        "main",
        &["conflicts", "resolve", &id.to_string(), "--use", "cloud"],
    )
    .await
}

async fn manual_pair() -> Pair {
    let pair = Pair::new().await;
    pair.set_config(&manual_config());
    pair.setup_both().await;
    pair
}

#[tokio::test]
async fn resolving_with_cloud_writes_cloud_s_version_to_both_sides_once() {
    let pair = manual_pair().await;
    let id = update_update_conflict(&pair, "u1").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);

    let listed = pair
        .run("main", &["conflicts", "list", "--open", "--json"])
        .await;
    assert!(listed.status.success(), "{:?}", text(&listed));
    let v: Value = serde_json::from_slice(&listed.stdout).expect("list --json is JSON");
    let open = v.as_array().expect("a JSON array");
    assert_eq!(open.len(), 1, "{v}");
    assert_eq!(open[0]["id"], id);
    assert_eq!(open[0]["conflict_type"], "update_update");
    assert_eq!(open[0]["policy"], "manual");
    assert_eq!(open[0]["winner"], "MAIN");
    assert!(open[0]["fields"]
        .as_array()
        .is_some_and(|f| f.iter().any(|d| d["field"] == "name")));

    let human = pair.run("main", &["conflicts", "list"]).await;
    let (out, _) = text(&human);
    assert!(
        out.contains("update_update") && out.contains("open"),
        "{out}"
    );
    let show = pair
        .run("main", &["conflicts", "show", &id.to_string()])
        .await;
    let (out, _) = text(&show);
    assert!(
        out.contains("name: main \"main edit\" | cloud \"cloud edit\""),
        "{out}"
    );

    let out = resolve_with_cloud(&pair, id).await;
    assert!(out.status.success(), "{:?}", text(&out));
    for c in [&main, &cloud] {
        assert_eq!(user_name(c, "u1").await, Some(Some("cloud edit".into())));
        let e = entries(c, "u1").await;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].1.as_deref(), Some("MANUAL"));
        assert_eq!(e[0].2.as_deref(), Some("CLOUD"));
    }
    assert_eq!(
        Pair::row_hashes(&main, r#""User""#).await,
        Pair::row_hashes(&cloud, r#""User""#).await
    );

    // Written under duplex's origin: nothing travels back, nothing new is logged.
    pair.wait_caught_up(Duration::from_secs(10)).await;
    for c in [&main, &cloud] {
        assert_eq!(user_name(c, "u1").await, Some(Some("cloud edit".into())));
        assert_eq!(Pair::conflicts(c).await.len(), 1);
    }

    let again = resolve_with_cloud(&pair, id).await;
    let (_, err) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(err.contains("already resolved"), "{err}");

    let resolved = pair
        .run("main", &["conflicts", "list", "--resolved", "--json"])
        .await;
    let v: Value = serde_json::from_slice(&resolved.stdout).expect("list --json is JSON");
    assert_eq!(v[0]["id"], id);
    assert_eq!(v[0]["resolution"], "CLOUD");
    let unknown = pair.run("main", &["conflicts", "show", "999999"]).await;
    assert_eq!(unknown.status.code(), Some(1));
}

/// `POST path` with a JSON body and the daemon's token: status and JSON body.
async fn post_json(d: &common::Daemon, path: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connecting to the daemon");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        d.addr,
        d.token,
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .expect("reading the answer");
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (code, value)
}

#[tokio::test]
async fn the_api_confirms_main_once_then_answers_409_404_and_400() {
    let pair = manual_pair().await;
    let id = update_update_conflict(&pair, "u2").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let d = pair.start_daemon("main", &[]).await;

    let (code, v) = d.get("/api/sync/conflicts?resolved=false").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["conflicts"][0]["id"], id);
    let (code, v) = d.get("/api/sync/conflicts?limit=0").await;
    assert_eq!(code, 400);
    assert!(v["message"].as_str().unwrap_or("").contains("limit"), "{v}");
    let (code, v) = d.get(&format!("/api/sync/conflicts/{id}")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["winner"], "MAIN");

    let path = format!("/api/sync/conflicts/{id}/resolve");
    let (code, v) = post_json(&d, &path, r#"{"choice":"BOTH"}"#).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = post_json(&d, &path, "not json").await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = post_json(&d, &path, r#"{"choice":"MAIN"}"#).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["written"], serde_json::json!([]));
    let (code, v) = post_json(&d, &path, r#"{"choice":"MAIN"}"#).await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = post_json(
        &d,
        "/api/sync/conflicts/999999/resolve",
        r#"{"choice":"MAIN"}"#,
    )
    .await;
    assert_eq!(code, 404, "{v}");
    let (code, _) = d.get("/api/sync/conflicts/999999").await;
    assert_eq!(code, 404);
    let (code, _) = d.call("GET", "/api/sync/conflicts", "wrong-token").await;
    assert_eq!(code, 401);

    for c in [&main, &cloud] {
        assert_eq!(user_name(c, "u2").await, Some(Some("main edit".into())));
        let e = entries(c, "u2").await;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].1.as_deref(), Some("MANUAL"));
        assert_eq!(e[0].2.as_deref(), Some("MAIN"));
    }
    let (code, v) = d.get("/api/sync/conflicts?resolved=true&table=User").await;
    assert_eq!(code, 200);
    assert_eq!(v["conflicts"][0]["resolution"], "MAIN");

    let (_, metrics) = d.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains(
            r#"duplex_conflicts_total{policy="manual",table="public.User",type="update_update"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("duplex_conflicts_open 0"), "{metrics}");
    let (ok, _) = d.stop().await;
    assert!(ok);
}

/// A manual conflict on a table with identity and generated columns (`common::LINE`) is
/// resolved like any other: the chosen version is written without the generated columns,
/// and the row is recognised as unchanged although the server computed them.
#[tokio::test]
async fn resolving_a_row_with_generated_and_identity_columns_writes_the_chosen_version() {
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}\n[conflicts.tables.\"Line\"]\npolicy = \"manual\"\n"
    ));
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    pair.create(common::LINE).await;
    pair.setup_both().await;
    main.batch_execute(r#"INSERT INTO "Line" (qty, price) VALUES (1, 10)"#)
        .await
        .expect("seeding Line");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    pair.partition().await;
    for (c, qty) in [(&main, 2), (&cloud, 3)] {
        c.execute(r#"UPDATE "Line" SET qty = $1 WHERE id = 1"#, &[&qty])
            .await
            .expect("updating Line");
    }
    pair.heal().await;
    for c in [&main, &cloud] {
        assert_eq!(
            common::line_total(c, 1).await.as_deref(),
            Some("20"),
            "main's, provisionally"
        );
    }
    let id: i64 = main
        .query_one(
            "SELECT id FROM duplex.conflict_log WHERE table_name = 'public.Line'",
            &[],
        )
        .await
        .expect("one conflict logged for Line")
        .get(0);
    let out = resolve_with_cloud(&pair, id).await;
    assert!(out.status.success(), "{:?}", text(&out));
    for c in [&main, &cloud] {
        assert_eq!(common::line_total(c, 1).await.as_deref(), Some("30"));
    }
    assert_eq!(
        Pair::row_hashes(&main, r#""Line""#).await,
        Pair::row_hashes(&cloud, r#""Line""#).await
    );
}
