//! The replication rules, pure: what a health snapshot means for the connection state
//! machine and which alerts it raises. No I/O and no clock of their own, so they are
//! unit-tested on hand-made snapshots.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::catalog::SlotHealth;
use super::health::DirectionHealth;
use super::state::{ConnectionState, Observation};
use crate::alerts::Condition;
use crate::config::AlertSettings;
use crate::model::Severity;

/// Runbook for a dropped or invalidated slot.
pub const RUNBOOK_SLOT_DROPPED: &str = "runbooks/replication-slot-dropped.md";
/// Runbook for a failing or disabled subscription.
pub const RUNBOOK_SUBSCRIPTION_DISABLED: &str = "runbooks/subscription-disabled.md";
/// Runbook for a peer that stays unreachable.
pub const RUNBOOK_PEER_DISCONNECTED: &str = "runbooks/peer-disconnected.md";
/// Runbook for a direction that is not streaming although the peer answers.
pub const RUNBOOK_NOT_STREAMING: &str = "runbooks/not-streaming.md";

/// The runbook named `path`, if it is one of duplex's (for alerts read back from the log).
pub fn runbook(path: &str) -> Option<&'static str> {
    [
        RUNBOOK_SLOT_DROPPED,
        RUNBOOK_SUBSCRIPTION_DISABLED,
        RUNBOOK_PEER_DISCONNECTED,
        RUNBOOK_NOT_STREAMING,
    ]
    .into_iter()
    .find(|r| *r == path)
}

/// Every alert the replication rules raise; its `Display` is the alert's stable key
/// (`slot_missing:duplex_cloud_to_main`), as logged in `sync_log.details.kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertKind {
    /// This side's subscription exists but its slot on the peer does not.
    SlotMissing(String),
    /// A slot's WAL is lost or about to be.
    SlotWal(String),
    /// This side's subscription is disabled.
    SubscriptionDisabled(String),
    /// Apply errors keep rising while the peer answers.
    ApplyErrors(String),
    /// Lag over the warning threshold.
    ReplicationLag,
    /// Peer unreachable for too long.
    Disconnected,
    /// This side's slot keeps too much WAL.
    RetainedWal(String),
    /// Low disk with a storage queue.
    DiskLow,
    /// Storage queue too long.
    StorageQueue,
    /// A direction has not been streaming for too long while the peer answers.
    NotStreaming(String),
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertKind::SlotMissing(s) => write!(f, "slot_missing:{s}"),
            AlertKind::SlotWal(s) => write!(f, "slot_wal:{s}"),
            AlertKind::SubscriptionDisabled(s) => write!(f, "subscription_disabled:{s}"),
            AlertKind::ApplyErrors(s) => write!(f, "apply_errors:{s}"),
            AlertKind::ReplicationLag => f.write_str("replication_lag"),
            AlertKind::Disconnected => f.write_str("disconnected"),
            AlertKind::RetainedWal(s) => write!(f, "retained_wal:{s}"),
            AlertKind::DiskLow => f.write_str("disk_low"),
            AlertKind::StorageQueue => f.write_str("storage_queue"),
            AlertKind::NotStreaming(d) => write!(f, "not_streaming:{d}"),
        }
    }
}

impl FromStr for AlertKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (head, arg) = match s.split_once(':') {
            Some((h, a)) => (h, Some(a.to_string())),
            None => (s, None),
        };
        Ok(match (head, arg) {
            ("slot_missing", Some(a)) => AlertKind::SlotMissing(a),
            ("slot_wal", Some(a)) => AlertKind::SlotWal(a),
            ("subscription_disabled", Some(a)) => AlertKind::SubscriptionDisabled(a),
            ("apply_errors", Some(a)) => AlertKind::ApplyErrors(a),
            ("retained_wal", Some(a)) => AlertKind::RetainedWal(a),
            ("not_streaming", Some(a)) => AlertKind::NotStreaming(a),
            ("replication_lag", None) => AlertKind::ReplicationLag,
            ("disconnected", None) => AlertKind::Disconnected,
            ("disk_low", None) => AlertKind::DiskLow,
            ("storage_queue", None) => AlertKind::StorageQueue,
            _ => return Err(()),
        })
    }
}

/// While the peer does not answer, alerts about what only the peer can tell stay raised:
/// unknown is not resolved. `incoming_slot` is the slot this side's subscription streams
/// from.
pub fn unknown_while_peer_down(kind: &str, peer_down: bool, incoming_slot: Option<&str>) -> bool {
    peer_down
        && match kind.parse::<AlertKind>() {
            Ok(
                AlertKind::SlotMissing(_) | AlertKind::ApplyErrors(_) | AlertKind::ReplicationLag,
            ) => true,
            Ok(AlertKind::SlotWal(slot)) => incoming_slot == Some(slot.as_str()),
            _ => false,
        }
}

/// `slot_missing` names a slot that does not exist: it stays raised until the slot exists
/// again, also when the subscription that named it was dropped meanwhile (as the runbook
/// does). `incoming_slot_exists` is `None` when the peer did not answer.
pub fn slot_missing_persists(kind: &str, incoming_slot_exists: Option<bool>) -> bool {
    matches!(kind.parse::<AlertKind>(), Ok(AlertKind::SlotMissing(_)))
        && incoming_slot_exists == Some(false)
}

/// Why a direction is not streaming, from one snapshot, or `None` when it streams (or the
/// snapshot cannot tell: either side unknown, or no subscription or a disabled one, which
/// have their own alerts).
pub fn not_streaming(d: &DirectionHealth) -> Option<String> {
    if !d.subscriber_known || !d.publisher_known {
        return None;
    }
    let sub = d.subscription.as_ref()?;
    if !sub.enabled {
        return None;
    }
    if !sub.running {
        return Some(format!(
            "the apply worker of subscription {} on {} is not running",
            d.name, d.to
        ));
    }
    match (&d.slot, &d.sender) {
        (None, _) => None,
        (Some(slot), None) => Some(format!(
            "no walsender on {} streams from slot {}",
            d.from, slot.slot.name
        )),
        (Some(_), Some(_)) => None,
    }
}

/// Per direction, since when it has not been streaming while the peer answered: no
/// walsender for its slot, no apply worker, or no progress while the publisher has WAL
/// to send.
#[derive(Debug, Default)]
pub struct StreamWatch {
    dirs: HashMap<String, Watch>,
}

#[derive(Debug)]
struct Watch {
    down: Option<(Instant, String)>,
    position: Option<String>,
    moved_at: Instant,
}

impl StreamWatch {
    /// Feed one cycle. `peer_answers` false forgets everything (the disconnected alert
    /// covers an unreachable peer). Returns `(direction, for how long, why)` for every
    /// direction that does not stream.
    pub fn observe(
        &mut self,
        directions: &[DirectionHealth],
        peer_answers: bool,
        now: Instant,
        stall_after: Duration,
    ) -> Vec<(String, Duration, String)> {
        if !peer_answers {
            self.dirs.clear();
            return Vec::new();
        }
        let mut out = Vec::new();
        for d in directions {
            let w = self.dirs.entry(d.name.clone()).or_insert(Watch {
                down: None,
                position: None,
                moved_at: now,
            });
            let position = d.slot.as_ref().and_then(|s| s.confirmed_flush_lsn.clone());
            if position != w.position {
                w.position = position;
                w.moved_at = now;
            }
            let pending = d.lag_bytes.unwrap_or(0) > 0;
            let stalled = (pending && now.saturating_duration_since(w.moved_at) >= stall_after)
                .then(|| {
                    format!(
                        "slot {} has WAL to send but its confirmed position has not moved for {} s",
                        d.slot.as_ref().map(|s| s.slot.name.as_str()).unwrap_or(""),
                        now.saturating_duration_since(w.moved_at).as_secs()
                    )
                });
            match not_streaming(d).or(stalled) {
                None => w.down = None,
                Some(why) => {
                    let since = match &w.down {
                        Some((since, _)) => *since,
                        // A stall started when the position last moved.
                        None if pending
                            && now.saturating_duration_since(w.moved_at) >= stall_after =>
                        {
                            w.moved_at
                        }
                        None => now,
                    };
                    w.down = Some((since, why.clone()));
                    out.push((d.name.clone(), now.saturating_duration_since(since), why));
                }
            }
        }
        out
    }
}

/// Local evidence that the peer is up, read while it is thought unreachable: the peer's
/// subscription streams from this side's slot (the slot is active), or this side's
/// subscription heard from the peer within `recent`. `role` is this side.
pub fn peer_evidence(
    directions: &[DirectionHealth],
    role: crate::model::Role,
    recent: Duration,
) -> bool {
    directions.iter().any(|d| {
        let slot_active = d.from == role && d.slot.as_ref().is_some_and(|s| s.slot.active);
        let receiving = d.to == role
            && d.subscription.as_ref().is_some_and(|s| {
                s.running
                    && s.stats
                        .ms_since_last_message
                        .is_some_and(|ms| ms >= 0 && (ms as u128) < recent.as_millis())
            });
        slot_active || receiving
    })
}

/// Whether to try the peer now, ahead of the backoff: local evidence that it is back
/// appeared since the previous cycle (edge, not level: evidence that stays while duplex
/// alone cannot reach the peer must not turn every cycle into an attempt).
pub fn reconnect_early(evidence_before: bool, evidence_now: bool) -> bool {
    evidence_now && !evidence_before
}

/// Apply errors of one subscription across cycles.
#[derive(Debug)]
struct ErrorTrack {
    last: i64,
    rising: u32,
    last_increase: Option<Instant>,
    /// The slot's confirmed position when the current run of increases began.
    position_at_first: Option<String>,
}

impl ErrorTrack {
    /// Increases before the subscription counts as failing: one error comes from every
    /// lost connection, a stuck change keeps adding more.
    const RISING: u32 = 2;

    fn new(count: i64) -> Self {
        ErrorTrack {
            last: count,
            rising: 0,
            last_increase: None,
            position_at_first: None,
        }
    }

    /// Record the count seen now, with the slot's confirmed position and whether the
    /// publisher has WAL the subscriber has not confirmed; true while failing. An error
    /// count also rises on every lost connection (a walsender killed, a network blip):
    /// those errors are followed by progress. A change that cannot apply keeps the
    /// confirmed position where it is while WAL waits, so only errors that rise without
    /// the position moving and with WAL pending count. It stops failing after `quiet`
    /// without a new error (time, not cycles: a trigger can run cycles back to back).
    fn observe(
        &mut self,
        count: i64,
        position: Option<&str>,
        pending: bool,
        now: Instant,
        quiet: Duration,
    ) -> bool {
        if count > self.last {
            let moved = position.is_some()
                && self.position_at_first.is_some()
                && self.position_at_first.as_deref() != position;
            if self.rising == 0 || moved {
                self.rising = 0;
                self.position_at_first = position.map(str::to_string);
            }
            self.rising += 1;
            self.last_increase = Some(now);
        } else if self
            .last_increase
            .is_some_and(|at| now.saturating_duration_since(at) >= quiet)
        {
            self.rising = 0;
            self.last_increase = None;
            self.position_at_first = None;
        }
        self.last = count;
        self.rising >= Self::RISING && pending
    }
}

/// Apply and sync errors of every subscription, across cycles.
#[derive(Debug, Default)]
pub struct ApplyErrors {
    tracks: HashMap<String, ErrorTrack>,
}

impl ApplyErrors {
    /// Feed one cycle in which the peer answered; returns the directions whose errors keep
    /// rising, with their count.
    pub fn observe(
        &mut self,
        directions: &[DirectionHealth],
        now: Instant,
        quiet: Duration,
    ) -> Vec<(String, i64)> {
        let mut failing = Vec::new();
        for d in directions {
            if let Some(sub) = &d.subscription {
                let count = sub.stats.apply_error_count + sub.stats.sync_error_count;
                let track = self
                    .tracks
                    .entry(d.name.clone())
                    .or_insert_with(|| ErrorTrack::new(count));
                let position = d
                    .slot
                    .as_ref()
                    .and_then(|s| s.confirmed_flush_lsn.as_deref());
                let pending = d.lag_bytes.unwrap_or(0) > 0;
                if track.observe(count, position, pending, now, quiet) {
                    failing.push((d.name.clone(), count));
                }
            }
        }
        failing
    }
}

/// `d` in whole milliseconds, saturating at `i64::MAX` (lags are compared as `i64`).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The worst lag over both directions; `None` when either is down or unknown.
pub fn worst_lag(directions: &[DirectionHealth]) -> Option<i64> {
    if directions.iter().all(|d| d.lag_ms.is_some()) && !directions.is_empty() {
        directions.iter().filter_map(|d| d.lag_ms).max()
    } else {
        None
    }
}

/// Why the connection is DEGRADED (empty when healthy).
pub fn problems(directions: &[DirectionHealth], degraded_lag: Duration) -> Vec<String> {
    let mut out = Vec::new();
    for d in directions {
        let dir = format!("{} -> {}", d.from, d.to);
        match &d.subscription {
            None => out.push(format!("{dir}: subscription missing on {}", d.to)),
            Some(s) if !s.enabled => out.push(format!("{dir}: subscription disabled")),
            Some(s) if !s.running => out.push(format!("{dir}: apply worker not running")),
            Some(_) => {}
        }
        match &d.slot {
            None => out.push(format!("{dir}: slot missing on {}", d.from)),
            Some(s) if !s.slot.active => out.push(format!("{dir}: slot {} inactive", s.slot.name)),
            Some(_) => {}
        }
        if let Some(lag) = d.lag_ms {
            if lag > millis(degraded_lag) {
                out.push(format!("{dir}: lag {} s", lag / 1000));
            }
        }
    }
    out
}

/// What the state machine is told: the peer is unreachable (`unreachable` says why), or
/// reachable with the problems of `directions` and the subscriptions that keep failing.
pub fn observation(
    unreachable: Option<&str>,
    directions: &[DirectionHealth],
    failing: &[(String, i64)],
    degraded_lag: Duration,
) -> Observation {
    match unreachable {
        Some(why) => Observation::Unreachable(why.to_string()),
        None => {
            let mut problems = problems(directions, degraded_lag);
            for (name, count) in failing {
                problems.push(format!("{name}: apply errors keep rising ({count})"));
            }
            Observation::Reachable { problems }
        }
    }
}

/// The alert inputs of one cycle. `subscription` is this side's (incoming) direction name.
#[allow(clippy::too_many_arguments)]
pub fn inputs<'a>(
    subscription: &'a str,
    state: ConnectionState,
    disconnected_for: Option<Duration>,
    directions: &'a [DirectionHealth],
    failing: &[(String, i64)],
    lag_ms: Option<i64>,
    queue_size: i64,
    disk_free_percent: Option<f64>,
    not_streaming: Vec<(String, Duration, String)>,
) -> Inputs<'a> {
    let incoming = directions.iter().find(|d| d.name == subscription);
    let outgoing = directions.iter().find(|d| d.name != subscription);
    Inputs {
        state: Some(state),
        disconnected_for,
        subscription,
        subscription_state: incoming.and_then(|d| {
            d.subscription.as_ref().map(|s| {
                (
                    s.enabled,
                    s.stats.apply_error_count,
                    s.stats.sync_error_count,
                )
            })
        }),
        apply_failing: failing
            .iter()
            .find(|(n, _)| n == subscription)
            .map(|(_, c)| *c),
        incoming_slot: incoming
            .filter(|d| d.publisher_known)
            .map(|d| d.slot.as_ref()),
        outgoing_slot: outgoing.and_then(|d| d.slot.as_ref()),
        lag_ms,
        queue_size,
        disk_free_percent,
        not_streaming,
    }
}

/// What the alert rules look at.
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
    /// Directions not streaming while the peer answers: name, for how long, why.
    pub not_streaming: Vec<(String, Duration, String)>,
}

/// Every alert rule of the replication domain.
pub fn evaluate(s: &AlertSettings, i: &Inputs<'_>) -> Vec<Condition> {
    let mut out = Vec::new();
    let sub = i.subscription;
    if i.subscription_state.is_some() && matches!(i.incoming_slot, Some(None)) {
        out.push(Condition {
            kind: AlertKind::SlotMissing(sub.into()).to_string(),
            level: Severity::Critical,
            title: format!("replication slot of {sub} is missing on the peer"),
            message: format!("the slot that subscription {sub} streams from no longer exists on the peer: changes made there since are not replicated. Follow runbooks/replication-slot-dropped.md"),
            runbook: Some(RUNBOOK_SLOT_DROPPED),
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
                kind: AlertKind::SlotWal(slot.slot.name.clone()).to_string(),
                level: Severity::Critical,
                title: format!("replication slot {} is {}", slot.slot.name, if wal == "unreserved" { "about to lose WAL" } else { "invalidated" }),
                message: format!(
                    "slot {} has wal_status {wal}{}: {}. Follow runbooks/replication-slot-dropped.md",
                    slot.slot.name,
                    slot.invalidation_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                    if wal == "unreserved" { "WAL it needs will be removed at the next checkpoint unless the subscriber catches up" } else { "changes it had not sent are gone" }
                ),
                runbook: Some(RUNBOOK_SLOT_DROPPED),
                details: serde_json::json!({ "slot": slot.slot.name, "wal_status": wal, "invalidation_reason": slot.invalidation_reason }),
            });
        }
    }
    if let Some((false, apply_errors, sync_errors)) = i.subscription_state {
        out.push(Condition {
            kind: AlertKind::SubscriptionDisabled(sub.into()).to_string(),
            level: Severity::Failed,
            title: format!("subscription {sub} is disabled"),
            message: format!("subscription {sub} is disabled ({apply_errors} apply error(s), {sync_errors} sync error(s) so far): changes from the peer wait in its slot until it is enabled again. Follow runbooks/subscription-disabled.md"),
            runbook: Some(RUNBOOK_SUBSCRIPTION_DISABLED),
            details: serde_json::json!({ "subscription": sub, "apply_error_count": apply_errors, "sync_error_count": sync_errors }),
        });
    }
    if let Some(errors) = i.apply_failing {
        out.push(Condition {
            kind: AlertKind::ApplyErrors(sub.into()).to_string(),
            level: Severity::Failed,
            title: format!("subscription {sub} keeps failing to apply a change"),
            message: format!("subscription {sub} keeps failing to apply a change from the peer ({errors} apply error(s) so far): that change and every later one wait in the peer's slot. Follow runbooks/subscription-disabled.md"),
            runbook: Some(RUNBOOK_SUBSCRIPTION_DISABLED),
            details: serde_json::json!({ "subscription": sub, "apply_error_count": errors }),
        });
    }
    for (dir, down_for, why) in &i.not_streaming {
        if *down_for >= s.not_streaming_critical {
            out.push(Condition {
                kind: AlertKind::NotStreaming(dir.clone()).to_string(),
                level: Severity::Critical,
                title: format!("{dir} has not been streaming for {} s", down_for.as_secs()),
                message: format!("{dir} has not been streaming for {} s although the peer answers: {why}. Changes wait in the slot. Follow runbooks/not-streaming.md", down_for.as_secs()),
                runbook: Some(RUNBOOK_NOT_STREAMING),
                details: serde_json::json!({ "direction": dir, "not_streaming_secs": down_for.as_secs(), "why": why }),
            });
        }
    }
    if let Some(lag) = i.lag_ms {
        if lag > millis(s.lag_warning) {
            out.push(Condition {
                kind: AlertKind::ReplicationLag.to_string(),
                level: Severity::Warning,
                title: format!("replication lag is {} s", lag / 1000),
                message: format!(
                    "replication lag is {} s, above {} s",
                    lag / 1000,
                    s.lag_warning.as_secs()
                ),
                runbook: None,
                details: serde_json::json!({ "lag_ms": lag, "threshold_secs": s.lag_warning.as_secs() }),
            });
        }
    }
    if let (Some(ConnectionState::Disconnected), Some(d)) = (i.state, i.disconnected_for) {
        if d >= s.disconnected_critical {
            out.push(Condition {
                kind: AlertKind::Disconnected.to_string(),
                level: Severity::Critical,
                title: format!("peer unreachable for {} h", d.as_secs() / 3600),
                message: format!("the peer has been unreachable for {} s; slots retain WAL meanwhile. Follow runbooks/peer-disconnected.md", d.as_secs()),
                runbook: Some(RUNBOOK_PEER_DISCONNECTED),
                details: serde_json::json!({ "disconnected_secs": d.as_secs() }),
            });
        }
    }
    if let Some(slot) = i.outgoing_slot {
        if let Some(bytes) = slot.slot.retained_bytes {
            if bytes as u64 > s.retained_wal_warning_bytes {
                out.push(Condition {
                    kind: AlertKind::RetainedWal(slot.slot.name.clone()).to_string(),
                    level: Severity::Warning,
                    title: format!("slot {} retains {} MB of WAL", slot.slot.name, bytes / 1_000_000),
                    message: format!("slot {} keeps {bytes} bytes of WAL on this instance (threshold {}): the peer is not consuming it. See runbooks/peer-disconnected.md", slot.slot.name, s.retained_wal_warning_bytes),
                    runbook: Some(RUNBOOK_PEER_DISCONNECTED),
                    details: serde_json::json!({ "slot": slot.slot.name, "retained_bytes": bytes }),
                });
            }
        }
    }
    if let Some(free) = i.disk_free_percent {
        if free < s.disk_free_min_percent as f64 && i.queue_size > s.disk_queue_min as i64 {
            out.push(Condition {
                kind: AlertKind::DiskLow.to_string(),
                level: Severity::Warning,
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
            kind: AlertKind::StorageQueue.to_string(),
            level: Severity::Warning,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;
    use crate::replication::catalog::{Sender, Slot, SubscriptionStats};
    use crate::replication::health::SubscriptionHealth;

    fn settings() -> AlertSettings {
        AlertSettings {
            lag_warning: Duration::from_secs(3600),
            disconnected_critical: Duration::from_secs(86_400),
            retained_wal_warning_bytes: 1_000,
            disk_path: None,
            disk_free_min_percent: 20,
            disk_queue_min: 100,
            queue_warning: 500,
            not_streaming_critical: Duration::from_secs(300),
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
            confirmed_flush_lsn: Some("0/100".into()),
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
            not_streaming: vec![
                (
                    "duplex_main_to_cloud".into(),
                    Duration::from_secs(301),
                    "no walsender".into(),
                ),
                (
                    "duplex_cloud_to_main".into(),
                    Duration::from_secs(299),
                    "not yet long enough".into(),
                ),
            ],
        };
        let kinds: Vec<String> = evaluate(&s, &i).into_iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            vec![
                "slot_wal:duplex_in",
                "subscription_disabled:duplex_cloud_to_main",
                "apply_errors:duplex_cloud_to_main",
                "not_streaming:duplex_main_to_cloud",
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

    fn direction(from: Role, to: Role, lag_ms: Option<i64>, active: bool) -> DirectionHealth {
        let name = crate::replication::direction_name(from, to);
        DirectionHealth {
            subscription: Some(SubscriptionHealth {
                enabled: true,
                running: true,
                slot_name: Some(name.clone()),
                stats: SubscriptionStats::default(),
                tables_ready: 1,
                tables_total: 1,
            }),
            slot: Some(SlotHealth {
                slot: Slot {
                    active,
                    ..slot(&name, "reserved", 0).slot
                },
                ..slot(&name, "reserved", 0)
            }),
            name,
            from,
            to,
            sender: None,
            lag_ms,
            lag_bytes: Some(0),
            subscriber_known: true,
            publisher_known: true,
            slot_guessed: false,
            unknown: Vec::new(),
        }
    }

    fn healthy() -> Vec<DirectionHealth> {
        vec![
            direction(Role::Cloud, Role::Main, Some(10), true),
            direction(Role::Main, Role::Cloud, Some(20), true),
        ]
    }

    #[test]
    fn a_healthy_snapshot_is_connected_without_alerts() {
        let dirs = healthy();
        assert_eq!(worst_lag(&dirs), Some(20));
        let obs = observation(None, &dirs, &[], Duration::from_secs(60));
        assert!(matches!(obs, Observation::Reachable { ref problems } if problems.is_empty()));
        let i = inputs(
            "duplex_cloud_to_main",
            ConnectionState::Connected,
            None,
            &dirs,
            &[],
            worst_lag(&dirs),
            0,
            None,
            Vec::new(),
        );
        assert!(evaluate(&settings(), &i).is_empty());
    }

    #[test]
    fn a_missing_incoming_slot_degrades_and_is_critical() {
        let mut dirs = healthy();
        dirs[0].slot = None;
        dirs[0].lag_ms = None;
        let Observation::Reachable { problems } =
            observation(None, &dirs, &[], Duration::from_secs(60))
        else {
            panic!("reachable expected")
        };
        assert_eq!(problems, vec!["cloud -> main: slot missing on cloud"]);
        assert_eq!(worst_lag(&dirs), None);
        let i = inputs(
            "duplex_cloud_to_main",
            ConnectionState::Degraded,
            None,
            &dirs,
            &[],
            None,
            0,
            None,
            Vec::new(),
        );
        let alerts = evaluate(&settings(), &i);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "slot_missing:duplex_cloud_to_main");
        assert_eq!(alerts[0].level, Severity::Critical);
        assert_eq!(alerts[0].runbook, Some(RUNBOOK_SLOT_DROPPED));
    }

    #[test]
    fn an_unknown_publisher_raises_no_slot_missing() {
        let mut dirs = healthy();
        dirs[0].slot = None;
        dirs[0].publisher_known = false;
        let i = inputs(
            "duplex_cloud_to_main",
            ConnectionState::Disconnected,
            Some(Duration::from_secs(5)),
            &dirs,
            &[],
            None,
            0,
            None,
            Vec::new(),
        );
        assert!(evaluate(&settings(), &i).is_empty());
    }

    #[test]
    fn lag_and_inactive_slots_degrade_and_unreachable_wins() {
        let mut dirs = healthy();
        dirs[1].lag_ms = Some(61_000);
        if let Some(s) = dirs[1].slot.as_mut() {
            s.slot.active = false;
        }
        let Observation::Reachable { problems } = observation(
            None,
            &dirs,
            &[("duplex_cloud_to_main".into(), 4)],
            Duration::from_secs(60),
        ) else {
            panic!("reachable expected")
        };
        assert_eq!(
            problems,
            vec![
                "main -> cloud: slot duplex_main_to_cloud inactive",
                "main -> cloud: lag 61 s",
                "duplex_cloud_to_main: apply errors keep rising (4)",
            ]
        );
        assert!(matches!(
            observation(Some("refused"), &dirs, &[], Duration::from_secs(60)),
            Observation::Unreachable(ref why) if why == "refused"
        ));
    }

    #[test]
    fn apply_errors_fail_after_two_rises_and_recover_after_quiet() {
        let mut errors = ApplyErrors::default();
        let mut dirs = healthy();
        // A change that cannot apply: WAL waits and the confirmed position stays put.
        dirs[0].lag_bytes = Some(500);
        let t0 = Instant::now();
        let quiet = Duration::from_secs(10);
        assert!(errors.observe(&dirs, t0, quiet).is_empty());
        for (i, n) in [1, 2].into_iter().enumerate() {
            if let Some(s) = dirs[0].subscription.as_mut() {
                s.stats.apply_error_count = n;
            }
            let failing = errors.observe(&dirs, t0 + Duration::from_secs(i as u64 + 1), quiet);
            assert_eq!(failing.is_empty(), n == 1, "after {n} error(s)");
        }
        assert_eq!(
            errors.observe(&dirs, t0 + Duration::from_secs(5), quiet),
            vec![("duplex_cloud_to_main".to_string(), 2)]
        );
        assert!(errors
            .observe(&dirs, t0 + Duration::from_secs(13), quiet)
            .is_empty());
    }

    #[test]
    fn what_only_the_peer_can_tell_stays_raised_while_it_is_down() {
        let slot = Some("duplex_cloud_to_main");
        for kind in [
            "slot_missing:duplex_cloud_to_main",
            "apply_errors:duplex_cloud_to_main",
            "replication_lag",
            "slot_wal:duplex_cloud_to_main",
        ] {
            assert!(unknown_while_peer_down(kind, true, slot), "{kind}");
            assert!(!unknown_while_peer_down(kind, false, slot), "{kind}");
        }
        for kind in [
            "slot_wal:duplex_main_to_cloud",
            "disconnected",
            "storage_queue",
        ] {
            assert!(!unknown_while_peer_down(kind, true, slot), "{kind}");
        }
    }

    #[test]
    fn alert_kinds_round_trip_through_their_keys() {
        for kind in [
            AlertKind::SlotMissing("a".into()),
            AlertKind::SlotWal("b".into()),
            AlertKind::SubscriptionDisabled("c".into()),
            AlertKind::ApplyErrors("d".into()),
            AlertKind::ReplicationLag,
            AlertKind::Disconnected,
            AlertKind::RetainedWal("e".into()),
            AlertKind::DiskLow,
            AlertKind::StorageQueue,
            AlertKind::NotStreaming("f".into()),
        ] {
            assert_eq!(kind.to_string().parse::<AlertKind>(), Ok(kind));
        }
        assert!("bogus".parse::<AlertKind>().is_err());
    }

    #[test]
    fn errors_from_lost_connections_are_not_a_change_that_fails_to_apply() {
        let quiet = Duration::from_secs(10);
        let t0 = Instant::now();
        // Walsender killed twice: each kill adds an error, the subscriber reconnects and
        // confirms further each time.
        let mut errors = ApplyErrors::default();
        let mut dirs = healthy();
        dirs[0].lag_bytes = Some(100);
        assert!(errors.observe(&dirs, t0, quiet).is_empty());
        for (n, lsn) in [(1, "0/200"), (2, "0/300"), (3, "0/400")] {
            dirs[0]
                .subscription
                .as_mut()
                .unwrap()
                .stats
                .apply_error_count = n;
            dirs[0].slot.as_mut().unwrap().confirmed_flush_lsn = Some(lsn.into());
            let at = t0 + Duration::from_secs(n as u64);
            assert!(errors.observe(&dirs, at, quiet).is_empty(), "after {n}");
        }
        // Errors without WAL waiting (an idle publisher) do not count either.
        let mut errors = ApplyErrors::default();
        let mut dirs = healthy();
        dirs[0].lag_bytes = Some(0);
        assert!(errors.observe(&dirs, t0, quiet).is_empty());
        for n in [1, 2, 3] {
            dirs[0]
                .subscription
                .as_mut()
                .unwrap()
                .stats
                .apply_error_count = n;
            let at = t0 + Duration::from_secs(n as u64);
            assert!(errors.observe(&dirs, at, quiet).is_empty(), "after {n}");
        }
    }

    #[test]
    fn a_direction_without_walsender_is_not_streaming_from_when_it_stopped() {
        let mut watch = StreamWatch::default();
        let t0 = Instant::now();
        let limit = Duration::from_secs(300);
        let mut dirs = healthy();
        for d in &mut dirs {
            d.sender = Some(Sender {
                state: Some("streaming".into()),
                sync_state: None,
                sent_lsn: None,
                write_lsn: None,
                flush_lsn: None,
                replay_lsn: None,
                write_lag_ms: None,
                flush_lag_ms: None,
                replay_lag_ms: None,
            });
        }
        assert!(watch.observe(&dirs, true, t0, limit).is_empty());
        dirs[1].sender = None;
        let seen = watch.observe(&dirs, true, t0 + Duration::from_secs(10), limit);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "duplex_main_to_cloud");
        assert!(seen[0].2.contains("no walsender on main"), "{}", seen[0].2);
        let seen = watch.observe(&dirs, true, t0 + Duration::from_secs(400), limit);
        assert_eq!(seen[0].1, Duration::from_secs(390));
        // An unreachable peer is the disconnected alert's business: forget.
        assert!(watch
            .observe(&dirs, false, t0 + Duration::from_secs(401), limit)
            .is_empty());
        dirs[1].subscription.as_mut().unwrap().running = false;
        let seen = watch.observe(&dirs, true, t0 + Duration::from_secs(402), limit);
        assert_eq!(seen[0].1, Duration::ZERO);
        assert!(seen[0].2.contains("apply worker"), "{}", seen[0].2);
    }

    #[test]
    fn no_progress_with_wal_to_send_is_not_streaming_after_the_limit() {
        let mut watch = StreamWatch::default();
        let t0 = Instant::now();
        let limit = Duration::from_secs(300);
        let mut dirs = vec![direction(Role::Cloud, Role::Main, Some(10), true)];
        dirs[0].sender = None;
        dirs[0].subscription.as_mut().unwrap().enabled = false; // judged by its own alert
        assert!(watch.observe(&dirs, true, t0, limit).is_empty());
        dirs[0].subscription.as_mut().unwrap().enabled = true;
        dirs[0].sender = Some(Sender {
            state: Some("streaming".into()),
            sync_state: None,
            sent_lsn: None,
            write_lsn: None,
            flush_lsn: None,
            replay_lsn: None,
            write_lag_ms: None,
            flush_lag_ms: None,
            replay_lag_ms: None,
        });
        dirs[0].lag_bytes = Some(4096);
        assert!(watch
            .observe(&dirs, true, t0 + Duration::from_secs(299), limit)
            .is_empty());
        let seen = watch.observe(&dirs, true, t0 + Duration::from_secs(301), limit);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, Duration::from_secs(301));
        assert!(seen[0].2.contains("has not moved"), "{}", seen[0].2);
        dirs[0].slot.as_mut().unwrap().confirmed_flush_lsn = Some("0/900".into());
        assert!(watch
            .observe(&dirs, true, t0 + Duration::from_secs(302), limit)
            .is_empty());
    }

    #[test]
    fn slot_missing_stays_raised_until_the_slot_exists_again() {
        let kind = AlertKind::SlotMissing("duplex_cloud_to_main".into()).to_string();
        // Subscription dropped by the runbook, slot not there yet.
        assert!(slot_missing_persists(&kind, Some(false)));
        assert!(!slot_missing_persists(&kind, Some(true)));
        assert!(!slot_missing_persists(&kind, None));
        assert!(!slot_missing_persists("replication_lag", Some(false)));
    }

    #[test]
    fn local_evidence_of_the_peer_reconnects_early_on_its_edge_only() {
        let mut dirs = healthy();
        let recent = Duration::from_secs(10);
        // Main's view while cloud is down: its slot inactive, nothing received.
        for d in &mut dirs {
            if let Some(s) = d.slot.as_mut() {
                s.slot.active = false;
            }
        }
        assert!(!peer_evidence(&dirs, Role::Main, recent));
        // Cloud's subscription streams from main's slot again.
        dirs[1].slot.as_mut().unwrap().slot.active = true;
        assert!(peer_evidence(&dirs, Role::Main, recent));
        // Main's subscription heard from cloud a second ago.
        let mut dirs2 = healthy();
        for d in &mut dirs2 {
            d.slot.as_mut().unwrap().slot.active = false;
        }
        dirs2[0]
            .subscription
            .as_mut()
            .unwrap()
            .stats
            .ms_since_last_message = Some(1_000);
        assert!(peer_evidence(&dirs2, Role::Main, recent));
        assert!(reconnect_early(false, true));
        assert!(!reconnect_early(true, true));
        assert!(!reconnect_early(false, false));
    }
}
