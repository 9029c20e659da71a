//! The psql route: `scripts/setup-replication.sh` and the SQL scripts it runs provision
//! the same replication as `duplex setup`, idempotently.

mod common;

use std::time::Duration;

use common::{insert_user, url, wait_until, Pair};

fn pg_bin() -> String {
    std::env::var("PG_BIN").unwrap_or_else(|_| {
        let out =
            std::process::Command::new(format!("{}/scripts/lab.sh", env!("CARGO_MANIFEST_DIR")))
                .arg("pg-bin")
                .output()
                .expect("scripts/lab.sh pg-bin");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

async fn script(pair: &Pair, role: &str) -> std::process::Output {
    let (local, remote) = match role {
        "main" => (pair.main_port, pair.cloud_port),
        _ => (pair.cloud_port, pair.main_port),
    };
    tokio::process::Command::new(format!(
        "{}/scripts/setup-replication.sh",
        env!("CARGO_MANIFEST_DIR")
    ))
    .env("INSTANCE_ROLE", role)
    .env("LOCAL_DB_URL", url(local, &pair.db))
    .env("REMOTE_DB_URL", url(remote, &pair.db))
    .env("REPLICATION_SLOT_NAME", pair.slot(role))
    .env("DUPLEX_REPLICATION_PASSWORD", common::REPLICATION_PASSWORD)
    .env("PG_BIN", pg_bin())
    .output()
    .await
    .expect("running scripts/setup-replication.sh")
}

#[tokio::test]
async fn the_shell_wrapper_sets_up_both_directions_and_a_second_run_changes_nothing() {
    let pair = Pair::new().await;
    let out = script(&pair, "main").await;
    assert_eq!(out.status.code(), Some(1), "main before cloud must refuse");
    assert!(String::from_utf8_lossy(&out.stderr).contains("INSTANCE_ROLE=cloud"));

    for role in ["cloud", "main"] {
        let out = script(&pair, role).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{role}: {stderr}");
        assert!(
            !stderr.contains(common::REPLICATION_PASSWORD),
            "password printed"
        );
    }
    let objects = pair.replication_objects().await;
    assert_eq!(objects.len(), 6, "{objects:?}");
    for role in ["cloud", "main"] {
        assert!(script(&pair, role).await.status.success());
    }
    assert_eq!(pair.replication_objects().await, objects);

    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user(&main, "m", None).await;
    insert_user(&cloud, "c", None).await;
    for c in [&main, &cloud] {
        wait_until(
            "both rows on both sides",
            Duration::from_secs(5),
            || async {
                c.query_one(r#"SELECT count(*) FROM "User""#, &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 2
            },
        )
        .await;
    }
    // duplex agrees that the scripts set replication up: it would only add its own schema
    // and the in-stream conflict resolution, which only duplex installs.
    let out = pair.run("main", &["setup", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    only_conflict_resolution_left(&stdout);
    assert!(
        stdout.contains("apply sql/migrations/0001_init.sql"),
        "{stdout}"
    );
}

/// Every statement `duplex setup --dry-run` still plans after the psql route is part of the
/// in-stream conflict resolution (docs/design.md: the psql route replicates, duplex resolves)
/// or duplex's own bookkeeping (its schema, its record of the replicated tables, which the
/// scripts keep only where duplex's schema already exists).
fn only_conflict_resolution_left(dry_run: &str) {
    let steps: Vec<&str> = dry_run
        .lines()
        .filter(|l| {
            l.starts_with("-- on ")
                && !l.starts_with("-- on the local instance: create schema duplex")
        })
        .collect();
    assert!(!steps.is_empty(), "{dry_run}");
    for step in steps {
        assert!(
            step.contains("conflict resolution")
                || step.contains("duplex.change_meta")
                || step.contains("schema duplex")
                || step.contains("_meta as well")
                || step.contains("in duplex.replicated_table"),
            "the psql route left a replication step to duplex: {step}\n{dry_run}"
        );
    }
}

/// The psql route for cloud, then main; each must succeed.
async fn script_both(pair: &Pair) {
    for role in ["cloud", "main"] {
        let out = script(pair, role).await;
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn after_a_new_table_the_psql_route_and_duplex_setup_agree() {
    let pair = Pair::new().await;
    script_both(&pair).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        c.batch_execute(r#"CREATE TABLE "Extra" ("id" text PRIMARY KEY)"#)
            .await
            .unwrap();
    }
    script_both(&pair).await;
    // The same plan from duplex: nothing but conflict resolution left on either side.
    for role in ["cloud", "main"] {
        let out = pair.run(role, &["setup", "--dry-run"]).await;
        only_conflict_resolution_left(&String::from_utf8_lossy(&out.stdout));
    }
    insert_user(&main, "m", None).await;
    main.batch_execute(r#"INSERT INTO "Extra" VALUES ('x')"#)
        .await
        .unwrap();
    wait_until(
        "the new table replicates",
        Duration::from_secs(5),
        || async {
            cloud
                .query_one(r#"SELECT count(*) FROM "Extra""#, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
}

/// `schema.table` rows of `duplex.replicated_table` with when each was recorded.
async fn recorded(c: &tokio_postgres::Client) -> Vec<(String, String)> {
    c.query(
        "SELECT schema_name || '.' || table_name, recorded_at::text FROM duplex.replicated_table ORDER BY 1",
        &[],
    )
    .await
    .expect("reading duplex.replicated_table")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn after_duplex_setup_the_psql_route_keeps_the_recorded_tables_in_step() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        c.batch_execute(r#"CREATE TABLE "Extra" ("id" text PRIMARY KEY)"#)
            .await
            .unwrap();
    }
    script_both(&pair).await;
    let tables =
        |rows: &[(String, String)]| rows.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
    let on_main = recorded(&main).await;
    assert_eq!(tables(&on_main).len(), 8, "{on_main:?}");
    assert!(tables(&on_main).contains(&"public.Extra".to_string()));
    assert_eq!(tables(&recorded(&cloud).await), tables(&on_main));
    // A second run changes nothing, not even when the rows were recorded.
    script_both(&pair).await;
    assert_eq!(recorded(&main).await, on_main);

    // duplex compares its configuration with what the scripts set up: the same tables.
    let out = pair.run("main", &["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "ok    tables: 8 table(s) configured, the same as the tables recorded at setup in duplex.replicated_table"
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("configured but not replicated"),
        "{stdout}"
    );
}
