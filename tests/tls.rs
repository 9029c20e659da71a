//! TLS to PostgreSQL, verified: duplex's own connections and the replication streams
//! with `sslmode=verify-full` against the lab's CA (scripts/lab.sh makes it and turns TLS
//! on for main and cloud), and a clear refusal with the wrong CA.

mod common;

use std::time::Duration;

use common::{cloud_port, insert_user, main_port, text, url, user_exists, wait_until, Pair};

fn ca(name: &str) -> String {
    common::lab_dir()
        .join("tls")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The pair's URLs with TLS settings appended: (main, cloud).
fn urls(pair: &Pair, query: &str) -> (String, String) {
    (
        format!("{}?{query}", url(main_port(), &pair.db)),
        format!("{}?{query}", url(cloud_port(), &pair.db)),
    )
}

/// `duplex <args>` for `role` with the pair's URLs carrying `query`.
async fn run(pair: &Pair, role: &str, query: &str, args: &[&str]) -> std::process::Output {
    let (main, cloud) = urls(pair, query);
    let (local, remote) = if role == "main" {
        (main, cloud)
    } else {
        (cloud, main)
    };
    pair.duplex(role, args)
        .env("LOCAL_DB_URL", local)
        .env("REMOTE_DB_URL", remote)
        .output()
        .await
        .expect("running duplex")
}

#[tokio::test]
async fn setup_replication_and_the_daemon_work_with_verify_full_and_the_streams_are_encrypted() {
    let pair = Pair::new().await;
    let verified = format!("sslmode=verify-full&sslrootcert={}", ca("ca.crt"));
    for role in ["cloud", "main"] {
        let out = run(&pair, role, &verified, &["setup"]).await;
        assert!(out.status.success(), "{role}: {:?}", text(&out));
    }
    // The subscriptions verify the peer too: the servers got the same mode and CA.
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    for (c, sub) in [
        (&cloud, "duplex_main_to_cloud"),
        (&main, "duplex_cloud_to_main"),
    ] {
        let conninfo: String = c
            .query_one(
                "SELECT subconninfo FROM pg_subscription WHERE subname = $1
                   AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&sub],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            conninfo.contains("sslmode='verify-full'")
                && conninfo.contains(&format!("sslrootcert='{}'", ca("ca.crt"))),
            "{sub}: {}",
            conninfo.replace(common::REPLICATION_PASSWORD, "***")
        );
    }
    insert_user(&main, "tls-main", Some("m")).await;
    insert_user(&cloud, "tls-cloud", Some("c")).await;
    for (c, id) in [(&cloud, "tls-main"), (&main, "tls-cloud")] {
        wait_until(
            &format!("{id} replicated"),
            Duration::from_secs(20),
            || async { user_exists(c, id).await },
        )
        .await;
    }

    let out = run(&pair, "main", &verified, &["check"]).await;
    let stdout = text(&out).0;
    for expected in [
        "ok    main -> cloud: stream: encrypted (TLSv1.3)",
        "ok    cloud -> main: stream: encrypted (TLSv1.3)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }

    // The controller runs on the same verified connections.
    let (main_url, cloud_url) = urls(&pair, &verified);
    let d = pair
        .start_daemon(
            "main",
            &[
                ("LOCAL_DB_URL", main_url.as_str()),
                ("REMOTE_DB_URL", cloud_url.as_str()),
            ],
        )
        .await;
    wait_until("CONNECTED over TLS", Duration::from_secs(30), || async {
        d.state().await == "CONNECTED"
    })
    .await;
    let (ok, _) = d.stop().await;
    assert!(ok, "duplex run did not stop cleanly");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_clear_message() {
    let pair = Pair::new().await;
    let wrong = format!("sslmode=verify-full&sslrootcert={}", ca("other-ca.crt"));
    let out = run(&pair, "main", &wrong, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains("main answers at 127.0.0.1:")
            && all.contains("but the TLS connection failed")
            && all.contains("sslrootcert"),
        "{all}"
    );
    assert!(!all.contains("lab-secret"), "{all}");

    let out = run(&pair, "cloud", &wrong, &["setup"]).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
    assert_eq!(pair.replication_objects().await, Vec::<String>::new());

    // A verify mode without a CA file, or a missing file, is a usage problem named as such.
    let out = run(&pair, "main", "sslmode=verify-full", &["status"]).await;
    let all = format!("{}{}", text(&out).0, text(&out).1);
    assert!(all.contains("needs sslrootcert="), "{all}");
    let out = run(
        &pair,
        "main",
        "sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt",
        &["status"],
    )
    .await;
    let all = format!("{}{}", text(&out).0, text(&out).1);
    assert!(all.contains("sslrootcert /nonexistent/ca.crt"), "{all}");

    // require encrypts without verifying, as in libpq.
    let out = run(&pair, "main", "sslmode=require", &["check"]).await;
    let stdout = text(&out).0;
    assert!(
        stdout.contains("ok    main: connection") && stdout.contains("ok    cloud: connection"),
        "{stdout}"
    );
}

/// Poll the API over HTTPS (trusting `ca`) until it answers `/health/sync`.
async fn https_health(addr: std::net::SocketAddr, ca: &str) -> Option<u16> {
    duplex::cli::api_call_with(
        addr,
        Some(std::path::Path::new(ca)),
        "GET",
        "/health/sync",
        "",
    )
    .await
    .ok()
    .map(|(code, _)| code)
}

#[tokio::test]
async fn the_api_off_loopback_needs_tls_and_the_cli_verifies_its_certificate() {
    let pair = Pair::new().await;
    pair.setup_both().await;
    let token = format!("token-{}-{}", pair.id, "x".repeat(32));
    let port = common::free_addr().port();
    let public = format!("0.0.0.0:{port}");

    // Plain HTTP on every interface: refused before anything starts.
    let out = pair
        .duplex("main", &["run"])
        .env("DUPLEX_HTTP_ADDR", &public)
        .env("DUPLEX_ADMIN_TOKEN", &token)
        .output()
        .await
        .unwrap();
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("the API would listen on {public} in plain HTTP"))
            && stderr.contains("DUPLEX_TLS_CERT"),
        "{stderr}"
    );

    // With a certificate it serves HTTPS only; the CLI verifies it with the CA.
    let (cert, key) = (ca("server.crt"), ca("server.key"));
    let mut child = pair
        .duplex("main", &["run"])
        .env("DUPLEX_HTTP_ADDR", &public)
        .env("DUPLEX_ADMIN_TOKEN", &token)
        .env("DUPLEX_TLS_CERT", &cert)
        .env("DUPLEX_TLS_KEY", &key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("starting duplex run");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let lab_ca = ca("ca.crt");
    wait_until(
        "the API answers over HTTPS",
        Duration::from_secs(30),
        || async {
            https_health(addr, &lab_ca)
                .await
                .is_some_and(|c| c == 200 || c == 503)
        },
    )
    .await;
    let plain = duplex::cli::api_call(addr, "GET", "/health/sync", "").await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|(code, _)| *code == 0),
        "plain HTTP was answered: {plain:?}"
    );
    let cli = |ca_file: String, action: &'static str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"));
        cmd.arg(action)
            .env("DUPLEX_HTTP_ADDR", addr.to_string())
            .env("DUPLEX_ADMIN_TOKEN", &token)
            .env("DUPLEX_TLS_CA", ca_file);
        cmd
    };
    let out = cli(lab_ca.clone(), "pause").output().await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("pause: ok"));
    let out = cli(ca("other-ca.crt"), "resume").output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("TLS with the API failed"),
        "{:?}",
        text(&out)
    );
    let out = cli(lab_ca, "resume").output().await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(child.id().expect("pid") as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("duplex run stops within 10 s")
        .unwrap();
    assert!(status.success());
}
