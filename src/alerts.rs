//! Alert rules: conditions evaluated every monitor cycle. An alert logs one entry when it
//! starts and one when it clears, never one per cycle.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::AlertSettings;
use crate::replication::catalog::SlotHealth;
use crate::replication::state::ConnectionState;

/// How bad an alert is; also the `sync_log.status` of its start entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// Worth a look.
    Warning,
    /// Something stopped and needs a person.
    Failed,
    /// Data is at risk.
    Critical,
}

impl Level {
    /// As written to `sync_log.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "WARNING",
            Level::Failed => "FAILED",
            Level::Critical => "CRITICAL",
        }
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// Stable key, e.g. `slot_missing:duplex_cloud_to_main`; one alert per key.
    pub kind: String,
    /// Severity.
    pub level: Level,
    /// One line.
    pub title: String,
    /// What happened and what to do.
    pub message: String,
    /// The runbook to follow, if a person must act.
    pub runbook: Option<&'static str>,
    /// Facts for `sync_log.details`.
    pub details: serde_json::Value,
}

/// An alert that is currently raised.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    /// The condition as it was when raised.
    #[serde(flatten)]
    pub condition: Condition,
    /// When it was raised.
    pub since: DateTime<Utc>,
}

/// The raised alerts of this process.
#[derive(Debug, Default)]
pub struct Book {
    active: BTreeMap<String, Active>,
}

impl Book {
    /// Compare the conditions of this cycle with the raised alerts: returns those that
    /// start now and those that cleared.
    pub fn update(
        &mut self,
        now: Vec<Condition>,
        at: DateTime<Utc>,
        unknown: &dyn Fn(&str) -> bool,
    ) -> (Vec<Condition>, Vec<Active>) {
        let mut started = Vec::new();
        let current: BTreeMap<String, Condition> =
            now.into_iter().map(|c| (c.kind.clone(), c)).collect();
        let cleared_keys: Vec<String> = self
            .active
            .keys()
            .filter(|k| !current.contains_key(*k) && !unknown(k))
            .cloned()
            .collect();
        let cleared = cleared_keys
            .iter()
            .filter_map(|k| self.active.remove(k))
            .collect();
        for (kind, c) in current {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.active.entry(kind) {
                started.push(c.clone());
                slot.insert(Active {
                    condition: c,
                    since: at,
                });
            }
        }
        (started, cleared)
    }

    /// Alerts raised before a restart, read back from `sync_log`.
    pub fn restore(&mut self, alerts: Vec<Active>) {
        for a in alerts {
            self.active.insert(a.condition.kind.clone(), a);
        }
    }

    /// Raised alerts, most severe first.
    pub fn active(&self) -> Vec<Active> {
        let mut v: Vec<Active> = self.active.values().cloned().collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.condition.level));
        v
    }
}

/// What the rules look at.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// Connection state after this cycle.
    pub state: Option<ConnectionState>,
    /// How long the peer has been unreachable.
    pub disconnected_for: Option<Duration>,
    /// This side's subscription name (direction peer -> this side).
    pub subscription: &'a str,
    /// Whether that subscription exists, its enabled flag and its error counts.
    pub subscription_state: Option<(bool, i64, i64)>,
    /// Apply errors of that subscription when they keep rising while the peer answers.
    pub apply_failing: Option<i64>,
    /// The slot it streams from on the peer: `Some(None)` when the peer answered and the
    /// slot is missing, `None` when unknown.
    pub incoming_slot: Option<Option<&'a SlotHealth>>,
    /// The slot on this side that the peer's subscription streams from.
    pub outgoing_slot: Option<&'a SlotHealth>,
    /// Worst replication lag, ms.
    pub lag_ms: Option<i64>,
    /// Storage queue size.
    pub queue_size: i64,
    /// Free space on the watched path, percent.
    pub disk_free_percent: Option<f64>,
}

/// Evaluate every rule.
pub fn evaluate(s: &AlertSettings, i: &Inputs<'_>) -> Vec<Condition> {
    let mut out = Vec::new();
    let sub = i.subscription;
    if i.subscription_state.is_some() && matches!(i.incoming_slot, Some(None)) {
        out.push(Condition {
            kind: format!("slot_missing:{sub}"),
            level: Level::Critical,
            title: format!("replication slot of {sub} is missing on the peer"),
            message: format!("the slot that subscription {sub} streams from no longer exists on the peer: changes made there since are not replicated. Follow runbooks/replication-slot-dropped.md"),
            runbook: Some("runbooks/replication-slot-dropped.md"),
            details: serde_json::json!({ "subscription": sub }),
        });
    }
    for slot in [i.incoming_slot.flatten(), i.outgoing_slot]
        .into_iter()
        .flatten()
    {
        let wal = slot.slot.wal_status.as_deref().unwrap_or("");
        if wal == "lost" || wal == "unreserved" || slot.invalidation_reason.is_some() {
            out.push(Condition {
                kind: format!("slot_wal:{}", slot.slot.name),
                level: Level::Critical,
                title: format!("replication slot {} is {}", slot.slot.name, if wal == "unreserved" { "about to lose WAL" } else { "invalidated" }),
                message: format!(
                    "slot {} has wal_status {wal}{}: {}. Follow runbooks/replication-slot-dropped.md",
                    slot.slot.name,
                    slot.invalidation_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                    if wal == "unreserved" { "WAL it needs will be removed at the next checkpoint unless the subscriber catches up" } else { "changes it had not sent are gone" }
                ),
                runbook: Some("runbooks/replication-slot-dropped.md"),
                details: serde_json::json!({ "slot": slot.slot.name, "wal_status": wal, "invalidation_reason": slot.invalidation_reason }),
            });
        }
    }
    if let Some((false, apply_errors, sync_errors)) = i.subscription_state {
        out.push(Condition {
            kind: format!("subscription_disabled:{sub}"),
            level: Level::Failed,
            title: format!("subscription {sub} is disabled"),
            message: format!("subscription {sub} is disabled ({apply_errors} apply error(s), {sync_errors} sync error(s) so far): changes from the peer wait in its slot until it is enabled again. Follow runbooks/subscription-disabled.md"),
            runbook: Some("runbooks/subscription-disabled.md"),
            details: serde_json::json!({ "subscription": sub, "apply_error_count": apply_errors, "sync_error_count": sync_errors }),
        });
    }
    if let Some(errors) = i.apply_failing {
        out.push(Condition {
            kind: format!("apply_errors:{sub}"),
            level: Level::Failed,
            title: format!("subscription {sub} keeps failing to apply a change"),
            message: format!("subscription {sub} keeps failing to apply a change from the peer ({errors} apply error(s) so far): that change and every later one wait in the peer's slot. Follow runbooks/subscription-disabled.md"),
            runbook: Some("runbooks/subscription-disabled.md"),
            details: serde_json::json!({ "subscription": sub, "apply_error_count": errors }),
        });
    }
    if let Some(lag) = i.lag_ms {
        if lag > (s.lag_warning_secs * 1000) as i64 {
            out.push(Condition {
                kind: "replication_lag".into(),
                level: Level::Warning,
                title: format!("replication lag is {} s", lag / 1000),
                message: format!(
                    "replication lag is {} s, above {} s",
                    lag / 1000,
                    s.lag_warning_secs
                ),
                runbook: None,
                details: serde_json::json!({ "lag_ms": lag, "threshold_secs": s.lag_warning_secs }),
            });
        }
    }
    if let (Some(ConnectionState::Disconnected), Some(d)) = (i.state, i.disconnected_for) {
        if d.as_secs() >= s.disconnected_critical_secs {
            out.push(Condition {
                kind: "disconnected".into(),
                level: Level::Critical,
                title: format!("peer unreachable for {} h", d.as_secs() / 3600),
                message: format!("the peer has been unreachable for {} s; slots retain WAL meanwhile. Follow runbooks/peer-disconnected.md", d.as_secs()),
                runbook: Some("runbooks/peer-disconnected.md"),
                details: serde_json::json!({ "disconnected_secs": d.as_secs() }),
            });
        }
    }
    if let Some(slot) = i.outgoing_slot {
        if let Some(bytes) = slot.slot.retained_bytes {
            if bytes as u64 > s.retained_wal_warning_bytes {
                out.push(Condition {
                    kind: format!("retained_wal:{}", slot.slot.name),
                    level: Level::Warning,
                    title: format!("slot {} retains {} MB of WAL", slot.slot.name, bytes / 1_000_000),
                    message: format!("slot {} keeps {bytes} bytes of WAL on this instance (threshold {}): the peer is not consuming it. See runbooks/peer-disconnected.md", slot.slot.name, s.retained_wal_warning_bytes),
                    runbook: Some("runbooks/peer-disconnected.md"),
                    details: serde_json::json!({ "slot": slot.slot.name, "retained_bytes": bytes }),
                });
            }
        }
    }
    if let Some(free) = i.disk_free_percent {
        if free < s.disk_free_min_percent as f64 && i.queue_size > s.disk_queue_min as i64 {
            out.push(Condition {
                kind: "disk_low".into(),
                level: Level::Warning,
                title: format!("{free:.0}% disk free with {} files queued", i.queue_size),
                message: format!(
                    "only {free:.1}% free on {} while {} files wait in the storage queue",
                    s.disk_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    i.queue_size
                ),
                runbook: None,
                details: serde_json::json!({ "free_percent": free, "queue_size": i.queue_size }),
            });
        }
    }
    if i.queue_size > s.queue_warning as i64 {
        out.push(Condition {
            kind: "storage_queue".into(),
            level: Level::Warning,
            title: format!("{} files wait in the storage queue", i.queue_size),
            message: format!(
                "the storage queue holds {} files (threshold {})",
                i.queue_size, s.queue_warning
            ),
            runbook: None,
            details: serde_json::json!({ "queue_size": i.queue_size }),
        });
    }
    out
}

/// Free space on the filesystem holding `path`, in percent.
pub fn disk_free_percent(path: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 * 100.0 / st.f_blocks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::catalog::Slot;

    fn settings() -> AlertSettings {
        AlertSettings {
            lag_warning_secs: 3600,
            disconnected_critical_secs: 86_400,
            retained_wal_warning_bytes: 1_000,
            disk_path: None,
            disk_free_min_percent: 20,
            disk_queue_min: 100,
            queue_warning: 500,
        }
    }

    fn slot(name: &str, wal: &str, retained: i64) -> SlotHealth {
        SlotHealth {
            slot: Slot {
                name: name.into(),
                active: true,
                wal_status: Some(wal.into()),
                pending_bytes: Some(0),
                retained_bytes: Some(retained),
            },
            safe_wal_size: None,
            invalidation_reason: None,
        }
    }

    #[test]
    fn each_rule_fires_on_its_threshold() {
        let s = settings();
        let lost = slot("duplex_in", "lost", 0);
        let big = slot("duplex_out", "reserved", 5_000);
        let i = Inputs {
            state: Some(ConnectionState::Disconnected),
            disconnected_for: Some(Duration::from_secs(90_000)),
            subscription: "duplex_cloud_to_main",
            subscription_state: Some((false, 3, 0)),
            apply_failing: Some(3),
            incoming_slot: Some(Some(&lost)),
            outgoing_slot: Some(&big),
            lag_ms: Some(3_700_000),
            queue_size: 600,
            disk_free_percent: Some(10.0),
        };
        let kinds: Vec<String> = evaluate(&s, &i).into_iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            vec![
                "slot_wal:duplex_in",
                "subscription_disabled:duplex_cloud_to_main",
                "apply_errors:duplex_cloud_to_main",
                "replication_lag",
                "disconnected",
                "retained_wal:duplex_out",
                "disk_low",
                "storage_queue"
            ]
        );
        let quiet = Inputs {
            state: Some(ConnectionState::Connected),
            subscription: "x",
            subscription_state: Some((true, 0, 0)),
            lag_ms: Some(10),
            ..Inputs::default()
        };
        assert!(evaluate(&s, &quiet).is_empty());
    }

    #[test]
    fn an_alert_starts_once_and_clears_once() {
        let mut book = Book::default();
        let c = Condition {
            kind: "replication_lag".into(),
            level: Level::Warning,
            title: "t".into(),
            message: "m".into(),
            runbook: None,
            details: serde_json::Value::Null,
        };
        let now = Utc::now();
        let known = |_: &str| false;
        assert_eq!(book.update(vec![c.clone()], now, &known).0.len(), 1);
        let (started, cleared) = book.update(vec![c.clone()], now, &known);
        assert!(started.is_empty() && cleared.is_empty());
        // While its input is unknown, the alert stays raised.
        let (_, cleared) = book.update(vec![], now, &|k: &str| k == "replication_lag");
        assert!(cleared.is_empty());
        let (started, cleared) = book.update(vec![], now, &known);
        assert!(started.is_empty());
        assert_eq!(cleared.len(), 1);
        assert!(book.active().is_empty());
    }
}
