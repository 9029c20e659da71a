//! `duplex run` against the lab: API, pause/resume, trigger, graceful shutdown, and the
//! incidents that need a person (slot dropped, subscription disabled), walked through
//! their runbooks.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{insert_user, sync_log, user_exists, wait_until, Pair, EXAMPLE_TABLES, FAST_DAEMON};
use serde_json::Value;

const TEN_SECONDS: Duration = Duration::from_secs(10);

fn runbook(name: &str) -> String {
    std::fs::read_to_string(format!("{}/runbooks/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("reading the runbook")
}

/// Assert the runbook tells the reader to run `command`, then return it for the test to run.
fn from_runbook<'a>(book: &str, command: &'a str) -> &'a str {
    assert!(
        book.contains(command),
        "the runbook does not contain the command the test runs: {command}"
    );
    command
}

async fn alert_entries(pair: &Pair, kind_prefix: &str) -> Vec<(String, String)> {
    sync_log(&pair.main().await)
        .await
        .into_iter()
        .filter(|(t, _, _, d)| {
            t == "alert" && d["kind"].as_str().unwrap_or("").starts_with(kind_prefix)
        })
        .map(|(_, status, msg, _)| (status, msg))
        .collect()
}

async fn cycles(d: &common::Daemon) -> u64 {
    let (_, v) = d.post("/api/sync/trigger").await;
    v["cycles"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn the_api_needs_a_token_pause_survives_restart_and_shutdown_is_graceful() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;

    wait_until("health 200", TEN_SECONDS, || async {
        d.call("GET", "/health/sync", "").await.0 == 200
    })
    .await;
    let (code, body) = d.call("GET", "/api/sync/status", "").await;
    assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")));
    let (code, _) = d.call("POST", "/api/sync/pause", "not-the-token").await;
    assert_eq!(code, 401);
    let (code, body) = d.call("DELETE", "/health/sync", "").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (code, body) = d.get("/api/nothing-here").await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, body) = d.get("/api/sync/log?limit=lots").await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("`limit`"),
        "{body}"
    );
    let (code, body) = d.get("/api/sync/log?status=bogus").await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("`status`"),
        "{body}"
    );

    let (code, status) = d.get("/api/sync/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["connection_state"], "CONNECTED", "{status}");
    assert_eq!(status["sync_state"]["instance_role"], "MAIN");
    assert_eq!(status["sync_state"]["is_connected"], true);
    assert!(status["sync_state"]["last_heartbeat"].is_string());
    assert!(status["lag_ms"].is_i64(), "{status}");
    let text = status.to_string();
    for secret in [
        "lab-secret",
        common::REPLICATION_PASSWORD,
        "CREATE ",
        "SELECT ",
    ] {
        assert!(!text.contains(secret), "status exposes `{secret}`");
    }
    let (code, metrics) = d.call("GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("duplex_connection_state{role=\"main\",state=\"CONNECTED\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("duplex_replication_lag_bytes{direction=\"duplex_cloud_to_main\"}"));
    assert!(metrics
        .contains("duplex_subscription_apply_errors_total{direction=\"duplex_cloud_to_main\"} 0"));
    // Prometheus wants each family's samples together, after its TYPE line.
    let mut seen: Vec<String> = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap().to_string();
        if seen.last() != Some(&name) {
            assert!(
                !seen.contains(&name),
                "samples of {name} are split:\n{metrics}"
            );
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "no TYPE for {name}"
            );
            seen.push(name);
        }
    }

    // Trigger runs a cycle now, outside the one-second interval.
    let before = cycles(&d).await;
    let after = cycles(&d).await;
    assert!(
        after > before,
        "trigger did not run a cycle ({before} -> {after})"
    );

    let (code, body) = d.post("/api/sync/pause").await;
    assert_eq!((code, &body["sync_enabled"]), (200, &Value::Bool(false)));
    let (ok, took) = d.stop().await;
    assert!(ok, "duplex run did not exit 0 on SIGTERM");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");

    let d = pair.start_daemon("main", &[]).await;
    let (_, status) = d.get("/api/sync/status").await;
    assert_eq!(
        status["sync_state"]["sync_enabled"], false,
        "pause did not survive restart"
    );
    let out = d.cli(&pair, "main", &["resume"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, status) = d.get("/api/sync/status").await;
    assert_eq!(status["sync_state"]["sync_enabled"], true);
    let (ok, _) = d.stop().await;
    assert!(ok);

    // With no daemon, the control commands say so.
    let out = pair
        .duplex("main", &["trigger"])
        .env("DUPLEX_HTTP_ADDR", common::free_addr().to_string())
        .env("DUPLEX_ADMIN_TOKEN", "x")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no duplex daemon is running"));
}

#[tokio::test]
async fn a_dropped_slot_is_critical_once_and_the_runbook_restores_replication() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    wait_until("CONNECTED", TEN_SECONDS, || async {
        d.state().await == "CONNECTED"
    })
    .await;

    // Drop main's slot on cloud. The subscription reconnects within a second, so keep
    // terminating its walsender until the drop succeeds.
    let cloud = pair.cloud().await;
    let slot = pair.slot("main");
    wait_until("slot dropped on cloud", TEN_SECONDS, || async {
        let _ = cloud
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await;
        cloud
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .is_ok()
    })
    .await;

    wait_until("CRITICAL slot_missing logged", TEN_SECONDS, || async {
        !alert_entries(&pair, "slot_missing").await.is_empty()
    })
    .await;
    let n = cycles(&d).await;
    wait_until("three more cycles", TEN_SECONDS, || async {
        cycles(&d).await >= n + 3
    })
    .await;
    let entries = alert_entries(&pair, "slot_missing").await;
    assert_eq!(entries.len(), 1, "one entry per incident, got {entries:?}");
    assert_eq!(entries[0].0, "CRITICAL");
    assert!(entries[0]
        .1
        .contains("runbooks/replication-slot-dropped.md"));
    // A restart does not raise the same incident again.
    let (ok, _) = d.stop().await;
    assert!(ok);
    let d = pair.start_daemon("main", &[]).await;
    let n = cycles(&d).await;
    wait_until("three cycles after restart", TEN_SECONDS, || async {
        cycles(&d).await >= n + 3
    })
    .await;
    assert_eq!(alert_entries(&pair, "slot_missing").await.len(), 1);
    let (_, status) = d.get("/api/sync/status").await;
    assert_eq!(status["connection_state"], "DEGRADED");
    assert_eq!(
        status["active_alerts"][0]["runbook"], "runbooks/replication-slot-dropped.md",
        "{status}"
    );
    let out = d.cli(&pair, "main", &["status"]).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("MISSING"), "{shown}");
    assert!(
        shown.contains("controller at") && shown.contains("DEGRADED"),
        "{shown}"
    );
    assert!(
        shown.contains("(follow runbooks/replication-slot-dropped.md)"),
        "{shown}"
    );

    // Follow the runbook.
    let book = runbook("replication-slot-dropped.md");
    let main = pair.main().await;
    for sql in [
        "ALTER SUBSCRIPTION duplex_cloud_to_main DISABLE",
        "ALTER SUBSCRIPTION duplex_cloud_to_main SET (slot_name = NONE)",
        "DROP SUBSCRIPTION duplex_cloud_to_main",
    ] {
        main.batch_execute(from_runbook(&book, sql)).await.unwrap();
    }
    // The subscription is gone, the slot is not back yet: the alert is not resolved.
    let n = cycles(&d).await;
    wait_until(
        "two cycles without the subscription",
        TEN_SECONDS,
        || async { cycles(&d).await >= n + 2 },
    )
    .await;
    assert_eq!(
        alert_entries(&pair, "slot_missing").await.len(),
        1,
        "slot_missing resolved before the slot existed again"
    );
    from_runbook(&book, "duplex setup");
    let out = pair.run("main", &["setup"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    insert_user(&cloud, "after", None).await;
    wait_until("cloud's row on main again", TEN_SECONDS, || async {
        user_exists(&main, "after").await
    })
    .await;
    wait_until("alert RESOLVED and CONNECTED", TEN_SECONDS, || async {
        let e = alert_entries(&pair, "slot_missing").await;
        e.len() == 2 && e[1].0 == "RESOLVED" && d.state().await == "CONNECTED"
    })
    .await;
    let (ok, _) = d.stop().await;
    assert!(ok);
}

/// A local HTTP receiver for the webhook, stopped by the test.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, task)
}

#[tokio::test]
async fn a_change_that_cannot_apply_fails_once_degrades_and_notifies() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let (hook, received, receiver) = webhook_receiver().await;
    let d = pair
        .start_daemon("main", &[("DUPLEX_WEBHOOK_URL", hook.as_str())])
        .await;
    wait_until("CONNECTED", TEN_SECONDS, || async {
        d.state().await == "CONNECTED"
    })
    .await;

    // A constraint only main has: cloud's row cannot apply there.
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    main.batch_execute(
        r#"ALTER TABLE "User" ADD CONSTRAINT "no_poison" CHECK ("name" <> 'poison')"#,
    )
    .await
    .unwrap();
    insert_user(&cloud, "p1", Some("poison")).await;

    wait_until("FAILED apply_errors logged", TEN_SECONDS, || async {
        !alert_entries(&pair, "apply_errors").await.is_empty()
    })
    .await;
    let n = cycles(&d).await;
    wait_until("three more cycles", TEN_SECONDS, || async {
        cycles(&d).await >= n + 3
    })
    .await;
    let entries = alert_entries(&pair, "apply_errors").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0, "FAILED");
    assert!(
        entries[0].1.contains("apply error(s) so far"),
        "{}",
        entries[0].1
    );
    assert!(entries[0].1.contains("runbooks/subscription-disabled.md"));
    assert_eq!(d.state().await, "DEGRADED");
    assert_eq!(d.call("GET", "/health/sync", "").await.0, 503);

    wait_until("webhook received", TEN_SECONDS, || async {
        !received.lock().unwrap().is_empty()
    })
    .await;
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        let text = got[0]["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("FAILED") && text.contains("duplex_cloud_to_main"),
            "{text}"
        );
        assert!(text.contains("runbooks/subscription-disabled.md"), "{text}");
        assert!(!got[0].to_string().contains("lab-secret"));
    }

    // Follow the runbook: remove the cause; the worker's next retry applies the change.
    let book = runbook("subscription-disabled.md");
    assert!(book.contains("ALTER TABLE \\\"User\\\" DROP CONSTRAINT <name>"));
    main.batch_execute(r#"ALTER TABLE "User" DROP CONSTRAINT "no_poison""#)
        .await
        .unwrap();
    wait_until("the failed row applied on main", TEN_SECONDS, || async {
        user_exists(&main, "p1").await
    })
    .await;
    // It clears after ten seconds without a new error.
    wait_until(
        "RESOLVED and CONNECTED",
        Duration::from_secs(30),
        || async {
            let e = alert_entries(&pair, "apply_errors").await;
            e.len() == 2 && e[1].0 == "RESOLVED" && d.state().await == "CONNECTED"
        },
    )
    .await;

    // A subscription someone disabled: FAILED once, and the runbook's ENABLE restores it.
    main.batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main DISABLE")
        .await
        .unwrap();
    wait_until(
        "FAILED subscription_disabled logged",
        TEN_SECONDS,
        || async {
            !alert_entries(&pair, "subscription_disabled")
                .await
                .is_empty()
        },
    )
    .await;
    // The alert is written during the cycle, the state published at its end.
    wait_until("DEGRADED", TEN_SECONDS, || async {
        d.state().await == "DEGRADED"
    })
    .await;
    main.batch_execute(from_runbook(
        &book,
        "ALTER SUBSCRIPTION duplex_cloud_to_main ENABLE",
    ))
    .await
    .unwrap();
    wait_until("subscription_disabled RESOLVED", TEN_SECONDS, || async {
        let e = alert_entries(&pair, "subscription_disabled").await;
        e.len() == 2 && e[0].0 == "FAILED" && e[1].0 == "RESOLVED"
    })
    .await;
    let (ok, _) = d.stop().await;
    assert!(ok);
    receiver.abort();
}

#[tokio::test]
async fn a_second_controller_beside_the_same_database_is_refused_naming_the_first() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    let second = common::free_addr();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        pair.duplex("main", &["run"])
            .env("DUPLEX_HTTP_ADDR", second.to_string())
            .output(),
    )
    .await
    .expect("the second duplex run did not exit")
    .unwrap();
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another duplex run already controls this database"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("API at {}", d.addr)), "{stderr}");
    assert!(stderr.contains("pid "), "{stderr}");
    // The first one is untouched; once it stops, the lock is free again.
    wait_until("the first one healthy", TEN_SECONDS, || async {
        d.call("GET", "/health/sync", "").await.0 == 200
    })
    .await;
    d.stop().await;
    let again = pair.start_daemon("main", &[]).await;
    again.stop().await;
}

#[tokio::test]
async fn the_local_instance_down_shows_in_health_metrics_and_status() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let mut proxy = common::Proxy::start(common::main_port()).await;
    let local = proxy.url(&pair.db);
    let d = pair
        .start_daemon("main", &[("LOCAL_DB_URL", local.as_str())])
        .await;
    wait_until("CONNECTED", TEN_SECONDS, || async {
        d.state().await == "CONNECTED"
    })
    .await;
    proxy.stop().await;
    wait_until("health names the local instance", TEN_SECONDS, || async {
        let (code, v) = d.call("GET", "/health/sync", "").await;
        code == 503
            && v["reason"]
                .as_str()
                .unwrap_or("")
                .contains("the local main instance does not answer")
    })
    .await;
    let (_, metrics) = d.call("GET", "/metrics", "").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("duplex_local_instance_up{role=\"main\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("state=\"CONNECTED\"} 1"),
        "still CONNECTED in:\n{metrics}"
    );
    let (code, v) = d.get("/api/sync/status").await;
    assert_eq!((code, v["local_up"].as_bool()), (200, Some(false)), "{v}");

    proxy.resume().await;
    wait_until("healthy again", Duration::from_secs(15), || async {
        d.call("GET", "/health/sync", "").await.0 == 200
    })
    .await;
    let (_, metrics) = d.call("GET", "/metrics", "").await;
    assert!(metrics
        .as_str()
        .unwrap_or_default()
        .contains("duplex_local_instance_up{role=\"main\"} 1"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_walsender_killed_twice_is_no_apply_error() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    wait_until("CONNECTED", TEN_SECONDS, || async {
        d.state().await == "CONNECTED"
    })
    .await;
    let cloud = pair.cloud().await;
    let slot = pair.slot("main");
    let active_pid = || async {
        cloud
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, Option<i32>>(0)
    };
    for _ in 0..2 {
        let pid = active_pid()
            .await
            .expect("a walsender streams from main's slot");
        cloud
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        wait_until("the walsender back", Duration::from_secs(20), || async {
            active_pid().await.is_some_and(|p| p != pid)
        })
        .await;
    }
    insert_user(&cloud, "after-kills", None).await;
    let main = pair.main().await;
    wait_until("the row on main", TEN_SECONDS, || async {
        user_exists(&main, "after-kills").await
    })
    .await;
    let n = cycles(&d).await;
    wait_until("three more cycles", TEN_SECONDS, || async {
        cycles(&d).await >= n + 3
    })
    .await;
    assert_eq!(alert_entries(&pair, "apply_errors").await, vec![]);
    d.stop().await;
}

#[tokio::test]
async fn a_direction_that_does_not_stream_while_the_peer_answers_is_critical() {
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}{FAST_DAEMON}\n[alerts]\nnot_streaming_critical_secs = 3\n"
    ));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    wait_until("CONNECTED", TEN_SECONDS, || async {
        d.state().await == "CONNECTED"
    })
    .await;
    // Main's subscription can no longer reach cloud (as after a password change), while
    // duplex itself still can.
    let closed = common::free_addr().port();
    let main = pair.main().await;
    main.batch_execute(&format!(
        "ALTER SUBSCRIPTION duplex_cloud_to_main CONNECTION 'host=127.0.0.1 port={closed} dbname={} user=duplex_replication password=x'",
        pair.db
    ))
    .await
    .unwrap();
    let _ = pair
        .cloud()
        .await
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&pair.slot("main")],
        )
        .await;
    wait_until(
        "CRITICAL not_streaming",
        Duration::from_secs(20),
        || async {
            alert_entries(&pair, "not_streaming:duplex_cloud_to_main")
                .await
                .iter()
                .any(|(status, msg)| {
                    status == "CRITICAL" && msg.contains("runbooks/not-streaming.md")
                })
        },
    )
    .await;
    let (_, status) = d.get("/api/sync/status").await;
    assert!(
        status["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "not_streaming:duplex_cloud_to_main"),
        "{status}"
    );
    d.stop().await;
}
