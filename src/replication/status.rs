//! The state of both replication directions, as `duplex status` shows it.

use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::Slot;
use super::health::{self, DirectionHealth, Snapshot};
use crate::model::Role;
use crate::pg::{self, ConnectFailure};
use crate::secret::SecretUrl;

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

/// Why `role`'s instance could not be read, telling apart a refused login, a server that
/// does not answer and one that answers but refuses. `var` names the setting that holds
/// its URL (`LOCAL_DB_URL`, `REMOTE_DB_URL`).
pub fn unreachable(role: Role, var: &str, url: &SecretUrl, e: &pg::Error) -> String {
    let at = match (url.url().host_str(), url.url().port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => format!("{h}:5432"),
        _ => "the address in its URL".into(),
    };
    match e.connect_failure() {
        Some(ConnectFailure::Auth) => format!(
            "duplex cannot log in to {role} (authentication failed: {}): fix the user or password in {var}",
            e.cause()
        ),
        Some(ConnectFailure::NoAnswer) => format!(
            "{role} does not answer at {at} ({}): start it, or fix the host and port in {var}",
            e.cause()
        ),
        Some(ConnectFailure::Tls) => format!(
            "{role} answers at {at} but the TLS connection failed ({}): the server must offer TLS, and its certificate must be signed by the CA in sslrootcert and, for sslmode=verify-full, name the host; fix {var} or the server's certificate",
            e.cause()
        ),
        Some(ConnectFailure::Refused) => format!(
            "{role} answers at {at} but refuses the connection ({}): fix {var}",
            e.cause()
        ),
        None => format!("{role} cannot be read: {}", crate::text::chain(e)),
    }
}

/// The problems of a direction whose two instances both answered, one sentence, or `None`
/// when it replicates.
fn not_running(d: &DirectionState) -> Option<String> {
    if d.healthy() {
        return None;
    }
    let why = match (&d.subscription, &d.slot) {
        (None, _) => format!(
            "its subscription on {} is missing (run `duplex setup` with INSTANCE_ROLE={})",
            d.to, d.to
        ),
        (Some(s), _) if !s.enabled => format!(
            "its subscription on {} is disabled (see runbooks/subscription-disabled.md)",
            d.to
        ),
        (Some(_), None) => format!(
            "its slot on {} is missing (see runbooks/replication-slot-dropped.md)",
            d.from
        ),
        (Some(s), _) if !s.running => format!(
            "the apply worker on {} is not running (see the server log of {} and `duplex check`)",
            d.to, d.to
        ),
        (Some(_), Some(_)) => format!(
            "its slot on {} is inactive: no walsender streams it (see the server log of {} and `duplex check`)",
            d.from, d.from
        ),
    };
    Some(format!(
        "main and cloud both answer but replication {} -> {} is not running: {why}",
        d.from, d.to
    ))
}

/// What `duplex status` concludes: healthy only when both instances answered and both
/// directions replicate; otherwise every reason, one sentence each.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Both directions replicate.
    pub healthy: bool,
    /// Why not, one sentence each.
    pub problems: Vec<String>,
}

/// Judge `status`; `unreachable` holds one sentence per instance that could not be read
/// (from [`unreachable`]).
pub fn verdict(status: &Status, unreachable: Vec<String>) -> Verdict {
    let mut problems = unreachable;
    if status.local_reachable && status.remote_reachable {
        problems.extend(status.directions.iter().filter_map(not_running));
    } else if problems.is_empty() {
        problems.push("an instance could not be read: replication state unknown".into());
    }
    Verdict {
        healthy: problems.is_empty(),
        problems,
    }
}

/// Render a verdict for a terminal.
pub fn render_verdict(v: &Verdict) -> String {
    if v.healthy {
        return "\nhealthy: both directions replicating\n".into();
    }
    let mut out = String::from("\nUNHEALTHY:\n");
    for p in &v.problems {
        out.push_str(&format!("  - {p}\n"));
    }
    out
}
