//! Recovery without waiting: after the peer comes back, the controller reaches CONNECTED
//! within one monitor interval, not after its reconnect backoff. The outage is simulated
//! for this test's pair only (the shared lab clusters keep running): the daemon reaches
//! the peer through a proxy the test stops, and both subscriptions are disabled, as the
//! link between the servers would be down too.

mod common;

use std::time::{Duration, Instant};

use common::{cloud_port, wait_until, Pair, Proxy, EXAMPLE_TABLES};

const INTERVAL_SECS: u64 = 5;

#[tokio::test]
async fn the_controller_reconnects_within_one_interval_once_the_peer_is_back() {
    let pair = Pair::new().await;
    // A backoff far longer than the test: only local evidence can bring it back in time.
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}\n[daemon]\nmonitor_interval_secs = {INTERVAL_SECS}\nreconnect_backoff_secs = [600]\nreconnect_max_secs = 600\nreconnect_jitter = 0.0\n"
    ));
    pair.setup_both().await;
    let mut proxy = Proxy::start(cloud_port()).await;
    let remote = proxy.url(&pair.db);
    let d = pair
        .start_daemon("main", &[("REMOTE_DB_URL", remote.as_str())])
        .await;
    wait_until("CONNECTED", Duration::from_secs(30), || async {
        d.state().await == "CONNECTED"
    })
    .await;

    // The outage: the link and duplex's own path to cloud.
    pair.partition().await;
    proxy.stop().await;
    wait_until("DISCONNECTED", Duration::from_secs(30), || async {
        d.state().await == "DISCONNECTED"
    })
    .await;
    // Main's slot goes inactive once cloud's walsender is gone; one more cycle sees it.
    let main = pair.main().await;
    let slot = pair.slot("cloud");
    wait_until("main's slot inactive", Duration::from_secs(30), || async {
        !main
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    // A whole cycle that saw it, and still DISCONNECTED: no false recovery.
    let n = d.monitor_cycles().await;
    wait_until(
        "two more monitor cycles",
        Duration::from_secs(3 * INTERVAL_SECS),
        || async { d.monitor_cycles().await >= n + 2 },
    )
    .await;
    assert_eq!(d.state().await, "DISCONNECTED");

    // Cloud is back: the link and the path.
    let back = Instant::now();
    proxy.resume().await;
    main.batch_execute("ALTER SUBSCRIPTION duplex_cloud_to_main ENABLE")
        .await
        .unwrap();
    pair.cloud()
        .await
        .batch_execute("ALTER SUBSCRIPTION duplex_main_to_cloud ENABLE")
        .await
        .unwrap();
    wait_until(
        "CONNECTED without duplex trigger",
        Duration::from_secs(INTERVAL_SECS * 3),
        || async { d.state().await == "CONNECTED" },
    )
    .await;
    let took = back.elapsed();
    let (code, _) = d.call("GET", "/health/sync", "").await;
    eprintln!(
        "recovery: CONNECTED {:.1} s after the peer came back (monitor interval {INTERVAL_SECS} s, backoff 600 s)",
        took.as_secs_f64()
    );
    assert_eq!(code, 200);
    // One interval for the cycle to notice, plus the subscriptions' own start-up.
    assert!(
        took <= Duration::from_secs(INTERVAL_SECS + 3),
        "took {took:?}"
    );
    d.stop().await;
    proxy.stop().await;
}
