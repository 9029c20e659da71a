//! One reader of the health of both directions: a typed [`Snapshot`] collected once from
//! whichever instances answer. The monitor judges it ([`super::rules`]), `duplex status`
//! renders it ([`super::status`]) and `duplex check` judges it ([`super::check`]).

use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::{self, Sender, SlotHealth, SubscriptionStats};
use super::direction_name;
use crate::model::Role;
use crate::pg;

/// The subscriber half of one direction.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionHealth {
    /// `subenabled`.
    pub enabled: bool,
    /// Apply worker running.
    pub running: bool,
    /// Slot it streams from.
    pub slot_name: Option<String>,
    /// Error and conflict counters, message times.
    pub stats: SubscriptionStats,
    /// Tables whose initial copy finished.
    #[serde(skip)]
    pub tables_ready: usize,
    /// Tables subscribed.
    #[serde(skip)]
    pub tables_total: usize,
}

/// One direction, as the monitor reports it (`GET /api/sync/status`).
#[derive(Debug, Clone, Serialize)]
pub struct DirectionHealth {
    /// `duplex_main_to_cloud` or `duplex_cloud_to_main`.
    pub name: String,
    /// Publisher.
    pub from: Role,
    /// Subscriber.
    pub to: Role,
    /// Subscription on `to`, when it exists and `to` answered.
    pub subscription: Option<SubscriptionHealth>,
    /// Slot on `from`: the one the subscription names; when the subscription names none
    /// (or is unknown), the duplex slot of the publisher's database, see `slot_guessed`.
    pub slot: Option<SlotHealth>,
    /// The walsender on `from` serving `slot`.
    pub sender: Option<Sender>,
    /// Lag in ms; `None` when replication in this direction is down or unknown.
    pub lag_ms: Option<i64>,
    /// WAL bytes not yet confirmed by the subscriber.
    pub lag_bytes: Option<i64>,
    /// Whether the subscriber side was read.
    pub subscriber_known: bool,
    /// Whether the publisher side was read.
    pub publisher_known: bool,
    /// `slot` was not named by a subscription but found among the publisher's duplex slots.
    #[serde(skip)]
    pub slot_guessed: bool,
    /// Why part of the picture is missing, one sentence per side, each starting with the
    /// side's role.
    #[serde(skip)]
    pub unknown: Vec<String>,
}

impl DirectionHealth {
    /// The direction as the monitor judges it: a guessed slot stands in only while the
    /// subscriber is unknown (when the subscriber answered, its subscription is the truth).
    pub fn streaming(mut self) -> Self {
        if self.slot_guessed && self.subscriber_known {
            self.slot = None;
            self.sender = None;
            self.lag_ms = None;
            self.lag_bytes = None;
            self.slot_guessed = false;
        }
        self
    }
}

/// Both directions, incoming first, seen from `role`.
#[derive(Debug)]
pub struct Snapshot {
    /// This side.
    pub role: Role,
    /// The local instance was given.
    pub local_reachable: bool,
    /// The remote instance was given.
    pub remote_reachable: bool,
    /// Incoming (peer to this side), then outgoing.
    pub directions: Vec<DirectionHealth>,
    /// The first query on the local instance that failed, if any.
    pub local_error: Option<pg::Error>,
    /// The first query on the remote instance that failed, if any.
    pub remote_error: Option<pg::Error>,
}

/// Read both directions. An instance that is not given (`None`) or whose query fails is
/// reported as unknown, never guessed; the first error of each side is kept.
pub async fn collect(role: Role, local: Option<&Client>, remote: Option<&Client>) -> Snapshot {
    let mut snapshot = Snapshot {
        role,
        local_reachable: local.is_some(),
        remote_reachable: remote.is_some(),
        directions: Vec::new(),
        local_error: None,
        remote_error: None,
    };
    for (from, to) in [(role.peer(), role), (role, role.peer())] {
        let side = |r: Role| if r == role { local } else { remote };
        let mut failed = Failed {
            role,
            local: &mut snapshot.local_error,
            remote: &mut snapshot.remote_error,
        };
        let d = direction(from, to, side(from), side(to), &mut failed).await;
        snapshot.directions.push(d);
    }
    snapshot
}

/// Keeps the first error of each side.
struct Failed<'a> {
    role: Role,
    local: &'a mut Option<pg::Error>,
    remote: &'a mut Option<pg::Error>,
}

impl Failed<'_> {
    fn record(&mut self, side: Role, e: pg::Error) {
        let first = if side == self.role {
            &mut *self.local
        } else {
            &mut *self.remote
        };
        first.get_or_insert(e);
    }
}

async fn direction(
    from: Role,
    to: Role,
    publisher: Option<&Client>,
    subscriber: Option<&Client>,
    failed: &mut Failed<'_>,
) -> DirectionHealth {
    let name = direction_name(from, to);
    let mut unknown = Vec::new();
    let mut subscription = None;
    match subscriber {
        None => unknown.push(format!("{to} is unreachable: subscription state unknown")),
        Some(c) => match subscription_health(c, &name).await {
            Ok(s) => subscription = s,
            Err(e) => {
                unknown.push(format!("{to}: {e}"));
                failed.record(to, e);
            }
        },
    }
    let (mut slot, mut sender, mut slot_guessed) = (None, None, false);
    match publisher {
        None => unknown.push(format!("{from} is unreachable: slot state unknown")),
        Some(c) => {
            let named = subscription.as_ref().and_then(|s| s.slot_name.clone());
            let slot_name = match named {
                Some(n) => Some(n),
                None => {
                    slot_guessed = true;
                    match catalog::duplex_slots_in_database(c).await {
                        Ok(names) => names.into_iter().next(),
                        Err(e) => {
                            failed.record(from, e);
                            None
                        }
                    }
                }
            };
            if let Some(slot_name) = slot_name {
                let read = async {
                    Ok::<_, pg::Error>((
                        catalog::slot_health(c, &slot_name).await?,
                        catalog::sender(c, &slot_name).await?,
                    ))
                };
                match read.await {
                    Ok((h, s)) => (slot, sender) = (h, s),
                    Err(e) => {
                        unknown.push(format!("{from}: {e}"));
                        failed.record(from, e);
                    }
                }
            }
        }
    }
    DirectionHealth {
        lag_ms: sender.as_ref().map(|s| s.replay_lag_ms.unwrap_or(0)),
        lag_bytes: slot.as_ref().and_then(|s| s.slot.pending_bytes),
        slot_guessed: slot_guessed && slot.is_some(),
        name,
        from,
        to,
        subscription,
        slot,
        sender,
        subscriber_known: subscriber.is_some(),
        publisher_known: publisher.is_some(),
        unknown,
    }
}

async fn subscription_health(
    c: &Client,
    name: &str,
) -> Result<Option<SubscriptionHealth>, pg::Error> {
    let Some(sub) = catalog::subscription(c, name).await? else {
        return Ok(None);
    };
    let stats = catalog::subscription_stats(c, name).await?;
    Ok(Some(SubscriptionHealth {
        enabled: sub.enabled,
        running: sub.worker_pid.is_some(),
        tables_ready: sub.tables.iter().filter(|(_, s)| s == "r").count(),
        tables_total: sub.tables.len(),
        slot_name: sub.slot_name,
        stats,
    }))
}
