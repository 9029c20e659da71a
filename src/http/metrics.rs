//! `GET /metrics` in the Prometheus text format (0.0.4), rendered by the `prometheus`
//! crate's encoder from the monitor's latest report: a fresh registry per scrape, so every
//! value is exactly what the report says. The conflict-log totals come from the database,
//! read at most once per [`COUNTS_MAX_AGE`] however many scrapers ask.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::AppState;
use crate::conflict::worker as housekeeping;
use crate::mirror::worker as mirror;
use crate::model::Severity;
use crate::replication::monitor::Report;
use crate::replication::scanner;
use crate::replication::state::ConnectionState;
use crate::store::conflict_log;

/// How long the conflict-log totals are reused.
pub const COUNTS_MAX_AGE: Duration = Duration::from_secs(2);
/// Longest a scrape waits for them; without them it leaves their series out.
const COUNTS_TIMEOUT: Duration = Duration::from_secs(3);

/// The latest conflict-log totals and when they were read; the lock makes concurrent
/// scrapes wait for one query instead of each running its own.
#[derive(Default)]
pub struct CountsCache(tokio::sync::Mutex<Option<(Instant, Option<Vec<conflict_log::Count>>)>>);

/// Render the metrics of the latest monitor report.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let log_counts = conflict_log_counts(&state).await;
    let mut report = state.report.borrow().clone();
    let conflicts = state.conflicts.borrow().clone();
    report.alerts.extend(conflicts.alerts.iter().cloned());
    let storage = state.storage.borrow().clone();
    let scanner = state.scanner.borrow().clone();
    match render(
        &report,
        &conflicts,
        &storage,
        &scanner,
        log_counts.as_deref(),
        &state.connections,
    ) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_string(),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("cannot render metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn gauge(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn render(
    r: &Report,
    c: &housekeeping::Report,
    storage: &mirror::Report,
    scanner: &scanner::WorkerReport,
    log_counts: Option<&[conflict_log::Count]>,
    connections: &super::server::Stats,
) -> prometheus::Result<String> {
    let reg = Registry::new();
    render_housekeeping(&reg, c)?;
    render_connections(&reg, connections)?;
    if storage.configured {
        render_storage(&reg, storage)?;
    }
    if scanner.runs_here {
        render_scanner(&reg, scanner)?;
    }
    if let Some(counts) = log_counts {
        render_conflict_log(&reg, counts)?;
    }
    let role = r.role.as_str();

    let g = gauge(
        &reg,
        "duplex_connection_state",
        "1 for the current connection state",
        &["role", "state"],
    )?;
    // While the local instance does not answer, the state is not known: no state is 1.
    for s in ConnectionState::ALL {
        g.with_label_values(&[role, s.as_str()])
            .set((s == r.state && r.local_up()) as i64);
    }
    gauge(
        &reg,
        "duplex_local_instance_up",
        "1 when the local instance answered the latest monitor cycle, 0 when it does not",
        &["role"],
    )?
    .with_label_values(&[role])
    .set(r.local_up() as i64);
    let lag_ms = gauge(
        &reg,
        "duplex_replication_lag_ms",
        "Replication lag in milliseconds (absent when replication is down)",
        &["direction"],
    )?;
    let lag_bytes = gauge(
        &reg,
        "duplex_replication_lag_bytes",
        "WAL bytes not yet confirmed by the subscriber",
        &["direction"],
    )?;
    let retained = gauge(
        &reg,
        "duplex_slot_retained_wal_bytes",
        "WAL kept for the slot (current LSN minus restart_lsn)",
        &["direction", "slot"],
    )?;
    let active = gauge(
        &reg,
        "duplex_slot_active",
        "1 when a walsender streams from the slot",
        &["direction", "slot"],
    )?;
    let wal_status = gauge(
        &reg,
        "duplex_slot_wal_status",
        "1 for the slot's wal_status",
        &["direction", "slot", "status"],
    )?;
    let enabled = gauge(
        &reg,
        "duplex_subscription_enabled",
        "1 when the subscription is enabled",
        &["direction"],
    )?;
    let apply_errors = counter(
        &reg,
        "duplex_subscription_apply_errors_total",
        "Apply errors of the subscription",
        &["direction"],
    )?;
    let sync_errors = counter(
        &reg,
        "duplex_subscription_sync_errors_total",
        "Initial-sync errors of the subscription",
        &["direction"],
    )?;
    let conflicts = counter(
        &reg,
        "duplex_subscription_conflicts_total",
        "Conflicts detected while applying (PostgreSQL 18+)",
        &["direction", "type"],
    )?;
    for d in &r.directions {
        let dir = d.name.as_str();
        if let Some(ms) = d.lag_ms {
            lag_ms.with_label_values(&[dir]).set(ms);
        }
        if let Some(b) = d.lag_bytes {
            lag_bytes.with_label_values(&[dir]).set(b);
        }
        if let Some(s) = &d.slot {
            let slot = s.slot.name.as_str();
            if let Some(b) = s.slot.retained_bytes {
                retained.with_label_values(&[dir, slot]).set(b);
            }
            active
                .with_label_values(&[dir, slot])
                .set(s.slot.active as i64);
            for st in ["reserved", "extended", "unreserved", "lost"] {
                wal_status
                    .with_label_values(&[dir, slot, st])
                    .set((s.slot.wal_status.as_deref() == Some(st)) as i64);
            }
        }
        if let Some(s) = &d.subscription {
            enabled.with_label_values(&[dir]).set(s.enabled as i64);
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            apply_errors
                .with_label_values(&[dir])
                .inc_by(count(s.stats.apply_error_count));
            sync_errors
                .with_label_values(&[dir])
                .inc_by(count(s.stats.sync_error_count));
            for (kind, n) in &s.stats.conflicts {
                conflicts.with_label_values(&[dir, kind]).inc_by(count(*n));
            }
        }
    }
    gauge(
        &reg,
        "duplex_storage_queue_size",
        "Files waiting in the storage queue",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .set(r.storage_queue_size);
    gauge(&reg, "duplex_sync_enabled", "0 while sync is paused", &[])?
        .with_label_values::<&str>(&[])
        .set(r.sync_enabled as i64);
    let alerts = gauge(
        &reg,
        "duplex_active_alerts",
        "Alerts currently raised, by level",
        &["level"],
    )?;
    for level in Severity::ALERT_LEVELS {
        let n = r
            .alerts
            .iter()
            .filter(|a| a.condition.level == level)
            .count();
        alerts.with_label_values(&[level.as_str()]).set(n as i64);
    }
    counter(
        &reg,
        "duplex_monitor_cycles_total",
        "Monitor cycles completed",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .inc_by(r.cycles);
    if let Some(at) = r.checked_at {
        gauge(
            &reg,
            "duplex_last_check_timestamp_seconds",
            "End of the latest monitor cycle",
            &[],
        )?
        .with_label_values::<&str>(&[])
        .set(at.timestamp());
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The local conflict log's totals (one grouped query, reused for [`COUNTS_MAX_AGE`]);
/// `None` (and the series left out) when the database does not answer.
async fn conflict_log_counts(state: &AppState) -> Option<Vec<conflict_log::Count>> {
    let mut cached = state.limits.conflict_counts.0.lock().await;
    if let Some((at, counts)) = cached.as_ref() {
        if at.elapsed() < COUNTS_MAX_AGE {
            return counts.clone();
        }
    }
    // Bounded, so a slow database delays every scrape at most this long.
    let counts = tokio::time::timeout(COUNTS_TIMEOUT, read_conflict_log_counts(state))
        .await
        .unwrap_or_else(|_| {
            tracing::warn!("metrics: the conflict log totals took over {COUNTS_TIMEOUT:?}");
            None
        });
    *cached = Some((Instant::now(), counts.clone()));
    counts
}

async fn read_conflict_log_counts(state: &AppState) -> Option<Vec<conflict_log::Count>> {
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| tracing::warn!("metrics: no connection for the conflict log: {e}"))
        .ok()?;
    conflict_log::counts(&client)
        .await
        .map_err(|e| tracing::warn!("metrics: {e}"))
        .ok()
}

/// The API's own connections: open now, and closed by the connection limit since start.
fn render_connections(reg: &Registry, stats: &super::server::Stats) -> prometheus::Result<()> {
    gauge(
        reg,
        "duplex_http_connections_open",
        "Open connections to the HTTP API",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .set(i64::try_from(stats.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    let closed = counter(
        reg,
        "duplex_http_connections_closed_total",
        "Connections closed by the connection limit: `evicted` (an idle or half-open one made room for a new one) or `refused` (every open one was busy)",
        &["reason"],
    )?;
    closed
        .with_label_values(&["evicted"])
        .inc_by(stats.evicted.load(Ordering::Relaxed));
    closed
        .with_label_values(&["refused"])
        .inc_by(stats.refused.load(Ordering::Relaxed));
    Ok(())
}

/// `duplex_conflicts_total{table,type,policy}` and `duplex_conflicts_open`.
fn render_conflict_log(reg: &Registry, counts: &[conflict_log::Count]) -> prometheus::Result<()> {
    let total = counter(
        reg,
        "duplex_conflicts_total",
        "Conflicts in the local conflict log, by table, type and policy",
        &["table", "type", "policy"],
    )?;
    for n in counts {
        total
            .with_label_values(&[
                n.table.as_str(),
                n.conflict_type.as_str(),
                n.policy.as_str(),
            ])
            .inc_by(u64::try_from(n.total).unwrap_or(0));
    }
    gauge(
        reg,
        "duplex_conflicts_open",
        "Conflicts waiting for a person (policy manual)",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .set(counts.iter().map(|n| n.open).sum());
    Ok(())
}

/// The storage mirror: files and bytes since start, current rate, failures, the oldest
/// waiting file's age (the queue size itself is `duplex_storage_queue_size`).
/// The verifying scanner's passes (only on the controller that runs it).
fn render_scanner(reg: &Registry, s: &scanner::WorkerReport) -> prometheus::Result<()> {
    for (name, help, v) in [
        (
            "duplex_scan_passes_total",
            "Scanner passes completed, since start",
            s.passes,
        ),
        (
            "duplex_scan_failures_total",
            "Scanner passes that failed, since start",
            s.failures,
        ),
        (
            "duplex_scan_skipped_paused_total",
            "Scanner passes skipped because sync was paused, since start",
            s.skipped_paused,
        ),
    ] {
        counter(reg, name, help, &[])?
            .with_label_values::<&str>(&[])
            .inc_by(v);
    }
    if let Some(p) = &s.last_pass {
        for (name, help, v) in [
            (
                "duplex_scan_last_pass_timestamp_seconds",
                "End of the latest completed scanner pass",
                p.finished_at.timestamp(),
            ),
            (
                "duplex_scan_last_pass_differences",
                "Differences the latest scanner pass confirmed",
                p.differences as i64,
            ),
            (
                "duplex_scan_last_pass_repaired",
                "Repairs the latest scanner pass wrote",
                p.repaired as i64,
            ),
            (
                "duplex_scan_last_pass_table_errors",
                "Tables the latest scanner pass could not compare or repair",
                p.table_errors.len() as i64,
            ),
        ] {
            gauge(reg, name, help, &[])?
                .with_label_values::<&str>(&[])
                .set(v);
        }
        let seconds = prometheus::Gauge::new(
            "duplex_scan_last_pass_seconds",
            "Seconds the latest completed scanner pass took",
        )?;
        reg.register(Box::new(seconds.clone()))?;
        seconds.set(p.seconds);
    }
    if let Some(f) = &s.last_failure {
        gauge(
            reg,
            "duplex_scan_last_failure_timestamp_seconds",
            "When the latest scanner pass failed",
            &[],
        )?
        .with_label_values::<&str>(&[])
        .set(f.at.timestamp());
    }
    Ok(())
}

fn render_storage(reg: &Registry, s: &mirror::Report) -> prometheus::Result<()> {
    let files = counter(
        reg,
        "duplex_storage_files_transferred_total",
        "Files copied into this side's store and verified, since start",
        &[],
    )?;
    files
        .with_label_values::<&str>(&[])
        .inc_by(s.files_transferred);
    let bytes = counter(
        reg,
        "duplex_storage_bytes_transferred_total",
        "Bytes copied into this side's store and verified, since start",
        &[],
    )?;
    bytes
        .with_label_values::<&str>(&[])
        .inc_by(s.bytes_transferred);
    let failures = counter(
        reg,
        "duplex_storage_failures_total",
        "File transfers that failed (mismatch, refused, gave up), since start",
        &[],
    )?;
    failures.with_label_values::<&str>(&[]).inc_by(s.failures);
    let rate = prometheus::Gauge::new(
        "duplex_storage_transfer_rate_bytes",
        "Bytes per second of the storage cycle in progress (0 between cycles)",
    )?;
    reg.register(Box::new(rate.clone()))?;
    rate.set(s.current_rate_bytes_per_sec);
    for (name, help, v) in [
        (
            "duplex_storage_invalid_rows",
            "Rows whose file cannot be mirrored (bad key, hash or size)",
            s.invalid_rows,
        ),
        (
            "duplex_storage_queued_bytes",
            "Bytes waiting in the storage queue",
            s.queued_bytes,
        ),
        (
            "duplex_storage_oldest_pending_seconds",
            "Age of the oldest waiting file, by its priority column (0 when none)",
            s.oldest_pending_at
                .map(|t| (chrono::Utc::now() - t).num_seconds().max(0))
                .unwrap_or(0),
        ),
    ] {
        gauge(reg, name, help, &[])?
            .with_label_values::<&str>(&[])
            .set(v);
    }
    Ok(())
}

/// The conflict housekeeping worker's clock measurement and row counters.
fn render_housekeeping(reg: &Registry, c: &housekeeping::Report) -> prometheus::Result<()> {
    if let Some(clock) = c.clock {
        for (name, help, v) in [
            (
                "duplex_clock_offset_ms",
                "Peer database server clock minus this one's, round-trip compensated",
                clock.offset_ms,
            ),
            (
                "duplex_clock_round_trip_ms",
                "Round trip of the latest clock offset measurement",
                clock.round_trip_ms,
            ),
        ] {
            let g = prometheus::Gauge::new(name, help)?;
            reg.register(Box::new(g.clone()))?;
            g.set(v);
        }
    }
    let rows = counter(
        reg,
        "duplex_housekeeping_rows_total",
        "Rows handled by the conflict housekeeping worker since start",
        &["what"],
    )?;
    for (what, n) in [
        ("conflicts_merged", c.merged_total),
        ("change_meta_deleted", c.change_meta_deleted_total),
        ("tombstones_deleted", c.tombstones_deleted_total),
        ("conflict_log_pruned", c.log_pruned_total),
    ] {
        rows.with_label_values(&[what]).inc_by(n);
    }
    Ok(())
}
