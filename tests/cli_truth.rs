//! Commands that tell the truth: `duplex status` exit codes and reasons, the control
//! commands with only the daemon's address and token, closed pipes, usage errors, each
//! error cause once, `config show`.

mod common;

use std::process::Stdio;

use common::{text, url, Pair, EXAMPLE_TABLES, FAST_DAEMON};

/// A `duplex` command with none of duplex's variables set.
fn bare(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"));
    for (var, _) in duplex::config::ENV_KEYS {
        cmd.env_remove(var);
    }
    cmd.env_remove("DATABASE_URL").args(args).kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn status_exits_1_with_the_reason_until_both_directions_replicate() {
    let pair = Pair::new().await;

    // Both answer, nothing set up yet.
    let out = pair.run("main", &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("main and cloud both answer but replication cloud -> main is not running: its subscription on main is missing"),
        "{stdout}"
    );

    pair.setup_both().await;
    let out = pair.run("main", &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("healthy: both directions replicating"),
        "{stdout}"
    );
    let out = pair.run("cloud", &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        (out.status.code(), &v["healthy"]),
        (Some(0), &true.into()),
        "{v}"
    );

    // A wrong password is a refused login, not an unreachable server.
    let wrong = url(pair.cloud_port, &pair.db).replace(":lab-secret@", ":not-the-password@");
    let out = pair
        .duplex("main", &["status"])
        .env("REMOTE_DB_URL", &wrong)
        .output()
        .await
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("duplex cannot log in to cloud (authentication failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-the-password"), "{stdout}");

    // Nothing listening: the server does not answer.
    let port = common::free_addr().port();
    let out = pair
        .duplex("cloud", &["status"])
        .env("REMOTE_DB_URL", url(port, &pair.db))
        .output()
        .await
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("main does not answer at 127.0.0.1:{port}")),
        "{stdout}"
    );

    // The apply worker stopped: both answer, replication does not run.
    pair.main()
        .await
        .batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main DISABLE")
        .await
        .unwrap();
    let out = pair.run("main", &["status"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("main and cloud both answer but replication cloud -> main is not running: its subscription on main is disabled"),
        "{stdout}"
    );
}

#[tokio::test]
async fn pause_resume_and_trigger_need_only_the_api_address_and_token() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    let addr = d.addr.to_string();

    // No INSTANCE_ROLE, no database URLs.
    for (action, expected) in [("pause", "false"), ("trigger", ""), ("resume", "true")] {
        let out = bare(&[action])
            .env("DUPLEX_HTTP_ADDR", &addr)
            .env("DUPLEX_ADMIN_TOKEN", &d.token)
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{action}: {stdout}\n{stderr}");
        assert!(stdout.contains(expected), "{action}: {stdout}");
        if action == "pause" {
            let out = d.cli(&pair, "main", &["status"]).await;
            let (stdout, _) = text(&out);
            assert!(stdout.contains("sync: PAUSED"), "{stdout}");
        }
    }
    let out = d.cli(&pair, "main", &["status"]).await;
    assert!(text(&out).0.contains("sync: enabled"), "{}", text(&out).0);

    // A wrong token is reported as a refused token, not as a missing daemon.
    let out = bare(&["pause"])
        .env("DUPLEX_HTTP_ADDR", &addr)
        .env("DUPLEX_ADMIN_TOKEN", "not-the-token")
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the daemon at {addr} refused the admin token: set DUPLEX_ADMIN_TOKEN to the daemon's token")),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-token"), "{stderr}");
    let out = bare(&["trigger"])
        .env("DUPLEX_HTTP_ADDR", &addr)
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DUPLEX_ADMIN_TOKEN is not set"), "{stderr}");
    let out = pair
        .duplex("main", &["status"])
        .env("DUPLEX_HTTP_ADDR", &addr)
        .env("DUPLEX_ADMIN_TOKEN", "not-the-token")
        .output()
        .await
        .unwrap();
    assert!(
        text(&out).0.contains("refused the admin token"),
        "{}",
        text(&out).0
    );
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn a_closed_pipe_ends_check_quietly() {
    let pair = Pair::new().await;
    let mut child = pair
        .duplex("main", &["check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -0`: the reader goes away before duplex writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[tokio::test]
async fn a_refused_login_is_reported_with_each_cause_once() {
    let pair = Pair::new().await;
    let wrong = url(pair.main_port, &pair.db).replace(":lab-secret@", ":wrong@");
    let out = pair
        .duplex("main", &["setup"])
        .env("LOCAL_DB_URL", &wrong)
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("password authentication failed").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test]
async fn usage_errors_exit_2_and_help_names_the_environment() {
    let out = bare(&["sertup"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bare(&["status", "--jsn"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bare(&["--help"]).output().await.unwrap();
    let (help, _) = text(&out);
    assert!(out.status.success());
    for var in [
        "INSTANCE_ROLE",
        "LOCAL_DB_URL",
        "REMOTE_DB_URL",
        "DUPLEX_ADMIN_TOKEN",
        "DUPLEX_LOG",
    ] {
        assert!(help.contains(var), "--help does not name {var}:\n{help}");
    }
    // The object-storage mirror exists now (issue 9): help names its command and stores.
    assert!(help.contains("storage "), "{help}");
    assert!(help.contains("LOCAL_STORAGE_URL"), "{help}");
}

#[tokio::test]
async fn config_show_prints_what_it_read_and_the_problems_when_invalid() {
    let path = std::env::temp_dir().join(format!("duplex-show-{}.toml", std::process::id()));
    std::fs::write(&path, "[daemon]\nmonitor_interval_secs = 0\n").unwrap();
    let out = bare(&["--config", path.to_str().unwrap(), "config", "show"])
        .env("INSTANCE_ROLE", "main")
        .env("LOCAL_DB_URL", "postgres://u:hunter2@127.0.0.1:5432/app")
        .env("REMOTE_DB_URL", "postgres://u:hunter2@10.0.0.1:5432/app")
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(v["daemon"]["monitor_interval_secs"], 0, "{stdout}");
    assert_eq!(v["instance_role"], "main", "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    assert!(
        stderr.contains("daemon.monitor_interval_secs must be a positive whole number"),
        "{stderr}"
    );
    // Valid: every printed key is a config key.
    let out = bare(&["config", "show"])
        .env("INSTANCE_ROLE", "cloud")
        .env("LOCAL_DB_URL", "postgres://u:hunter2@127.0.0.1:5432/app")
        .env("REMOTE_DB_URL", "postgres://u:hunter2@10.0.0.1:5432/app")
        .output()
        .await
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("\"max_transfer_rate\""), "{stdout}");
    assert!(!stdout.contains("max_transfer_rate_bytes"), "{stdout}");
}
