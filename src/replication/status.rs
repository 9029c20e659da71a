//! The state of both replication directions, as `duplex status` shows it.

use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::{self, Slot};
use super::direction_name;
use crate::config::Settings;
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

/// Read the state of both directions. An unreachable side is passed as `None`; what it
/// would have told is reported as unknown, never guessed.
pub async fn collect(
    settings: &Settings,
    local: Option<&Client>,
    remote: Option<&Client>,
) -> Status {
    let role = settings.instance_role;
    let mut directions = Vec::new();
    for (from, to) in [(role.peer(), role), (role, role.peer())] {
        let (pub_client, sub_client) = if to == role {
            (remote, local)
        } else {
            (local, remote)
        };
        directions.push(direction(from, to, pub_client, sub_client).await);
    }
    Status {
        role,
        local_reachable: local.is_some(),
        remote_reachable: remote.is_some(),
        directions,
    }
}

async fn direction(
    from: Role,
    to: Role,
    publisher: Option<&Client>,
    subscriber: Option<&Client>,
) -> DirectionState {
    let name = direction_name(from, to);
    let mut unknown = Vec::new();
    let mut subscription = None;
    match subscriber {
        None => unknown.push(format!("{to} is unreachable: subscription state unknown")),
        Some(client) => match catalog::subscription(client, &name).await {
            Ok(Some(sub)) => {
                subscription = Some(SubscriptionState {
                    enabled: sub.enabled,
                    running: sub.worker_pid.is_some(),
                    tables_ready: sub.tables.iter().filter(|(_, s)| s == "r").count(),
                    tables_total: sub.tables.len(),
                    slot_name: sub.slot_name.clone(),
                })
            }
            Ok(None) => {}
            Err(e) => unknown.push(format!("{to}: {e}")),
        },
    }
    let mut slot = None;
    match publisher {
        None => unknown.push(format!("{from} is unreachable: slot state unknown")),
        Some(client) => {
            let slot_name = match subscription.as_ref().and_then(|s| s.slot_name.clone()) {
                Some(n) => Some(n),
                None => catalog::duplex_slots_in_database(client)
                    .await
                    .ok()
                    .and_then(|names| names.into_iter().next()),
            };
            if let Some(slot_name) = slot_name {
                match catalog::slot(client, &slot_name).await {
                    Ok(s) => slot = s,
                    Err(e) => unknown.push(format!("{from}: {e}")),
                }
            }
        }
    }
    DirectionState {
        lag_bytes: slot.as_ref().and_then(|s| s.pending_bytes),
        name,
        from,
        to,
        subscription,
        slot,
        unknown,
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
