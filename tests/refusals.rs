//! `duplex setup` refuses unsafe conditions with a clear message and changes nothing.

mod common;

use std::time::Duration;

use common::{cloud_port, main_port, pg15_port, replica_port, small_port, text, Pair};

/// Run setup for `role`; assert it failed naming `expected`, and that nothing was created.
async fn assert_refused(pair: &Pair, role: &str, expected: &[&str]) {
    let out = pair.run(role, &["setup"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "setup did not refuse:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("setup refused, nothing was changed"),
        "{stderr}"
    );
    for e in expected {
        assert!(stderr.contains(e), "missing `{e}` in:\n{stderr}");
    }
    assert_eq!(pair.replication_objects().await, Vec::<String>::new());
    for c in [pair.main().await, pair.cloud().await] {
        let schema = c
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'duplex'", &[])
            .await
            .unwrap();
        assert!(
            schema.is_none(),
            "schema duplex was created by a refused setup"
        );
    }
}

#[tokio::test]
async fn setup_refuses_a_peer_older_than_postgresql_16() {
    let pair = Pair::on(main_port(), pg15_port(), true).await;
    assert_refused(
        &pair,
        "main",
        &["the cloud instance runs PostgreSQL 15", "needs 16 or newer"],
    )
    .await;
}

#[tokio::test]
async fn setup_refuses_when_wal_level_is_not_logical() {
    let pair = Pair::on(replica_port(), cloud_port(), true).await;
    assert_refused(
        &pair,
        "cloud",
        &[
            "wal_level is `replica` on the main instance",
            "ALTER SYSTEM SET wal_level = logical",
        ],
    )
    .await;
}

#[tokio::test]
async fn setup_refuses_a_table_without_primary_key() {
    let pair = Pair::new().await;
    for c in [pair.main().await, pair.cloud().await] {
        c.batch_execute(r#"CREATE TABLE "AuditNote" ("text" text)"#)
            .await
            .unwrap();
    }
    assert_refused(
        &pair,
        "cloud",
        &["table public.AuditNote has no primary key or usable replica identity on the cloud instance", "add a primary key"],
    )
    .await;
}

#[tokio::test]
async fn setup_refuses_tables_that_differ_and_names_the_columns() {
    let pair = Pair::new().await;
    pair.cloud()
        .await
        .batch_execute(
            r#"ALTER TABLE "JumpLog" ADD COLUMN "notes" text;
               ALTER TABLE "JumpLog" ALTER COLUMN "altitude" TYPE bigint;"#,
        )
        .await
        .unwrap();
    assert_refused(
        &pair,
        "cloud",
        &[
            "table public.JumpLog differs between the two instances",
            "column \"altitude\" is bigint NOT NULL on cloud but integer NOT NULL on main",
            "column \"notes\" exists only on cloud",
        ],
    )
    .await;
}

#[tokio::test]
async fn setup_refuses_a_configured_table_that_does_not_exist() {
    let pair = Pair::new().await;
    pair.set_config("[tables]\ninclude = [\"User\", \"Jumps\"]\n");
    assert_refused(
        &pair,
        "cloud",
        &[
            "table public.Jumps does not exist on the cloud instance",
            "table public.Jumps does not exist on the main instance",
        ],
    )
    .await;
}

#[tokio::test]
async fn main_refuses_to_subscribe_before_cloud_copied_the_data() {
    let pair = Pair::new().await;
    assert_refused(
        &pair,
        "main",
        &["run `duplex setup` with INSTANCE_ROLE=cloud first"],
    )
    .await;
}

#[tokio::test]
async fn setup_refuses_a_database_recorded_for_the_other_role_even_in_a_dry_run() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    // Main's duplex pointed at cloud's database by mistake (a copied .env).
    let mut cmd = pair.duplex("main", &["setup", "--dry-run"]);
    cmd.env("LOCAL_DB_URL", common::url(cloud_port(), &pair.db))
        .env("REMOTE_DB_URL", common::url(main_port(), &pair.db));
    let out = cmd.output().await.unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("this database is recorded as the cloud instance but INSTANCE_ROLE is main"),
        "{stderr}"
    );
    assert!(stderr.contains("runbooks/role-mismatch.md"), "{stderr}");
}

/// `duplex check` for `role` with `env` overrides: exit code and stdout.
async fn check(pair: &Pair, role: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = pair.duplex(role, &["check"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (out.status.code(), text(&out).0)
}

#[tokio::test]
async fn check_names_swapped_roles_with_setups_words_and_advises_no_setup() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let (code, stdout) = check(
        &pair,
        "main",
        &[
            ("LOCAL_DB_URL", common::url(common::cloud_port(), &pair.db)),
            ("REMOTE_DB_URL", common::url(common::main_port(), &pair.db)),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout
            .contains("this database is recorded as the cloud instance but INSTANCE_ROLE is main"),
        "{stdout}"
    );
    assert!(stdout.contains("runbooks/role-mismatch.md"), "{stdout}");
    assert!(!stdout.contains("missing"), "{stdout}");
    assert!(!stdout.contains("run `duplex setup`"), "{stdout}");
}

#[tokio::test]
async fn check_names_a_missing_table_a_table_without_key_and_differing_columns() {
    let pair = Pair::new().await;
    for c in [pair.main().await, pair.cloud().await] {
        c.batch_execute(r#"CREATE TABLE "AuditNote" ("text" text)"#)
            .await
            .unwrap();
    }
    pair.cloud()
        .await
        .batch_execute(r#"ALTER TABLE "JumpLog" ADD COLUMN "notes" text"#)
        .await
        .unwrap();
    pair.set_config("[tables]\ninclude = [\"User\", \"Jumps\", \"AuditNote\", \"JumpLog\"]\n");
    let (code, stdout) = check(&pair, "cloud", &[]).await;
    assert_eq!(code, Some(1), "{stdout}");
    for expected in [
        "table public.Jumps does not exist on the cloud instance",
        "table public.AuditNote has no primary key or usable replica identity on the cloud instance",
        "column \"notes\" exists only on cloud",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
}

/// Fill the cloud cluster's logical replication workers with subscriptions of the test's
/// own (to a publication on main, with real slots), as other applications would.
async fn subscribe_filler(pair: &Pair, n: usize) {
    let main = pair.main().await;
    main.batch_execute(r#"CREATE PUBLICATION filler FOR TABLE "Device""#)
        .await
        .unwrap();
    let cloud = pair.cloud().await;
    for i in 0..n {
        cloud
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION filler_{id}_{i} CONNECTION '{conn}' PUBLICATION filler WITH (copy_data = false)",
                id = pair.id,
                conn = common::url(main_port(), &pair.db),
            ))
            .await
            .expect("creating a filler subscription");
    }
    common::wait_until("filler subscriptions running", Duration::from_secs(30), || async {
        let running: i64 = cloud
            .query_one(
                "SELECT count(*) FROM pg_stat_subscription WHERE subname LIKE 'filler_' || $1 || '%' AND pid IS NOT NULL",
                &[&pair.id],
            )
            .await
            .unwrap()
            .get(0);
        running == n as i64
    })
    .await;
}

#[tokio::test]
async fn setup_refuses_a_cluster_without_a_free_logical_replication_worker_and_check_shows_it() {
    // The `small` fixture has PostgreSQL's defaults: 4 logical replication workers. Three
    // other subscriptions leave one; cloud's setup needs two (apply and initial copy).
    let pair = Pair::on(main_port(), small_port(), true).await;
    subscribe_filler(&pair, 3).await;

    let out = pair.run("cloud", &["setup"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for expected in [
        "setup refused, nothing was changed",
        "the cloud instance has no room for duplex's subscription: max_logical_replication_workers is 4, 3 are in use",
        "ALTER SYSTEM SET max_logical_replication_workers = 5",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
    let objects = pair.replication_objects().await;
    assert!(
        objects.iter().all(|o| !o.contains("duplex")),
        "a refused setup created {objects:?}"
    );

    let (code, stdout) = check(&pair, "cloud", &[]).await;
    assert_eq!(code, Some(1), "{stdout}");
    for expected in [
        "cloud: capacity: logical replication workers 3 of 4, worker processes",
        "main: capacity: logical replication workers",
        "setup would refuse: the cloud instance has no room for duplex's subscription",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }

    // With one filler gone, what setup needs fits exactly: it runs and the copy finishes.
    let cloud = pair.cloud().await;
    cloud
        .batch_execute(&format!("DROP SUBSCRIPTION filler_{}_0", pair.id))
        .await
        .unwrap();
    let out = pair.run("cloud", &["setup"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("initial copy of"), "{stdout}");
}
