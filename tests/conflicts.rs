//! In-stream conflict resolution on the lab's real clusters: each conflict type and policy.

mod common;

use common::{set_name, user_name};

use std::time::Duration;

use common::{insert_user, text, Pair};
use tokio_postgres::Client;

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

// ---------------------------------------------------------------------------------------
// One test per conflict type and policy (docs/conflicts.md), each checking what a user
// checks: both sides equal row for row, the documented winner, one conflict_log entry on
// each side with the right type, winner and resolved_by, both subscriptions still enabled
// and no apply error.

const T1: &str = "2030-01-01 10:00:05+00";
const T2: &str = "2030-01-01 10:00:09+00";

/// A pair set up with resolution installed; `extra` runs on both sides before setup.
async fn pair_with(extra: &str) -> Pair {
    let pair = Pair::new().await;
    if !extra.is_empty() {
        pair.create(extra).await;
    }
    pair.setup_both().await;
    pair
}

async fn insert_user_at(c: &Client, id: &str, email: &str, name: &str, at: &str) {
    c.execute(
        r#"INSERT INTO "User" ("id", "email", "name", "updatedAt")
           VALUES ($1, $2, $3, $4::text::timestamptz)"#,
        &[&id, &email, &name, &at],
    )
    .await
    .expect("inserting User");
}

async fn delete_user(c: &Client, id: &str) {
    let n = c
        .execute(r#"DELETE FROM "User" WHERE "id" = $1"#, &[&id])
        .await
        .expect("deleting User");
    assert_eq!(n, 1, "deleting User {id}");
}

async fn emails(c: &Client) -> Vec<(String, String)> {
    c.query(r#"SELECT "id", "email" FROM "User" ORDER BY 1"#, &[])
        .await
        .expect("reading User")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Both sides hold the same rows of every table in `tables` (quoted names).
async fn assert_equal(pair: &Pair, tables: &[&str]) {
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for t in tables {
        assert_eq!(
            Pair::row_hashes(&main, t).await,
            Pair::row_hashes(&cloud, t).await,
            "table {t} differs between main and cloud"
        );
    }
}

/// Replication is healthy: both subscriptions enabled, no apply error since `before`.
async fn assert_healthy(pair: &Pair, errors_before: i64) {
    assert!(
        pair.subscriptions_enabled().await,
        "a subscription is disabled"
    );
    assert_eq!(
        pair.apply_error_count().await,
        errors_before,
        "apply_error_count rose"
    );
}

/// Exactly one conflict_log entry on each side, of `kind` with `winner` and
/// `resolved_by`, and both sides agree on its merge key (so merged it is one conflict).
async fn assert_logged_once(pair: &Pair, kind: &str, winner: &str, resolved_by: &str) {
    assert_logged(pair, kind, winner, resolved_by, true).await;
}

/// Like [`assert_logged_once`]; with `both` false only main notices the conflict and
/// cloud's log stays empty (merged, it is still one entry).
async fn assert_logged(pair: &Pair, kind: &str, winner: &str, resolved_by: &str, both: bool) {
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let m = Pair::conflict_entries(&main).await;
    let c = Pair::conflict_entries(&cloud).await;
    if !both {
        assert!(c.is_empty(), "cloud: no entry expected: {c:#?}");
    }
    let sides: &[(&str, &Vec<common::ConflictEntry>)] = if both {
        &[("main", &m), ("cloud", &c)]
    } else {
        &[("main", &m)]
    };
    for (side, log) in sides {
        assert_eq!(log.len(), 1, "{side}: one conflict expected: {log:#?}");
        let e = &log[0];
        assert_eq!(
            (e.kind.as_str(), e.winner.as_str(), e.resolved_by.as_str()),
            (kind, winner, resolved_by),
            "{side}: {e:#?}"
        );
    }
    if !both {
        return;
    }
    assert_eq!(
        m[0].key, c[0].key,
        "main and cloud logged the same conflict under different keys:\nmain {:#?}\ncloud {:#?}",
        m[0], c[0]
    );
}

#[tokio::test]
async fn lww_insert_insert_later_insert_wins() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    insert_user_at(&main, "u1", "u1@example.com", "main", T1).await;
    insert_user_at(&cloud, "u1", "u1@example.com", "cloud", T2).await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(user_name(&main, "u1").await, Some(Some("cloud".into())));
    assert_logged_once(&pair, "insert_insert", "CLOUD", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn lww_insert_insert_tie_goes_to_main() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    insert_user_at(&main, "u1", "u1@example.com", "main", T1).await;
    insert_user_at(&cloud, "u1", "u1@example.com", "cloud", T1).await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(user_name(&cloud, "u1").await, Some(Some("main".into())));
    assert_logged_once(&pair, "insert_insert", "MAIN", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn lww_update_delete_the_delete_wins() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user_at(&main, "u1", "u1@example.com", "first", T1).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    // Main's update is even the later write: a delete still beats a concurrent update.
    set_name(&main, "u1", "main edit", T2).await;
    delete_user(&cloud, "u1").await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(user_name(&main, "u1").await, None);
    assert_logged_once(&pair, "update_delete", "DELETED", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn lww_delete_update_the_delete_wins() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user_at(&main, "u1", "u1@example.com", "first", T1).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    delete_user(&main, "u1").await;
    set_name(&cloud, "u1", "cloud edit", T2).await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(user_name(&cloud, "u1").await, None);
    assert_logged_once(&pair, "delete_update", "DELETED", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn lww_reinsert_after_delete_survives_a_concurrent_update_of_the_old_row() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user_at(&main, "u1", "u1@example.com", "old", T1).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    // Cloud: the user leaves and comes back (a new row under the same key); main edits the
    // old row meanwhile, even later than the re-insert.
    delete_user(&cloud, "u1").await;
    insert_user_at(&cloud, "u1", "u1@example.com", "re-inserted", T1).await;
    set_name(&main, "u1", "old, edited", T2).await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(
        user_name(&main, "u1").await,
        Some(Some("re-inserted".into()))
    );
    // The delete beat the concurrent update of the old incarnation: one update_delete,
    // noticed by main (cloud's delete arrives on top of main's edit). On cloud main's
    // update of the old incarnation finds the re-inserted row and is dropped without an
    // entry (duplex.uod_* returns early when the key exists again).
    assert_logged(&pair, "update_delete", "DELETED", "LAST_WRITE_WINS", false).await;
    assert_healthy(&pair, errors).await;
}

/// Insert user "u1" (u1@example.com) named `name`, updated at `at`.
async fn insert_u1(c: &Client, name: &str, at: &str) {
    insert_user_at(c, "u1", "u1@example.com", name, at).await;
}

/// A pair whose user "u1" was inserted and deleted on both sides: every later insert of
/// the key is a new incarnation.
async fn pair_with_deleted_user() -> Pair {
    let pair = pair_with("").await;
    let main = pair.main().await;
    insert_user_at(&main, "u1", "u1@example.com", "first", T1).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    delete_user(&main, "u1").await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    pair
}

/// The sequence behind a divergence one CI run of the 20,000-operation convergence test
/// showed (seed 20000, key 136), made deterministic. Main's insert loses an insert_insert
/// on main to cloud's later edit, cloud deletes the row, and main's insert reaches cloud
/// only after that delete, so cloud tombstones main's incarnation (killed by cloud's
/// delete). Main knows only of cloud's delete. When main creates the key again, having
/// seen that delete, the new row must reach cloud; it used to be taken there for an insert
/// that missed the delete of main's old incarnation, and dropped.
#[tokio::test]
async fn lww_reinsert_after_seeing_the_delete_that_beat_an_old_insert_reaches_the_other_side() {
    let pair = pair_with_deleted_user().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;

    pair.partition().await;
    insert_u1(&cloud, "cloud", "2030-01-01 10:00:01+00").await;
    insert_u1(&main, "main", "2030-01-01 10:00:02+00").await;
    set_name(&cloud, "u1", "cloud edit", "2030-01-01 10:00:03+00").await;
    delete_user(&cloud, "u1").await;
    // Cloud to main first: main keeps its insert against cloud's older one, takes cloud's
    // later edit, then cloud's delete of it.
    main.batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main ENABLE")
        .await
        .expect("enabling main's subscription");
    common::wait_until(
        "main applied cloud's delete",
        Duration::from_secs(30),
        || async { user_name(&main, "u1").await.is_none() },
    )
    .await;
    // Then main to cloud: main's insert arrives after cloud's delete and loses to it.
    pair.heal().await;
    assert_eq!(user_name(&cloud, "u1").await, None);

    insert_user_at(&main, "u1", "u1@example.com", "again", T2).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(user_name(&main, "u1").await, Some(Some("again".into())));
    assert_eq!(
        user_name(&cloud, "u1").await,
        Some(Some("again".into())),
        "the key created again on main after it saw the delete must reach cloud"
    );
    assert_equal(&pair, &[r#""User""#]).await;
    assert_healthy(&pair, errors).await;
}

/// While the link is down cloud inserts a key, deletes it and inserts it again; main
/// inserts the same key in between (later than cloud's first insert). Cloud's delete beats
/// main's concurrent insert on both sides, and cloud's second row, made after that delete,
/// survives on both: on main the insert arrives after main's row died of that delete.
#[tokio::test]
async fn lww_key_recreated_after_a_delete_that_beat_a_concurrent_insert_survives_on_both_sides() {
    let pair = pair_with_deleted_user().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;

    pair.partition().await;
    insert_u1(&cloud, "cloud", "2030-01-01 10:00:01+00").await;
    insert_u1(&main, "main", "2030-01-01 10:00:02+00").await;
    delete_user(&cloud, "u1").await;
    insert_u1(&cloud, "cloud again", "2030-01-01 10:00:03+00").await;
    pair.heal().await;

    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(
        user_name(&main, "u1").await,
        Some(Some("cloud again".into())),
        "the row cloud created after its delete survives"
    );
    assert_healthy(&pair, errors).await;
}

/// Cloud inserts a key, deletes it, inserts it again and deletes that too, while main
/// inserts it once (later than cloud's first insert). Main's row dies of cloud's first
/// delete on both sides, and both sides name that conflict by that delete: logged once
/// (convergence seed 20014: cloud named it by the second delete).
#[tokio::test]
async fn lww_a_concurrent_insert_killed_by_the_first_of_two_deletes_is_logged_once() {
    let pair = pair_with_deleted_user().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;

    pair.partition().await;
    insert_u1(&cloud, "cloud", "2030-01-01 10:00:01+00").await;
    insert_u1(&main, "main", "2030-01-01 10:00:02+00").await;
    delete_user(&cloud, "u1").await;
    insert_u1(&cloud, "cloud again", "2030-01-01 10:00:03+00").await;
    delete_user(&cloud, "u1").await;
    pair.heal().await;

    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(user_name(&main, "u1").await, None);
    let (m, c) = (
        Pair::conflict_entries(&main).await,
        Pair::conflict_entries(&cloud).await,
    );
    let deleted = |log: &[common::ConflictEntry]| -> Vec<String> {
        log.iter()
            .filter(|e| e.kind == "update_delete")
            .map(|e| e.key.clone())
            .collect()
    };
    assert_eq!(deleted(&m).len(), 1, "main: {m:#?}");
    assert_eq!(
        deleted(&m),
        deleted(&c),
        "one update_delete, under one key:\nmain {m:#?}\ncloud {c:#?}"
    );
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn lww_unique_email_keeps_one_row_on_both_sides() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    insert_user_at(&main, "a", "same@example.com", "main", T1).await;
    insert_user_at(&cloud, "b", "same@example.com", "cloud", T2).await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(
        emails(&main).await,
        vec![("b".to_string(), "same@example.com".to_string())],
        "the later row keeps the e-mail address"
    );
    assert_logged_once(&pair, "unique_key", "CLOUD", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

/// "GroupMember" has no updated-at column: main_authoritative by detection.
#[tokio::test]
async fn composite_key_group_member_is_main_authoritative_by_detection() {
    let pair = pair_with("").await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    insert_user_at(&main, "u1", "u1@example.com", "owner", T1).await;
    main.batch_execute(
        r#"INSERT INTO "Group" ("id", "name", "ownerId") VALUES ('g1', 'team', 'u1')"#,
    )
    .await
    .expect("inserting Group");
    pair.wait_caught_up(Duration::from_secs(10)).await;
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    main.batch_execute(
        r#"INSERT INTO "GroupMember" ("groupId", "userId", "role") VALUES ('g1', 'u1', 'admin')"#,
    )
    .await
    .expect("inserting GroupMember on main");
    cloud
        .batch_execute(
            r#"INSERT INTO "GroupMember" ("groupId", "userId", "role", "joinedAt")
               VALUES ('g1', 'u1', 'member', now() + interval '1 hour')"#,
        )
        .await
        .expect("inserting GroupMember on cloud");
    pair.heal().await;
    assert_equal(&pair, &[r#""GroupMember""#]).await;
    let role: String = cloud
        .query_one(
            r#"SELECT "role" FROM "GroupMember" WHERE "groupId" = 'g1' AND "userId" = 'u1'"#,
            &[],
        )
        .await
        .expect("reading GroupMember")
        .get(0);
    assert_eq!(role, "admin", "main's version wins");
    assert_logged_once(&pair, "insert_insert", "MAIN", "MAIN_AUTHORITATIVE").await;
    assert_healthy(&pair, errors).await;
}

const ODD: &str =
    r#"CREATE TABLE "Odd ""Name""" (id int primary key, v text, "updatedAt" timestamptz)"#;

#[tokio::test]
async fn a_table_whose_name_needs_quoting_resolves_like_any_other() {
    let pair = pair_with(ODD).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.execute(
        r#"INSERT INTO "Odd ""Name""" VALUES (1, 'first', $1::text::timestamptz)"#,
        &[&T1],
    )
    .await
    .expect("inserting into the odd table");
    pair.wait_caught_up(Duration::from_secs(10)).await;
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    for (c, v, at) in [(&main, "main", T2), (&cloud, "cloud", T1)] {
        c.execute(
            r#"UPDATE "Odd ""Name""" SET v = $1, "updatedAt" = $2::text::timestamptz WHERE id = 1"#,
            &[&v, &at],
        )
        .await
        .expect("updating the odd table");
    }
    pair.heal().await;
    assert_equal(&pair, &[r#""Odd ""Name""""#]).await;
    let v: String = cloud
        .query_one(r#"SELECT v FROM "Odd ""Name""" WHERE id = 1"#, &[])
        .await
        .expect("reading the odd table")
        .get(0);
    assert_eq!(v, "main", "main's edit is the later one");
    assert_logged_once(&pair, "update_update", "MAIN", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

const ITEM: &str = r#"CREATE TABLE "Item" (id int primary key, v text, "updatedAt" timestamptz not null default clock_timestamp())"#;

/// Fact 3 of issue 7: a local insert of the same key can commit between the resolve
/// trigger's lookup and the apply's insert. With the link up, both sides insert the same
/// key at (nearly) the same moment, round after round: no apply error, both sides equal.
#[tokio::test]
async fn race_local_insert_of_the_same_key_during_apply_stops_nothing() {
    let pair = pair_with(ITEM).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    for round in 0..400i32 {
        let sm = format!(
            r#"INSERT INTO "Item" (id, v) VALUES ({round}, 'main') ON CONFLICT (id) DO NOTHING"#
        );
        let sc = format!(
            r#"INSERT INTO "Item" (id, v) VALUES ({round}, 'cloud') ON CONFLICT (id) DO NOTHING"#
        );
        let (a, b) = tokio::join!(main.batch_execute(&sm), cloud.batch_execute(&sc));
        a.expect("main insert");
        b.expect("cloud insert");
    }
    pair.wait_caught_up(Duration::from_secs(60)).await;
    assert_equal(&pair, &[r#""Item""#]).await;
    let n: i64 = main
        .query_one(r#"SELECT count(*) FROM "Item""#, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 400);
    assert_healthy(&pair, errors).await;
}

/// A local insert of a key deleted before (so it gets a new incarnation) while the other
/// side's insert of the same key is applied: neither waits for the other in the opposite
/// order. An application trigger that fires after duplex's capture holds the local insert
/// open (it waits for an advisory lock the test holds) until the apply worker has arrived
/// and waits too. Without the key lock the two deadlocked (convergence seed 20010: the
/// application's insert failed with "deadlock detected").
#[tokio::test]
async fn a_local_reinsert_and_an_incoming_insert_of_the_key_do_not_deadlock() {
    let pair = pair_with_deleted_user().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    // Fires after duplex_capture (triggers fire in name order), for local writes only.
    main.batch_execute(
        r#"CREATE FUNCTION held_u1() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF NEW."id" = 'u1' THEN PERFORM pg_advisory_xact_lock(4242); END IF; RETURN NEW; END $$;
           CREATE TRIGGER zz_held BEFORE INSERT ON "User" FOR EACH ROW EXECUTE FUNCTION held_u1();"#,
    )
    .await
    .expect("creating the holding trigger");
    let errors = pair.apply_error_count().await;
    let gate = pair.main().await;
    gate.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .expect("taking the gate lock");

    let local = tokio::spawn({
        let main = pair.main().await;
        async move {
            main.execute(
                r#"INSERT INTO "User" ("id", "email", "name", "updatedAt")
                   VALUES ('u1', 'u1@example.com', 'main', '2030-01-01 10:00:02+00')
                   ON CONFLICT DO NOTHING"#,
                &[],
            )
            .await
        }
    });
    let waiting = |backend: &'static str| {
        let main = &main;
        move || async move {
            main.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND backend_type = $1
                    AND wait_event_type = 'Lock'",
                &[&backend],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        }
    };
    let wait = Duration::from_secs(10);
    common::wait_until(
        "main's insert held after the capture",
        wait,
        waiting("client backend"),
    )
    .await;
    insert_u1(&cloud, "cloud", "2030-01-01 10:00:01+00").await;
    // The apply worker reaches the key while main's insert is still open, and waits.
    let apply = "logical replication apply worker";
    common::wait_until(
        "main's apply worker waiting on the key",
        wait,
        waiting(apply),
    )
    .await;
    gate.batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .expect("releasing the gate lock");
    let inserted = local
        .await
        .expect("the local insert's task")
        .expect("the local insert must not fail (deadlock)");
    assert_eq!(inserted, 1);
    pair.wait_caught_up(Duration::from_secs(20)).await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(user_name(&cloud, "u1").await, Some(Some("main".into())));
    assert_logged_once(&pair, "insert_insert", "MAIN", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

// --- main_authoritative ("Device" in common::EXAMPLE_TABLES) ---

async fn device_pair() -> Pair {
    let pair = pair_with("").await;
    let main = pair.main().await;
    insert_user_at(&main, "u1", "u1@example.com", "owner", T1).await;
    main.execute(
        r#"INSERT INTO "Device" ("id", "name", "userId", "updatedAt")
           VALUES ('d1', 'first', 'u1', $1::text::timestamptz)"#,
        &[&T1],
    )
    .await
    .expect("inserting Device");
    pair.wait_caught_up(Duration::from_secs(10)).await;
    pair
}

async fn set_device(c: &Client, name: &str, at: &str) {
    let n = c
        .execute(
            r#"UPDATE "Device" SET "name" = $1, "updatedAt" = $2::text::timestamptz WHERE "id" = 'd1'"#,
            &[&name, &at],
        )
        .await
        .expect("updating Device");
    assert_eq!(n, 1);
}

async fn device_name(c: &Client) -> Option<String> {
    c.query_opt(r#"SELECT "name" FROM "Device" WHERE "id" = 'd1'"#, &[])
        .await
        .expect("reading Device")
        .map(|r| r.get(0))
}

#[tokio::test]
async fn ma_concurrent_update_main_wins_even_when_older() {
    let pair = device_pair().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    set_device(&main, "main edit", T1).await;
    set_device(&cloud, "cloud edit", T2).await;
    pair.heal().await;
    assert_equal(&pair, &[r#""Device""#]).await;
    assert_eq!(device_name(&cloud).await.as_deref(), Some("main edit"));
    assert_logged_once(&pair, "update_update", "MAIN", "MAIN_AUTHORITATIVE").await;
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn ma_ordinary_cloud_edit_flows_to_main() {
    let pair = device_pair().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    set_device(&cloud, "cloud edit", T2).await;
    pair.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(device_name(&main).await.as_deref(), Some("cloud edit"));
    // Also after a partition, as long as main did not touch the row.
    pair.partition().await;
    set_device(&cloud, "cloud edit 2", T1).await;
    pair.heal().await;
    assert_eq!(device_name(&main).await.as_deref(), Some("cloud edit 2"));
    assert_equal(&pair, &[r#""Device""#]).await;
    for c in [&main, &cloud] {
        let log = Pair::conflict_entries(c).await;
        assert!(log.is_empty(), "no conflict expected: {log:#?}");
    }
    assert_healthy(&pair, errors).await;
}

#[tokio::test]
async fn ma_cloud_delete_vs_main_update_row_comes_back_on_cloud() {
    let pair = device_pair().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    set_device(&main, "main edit", T1).await;
    let n = cloud
        .execute(r#"DELETE FROM "Device" WHERE "id" = 'd1'"#, &[])
        .await
        .expect("deleting Device");
    assert_eq!(n, 1);
    pair.heal().await;
    assert_equal(&pair, &[r#""Device""#]).await;
    assert_eq!(device_name(&cloud).await.as_deref(), Some("main edit"));
    assert_logged_once(&pair, "update_delete", "MAIN", "MAIN_AUTHORITATIVE").await;
    assert_healthy(&pair, errors).await;
}

/// As above, but cloud also creates the row again and deletes that one too before the link
/// returns (convergence seed 20001). Main's edit wins on both sides, once: the new row lost
/// to main's on main (`insert_insert`), so its delete was no further conflict. It used to
/// be logged again on main as a second `update_delete` with the same versions.
#[tokio::test]
async fn ma_cloud_delete_recreate_delete_vs_main_update_is_logged_once() {
    let pair = device_pair().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    set_device(&main, "main edit", T1).await;
    let delete = r#"DELETE FROM "Device" WHERE "id" = 'd1'"#;
    let n = cloud.execute(delete, &[]).await.expect("deleting Device");
    assert_eq!(n, 1);
    cloud
        .execute(
            r#"INSERT INTO "Device" ("id", "name", "userId", "updatedAt")
               VALUES ('d1', 'cloud again', 'u1', $1::text::timestamptz)"#,
            &[&T2],
        )
        .await
        .expect("inserting Device on cloud");
    let n = cloud.execute(delete, &[]).await.expect("deleting Device");
    assert_eq!(n, 1);
    pair.heal().await;

    assert_equal(&pair, &[r#""Device""#]).await;
    assert_eq!(device_name(&cloud).await.as_deref(), Some("main edit"));
    let (m, c) = (
        Pair::conflict_entries(&main).await,
        Pair::conflict_entries(&cloud).await,
    );
    let kinds = |log: &[common::ConflictEntry]| -> Vec<(String, String)> {
        let mut k: Vec<(String, String)> = log
            .iter()
            .map(|e| (e.kind.clone(), e.winner.clone()))
            .collect();
        k.sort();
        k
    };
    let pair_of = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        kinds(&m),
        vec![
            pair_of("insert_insert", "MAIN"),
            pair_of("update_delete", "MAIN")
        ],
        "main: {m:#?}"
    );
    assert_eq!(
        kinds(&c),
        vec![pair_of("update_delete", "MAIN")],
        "cloud: {c:#?}"
    );
    let key = |log: &[common::ConflictEntry]| {
        log.iter()
            .find(|e| e.kind == "update_delete")
            .map(|e| e.key.clone())
    };
    assert_eq!(key(&m), key(&c), "one update_delete, under one key");
    assert_healthy(&pair, errors).await;
}

// --- no echo ---

/// Everything that would move if a resolved change were sent back: the rows' physical
/// versions (xmin, any rewrite changes it), the tables' n_tup_* counters and the conflict
/// log, on both sides.
async fn activity(c: &Client, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let rows = c
            .query(
                &format!("SELECT t::text || '@' || xmin::text FROM {t} t ORDER BY 1"),
                &[],
            )
            .await
            .expect("reading rows");
        out.extend(
            rows.iter()
                .map(|r| format!("{t}: {}", r.get::<_, String>(0))),
        );
    }
    let stats = c
        .query(
            "SELECT schemaname || '.' || relname || ' ' || n_tup_ins || '/' || n_tup_upd || '/' || n_tup_del
               FROM pg_stat_user_tables ORDER BY 1",
            &[],
        )
        .await
        .expect("reading pg_stat_user_tables");
    out.extend(stats.iter().map(|r| r.get::<_, String>(0)));
    let log: i64 = c
        .query_one("SELECT count(*) FROM duplex.conflict_log", &[])
        .await
        .expect("counting conflicts")
        .get(0);
    out.push(format!("conflict_log {log}"));
    out
}

#[tokio::test]
async fn no_echo_after_resolutions() {
    let pair = device_pair().await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let _errors_before = pair.apply_error_count().await;
    pair.partition().await;
    insert_user_at(&main, "u2", "u2@example.com", "main", T1).await;
    insert_user_at(&cloud, "u2", "u2@example.com", "cloud", T2).await;
    set_name(&main, "u1", "main edit", T2).await;
    set_name(&cloud, "u1", "cloud edit", T1).await;
    set_device(&main, "main edit", T1).await;
    set_device(&cloud, "cloud edit", T2).await;
    pair.heal().await;
    let tables = [r#""User""#, r#""Device""#];
    assert_equal(&pair, &tables).await;
    for c in [&main, &cloud] {
        assert_eq!(Pair::conflict_entries(c).await.len(), 3);
    }
    // An apply worker keeps its table statistics pending for up to 10 s when idle; a
    // backend flushes them when it exits, so end this pair's replication workers
    // (PostgreSQL restarts them) and wait until two readings a second apart agree
    // before starting the window.
    // Terminating a worker counts as an apply error: take the error count again after.
    assert!(pair.terminate_replication_workers().await > 0);
    let mut last = (
        activity(&main, &tables).await,
        activity(&cloud, &tables).await,
    );
    let settle = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = (
            activity(&main, &tables).await,
            activity(&cloud, &tables).await,
        );
        if now == last {
            break;
        }
        last = now;
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "statistics did not settle within 30 s"
        );
    }
    let errors = pair.apply_error_count().await;
    // Slots' confirmed_flush_lsn is not compared: on the shared lab clusters it advances
    // with every other database's WAL (keepalives), echo or not.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (
            activity(&main, &tables).await,
            activity(&cloud, &tables).await,
        );
        assert_eq!(
            now,
            last,
            "something changed {:?} into the quiet window",
            start.elapsed()
        );
    }
    assert_healthy(&pair, errors).await;
}

/// A column whose name is also a variable of the generated resolve function (`u`, `l`,
/// `k`, ...) must not break the apply: the function has to qualify or rename its own.
#[tokio::test]
async fn a_column_named_like_a_resolver_variable_applies() {
    let pair =
        pair_with(r#"CREATE TABLE "Member" (g int, u int, role text, PRIMARY KEY (g, u))"#).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    main.batch_execute(r#"INSERT INTO "Member" VALUES (1, 1, 'main')"#)
        .await
        .expect("insert on main");
    cloud
        .batch_execute(r#"INSERT INTO "Member" VALUES (1, 1, 'cloud')"#)
        .await
        .expect("insert on cloud");
    pair.heal().await;
    assert_equal(&pair, &[r#""Member""#]).await;
    assert_logged_once(&pair, "insert_insert", "MAIN", "MAIN_AUTHORITATIVE").await;
    assert_healthy(&pair, errors).await;
}

/// A table with identity and generated columns (`common::LINE`): the resolution writes
/// every other column (the server computes the generated ones, the identity keeps the
/// incoming value), so rows flow and conflicts resolve as on any table.
#[tokio::test]
async fn generated_and_identity_always_columns_replicate_and_resolve() {
    let pair = pair_with(common::LINE).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    main.batch_execute(r#"INSERT INTO "Line" (qty, price) VALUES (2, 3)"#)
        .await
        .expect("inserting on main");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    assert_eq!(common::line_total(&cloud, 1).await.as_deref(), Some("6"));
    // update_update: main's edit is the later one.
    pair.partition().await;
    for (c, qty, at) in [(&main, 5, T2), (&cloud, 7, T1)] {
        c.execute(
            r#"UPDATE "Line" SET qty = $1, "updatedAt" = $2::text::timestamptz WHERE id = 1"#,
            &[&qty, &at],
        )
        .await
        .expect("updating Line");
    }
    // insert_insert of one key: cloud's is the later one, so it overwrites main's row.
    for (c, qty, at) in [(&main, 1, T1), (&cloud, 4, T2)] {
        c.execute(
            r#"INSERT INTO "Line" (id, qty, price, "updatedAt") OVERRIDING SYSTEM VALUE
               VALUES (50, $1, 10, $2::text::timestamptz)"#,
            &[&qty, &at],
        )
        .await
        .expect("inserting Line 50");
    }
    pair.heal().await;
    assert_equal(&pair, &[r#""Line""#]).await;
    for c in [&main, &cloud] {
        assert_eq!(common::line_total(c, 1).await.as_deref(), Some("15"));
        assert_eq!(common::line_total(c, 50).await.as_deref(), Some("40"));
    }
    // Each conflict logged once on each side, under the same key (so merged, once).
    let mut logs = Vec::new();
    for c in [&main, &cloud] {
        let mut log: Vec<(String, String, String)> = Pair::conflict_entries(c)
            .await
            .into_iter()
            .map(|e| (e.kind, e.winner, e.key))
            .collect();
        log.sort();
        logs.push(log);
    }
    let kinds: Vec<(&str, &str)> = logs[0]
        .iter()
        .map(|(k, w, _)| (k.as_str(), w.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("insert_insert", "CLOUD"), ("update_update", "MAIN")],
        "main's log: {:?}",
        logs[0]
    );
    assert_eq!(
        logs[0], logs[1],
        "main and cloud logged different conflicts"
    );
    assert_healthy(&pair, errors).await;
}

/// A table with column types that have no binary hash (`json`, `xml`, `point`): the
/// resolution fingerprints its rows by their text instead, so the application's own
/// updates and deletes still work and conflicts resolve and are logged once.
#[tokio::test]
async fn columns_without_a_binary_hash_replicate_and_resolve() {
    let pair = pair_with(
        r#"CREATE TABLE "Doc" (id int PRIMARY KEY, body json, x xml, at point,
                               "updatedAt" timestamptz NOT NULL DEFAULT clock_timestamp())"#,
    )
    .await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    main.batch_execute(
        r#"INSERT INTO "Doc" (id, body, x, at) VALUES (1, '{"v": 1}', '<v>1</v>', '(1,1)'),
                                                      (2, '{"v": 2}', '<v>2</v>', '(2,2)');
           UPDATE "Doc" SET body = '{"v": 11}' WHERE id = 1;"#,
    )
    .await
    .expect("writing Doc on main");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    pair.partition().await;
    for (c, v, at) in [(&main, "main", T2), (&cloud, "cloud", T1)] {
        c.execute(
            r#"UPDATE "Doc" SET body = json_build_object('v', $1::text), "updatedAt" = $2::text::timestamptz
                WHERE id = 1"#,
            &[&v, &at],
        )
        .await
        .expect("updating Doc");
    }
    cloud
        .batch_execute(r#"DELETE FROM "Doc" WHERE id = 2"#)
        .await
        .expect("deleting Doc 2 on cloud");
    pair.heal().await;
    assert_equal(&pair, &[r#""Doc""#]).await;
    for c in [&main, &cloud] {
        let rows: Vec<String> = c
            .query(r#"SELECT body::text FROM "Doc" ORDER BY id"#, &[])
            .await
            .expect("reading Doc")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            rows,
            [r#"{"v" : "main"}"#],
            "main's later edit wins, 2 is deleted"
        );
    }
    assert_logged_once(&pair, "update_update", "MAIN", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

/// The application connects as its own role, which owns its tables and has no rights on
/// duplex's schema (duplex was set up by another role): its writes still work with the
/// triggers installed, the apply worker (which writes as the table's owner) still
/// applies, and a conflict is resolved and logged once.
#[tokio::test]
async fn an_application_role_that_owns_its_tables_writes_and_converges() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let user = format!("duplex_t_{id}_app");
    let _role = common::DropRole(user.clone());
    let pair = Pair::new().await;
    let mut app = Vec::new();
    for (port, c) in [
        (common::main_port(), pair.main().await),
        (common::cloud_port(), pair.cloud().await),
    ] {
        c.batch_execute(&format!(
            r#"CREATE ROLE {user} LOGIN PASSWORD 'app-secret';
               GRANT USAGE ON SCHEMA public TO {user};
               ALTER TABLE "User" OWNER TO {user};"#
        ))
        .await
        .expect("creating the application's role");
        app.push(port);
    }
    pair.setup_both().await;
    let url = |port: u16| format!("postgres://{user}:app-secret@127.0.0.1:{port}/{}", pair.db);
    let (main, cloud) = (
        common::connect_url(&url(app[0])).await,
        common::connect_url(&url(app[1])).await,
    );
    let errors = pair.apply_error_count().await;
    insert_user_at(&main, "u1", "u1@example.com", "first", T1).await;
    insert_user_at(&cloud, "u2", "u2@example.com", "second", T1).await;
    pair.wait_caught_up(Duration::from_secs(20)).await;
    pair.partition().await;
    set_name(&main, "u1", "main edit", T2).await;
    set_name(&cloud, "u1", "cloud edit", T1).await;
    delete_user(&cloud, "u2").await;
    pair.heal().await;
    assert_equal(&pair, &[r#""User""#]).await;
    assert_eq!(
        emails(&main).await,
        [("u1".into(), "u1@example.com".into())]
    );
    assert_eq!(
        user_name(&cloud, "u1").await,
        Some(Some("main edit".into()))
    );
    assert_logged_once(&pair, "update_update", "MAIN", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

/// PostgreSQL sends an update without the values of large (TOASTed) columns it did not
/// change, and the apply worker fills them in from the local row. When the incoming
/// update wins a conflict, the winner's own value of such a column must still reach this
/// side (it is not the local one).
#[tokio::test]
async fn an_update_winning_a_conflict_carries_the_large_columns_it_did_not_change() {
    let pair = pair_with(
        r#"CREATE TABLE "Note" (id int PRIMARY KEY, title text, body text,
                                "updatedAt" timestamptz NOT NULL DEFAULT clock_timestamp())"#,
    )
    .await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = pair.apply_error_count().await;
    // About 32 kB of text that does not compress: stored out of line (TOAST).
    let big = |seed: &str| {
        format!("(SELECT string_agg(md5('{seed}' || g), '') FROM generate_series(1, 1000) g)")
    };
    main.batch_execute(&format!(
        r#"INSERT INTO "Note" (id, title, body, "updatedAt") VALUES (1, 'first', {}, '{T1}')"#,
        big("base")
    ))
    .await
    .expect("inserting Note");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    pair.partition().await;
    // Main edits the title only, later; cloud edits the body only, earlier: main's row
    // wins whole, so both sides end with main's title and the original body.
    main.batch_execute(&format!(
        r#"UPDATE "Note" SET title = 'main', "updatedAt" = '{T2}' WHERE id = 1"#
    ))
    .await
    .expect("updating the title on main");
    cloud
        .batch_execute(&format!(
            r#"UPDATE "Note" SET body = {}, "updatedAt" = '{T1}' WHERE id = 1"#,
            big("cloud")
        ))
        .await
        .expect("updating the body on cloud");
    pair.heal().await;
    assert_equal(&pair, &[r#""Note""#]).await;
    let row: (String, bool) = {
        let r = cloud
            .query_one(
                &format!(
                    r#"SELECT title, body = {} FROM "Note" WHERE id = 1"#,
                    big("base")
                ),
                &[],
            )
            .await
            .expect("reading Note");
        (r.get(0), r.get(1))
    };
    assert_eq!(
        row,
        ("main".into(), true),
        "main's title and the body it had"
    );
    assert_logged_once(&pair, "update_update", "MAIN", "LAST_WRITE_WINS").await;
    assert_healthy(&pair, errors).await;
}

/// Seed 20027 of the convergence test, made deterministic: main updates a
/// main_authoritative row that cloud deletes; main keeps it and then deletes it itself;
/// cloud, which deleted it, creates the key again, and main receives that after its own
/// delete (so main keeps cloud's row), but cloud receives main's update after creating the
/// key again (main's version replaces cloud's there, until main's delete arrives).
#[tokio::test]
async fn ma_main_deletes_its_row_before_it_sees_cloud_recreate_it_cloud_row_stays() {
    // Main deleted its row before it saw cloud's: cloud's row stays on both sides.
    ma_recreated_on_cloud_while_main_deletes(false, "cloud again", &["cloud again"]).await;
}

/// The same, except that main sees cloud's new row while it still holds its own: main's
/// wins there, so main's later delete removes the key on both sides.
#[tokio::test]
async fn ma_main_deletes_its_row_after_it_sees_cloud_recreate_it_key_is_gone() {
    ma_recreated_on_cloud_while_main_deletes(true, "cloud again", &[]).await;
}

/// The same, with cloud's new row equal to main's edited one: main keeps its own (no
/// conflict to log), and cloud's incarnation is dead on main all the same.
#[tokio::test]
async fn ma_main_deletes_its_row_after_it_sees_cloud_recreate_it_alike_key_is_gone() {
    ma_recreated_on_cloud_while_main_deletes(true, "main edit", &[]).await;
}

/// Cloud's re-created row, replaced by main's version, cannot come back once its unique
/// value is taken: main's delete applies instead, and replication keeps running. The
/// scanner reports the collision it leaves, and the runbook's step settles it.
#[tokio::test]
async fn a_replaced_row_whose_unique_value_was_taken_stays_deleted_and_replication_runs() {
    let pair =
        pair_with(r#"CREATE TABLE "Member" (g int, u int, role text UNIQUE, PRIMARY KEY (g, u))"#)
            .await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = ma_edit_on_main_while_partitioned(&pair).await;
    cloud
        .batch_execute(
            r#"DELETE FROM "Member" WHERE g = 1 AND u = 1;
               INSERT INTO "Member" VALUES (1, 1, 'cloud again')"#,
        )
        .await
        .expect("delete and insert on cloud");
    // Main to cloud only: main's update replaces cloud's new row there.
    cloud
        .batch_execute("ALTER SUBSCRIPTION duplex_main_to_cloud ENABLE")
        .await
        .expect("enabling main to cloud");
    pair.wait_applied_on("cloud", Duration::from_secs(20)).await;
    cloud
        .batch_execute("ALTER SUBSCRIPTION duplex_main_to_cloud DISABLE")
        .await
        .expect("disabling main to cloud");
    let role: String = cloud
        .query_one(r#"SELECT role FROM "Member" WHERE g = 1 AND u = 1"#, &[])
        .await
        .expect("reading cloud's row")
        .get(0);
    assert_eq!(role, "main edit", "main's version replaced cloud's row");
    // Cloud's application takes the replaced row's unique value; main deletes its row
    // without having seen cloud's.
    cloud
        .batch_execute(r#"INSERT INTO "Member" VALUES (1, 2, 'cloud again')"#)
        .await
        .expect("insert on cloud");
    main.batch_execute(r#"DELETE FROM "Member" WHERE g = 1 AND u = 1"#)
        .await
        .expect("delete on main");
    pair.heal().await;
    assert_healthy(&pair, errors).await;
    let keys = |c: Client| async move {
        c.query(r#"SELECT g, u FROM "Member" ORDER BY 1, 2"#, &[])
            .await
            .expect("reading Member")
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
            .collect::<Vec<_>>()
    };
    // Main kept cloud's re-created row (it arrived after main's delete) and dropped cloud's
    // second row as the loser of a unique conflict; cloud could not put its row back.
    assert_eq!(keys(pair.main().await).await, vec![(1, 1)]);
    assert_eq!(keys(pair.cloud().await).await, vec![(1, 2)]);
    // Two keys holding one unique value on different sides: the scanner reports both,
    // naming the constraint, and repairs neither (docs/conflicts.md, known limits).
    let out = pair.run("main", &["scan"]).await;
    let (stdout, _) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("2 difference(s)") && stdout.contains("\"Member_role_key\""),
        "{stdout}"
    );
    // runbooks/unique-collision.md: delete the row that should lose on its side (an
    // ordinary write), then the next pass copies the other.
    cloud
        .batch_execute(r#"DELETE FROM "Member" WHERE g = 1 AND u = 2"#)
        .await
        .expect("delete on cloud");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    let out = pair.run("main", &["scan"]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    assert_equal(&pair, &[r#""Member""#]).await;
    assert_eq!(keys(pair.cloud().await).await, vec![(1, 1)]);
    assert_healthy(&pair, errors).await;
}

/// Main updates a "Member" row while cloud deletes it; cloud creates the key again; main
/// deletes its row, before or after (`main_sees_first`) it receives cloud's new one. Asserts
/// both sides equal, replication healthy and the roles left (`expected`).
async fn ma_recreated_on_cloud_while_main_deletes(
    main_sees_first: bool,
    recreated_as: &str,
    expected: &[&str],
) {
    let pair =
        pair_with(r#"CREATE TABLE "Member" (g int, u int, role text, PRIMARY KEY (g, u))"#).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let errors = ma_edit_on_main_while_partitioned(&pair).await;
    cloud
        .batch_execute(r#"DELETE FROM "Member" WHERE g = 1 AND u = 1"#)
        .await
        .expect("delete on cloud");
    let recreate = format!(r#"INSERT INTO "Member" VALUES (1, 1, '{recreated_as}')"#);
    if main_sees_first {
        cloud
            .batch_execute(&recreate)
            .await
            .expect("insert on cloud");
    }
    // Cloud to main only: main keeps its edit (update_delete, main wins), and its row
    // wins over cloud's new one if that came too.
    main.batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main ENABLE")
        .await
        .expect("enabling cloud to main");
    pair.wait_applied_on("main", Duration::from_secs(20)).await;
    main.batch_execute(r#"DELETE FROM "Member" WHERE g = 1 AND u = 1"#)
        .await
        .expect("delete on main");
    if !main_sees_first {
        cloud
            .batch_execute(&recreate)
            .await
            .expect("insert on cloud");
        pair.wait_applied_on("main", Duration::from_secs(20)).await;
    }
    pair.heal().await;
    assert_equal(&pair, &[r#""Member""#]).await;
    assert_healthy(&pair, errors).await;
    let rows: Vec<String> = main
        .query(r#"SELECT role FROM "Member""#, &[])
        .await
        .expect("reading Member")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, expected, "the roles left on both sides");
}

/// A "Member" row (1, 1) inserted on main and replicated; then, partitioned, main edits
/// it. Returns the apply error count before the partition.
async fn ma_edit_on_main_while_partitioned(pair: &Pair) -> i64 {
    let main = pair.main().await;
    main.batch_execute(r#"INSERT INTO "Member" VALUES (1, 1, 'first')"#)
        .await
        .expect("insert on main");
    pair.wait_caught_up(Duration::from_secs(20)).await;
    let errors = pair.apply_error_count().await;
    pair.partition().await;
    main.batch_execute(r#"UPDATE "Member" SET role = 'main edit' WHERE g = 1 AND u = 1"#)
        .await
        .expect("update on main");
    errors
}
