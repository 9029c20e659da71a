//! In-stream conflict resolution on the lab's real clusters: each conflict type and policy.

mod common;

use std::time::Duration;

use common::{insert_user, Pair};
use tokio_postgres::Client;

async fn user_name(c: &Client, id: &str) -> Option<Option<String>> {
    c.query_opt(r#"SELECT "name" FROM "User" WHERE "id" = $1"#, &[&id])
        .await
        .expect("reading User")
        .map(|r| r.get(0))
}

async fn set_name(c: &Client, id: &str, name: &str, at: &str) {
    c.execute(
        r#"UPDATE "User" SET "name" = $2, "updatedAt" = $3::text::timestamptz WHERE "id" = $1"#,
        &[&id, &name, &at],
    )
    .await
    .expect("updating User");
}

#[tokio::test]
async fn concurrent_updates_converge_to_the_later_one_and_are_logged_once() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user(&main, "u1", Some("first")).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;

    pair.partition().await;
    set_name(&main, "u1", "main edit", "2030-01-01 10:00:05+00").await;
    set_name(&cloud, "u1", "cloud edit", "2030-01-01 10:00:09+00").await;
    pair.heal().await;

    assert_eq!(
        user_name(&main, "u1").await,
        Some(Some("cloud edit".into()))
    );
    assert_eq!(
        user_name(&cloud, "u1").await,
        Some(Some("cloud edit".into()))
    );
    let (m, c) = (Pair::conflicts(&main).await, Pair::conflicts(&cloud).await);
    for log in [&m, &c] {
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].2, "update_update");
        assert_eq!(log[0].3.as_deref(), Some("CLOUD"));
        assert_eq!(log[0].4.as_deref(), Some("LAST_WRITE_WINS"));
    }
    assert_eq!(
        Pair::row_hashes(&main, r#""User""#).await,
        Pair::row_hashes(&cloud, r#""User""#).await
    );
}
