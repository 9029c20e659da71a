//! Installing, checking and removing in-stream conflict resolution with `duplex setup`,
//! `duplex check` and `duplex status`, on the lab's real clusters.

mod common;

use common::{text, Pair};

#[tokio::test]
async fn check_lists_each_tables_policy_and_notices_stale_or_removed_triggers() {
    let pair = Pair::new().await;
    pair.setup_both().await;

    let out = pair.run("main", &["check"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "main: conflicts on public.Device: main_authoritative; triggers installed and current",
        "main: conflicts on public.User: last_write_wins by \"updatedAt\"; triggers installed and current",
        "cloud: conflicts on public.GroupMember: main_authoritative; triggers installed and current",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    let out = pair.run("main", &["status"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("conflict policies on main:"), "{stdout}");
    assert!(
        stdout.contains("public.User: last_write_wins by \"updatedAt\""),
        "{stdout}"
    );

    // A schema change makes the generated triggers stale; setup regenerates them.
    for c in [pair.main().await, pair.cloud().await] {
        c.batch_execute(r#"ALTER TABLE "User" ADD COLUMN "nickname" text"#)
            .await
            .unwrap();
    }
    let out = pair.run("main", &["check"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("main: conflicts on public.User: last_write_wins by \"updatedAt\"; installed triggers were generated from another table definition or policy"),
        "{stdout}"
    );
    let out = pair.run("main", &["setup", "--dry-run"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("install in-stream conflict resolution on public.User"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("install in-stream conflict resolution on public.Device"),
        "only the changed table is regenerated:\n{stdout}"
    );
    pair.setup_both().await;
    let out = pair.run("main", &["check"]).await;
    assert!(out.status.success(), "{}", text(&out).0);

    // Removal is one documented command; check then says what is missing; setup restores.
    let out = pair.run("main", &["setup", "--remove-resolution"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("removed in-stream conflict resolution from 7 table(s) on main"),
        "{stdout}"
    );
    let triggers: i64 = pair
        .main()
        .await
        .query_one(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.tgname LIKE 'duplex\\_%' AND n.nspname <> 'duplex'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "triggers left behind on main");
    let out = pair.run("main", &["check"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("main: conflicts on public.User: last_write_wins by \"updatedAt\"; in-stream resolution is not installed"),
        "{stdout}"
    );
    pair.setup_both().await;
    let out = pair.run("main", &["check"]).await;
    assert!(out.status.success(), "{}", text(&out).0);
}

#[tokio::test]
async fn a_bad_policy_is_refused_naming_the_table_and_changes_nothing() {
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{}\n[conflicts.tables.\"GroupMember\"]\npolicy = \"last_write_wins\"\n",
        common::EXAMPLE_TABLES
    ));
    let out = pair.run("cloud", &["setup"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("table public.GroupMember uses last_write_wins but has no \"updatedAt\" or updated_at timestamp column"),
        "{stderr}"
    );
    assert!(pair.replication_objects().await.is_empty());
}
