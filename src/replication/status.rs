//! The state of both replication directions, as `duplex status` shows it.

use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::Slot;
use super::health::{self, DirectionHealth, Snapshot};
use crate::model::Role;

/// The subscriber half of one direction.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionState {
    /// `pg_subscription.subenabled`.
    pub enabled: bool,
    /// An apply worker is running.
    pub running: bool,
    /// Tables whose initial copy finished.
    pub tables_ready: usize,
    /// Tables subscribed.
    pub tables_total: usize,
    /// The slot it streams from on the publisher.
    pub slot_name: Option<String>,
}

/// One direction of replication.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionState {
    /// `duplex_main_to_cloud` or `duplex_cloud_to_main`.
    pub name: String,
    /// Publisher.
    pub from: Role,
    /// Subscriber.
    pub to: Role,
    /// The subscription on `to`; `None` when it does not exist or `to` is unreachable.
    pub subscription: Option<SubscriptionState>,
    /// The slot on `from`; `None` when it does not exist or `from` is unreachable.
    pub slot: Option<Slot>,
    /// WAL bytes the subscriber has not confirmed yet; `None` when unknown.
    pub lag_bytes: Option<i64>,
    /// Why part of the picture is missing (unreachable instance), if it is.
    pub unknown: Vec<String>,
}

impl DirectionState {
    /// Replication in this direction is flowing.
    pub fn healthy(&self) -> bool {
        matches!(&self.subscription, Some(s) if s.enabled && s.running)
            && matches!(&self.slot, Some(s) if s.active)
    }
}

/// Both directions, seen from one side.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This side's role.
    pub role: Role,
    /// The local instance answered.
    pub local_reachable: bool,
    /// The remote instance answered.
    pub remote_reachable: bool,
    /// Incoming first (peer to this side), then outgoing.
    pub directions: Vec<DirectionState>,
}

/// Read both directions through [`health::collect`] and view them. An unreachable side is
/// passed as `None`; what it would have told is reported as unknown, never guessed.
pub async fn collect(role: Role, local: Option<&Client>, remote: Option<&Client>) -> Status {
    view(&health::collect(role, local, remote).await)
}

/// The status view of a health snapshot.
pub fn view(snapshot: &Snapshot) -> Status {
    Status {
        role: snapshot.role,
        local_reachable: snapshot.local_reachable,
        remote_reachable: snapshot.remote_reachable,
        directions: snapshot.directions.iter().map(direction).collect(),
    }
}

fn direction(d: &DirectionHealth) -> DirectionState {
    DirectionState {
        name: d.name.clone(),
        from: d.from,
        to: d.to,
        subscription: d.subscription.as_ref().map(|s| SubscriptionState {
            enabled: s.enabled,
            running: s.running,
            tables_ready: s.tables_ready,
            tables_total: s.tables_total,
            slot_name: s.slot_name.clone(),
        }),
        slot: d.slot.as_ref().map(|s| s.slot.clone()),
        lag_bytes: d.lag_bytes,
        unknown: d.unknown.clone(),
    }
}

/// Render `status` for a terminal.
pub fn render(status: &Status) -> String {
    let mut out = format!("duplex status ({} side)\n", status.role);
    for d in &status.directions {
        out.push_str(&format!("\n{} -> {}  [{}]\n", d.from, d.to, d.name));
        match &d.subscription {
            Some(s) => out.push_str(&format!(
                "  subscription on {}: {}, apply worker {}, tables ready {}/{}\n",
                d.to,
                if s.enabled { "enabled" } else { "DISABLED" },
                if s.running { "running" } else { "NOT running" },
                s.tables_ready,
                s.tables_total
            )),
            None if d.unknown.iter().any(|u| u.starts_with(d.to.as_str())) => {}
            None => out.push_str(&format!(
                "  subscription on {}: MISSING (run `duplex setup` with INSTANCE_ROLE={})\n",
                d.to, d.to
            )),
        }
        match &d.slot {
            Some(s) => out.push_str(&format!(
                "  slot {} on {}: {}, wal_status {}, lag {}\n",
                s.name,
                d.from,
                if s.active { "active" } else { "INACTIVE" },
                s.wal_status.as_deref().unwrap_or("unknown"),
                d.lag_bytes
                    .map(|b| format!("{b} bytes"))
                    .unwrap_or_else(|| "unknown".into())
            )),
            None if d.unknown.iter().any(|u| u.starts_with(d.from.as_str())) => {}
            None => out.push_str(&format!("  slot on {}: MISSING\n", d.from)),
        }
        for u in &d.unknown {
            out.push_str(&format!("  {u}\n"));
        }
        out.push_str(&format!(
            "  state: {}\n",
            if d.healthy() {
                "replicating"
            } else {
                "NOT replicating"
            }
        ));
    }
    out
}
