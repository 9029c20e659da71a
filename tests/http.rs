//! The hardened HTTP API of `duplex run` (issue 11, section 4): `/health/sync` keeps
//! answering while a thousand slow connections are held open, the connection limit closes
//! idle and half-open connections instead of running out of descriptors, a burst of
//! status requests is answered from memory, the token check (scheme in any case, failed
//! attempts limited per client address, short tokens refused at start), 405 with `Allow`,
//! bad input as 400, and settings too large to compute with refused at start.
//!
//! Loopback only and bounded: at most 1,100 connections at once. The tests of this file
//! run one at a time (they measure latency on a shared machine); the figures they print
//! are recorded in docs/benchmarks.md.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Pair, EXAMPLE_TABLES, FAST_DAEMON};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One test at a time: the latency figures must not include another test's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Slow connections the load test holds open.
const SLOW: usize = 1000;
/// What a slow client sends: a request line and one header, then nothing.
const PARTIAL_HEAD: &[u8] = b"GET /health/sync HTTP/1.1\r\nHost: slow\r\n";

/// One HTTP answer.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }
}

/// A connection to `addr`, from the loopback address `from` when given (127.0.0.0/8 is
/// all local on Linux, so a test can be another client address).
async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .expect("binding the client address");
    }
    socket.connect(addr).await.expect("connecting to the API")
}

/// `method path` with `headers`, one request per connection.
async fn http(
    addr: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut stream = connect(addr, from).await;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("sending");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("no answer within 20 s")
        .expect("reading the answer");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        code,
        headers,
        body: body.to_string(),
    }
}

/// The value of the sample `name` (a series without labels, or with exactly `labels`).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let m = http(addr, None, "GET", "/metrics", &[]).await;
    assert_eq!(m.code, 200, "{}", m.body);
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{}", m.body))
}

/// Let this test process hold a thousand connections whatever `ulimit -n` says.
fn raise_own_fd_limit() {
    let limit = duplex::http::server::raise_fd_limit().unwrap_or(0);
    assert!(
        limit >= 2 * SLOW as u64 + 100,
        "the test needs {} open files, the hard limit allows {limit}",
        2 * SLOW + 100
    );
}

/// Open `n` connections that send a partial request head and stop.
async fn slow_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut slow = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(addr, None).await;
        s.write_all(PARTIAL_HEAD)
            .await
            .expect("sending a partial head");
        slow.push(s);
    }
    slow
}

/// `n` requests for `/health/sync`, one after another, each on a new connection: the time
/// each took to be answered, sorted.
async fn health_times(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let a = http(addr, None, "GET", "/health/sync", &[]).await;
        times.push(start.elapsed());
        assert!(matches!(a.code, 200 | 503), "{} {}", a.code, a.body);
    }
    times.sort();
    times
}

/// What the tests require of `/health/sync` while the listener is crowded: every probe
/// answered, none after more than 2 s (before the connection limit, none was answered at
/// all). The 100 ms latency target itself is measured by `scripts/bench-http.py` and
/// recorded in docs/benchmarks.md, not asserted here: on a shared two-core machine a
/// timed assertion measures the neighbours as much as duplex.
fn assert_answered(sorted: &[Duration], what: &str) {
    assert!(
        pct(sorted, 1.0) < 2000.0,
        "/health/sync {what}: a probe took {:.1} ms (p95 {:.1} ms)",
        pct(sorted, 1.0),
        pct(sorted, 0.95)
    );
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// How long until each stream is closed by the server (EOF or reset), at most `limit`.
async fn closed_within(streams: Vec<TcpStream>, limit: Duration) -> Vec<Option<Duration>> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        set.spawn(async move {
            let mut buf = Vec::new();
            let r = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
            (i, r.is_ok().then(|| start.elapsed()))
        });
    }
    let mut out = vec![None; set.len()];
    while let Some(r) = set.join_next().await {
        let (i, t) = r.expect("reader task");
        out[i] = t;
    }
    out
}

#[tokio::test]
async fn health_answers_within_100_ms_while_1000_slow_connections_are_held_open() {
    let _serial = SERIAL.lock().await;
    raise_own_fd_limit();
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    pair.setup_both().await;
    let d = pair.start_daemon("main", &[]).await;
    common::wait_until("health 200", Duration::from_secs(10), || async {
        http(d.addr, None, "GET", "/health/sync", &[]).await.code == 200
    })
    .await;
    let idle = health_times(d.addr, 50).await;

    let opened = Instant::now();
    let slow = slow_clients(d.addr, SLOW).await;
    let open_took = opened.elapsed();
    // Every one of them is open on the daemon's side (the scrape's own connection too).
    let open = metric(d.addr, "duplex_http_connections_open").await;
    assert!(open >= SLOW as f64, "only {open} connections open");
    let loaded = health_times(d.addr, 50).await;
    let still_open = metric(d.addr, "duplex_http_connections_open").await;
    eprintln!(
        "load test: {SLOW} slow connections opened in {:.0} ms; /health/sync over 50 requests idle p50 {:.2} ms p95 {:.2} ms max {:.2} ms; with {SLOW} slow connections open ({still_open} counted) p50 {:.2} ms p95 {:.2} ms max {:.2} ms",
        open_took.as_secs_f64() * 1000.0,
        pct(&idle, 0.5),
        pct(&idle, 0.95),
        pct(&idle, 1.0),
        pct(&loaded, 0.5),
        pct(&loaded, 0.95),
        pct(&loaded, 1.0),
    );
    assert!(
        still_open >= SLOW as f64,
        "the slow connections were closed before the measurement ended ({still_open} open)"
    );
    assert_answered(&loaded, &format!("with {SLOW} slow connections open"));

    // The header-read timeout (5 s) closes every one of them.
    let closed = closed_within(slow, Duration::from_secs(15)).await;
    let never = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(never, 0, "{never} slow connections still open after 15 s");
    let last = closed.iter().flatten().max().copied().unwrap_or_default() + open_took;
    eprintln!(
        "load test: the last slow connection was closed {:.1} s after it was opened",
        last.as_secs_f64()
    );
    assert!(
        last >= Duration::from_secs(4) && last < Duration::from_secs(10),
        "closed after {last:?}"
    );
    common::wait_until("connections released", Duration::from_secs(5), || async {
        metric(d.addr, "duplex_http_connections_open").await < 10.0
    })
    .await;
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn a_burst_of_1000_status_requests_is_answered_from_memory_without_errors() {
    let _serial = SERIAL.lock().await;
    raise_own_fd_limit();
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    let d = pair.start_daemon("main", &[]).await;
    let auth = format!("Bearer {}", d.token);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        let (addr, auth) = (d.addr, auth.clone());
        set.spawn(async move {
            let t = Instant::now();
            let a = http(
                addr,
                None,
                "GET",
                "/api/sync/status",
                &[("Authorization", &auth)],
            )
            .await;
            (a.code, a.json(), t.elapsed())
        });
    }
    let mut times = Vec::new();
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        let (code, body, took) = r.expect("request task");
        times.push(took);
        if code != 200 || body["sync_state"]["instance_role"] != "MAIN" {
            failures.push(format!("{code} {body}"));
        }
    }
    let wall = start.elapsed();
    times.sort();
    eprintln!(
        "burst: {SLOW} concurrent GET /api/sync/status in {:.0} ms: {} errors; p50 {:.1} ms p95 {:.1} ms max {:.1} ms",
        wall.as_secs_f64() * 1000.0,
        failures.len(),
        pct(&times, 0.5),
        pct(&times, 0.95),
        pct(&times, 1.0)
    );
    assert!(
        failures.is_empty(),
        "{} of {SLOW} failed, e.g. {}",
        failures.len(),
        failures[0]
    );
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn at_the_connection_limit_a_new_connection_closes_the_oldest_idle_one() {
    let _serial = SERIAL.lock().await;
    raise_own_fd_limit();
    let pair = Pair::new().await;
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}{FAST_DAEMON}http_max_connections = 50\n"
    ));
    let d = pair.start_daemon("main", &[]).await;
    let slow = slow_clients(d.addr, 300).await;
    // Measure once the daemon accepted them all (each beyond the 50th closing an older
    // one), not while they still wait in the kernel's queue ahead of the probes.
    let evicted = "duplex_http_connections_closed_total{reason=\"evicted\"}";
    common::wait_until(
        "250 connections evicted",
        Duration::from_secs(10),
        || async { metric(d.addr, evicted).await >= 250.0 },
    )
    .await;
    let times = health_times(d.addr, 20).await;
    assert_answered(&times, "at the connection limit");
    let open = metric(d.addr, "duplex_http_connections_open").await;
    assert!(open <= 50.0, "{open} connections open over a limit of 50");
    // The oldest slow connections were the ones closed.
    let closed = closed_within(slow, Duration::from_millis(500)).await;
    assert!(
        closed[..250].iter().all(Option::is_some),
        "an old idle connection is still open"
    );
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn with_a_1024_descriptor_limit_1100_half_open_connections_do_not_stop_health() {
    let _serial = SERIAL.lock().await;
    raise_own_fd_limit();
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    let d = pair.start_daemon_limited("main", &[], Some(1024)).await;
    // Connected, nothing sent: what exhausted the descriptors before the limit.
    let mut half_open = Vec::with_capacity(1100);
    for _ in 0..1100 {
        half_open.push(connect(d.addr, None).await);
    }
    let evicted = "duplex_http_connections_closed_total{reason=\"evicted\"}";
    common::wait_until(
        "the half-open connections accepted",
        Duration::from_secs(10),
        || async { metric(d.addr, evicted).await >= 200.0 },
    )
    .await;
    let times = health_times(d.addr, 50).await;
    eprintln!(
        "1024 descriptors, 1100 half-open connections: /health/sync p50 {:.2} ms p95 {:.2} ms max {:.2} ms",
        pct(&times, 0.5),
        pct(&times, 0.95),
        pct(&times, 1.0)
    );
    assert_answered(&times, "with 1100 half-open connections");
    // The limit was lowered to fit: 1024 less the 128 kept for the rest of the process.
    let open = metric(d.addr, "duplex_http_connections_open").await;
    assert!(open <= 896.0, "{open} connections open");
    let a = http(
        d.addr,
        None,
        "GET",
        "/api/sync/status",
        &[("Authorization", &format!("Bearer {}", d.token))],
    )
    .await;
    assert_eq!(a.code, 200, "{}", a.body);
    drop(half_open);
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_five_seconds() {
    let _serial = SERIAL.lock().await;
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    let d = pair.start_daemon("main", &[]).await;
    let mut s = connect(d.addr, None).await;
    s.write_all(b"GET /health/sync HTTP/1.1\r\nHost: keep\r\n\r\n")
        .await
        .unwrap();
    // Read the whole answer (its Content-Length), leaving the connection open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        raw.extend_from_slice(&buf[..n]);
        let a = parse(&raw);
        let len: usize = a
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        if a.code != 0 && a.body.len() >= len {
            break Instant::now();
        }
    };
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("the idle connection was not closed within 15 s")
        .unwrap_or(0);
    let idle = answered.elapsed();
    assert_eq!(n, 0, "unexpected bytes on an idle connection");
    assert!(
        idle >= Duration::from_secs(4) && idle < Duration::from_secs(8),
        "closed after {idle:?}"
    );
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_wrong_tokens_are_limited_per_address() {
    let _serial = SERIAL.lock().await;
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    let d = pair.start_daemon("main", &[]).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {}", d.token);
        let a = http(
            d.addr,
            None,
            "GET",
            "/api/sync/status",
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(a.code, 200, "{scheme}: {}", a.body);
    }

    // Ten wrong tokens from one address are answered 401, then it is refused (429 with
    // Retry-After), even with the right token, for the rest of the minute.
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    for i in 0..10 {
        let a = http(
            d.addr,
            Some(attacker),
            "GET",
            "/api/sync/status",
            &[("Authorization", &format!("Bearer guess-{i}"))],
        )
        .await;
        assert_eq!(a.code, 401, "attempt {i}: {}", a.body);
    }
    let right = format!("Bearer {}", d.token);
    for auth in ["Bearer guess-10", right.as_str()] {
        let a = http(
            d.addr,
            Some(attacker),
            "POST",
            "/api/sync/pause",
            &[("Authorization", auth)],
        )
        .await;
        assert_eq!(a.code, 429, "{}", a.body);
        assert_eq!(a.json()["error"], "too_many_attempts", "{}", a.body);
        let wait: u64 = a
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    }
    // Another address is not affected, and health needs no token at all.
    let a = http(
        d.addr,
        None,
        "GET",
        "/api/sync/status",
        &[("Authorization", &right)],
    )
    .await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.json()["sync_state"]["sync_enabled"], true, "{}", a.body);
    let a = http(d.addr, Some(attacker), "GET", "/health/sync", &[]).await;
    assert!(matches!(a.code, 200 | 503), "{}", a.body);
    let (ok, _) = d.stop().await;
    assert!(ok);
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow_and_bad_input_gets_400_never_500() {
    let _serial = SERIAL.lock().await;
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{FAST_DAEMON}"));
    let d = pair.start_daemon("main", &[]).await;
    let auth = format!("Bearer {}", d.token);
    let auth = [("Authorization", auth.as_str())];

    for (method, path, allow) in [
        ("DELETE", "/health/sync", "GET,HEAD"),
        ("POST", "/metrics", "GET,HEAD"),
        ("GET", "/api/sync/pause", "POST"),
        ("PUT", "/api/sync/conflicts/1", "GET,HEAD"),
    ] {
        let a = http(d.addr, None, method, path, &auth).await;
        assert_eq!(a.code, 405, "{method} {path}: {}", a.body);
        assert_eq!(a.json()["error"], "method_not_allowed");
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
    }

    for (method, path, names) in [
        ("GET", "/api/sync/log?type=%00", "`type`"),
        ("GET", "/api/sync/log?type=bogus", "`type`"),
        ("GET", "/api/sync/log?status=%00", "`status`"),
        ("GET", "/api/sync/log?limit=1%00", "`limit`"),
        ("GET", "/api/sync/conflicts?table=User%00", "`table`"),
        ("GET", "/api/sync/conflicts/%FF", "conflict id"),
        ("GET", "/api/sync/conflicts/12x", "conflict id"),
        ("POST", "/api/sync/scan?table=%00&dry_run=true", "`table`"),
        (
            "POST",
            "/api/sync/integrity-check?checksum=maybe",
            "checksum",
        ),
        ("POST", "/api/sync/conflicts/1/resolve", "choice"),
    ] {
        let a = http(d.addr, None, method, path, &auth).await;
        assert_eq!(a.code, 400, "{method} {path}: {}", a.body);
        let body = a.json();
        assert_eq!(body["error"], "bad_request", "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{path}: {message}");
    }
    // The filter still works with good input.
    let a = http(
        d.addr,
        None,
        "GET",
        "/api/sync/log?type=CONTROL&limit=5",
        &auth,
    )
    .await;
    assert_eq!(a.code, 200, "{}", a.body);
    let (ok, _) = d.stop().await;
    assert!(ok);
}

/// `duplex run` with none of duplex's variables but these.
fn run_with(vars: &[(&str, &str)], config: Option<&std::path::Path>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"));
    for (var, _) in duplex::config::ENV_KEYS {
        cmd.env_remove(var);
    }
    cmd.env_remove("DATABASE_URL")
        .env("INSTANCE_ROLE", "main")
        .env("LOCAL_DB_URL", "postgres://u:hunter2@127.0.0.1:9/app")
        .env("REMOTE_DB_URL", "postgres://u:hunter2@127.0.0.1:9/app")
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    if let Some(path) = config {
        cmd.arg("--config").arg(path);
    }
    cmd.arg("run");
    cmd
}

#[tokio::test]
async fn a_short_admin_token_is_refused_at_start_with_exit_code_2() {
    let _serial = SERIAL.lock().await;
    let token = "short-but-s3cret-token";
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        run_with(&[("DUPLEX_ADMIN_TOKEN", token)], None).output(),
    )
    .await
    .expect("duplex run did not exit")
    .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("DUPLEX_ADMIN_TOKEN is 22 characters long: `duplex run` needs an admin token of at least 32 characters"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(token) && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

#[tokio::test]
async fn settings_too_large_to_compute_with_are_refused_at_start_naming_key_and_range() {
    let _serial = SERIAL.lock().await;
    let path =
        std::env::temp_dir().join(format!("duplex-http-overflow-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[daemon]\ndegraded_lag_secs = 9223372036854775807\nhttp_max_connections = 0\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        run_with(
            &[("DUPLEX_MONITOR_INTERVAL_SECS", "18446744073709551615")],
            Some(&path),
        )
        .output(),
    )
    .await
    .expect("duplex run did not exit")
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    for expected in [
        "daemon.degraded_lag_secs must be a positive whole number up to 604800 (7 days), got 9223372036854775807",
        "daemon.http_max_connections must be a positive whole number up to 65536, got 0",
        "DUPLEX_MONITOR_INTERVAL_SECS must be a positive whole number up to 3600 (1 hour)",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
}
