//! The replication monitor: every cycle it reads both directions on both instances,
//! drives the connection state machine, raises and clears alerts, and keeps
//! `duplex.sync_state` and `duplex.sync_log` true.
//!
//! It stops when its cancellation token is cancelled; a cycle in progress is abandoned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, Mutex, RwLock};
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catalog::{self, Sender, SlotHealth, SubscriptionStats};
use super::state::{Backoff, ConnectionState, Machine, Observation, Transition};
use super::{direction_name, incoming};
use crate::alerts::{self, Active, Book, Condition};
use crate::config::Settings;
use crate::model::Role;
use crate::notify::{Notification, Notifier, Severity};
use crate::pg;
use crate::store::sync_log;

const NAME: &str = "replication_monitor";
/// Longest a cycle waits for the peer before calling it unreachable.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time without a new apply error before a failing subscription counts as
/// recovered (the apply worker retries every `wal_retrieve_retry_interval`, 5 s default).
const APPLY_QUIET_MIN: Duration = Duration::from_secs(10);

/// Errors of one monitor cycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local instance could not be read or written: nothing can be recorded.
    #[error("local instance: {0}")]
    Local(#[from] pg::Error),
    /// The local instance did not answer in time.
    #[error("the local instance did not answer within {REMOTE_TIMEOUT:?}")]
    Stalled,
}

/// The subscriber half of one direction, as monitored.
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
}

/// One direction, as monitored.
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
    /// Slot on `from`, when it exists and `from` answered.
    pub slot: Option<SlotHealth>,
    /// The walsender on `from` serving it.
    pub sender: Option<Sender>,
    /// Lag in ms; `None` when replication in this direction is down or unknown.
    pub lag_ms: Option<i64>,
    /// WAL bytes not yet confirmed by the subscriber.
    pub lag_bytes: Option<i64>,
    /// Whether the subscriber side was read.
    pub subscriber_known: bool,
    /// Whether the publisher side was read.
    pub publisher_known: bool,
}

/// What the monitor knows after its latest cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// This side.
    pub role: Role,
    /// Connection state.
    pub state: ConnectionState,
    /// Why, in the latest transition.
    pub state_reason: String,
    /// When the peer became unreachable, if it is.
    pub disconnected_since: Option<DateTime<Utc>>,
    /// Next reconnect attempt, while disconnected.
    pub next_reconnect_at: Option<DateTime<Utc>>,
    /// Worst lag over both directions; `None` when either is down.
    pub lag_ms: Option<i64>,
    /// Both directions, incoming first.
    pub directions: Vec<DirectionHealth>,
    /// Raised alerts.
    pub alerts: Vec<Active>,
    /// `sync_state.sync_enabled`.
    pub sync_enabled: bool,
    /// `sync_state.storage_queue_size`.
    pub storage_queue_size: i64,
    /// End of the latest cycle.
    pub checked_at: Option<DateTime<Utc>>,
    /// Cycles run since start.
    pub cycles: u64,
    /// Why the latest cycle failed, if it did (the local instance could not be used).
    pub last_error: Option<String>,
}

impl Report {
    fn initial(role: Role) -> Self {
        Report {
            role,
            state: ConnectionState::Reconnecting,
            state_reason: "starting".into(),
            disconnected_since: None,
            next_reconnect_at: None,
            lag_ms: None,
            directions: Vec::new(),
            alerts: Vec::new(),
            sync_enabled: true,
            storage_queue_size: 0,
            checked_at: None,
            cycles: 0,
            last_error: None,
        }
    }
}

/// A request to run a cycle now; the reply carries the report or the cycle's error.
pub type TriggerRequest = oneshot::Sender<Result<Report, String>>;

/// The monitor worker.
pub struct Monitor {
    settings: Arc<Settings>,
    local: Mutex<Option<Client>>,
    remote: Mutex<Option<Client>>,
    machine: Mutex<Machine>,
    book: Mutex<Book>,
    notify: Option<mpsc::Sender<Notification>>,
    report: Arc<RwLock<Report>>,
    awaiting_reconnect: AtomicBool,
    restored: AtomicBool,
    immediate_sync: broadcast::Sender<&'static str>,
    versions: Mutex<(i32, i32)>,
    errors: Mutex<std::collections::HashMap<String, ErrorTrack>>,
}

/// Apply errors of one subscription across cycles.
#[derive(Debug)]
struct ErrorTrack {
    last: i64,
    rising: u32,
    last_increase: Option<Instant>,
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
        }
    }

    /// Record the count seen now; true while failing. It stops failing after `quiet`
    /// without a new error (time, not cycles: a trigger can run cycles back to back).
    fn observe(&mut self, count: i64, now: Instant, quiet: Duration) -> bool {
        if count > self.last {
            self.rising += 1;
            self.last_increase = Some(now);
        } else if self
            .last_increase
            .is_some_and(|at| now.saturating_duration_since(at) >= quiet)
        {
            self.rising = 0;
            self.last_increase = None;
        }
        self.last = count;
        self.rising >= Self::RISING
    }
}

impl Monitor {
    /// A monitor for `settings`. Notifications go to `notify` (the notifier worker), so a
    /// slow webhook never delays a cycle.
    pub fn new(settings: Arc<Settings>, notify: Option<mpsc::Sender<Notification>>) -> Self {
        let d = &settings.daemon;
        let backoff = Backoff {
            schedule: d
                .reconnect_backoff_secs
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            max: Duration::from_secs(d.reconnect_max_secs),
            jitter: d.reconnect_jitter,
        };
        let (immediate_sync, _) = broadcast::channel(16);
        Monitor {
            report: Arc::new(RwLock::new(Report::initial(settings.instance_role))),
            settings,
            local: Mutex::new(None),
            remote: Mutex::new(None),
            machine: Mutex::new(Machine::new(backoff)),
            book: Mutex::new(Book::default()),
            notify,
            awaiting_reconnect: AtomicBool::new(false),
            restored: AtomicBool::new(false),
            immediate_sync,
            versions: Mutex::new((0, 0)),
            errors: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The latest report, shared.
    pub fn report(&self) -> Arc<RwLock<Report>> {
        self.report.clone()
    }

    /// Subscribe to the "immediate sync cycle" signal, sent after a reconnect and on
    /// trigger. Later workers (storage mirror, conflict scanner) listen to it.
    pub fn immediate_sync(&self) -> broadcast::Receiver<&'static str> {
        self.immediate_sync.subscribe()
    }

    /// Run cycles every `monitor_interval_secs`, and at once on trigger, until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        cancel: CancellationToken,
        mut triggers: mpsc::Receiver<TriggerRequest>,
    ) {
        let period = Duration::from_secs(self.settings.daemon.monitor_interval_secs);
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let reply = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(tx) = triggers.recv() => Some(tx),
                _ = every.tick() => None,
            };
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                r = self.tick(reply.is_some()) => r,
            };
            if started.elapsed() > period {
                tracing::warn!(
                    worker = NAME,
                    "cycle took {:?}, longer than its period {period:?}",
                    started.elapsed()
                );
            }
            let answer = match result {
                Ok(report) => {
                    if reply.is_some() {
                        let _ = self.immediate_sync.send("trigger");
                    }
                    Ok(report)
                }
                Err(e) => {
                    tracing::warn!(worker = NAME, "cycle failed: {e:#}");
                    self.report.write().await.last_error = Some(e.to_string());
                    Err(e.to_string())
                }
            };
            if let Some(tx) = reply {
                let _ = tx.send(answer);
            }
        }
        tracing::info!(worker = NAME, "stopped");
    }

    async fn local_client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, pg::Error> {
        let mut guard = self.local.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let mut client = pg::connect(&self.settings.local_db_url, "local", "monitor").await?;
            crate::store::migrations::migrate(&mut client).await?;
            let v = catalog::server_info(&client).await?.version_num;
            self.versions.lock().await.0 = v;
            *guard = Some(client);
        }
        Ok(guard)
    }

    /// One cycle: observe, transition, alert, record. Returns the new report. `now_please`
    /// (a trigger) skips the remaining reconnect backoff.
    pub async fn tick(&self, now_please: bool) -> Result<Report, Error> {
        let role = self.settings.instance_role;
        let local_guard = self.local_client().await?;
        let Some(local) = local_guard.as_ref() else {
            unreachable!("local_client always leaves a client")
        };
        if !self.restored.load(Ordering::Relaxed) {
            self.restore(local).await?;
            self.restored.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut transitions: Vec<Transition> = Vec::new();
        let unit: f64 = rand::random();

        let attempt = {
            let mut m = self.machine.lock().await;
            if now_please {
                m.expedite(now);
            }
            if let Some(t) = m.begin_attempt(now) {
                transitions.push(t);
            }
            m.should_attempt(now) || m.state() == ConnectionState::Reconnecting
        };

        let mut remote_guard = self.remote.lock().await;
        let mut unreachable: Option<String> = None;
        if attempt {
            if remote_guard.as_ref().is_none_or(|c| c.is_closed()) {
                *remote_guard = None;
                match pg::connect(&self.settings.remote_db_url, "remote", "monitor").await {
                    Ok(c) => match catalog::server_info(&c).await {
                        Ok(info) => {
                            self.versions.lock().await.1 = info.version_num;
                            *remote_guard = Some(c);
                        }
                        Err(e) => unreachable = Some(e.to_string()),
                    },
                    Err(e) => unreachable = Some(e.to_string()),
                }
            }
        } else {
            unreachable = Some("waiting for the next reconnect attempt".into());
        }

        let versions = *self.versions.lock().await;
        let remote = remote_guard.as_ref();
        let collected =
            tokio::time::timeout(REMOTE_TIMEOUT, collect(role, local, remote, versions)).await;
        let remote_failed = match collected {
            Ok(Ok(directions)) => Ok(directions),
            Ok(Err(CollectError::Local(e))) => return Err(Error::Local(e)),
            Ok(Err(CollectError::Remote(e))) => Err(e),
            Err(_) => {
                // The cycle timed out: blame the peer only if the local instance answers.
                let local_ok =
                    tokio::time::timeout(Duration::from_secs(2), local.simple_query("SELECT 1"))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if !local_ok {
                    return Err(Error::Stalled);
                }
                Err(format!("no answer within {REMOTE_TIMEOUT:?}"))
            }
        };
        let directions = match remote_failed {
            Ok(d) => d,
            Err(why) => {
                // The peer failed mid-cycle: forget its connection and report what the
                // local instance alone can tell.
                *remote_guard = None;
                if unreachable.is_none() {
                    unreachable = Some(why);
                }
                match collect(role, local, None, versions).await {
                    Ok(d) => d,
                    Err(CollectError::Local(e)) => return Err(Error::Local(e)),
                    Err(CollectError::Remote(e)) => {
                        unreachable!("no remote was given, yet it failed: {e}")
                    }
                }
            }
        };
        drop(remote_guard);

        // Apply errors that keep rising while the peer answers: a change that cannot apply.
        let mut failing: Vec<(String, i64)> = Vec::new();
        let quiet = Duration::from_secs(self.settings.daemon.monitor_interval_secs * 3)
            .max(APPLY_QUIET_MIN);
        if unreachable.is_none() {
            let mut tracks = self.errors.lock().await;
            for d in &directions {
                if let Some(sub) = &d.subscription {
                    let count = sub.stats.apply_error_count + sub.stats.sync_error_count;
                    let track = tracks
                        .entry(d.name.clone())
                        .or_insert_with(|| ErrorTrack::new(count));
                    if track.observe(count, now, quiet) {
                        failing.push((d.name.clone(), count));
                    }
                }
            }
        }
        let lag_ms = if directions.iter().all(|d| d.lag_ms.is_some()) && !directions.is_empty() {
            directions.iter().filter_map(|d| d.lag_ms).max()
        } else {
            None
        };
        let observation = match &unreachable {
            Some(why) => Observation::Unreachable(why.clone()),
            None => {
                let mut problems = problems(&directions, self.settings.daemon.degraded_lag_secs);
                for (name, count) in &failing {
                    problems.push(format!("{name}: apply errors keep rising ({count})"));
                }
                Observation::Reachable { problems }
            }
        };
        let (state, disconnected_since, next_attempt, reconnected) = {
            let mut m = self.machine.lock().await;
            if let Some(t) = m.observe(&observation, now, unit) {
                transitions.push(t);
            }
            if transitions
                .iter()
                .any(|t| t.to == ConnectionState::Disconnected)
            {
                self.awaiting_reconnect.store(true, Ordering::Relaxed);
            }
            // CONNECTED means both slots exist and stream (a missing slot keeps the state
            // DEGRADED and raises its CRITICAL alert instead).
            let reconnected = m.state() == ConnectionState::Connected
                && self.awaiting_reconnect.swap(false, Ordering::Relaxed);
            (
                m.state(),
                m.disconnected_since(),
                m.next_attempt(),
                reconnected,
            )
        };
        for t in &transitions {
            record_transition(local, t).await?;
        }
        let is_connected = matches!(
            state,
            ConnectionState::Connected | ConnectionState::Degraded
        );
        let beat = crate::store::sync_state::heartbeat(local, lag_ms, is_connected).await?;
        let sync_enabled = beat.sync_enabled;
        let queue = beat.storage_queue_size;

        let sub_name = incoming(role);
        let incoming_dir = directions.iter().find(|d| d.name == sub_name);
        let outgoing_dir = directions.iter().find(|d| d.name != sub_name);
        let inputs = alerts::Inputs {
            state: Some(state),
            disconnected_for: disconnected_since.map(|s| now.saturating_duration_since(s)),
            subscription: &sub_name,
            subscription_state: incoming_dir.and_then(|d| {
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
                .find(|(n, _)| *n == sub_name)
                .map(|(_, c)| *c),
            incoming_slot: incoming_dir
                .filter(|d| d.publisher_known)
                .map(|d| d.slot.as_ref()),
            outgoing_slot: outgoing_dir.and_then(|d| d.slot.as_ref()),
            lag_ms,
            queue_size: queue,
            disk_free_percent: self
                .settings
                .alerts
                .disk_path
                .as_deref()
                .and_then(alerts::disk_free_percent),
        };
        let conditions = alerts::evaluate(&self.settings.alerts, &inputs);
        let (started, cleared, active) = {
            let mut book = self.book.lock().await;
            // While the peer does not answer, alerts about what only the peer can tell stay
            // raised: unknown is not resolved.
            let incoming_slot_name = incoming_dir
                .and_then(|d| d.subscription.as_ref())
                .and_then(|s| s.slot_name.clone());
            let peer_down = unreachable.is_some();
            let unknown = |kind: &str| {
                peer_down
                    && (kind.starts_with("slot_missing:")
                        || kind.starts_with("apply_errors:")
                        || kind == "replication_lag"
                        || incoming_slot_name
                            .as_deref()
                            .is_some_and(|n| kind == format!("slot_wal:{n}")))
            };
            let (s, c) = book.update(conditions, Utc::now(), &unknown);
            (s, c, book.active())
        };
        for c in &started {
            record_alert(local, c, false).await?;
            self.send(c, false).await;
        }
        for a in &cleared {
            record_alert(local, &a.condition, true).await?;
            self.send(&a.condition, true).await;
        }
        // Offer every other raised alert again: the notifier's per-kind rate limit turns
        // this into a reminder, and retries a send that failed.
        for a in &active {
            if !started.iter().any(|c| c.kind == a.condition.kind) {
                self.send(&a.condition, false).await;
            }
        }
        if reconnected {
            let _ = self.immediate_sync.send("reconnected");
            sync_log::insert(
                local,
                &sync_log::Entry {
                    sync_type: "connection",
                    status: "INFO",
                    records_synced: 0,
                    error_message: Some(
                        "reconnected with both slots in place: immediate sync cycle signalled",
                    ),
                    details: serde_json::json!({ "signal": "immediate_sync" }),
                },
            )
            .await?;
        }

        let to_utc = |i: Instant| {
            let ago = now.saturating_duration_since(i);
            let ahead = i.saturating_duration_since(now);
            Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default()
                + chrono::Duration::from_std(ahead).unwrap_or_default()
        };
        let mut report = self.report.write().await;
        report.state = state;
        if let Some(t) = transitions.last() {
            report.state_reason = t.reason.clone();
        }
        report.disconnected_since = disconnected_since.map(to_utc);
        report.next_reconnect_at = if state == ConnectionState::Disconnected {
            next_attempt.map(to_utc)
        } else {
            None
        };
        report.lag_ms = lag_ms;
        report.directions = directions;
        report.alerts = active;
        report.sync_enabled = sync_enabled;
        report.storage_queue_size = queue;
        report.checked_at = Some(Utc::now());
        report.cycles += 1;
        report.last_error = None;
        Ok(report.clone())
    }

    async fn send(&self, c: &Condition, cleared: bool) {
        let Some(tx) = &self.notify else {
            return;
        };
        let n = Notification {
            kind: c.kind.clone(),
            severity: match c.level {
                alerts::Level::Warning => Severity::Warning,
                alerts::Level::Failed => Severity::Failed,
                alerts::Level::Critical => Severity::Critical,
            },
            instance: self.settings.instance_role.to_string(),
            title: c.title.clone(),
            message: c.message.clone(),
            runbook: c.runbook.map(str::to_string),
            cleared,
        };
        if tx.try_send(n).is_err() {
            tracing::warn!(worker = NAME, kind = %c.kind, "notification queue full: dropped (the alert stays in sync_log)");
        }
    }

    /// Bring back what the previous run of this process knew: alerts still raised (their
    /// latest `sync_log` entry is not RESOLVED) and when the peer became unreachable.
    async fn restore(&self, local: &Client) -> Result<(), pg::Error> {
        let rows = sync_log::latest_alerts(local).await?;
        let mut restored = Vec::new();
        for r in rows {
            let level = match r.status.as_str() {
                "WARNING" => alerts::Level::Warning,
                "FAILED" => alerts::Level::Failed,
                "CRITICAL" => alerts::Level::Critical,
                _ => continue,
            };
            let details = r.details;
            let runbook = match details["runbook"].as_str() {
                Some("runbooks/replication-slot-dropped.md") => {
                    Some("runbooks/replication-slot-dropped.md")
                }
                Some("runbooks/subscription-disabled.md") => {
                    Some("runbooks/subscription-disabled.md")
                }
                Some("runbooks/peer-disconnected.md") => Some("runbooks/peer-disconnected.md"),
                _ => None,
            };
            restored.push(Active {
                condition: Condition {
                    kind: r.kind,
                    level,
                    title: details["title"].as_str().unwrap_or_default().to_string(),
                    message: r.message,
                    runbook,
                    details: details["facts"].clone(),
                },
                since: r.created_at,
            });
        }
        if !restored.is_empty() {
            tracing::info!(
                worker = NAME,
                "{} alert(s) still raised from before the restart",
                restored.len()
            );
        }
        self.book.lock().await.restore(restored);
        let since = sync_log::open_disconnection(local).await?;
        if let Some(since) = since {
            let ago = (Utc::now() - since).to_std().unwrap_or_default();
            self.machine.lock().await.restore_disconnected_since(
                Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
            );
            self.awaiting_reconnect.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The notifier worker: sends what the monitor queues, one at a time, until `cancel`.
pub async fn run_notifier(
    notifier: Notifier,
    mut queue: mpsc::Receiver<Notification>,
    cancel: CancellationToken,
) {
    loop {
        let n = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            n = queue.recv() => match n { Some(n) => n, None => break },
        };
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            o = notifier.notify(&n) => o,
        };
        for e in &outcome.errors {
            tracing::warn!(worker = "notifier", kind = %n.kind, "notification failed: {e}");
        }
    }
    tracing::info!(worker = "notifier", "stopped");
}

enum CollectError {
    Local(pg::Error),
    Remote(String),
}

/// Read both directions. `remote` is `None` when the peer is unreachable.
async fn collect(
    role: Role,
    local: &Client,
    remote: Option<&Client>,
    versions: (i32, i32),
) -> Result<Vec<DirectionHealth>, CollectError> {
    let mut out = Vec::new();
    for (from, to) in [(role.peer(), role), (role, role.peer())] {
        let name = direction_name(from, to);
        let (publisher, pub_is_local, pub_version) = if from == role {
            (Some(local), true, versions.0)
        } else {
            (remote, false, versions.1)
        };
        let (subscriber, sub_is_local) = if to == role {
            (Some(local), true)
        } else {
            (remote, false)
        };
        let wrap = |is_local: bool| {
            move |e: pg::Error| {
                if is_local {
                    CollectError::Local(e)
                } else {
                    CollectError::Remote(e.to_string())
                }
            }
        };
        let mut subscription = None;
        if let Some(c) = subscriber {
            if let Some(sub) = catalog::subscription(c, &name)
                .await
                .map_err(wrap(sub_is_local))?
            {
                let stats = catalog::subscription_stats(c, &name)
                    .await
                    .map_err(wrap(sub_is_local))?;
                subscription = Some(SubscriptionHealth {
                    enabled: sub.enabled,
                    running: sub.worker_pid.is_some(),
                    slot_name: sub.slot_name,
                    stats,
                });
            }
        }
        let (mut slot, mut sender) = (None, None);
        if let Some(c) = publisher {
            let slot_name = match subscription.as_ref().and_then(|s| s.slot_name.clone()) {
                Some(n) => Some(n),
                None if subscriber.is_some() => None,
                None => catalog::duplex_slots_in_database(c)
                    .await
                    .map_err(wrap(pub_is_local))?
                    .into_iter()
                    .next(),
            };
            if let Some(slot_name) = slot_name {
                slot = catalog::slot_health(c, &slot_name, pub_version)
                    .await
                    .map_err(wrap(pub_is_local))?;
                sender = catalog::sender(c, &slot_name)
                    .await
                    .map_err(wrap(pub_is_local))?;
            }
        }
        let lag_ms = match (&sender, &subscription) {
            (Some(s), _) => Some(s.replay_lag_ms.unwrap_or(0)),
            _ => None,
        };
        out.push(DirectionHealth {
            lag_bytes: slot.as_ref().and_then(|s| s.slot.pending_bytes),
            name,
            from,
            to,
            subscription,
            slot,
            sender,
            lag_ms,
            subscriber_known: subscriber.is_some(),
            publisher_known: publisher.is_some(),
        });
    }
    Ok(out)
}

/// Why the connection is DEGRADED (empty when healthy).
fn problems(directions: &[DirectionHealth], degraded_lag_secs: u64) -> Vec<String> {
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
            if lag > (degraded_lag_secs * 1000) as i64 {
                out.push(format!("{dir}: lag {} s", lag / 1000));
            }
        }
    }
    out
}

async fn record_transition(local: &Client, t: &Transition) -> Result<(), pg::Error> {
    let status = match t.to {
        ConnectionState::Connected | ConnectionState::Reconnecting => "INFO",
        ConnectionState::Degraded | ConnectionState::Disconnected => "WARNING",
    };
    let message = format!("{} -> {}: {}", t.from.as_str(), t.to.as_str(), t.reason);
    match t.to {
        ConnectionState::Connected => tracing::info!(worker = NAME, "{message}"),
        _ => tracing::warn!(worker = NAME, "{message}"),
    }
    sync_log::insert(
        local,
        &sync_log::Entry {
            sync_type: "connection",
            status,
            records_synced: 0,
            error_message: Some(&message),
            details: serde_json::json!({ "from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason }),
        },
    )
    .await
    .map(|_| ())
}

async fn record_alert(local: &Client, c: &Condition, cleared: bool) -> Result<(), pg::Error> {
    let message = if cleared {
        format!("cleared: {}", c.title)
    } else {
        c.message.clone()
    };
    if cleared {
        tracing::info!(worker = NAME, kind = %c.kind, "{message}");
    } else {
        tracing::warn!(worker = NAME, kind = %c.kind, level = c.level.as_str(), "{message}");
    }
    sync_log::insert(
        local,
        &sync_log::Entry {
            sync_type: "alert",
            status: if cleared {
                "RESOLVED"
            } else {
                c.level.as_str()
            },
            records_synced: 0,
            error_message: Some(&message),
            details: serde_json::json!({
                "kind": c.kind,
                "title": c.title,
                "level": c.level.as_str(),
                "runbook": c.runbook,
                "facts": c.details,
            }),
        },
    )
    .await
    .map(|_| ())
}
