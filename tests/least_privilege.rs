//! Least privilege: `duplex setup` (a superuser) creates a monitoring role on both sides,
//! and `duplex run`, `status`, `check` and `scan` work with it alone; it cannot read a
//! local-only table or change replication. `check` warns when the daemon's login is a
//! superuser.

mod common;

use std::time::Duration;

use common::{cloud_port, main_port, text, wait_until, Pair, EXAMPLE_TABLES, FAST_DAEMON};

fn monitor_url(port: u16, user: &str, password: &str, db: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}")
}

#[tokio::test]
async fn the_daemon_status_check_and_scan_run_on_the_monitoring_role_alone() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let user = format!("duplex_t_{id}_mon");
    let _role = common::DropRole(user.clone());
    let password = format!("monitor-secret-{id}");
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}{FAST_DAEMON}\n[monitor]\nuser = \"{user}\"\n"
    ));
    for role in ["cloud", "main"] {
        let out = pair
            .duplex(role, &["setup"])
            .env("DUPLEX_MONITOR_PASSWORD", &password)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{role}: {:?}", text(&out));
    }
    // A second run finds everything in place.
    let out = pair
        .duplex("main", &["setup", "--dry-run"])
        .env("DUPLEX_MONITOR_PASSWORD", &password)
        .output()
        .await
        .unwrap();
    let stdout = text(&out).0;
    assert!(
        !stdout.contains(&user),
        "setup is not idempotent:\n{stdout}"
    );

    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for c in [&main, &cloud] {
        let row = c
            .query_one(
                "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = $1",
                &[&user],
            )
            .await
            .expect("the monitoring role exists on both sides");
        let (superuser, replication): (bool, bool) = (row.get(0), row.get(1));
        assert!(!superuser && !replication);
    }

    let env = |role: &str| {
        let (local, remote) = if role == "main" {
            (main_port(), cloud_port())
        } else {
            (cloud_port(), main_port())
        };
        [
            (
                "LOCAL_MONITOR_URL",
                monitor_url(local, &user, &password, &pair.db),
            ),
            (
                "REMOTE_MONITOR_URL",
                monitor_url(remote, &user, &password, &pair.db),
            ),
        ]
    };
    let as_monitor = |role: &'static str, args: &'static [&'static str]| {
        let mut cmd = pair.duplex(role, args);
        cmd.envs(env(role));
        cmd
    };

    // The monitoring role cannot read a table that stays local, nor touch replication.
    let mon = common::connect_url(&monitor_url(main_port(), &user, &password, &pair.db)).await;
    let denied = mon
        .query(r#"SELECT * FROM "DeviceFileIndex""#, &[])
        .await
        .expect_err("a local-only table must not be readable");
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    assert!(mon
        .batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main DISABLE")
        .await
        .is_err());

    let out = as_monitor("main", &["check"]).output().await.unwrap();
    let stdout = text(&out).0;
    assert!(out.status.success(), "{stdout}");
    for expected in [
        format!("ok    main: login: {user} (not a superuser)"),
        format!("ok    cloud: login: {user} (not a superuser)"),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    // With the setup logins, check points at the monitoring role.
    let stdout = text(&pair.run("main", &["check"]).await).0;
    assert!(
        stdout.contains("WARN  main: login: postgres is a superuser")
            && stdout.contains("LOCAL_MONITOR_URL"),
        "{stdout}"
    );
    // The lab's pg_hba.conf lets the replication role in everywhere (a superuser reads it).
    assert!(
        stdout.contains("WARN  main: pg_hba.conf for duplex_replicator: lets it in further than the application database (line "),
        "{stdout}"
    );

    wait_until(
        "status healthy as the monitoring role",
        Duration::from_secs(30),
        || async {
            as_monitor("main", &["status"])
                .output()
                .await
                .unwrap()
                .status
                .success()
        },
    )
    .await;

    // A difference made behind replication's back is repaired by the monitoring role.
    main.batch_execute(
        "SELECT pg_replication_origin_create('duplex_t_behind_lp');
         SELECT pg_replication_origin_session_setup('duplex_t_behind_lp');
         INSERT INTO \"User\" (\"id\", \"email\") VALUES ('lp1', 'lp1@example.com');
         SELECT pg_replication_origin_session_reset();
         SELECT pg_replication_origin_drop('duplex_t_behind_lp');",
    )
    .await
    .unwrap();
    let out = as_monitor("main", &["scan", "--json"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["repaired"], 1, "{v}");
    assert!(common::user_exists(&cloud, "lp1").await);

    // The controller runs on it too.
    let d = pair
        .start_daemon(
            "main",
            &env("main")
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    wait_until(
        "CONNECTED as the monitoring role",
        Duration::from_secs(30),
        || async { d.state().await == "CONNECTED" },
    )
    .await;
    let (ok, _) = d.stop().await;
    assert!(ok);
}
