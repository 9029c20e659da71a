//! The replication password never reaches PostgreSQL's server logs, even with statement
//! logging on and a setup that fails; rotating it reaches both subscriptions, so both
//! directions keep replicating after they reconnect.

mod common;

use std::time::Duration;

use common::{text, Pair, EXAMPLE_TABLES};
use tokio_postgres::Client;

/// Run `duplex setup` for `role` with `password`.
async fn setup(pair: &Pair, role: &str, password: &str) -> std::process::Output {
    pair.duplex(role, &["setup"])
        .env("DUPLEX_REPLICATION_PASSWORD", password)
        .output()
        .await
        .expect("running duplex setup")
}

/// The lab's server log of `side` (scripts/lab.sh starts each cluster with `--log`).
fn server_log(side: &str) -> String {
    let path = common::lab_dir().join(format!("{side}.log"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn conninfo(c: &Client, name: &str) -> String {
    c.query_one(
        "SELECT subconninfo FROM pg_subscription WHERE subname = $1
            AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[&name],
    )
    .await
    .expect("reading the subscription's connection string")
    .get(0)
}

/// Make every walsender serving this pair's slots reconnect (their subscribers log in again).
async fn reconnect_walsenders(pair: &Pair) {
    for (c, slot) in [
        (pair.main().await, pair.slot("cloud")),
        (pair.cloud().await, pair.slot("main")),
    ] {
        c.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
        .expect("terminating a walsender");
    }
}

#[tokio::test]
async fn the_password_stays_out_of_server_logs_and_a_rotation_reaches_both_subscriptions() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    // A replication role of this test's own: rotating the shared one would break the
    // other tests' subscriptions.
    let user = format!("duplex_t_{id}_repl");
    let _role = common::DropRole(user.clone());
    let pair = Pair::new().await;
    let config = format!("{EXAMPLE_TABLES}\n[replication]\nuser = \"{user}\"\n");
    let first = format!("first-secret-{}", pair.id);
    let second = format!("second-secret-{}", pair.id);
    // Statement logging as strict as an audited server would have it, for this database.
    for c in [pair.main().await, pair.cloud().await] {
        c.batch_execute(&format!(
            "ALTER DATABASE {db} SET log_statement = 'all'; ALTER DATABASE {db} SET log_min_error_statement = 'error'",
            db = pair.db
        ))
        .await
        .expect("turning statement logging on");
    }

    // A setup whose CREATE SUBSCRIPTION fails (nothing listens on the peer port it gives).
    pair.set_config(&format!("{config}peer_port = 1\n"));
    let out = setup(&pair, "cloud", &first).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("could not connect"), "{stderr}");

    pair.set_config(&config);
    for role in ["cloud", "main"] {
        let out = setup(&pair, role, &first).await;
        assert!(out.status.success(), "{:?}", text(&out));
    }

    // Rotation, from one side: both roles and both subscriptions get the new password.
    let out = setup(&pair, "cloud", &second).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("set the password of"), "{stdout}");
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    let cloud_sub = conninfo(&cloud, "duplex_main_to_cloud").await;
    let main_sub = conninfo(&main, "duplex_cloud_to_main").await;
    for c in [&cloud_sub, &main_sub] {
        assert!(c.contains(&second) && !c.contains(&first));
    }
    // Both directions log in again, with the new password, and replicate.
    reconnect_walsenders(&pair).await;
    common::insert_user(&main, "from-main", Some("m")).await;
    common::insert_user(&cloud, "from-cloud", Some("c")).await;
    for (c, id) in [(&cloud, "from-main"), (&main, "from-cloud")] {
        common::wait_until(
            &format!("{id} replicated after the rotation"),
            Duration::from_secs(30),
            || async { common::user_name(c, id).await.is_some() },
        )
        .await;
    }

    // check says who can read the password the subscription keeps, and warns about a
    // non-superuser that can (pg_read_all_data).
    let pair = &pair;
    let check = |role: &'static str| async move { text(&pair.run(role, &["check"]).await).0 };
    let out = check("main").await;
    assert!(
        out.contains("main: subscription duplex_cloud_to_main password: kept in the connection string, readable by superusers only (postgres"),
        "{out}"
    );
    let reader = format!("duplex_t_{id}_reader");
    main.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN IN ROLE pg_read_all_data"
    ))
    .await
    .expect("creating a pg_read_all_data member");
    let out = check("main").await;
    main.batch_execute(&format!("DROP ROLE {reader}"))
        .await
        .expect("dropping the reader role");
    assert!(
        out.contains(
            "WARN  main: subscription duplex_cloud_to_main password: kept in the connection string"
        ) && out.contains(&reader),
        "{out}"
    );

    // The failed setup was logged (the server wrote its error) but no password was.
    let logs = [server_log("main"), server_log("cloud")];
    assert!(
        logs.iter()
            .any(|l| l.contains("port 1 failed") || l.contains("could not connect")),
        "the failed CREATE SUBSCRIPTION should be in a server log"
    );
    for (side, log) in ["main", "cloud"].iter().zip(&logs) {
        for secret in [&first, &second] {
            assert!(
                !log.contains(secret.as_str()),
                "the {side} server log holds a replication password"
            );
        }
    }
}

/// Whether `user` logs in to the lab cluster at `port` with `password`.
async fn logs_in(port: u16, db: &str, user: &str, password: &str) -> bool {
    let url = format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}");
    tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_ok()
}

#[tokio::test]
async fn one_password_per_direction_opens_one_side_each() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let user = format!("duplex_t_{id}_repl");
    let _role = common::DropRole(user.clone());
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}\n[replication]\nuser = \"{user}\"\n"
    ));
    // Main's role has `to_main`, cloud's has `to_cloud`; each side names its own first.
    let (to_main, to_cloud) = (format!("to-main-{id}"), format!("to-cloud-{id}"));
    for (role, own, peer) in [
        ("cloud", &to_cloud, &to_main),
        ("main", &to_main, &to_cloud),
    ] {
        let out = pair
            .duplex(role, &["setup"])
            .env("DUPLEX_REPLICATION_PASSWORD", own)
            .env("DUPLEX_PEER_REPLICATION_PASSWORD", peer)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{role}: {:?}", text(&out));
    }
    let (main_port, cloud_port) = (common::main_port(), common::cloud_port());
    assert!(logs_in(main_port, &pair.db, &user, &to_main).await);
    assert!(!logs_in(main_port, &pair.db, &user, &to_cloud).await);
    assert!(logs_in(cloud_port, &pair.db, &user, &to_cloud).await);
    assert!(!logs_in(cloud_port, &pair.db, &user, &to_main).await);

    // Both subscriptions log in again, each with its direction's password, and replicate.
    reconnect_walsenders(&pair).await;
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    common::insert_user(&main, "pd-main", Some("m")).await;
    common::insert_user(&cloud, "pd-cloud", Some("c")).await;
    for (c, id) in [(&cloud, "pd-main"), (&main, "pd-cloud")] {
        common::wait_until(
            &format!("{id} replicated"),
            Duration::from_secs(30),
            || async { common::user_name(c, id).await.is_some() },
        )
        .await;
    }
}
