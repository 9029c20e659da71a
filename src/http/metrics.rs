//! `GET /metrics` in the Prometheus text format.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::replication::state::ConnectionState;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the metrics of the latest monitor report.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let r = state.report.borrow().clone();
    let mut out = String::new();
    let role = r.role.as_str();

    family(
        &mut out,
        "duplex_connection_state",
        "gauge",
        "1 for the current connection state",
    );
    for s in ConnectionState::ALL {
        let _ = writeln!(
            out,
            "duplex_connection_state{{role=\"{role}\",state=\"{}\"}} {}",
            s.as_str(),
            (s == r.state) as u8
        );
    }
    family(
        &mut out,
        "duplex_replication_lag_ms",
        "gauge",
        "Replication lag in milliseconds (absent when replication is down)",
    );
    for d in &r.directions {
        if let Some(ms) = d.lag_ms {
            let _ = writeln!(
                out,
                "duplex_replication_lag_ms{{direction=\"{}\"}} {ms}",
                d.name
            );
        }
    }
    family(
        &mut out,
        "duplex_replication_lag_bytes",
        "gauge",
        "WAL bytes not yet confirmed by the subscriber",
    );
    for d in &r.directions {
        if let Some(b) = d.lag_bytes {
            let _ = writeln!(
                out,
                "duplex_replication_lag_bytes{{direction=\"{}\"}} {b}",
                d.name
            );
        }
    }
    let slots: Vec<(&str, &crate::replication::catalog::SlotHealth)> = r
        .directions
        .iter()
        .filter_map(|d| d.slot.as_ref().map(|s| (d.name.as_str(), s)))
        .collect();
    family(
        &mut out,
        "duplex_slot_retained_wal_bytes",
        "gauge",
        "WAL kept for the slot (current LSN minus restart_lsn)",
    );
    for (dir, s) in &slots {
        if let Some(b) = s.slot.retained_bytes {
            let _ = writeln!(
                out,
                "duplex_slot_retained_wal_bytes{{direction=\"{dir}\",slot=\"{}\"}} {b}",
                escape(&s.slot.name)
            );
        }
    }
    family(
        &mut out,
        "duplex_slot_active",
        "gauge",
        "1 when a walsender streams from the slot",
    );
    for (dir, s) in &slots {
        let _ = writeln!(
            out,
            "duplex_slot_active{{direction=\"{dir}\",slot=\"{}\"}} {}",
            escape(&s.slot.name),
            s.slot.active as u8
        );
    }
    family(
        &mut out,
        "duplex_slot_wal_status",
        "gauge",
        "1 for the slot's wal_status",
    );
    for (dir, s) in &slots {
        for st in ["reserved", "extended", "unreserved", "lost"] {
            let _ = writeln!(
                out,
                "duplex_slot_wal_status{{direction=\"{dir}\",slot=\"{}\",status=\"{st}\"}} {}",
                escape(&s.slot.name),
                (s.slot.wal_status.as_deref() == Some(st)) as u8
            );
        }
    }
    let subs: Vec<(&str, &crate::replication::health::SubscriptionHealth)> = r
        .directions
        .iter()
        .filter_map(|d| d.subscription.as_ref().map(|s| (d.name.as_str(), s)))
        .collect();
    family(
        &mut out,
        "duplex_subscription_enabled",
        "gauge",
        "1 when the subscription is enabled",
    );
    for (dir, s) in &subs {
        let _ = writeln!(
            out,
            "duplex_subscription_enabled{{direction=\"{dir}\"}} {}",
            s.enabled as u8
        );
    }
    family(
        &mut out,
        "duplex_subscription_apply_errors_total",
        "counter",
        "Apply errors of the subscription",
    );
    for (dir, s) in &subs {
        let _ = writeln!(
            out,
            "duplex_subscription_apply_errors_total{{direction=\"{dir}\"}} {}",
            s.stats.apply_error_count
        );
    }
    family(
        &mut out,
        "duplex_subscription_sync_errors_total",
        "counter",
        "Initial-sync errors of the subscription",
    );
    for (dir, s) in &subs {
        let _ = writeln!(
            out,
            "duplex_subscription_sync_errors_total{{direction=\"{dir}\"}} {}",
            s.stats.sync_error_count
        );
    }
    family(
        &mut out,
        "duplex_subscription_conflicts_total",
        "counter",
        "Conflicts detected while applying (PostgreSQL 18+)",
    );
    for (dir, s) in &subs {
        for (kind, n) in &s.stats.conflicts {
            let _ = writeln!(
                out,
                "duplex_subscription_conflicts_total{{direction=\"{dir}\",type=\"{}\"}} {n}",
                escape(kind)
            );
        }
    }
    family(
        &mut out,
        "duplex_storage_queue_size",
        "gauge",
        "Files waiting in the storage queue",
    );
    let _ = writeln!(out, "duplex_storage_queue_size {}", r.storage_queue_size);
    family(
        &mut out,
        "duplex_sync_enabled",
        "gauge",
        "0 while sync is paused",
    );
    let _ = writeln!(out, "duplex_sync_enabled {}", r.sync_enabled as u8);
    family(
        &mut out,
        "duplex_active_alerts",
        "gauge",
        "Alerts currently raised, by level",
    );
    for level in ["WARNING", "FAILED", "CRITICAL"] {
        let n = r
            .alerts
            .iter()
            .filter(|a| a.condition.level.as_str() == level)
            .count();
        let _ = writeln!(out, "duplex_active_alerts{{level=\"{level}\"}} {n}");
    }
    family(
        &mut out,
        "duplex_monitor_cycles_total",
        "counter",
        "Monitor cycles completed",
    );
    let _ = writeln!(out, "duplex_monitor_cycles_total {}", r.cycles);
    if let Some(at) = r.checked_at {
        family(
            &mut out,
            "duplex_last_check_timestamp_seconds",
            "gauge",
            "End of the latest monitor cycle",
        );
        let _ = writeln!(
            out,
            "duplex_last_check_timestamp_seconds {}",
            at.timestamp()
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
