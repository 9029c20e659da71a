//! The replication monitor worker: every cycle it reads both directions
//! ([`health::collect`]), judges them ([`rules`]), drives the connection state machine,
//! raises and clears alerts, and keeps `duplex.sync_state` and `duplex.sync_log` true.
//!
//! The worker owns its state (`&mut self`) and publishes its latest [`Report`] through a
//! `tokio::sync::watch` channel that the HTTP layer reads. It stops when its cancellation
//! token is cancelled: between cycles, or while a cycle is still only reading (before it
//! writes anything), never halfway through a cycle's writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::health::{self, DirectionHealth};
use super::rules::{self, ApplyErrors};
use super::state::{Backoff, ConnectionState, Machine, Transition};
use super::{catalog, incoming};
use crate::alerts::{Active, Book, Condition};
use crate::config::Settings;
use crate::model::{Role, Severity};
use crate::notify::Notification;
use crate::pg;
use crate::store::sync_log::{Status, SyncType};
use crate::store::{self, sync_log, sync_state};

/// The worker's name in the registry and in logs.
pub const NAME: &str = "replication_monitor";
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
    /// The worker was cancelled before the cycle wrote anything.
    #[error("cancelled")]
    Cancelled,
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
    /// Since when the local instance does not answer (or fails every query), if it does
    /// not: nothing this side reports about the peer is current meanwhile.
    pub local_down_since: Option<DateTime<Utc>>,
    /// What the local `duplex` tables held at the end of the latest cycle (read at
    /// start-up before the first): `GET /api/sync/status` answers from it, so a burst of
    /// status requests costs no database round-trip.
    pub recorded: Option<Recorded>,
}

/// The local `sync_state` row and the latest `sync_log` entries, as the status shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// The `sync_state` row.
    pub sync_state: sync_state::Row,
    /// The latest `SUCCESS` entry: its `sync_type` and when.
    pub last_success: Option<(String, DateTime<Utc>)>,
    /// The latest [`RECENT_LOG`] entries, newest first.
    pub recent_log: Vec<sync_log::Row>,
}

/// How many `sync_log` entries [`Recorded`] keeps.
pub const RECENT_LOG: usize = 20;

impl Recorded {
    /// Read them from the local instance (three small queries).
    pub async fn read(local: &Client) -> Result<Recorded, pg::Error> {
        Ok(Recorded {
            sync_state: sync_state::read(local).await?,
            last_success: sync_log::last_success(local).await?,
            recent_log: sync_log::recent(local, None, None, RECENT_LOG as i64).await?,
        })
    }

    /// Put an entry this process just wrote in front, without waiting for the next cycle.
    pub fn push_log(&mut self, row: sync_log::Row) {
        self.recent_log.insert(0, row);
        self.recent_log.truncate(RECENT_LOG);
    }
}

impl Report {
    /// Whether the latest cycle could use the local instance.
    pub fn local_up(&self) -> bool {
        self.local_down_since.is_none()
    }
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
            local_down_since: None,
            recorded: None,
        }
    }
}

/// A request to run a cycle now; the reply carries the report or the cycle's error.
pub type TriggerRequest = oneshot::Sender<Result<Report, String>>;

/// What one cycle saw: both directions and, when the peer did not answer, why.
struct Seen {
    directions: Vec<DirectionHealth>,
    unreachable: Option<String>,
}

/// The judgement state carried from cycle to cycle.
struct Judge {
    machine: Machine,
    book: Book,
    errors: ApplyErrors,
    streams: rules::StreamWatch,
    /// Local evidence that the peer is up, as seen in the previous cycle.
    peer_evidence: bool,
    /// A DISCONNECTED was seen and the CONNECTED that follows has not yet been signalled.
    awaiting_reconnect: bool,
}

/// The monitor worker.
pub struct Monitor {
    settings: Arc<Settings>,
    period: Duration,
    local: Option<Client>,
    remote: Option<Client>,
    restored: bool,
    judge: Judge,
    notify: Option<mpsc::Sender<Notification>>,
    report: watch::Sender<Report>,
    immediate_sync: broadcast::Sender<&'static str>,
    triggers: mpsc::Receiver<TriggerRequest>,
    cancel: CancellationToken,
}

impl Monitor {
    /// A monitor for `settings`. Notifications go to `notify` (the notifier worker), so a
    /// slow webhook never delays a cycle; `triggers` asks for a cycle now.
    pub fn new(
        settings: Arc<Settings>,
        notify: Option<mpsc::Sender<Notification>>,
        triggers: mpsc::Receiver<TriggerRequest>,
    ) -> Self {
        let d = &settings.daemon;
        let backoff = Backoff {
            schedule: d.reconnect_backoff.clone(),
            max: d.reconnect_max,
            jitter: d.reconnect_jitter,
        };
        let (immediate_sync, _) = broadcast::channel(16);
        Monitor {
            report: watch::Sender::new(Report::initial(settings.instance_role)),
            period: d.monitor_interval,
            settings,
            local: None,
            remote: None,
            restored: false,
            judge: Judge {
                machine: Machine::new(backoff),
                book: Book::default(),
                errors: ApplyErrors::default(),
                streams: rules::StreamWatch::default(),
                peer_evidence: false,
                awaiting_reconnect: false,
            },
            notify,
            immediate_sync,
            triggers,
            cancel: CancellationToken::new(),
        }
    }

    /// The published report: `borrow()` reads the latest. The HTTP layer also writes its
    /// `sync_enabled` on pause/resume, so the change shows before the next cycle.
    pub fn report(&self) -> watch::Sender<Report> {
        self.report.clone()
    }

    /// Subscribe to the "immediate sync cycle" signal, sent after a reconnect and on
    /// trigger. Later workers (storage mirror, conflict scanner) listen to it.
    pub fn immediate_sync(&self) -> broadcast::Receiver<&'static str> {
        self.immediate_sync.subscribe()
    }

    /// Run cycles every `monitor_interval`, and at once on trigger, until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.cancel = cancel.clone();
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let reply = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(tx) = self.triggers.recv() => Some(tx),
                _ = every.tick() => None,
            };
            let started = Instant::now();
            let result = self.tick(reply.is_some()).await;
            if started.elapsed() > self.period {
                tracing::warn!(
                    worker = NAME,
                    "cycle took {:?}, longer than its period {:?}",
                    started.elapsed(),
                    self.period
                );
            }
            let answer = match result {
                Err(Error::Cancelled) => break,
                Ok(report) => {
                    if reply.is_some() {
                        let _ = self.immediate_sync.send("trigger");
                    }
                    Ok(report)
                }
                Err(e) => {
                    let role = self.settings.instance_role;
                    if self.report.borrow().local_up() {
                        tracing::error!(
                            worker = NAME,
                            "the local {role} instance cannot be used: {e:#}; nothing about replication can be read or recorded until it answers again"
                        );
                    } else {
                        tracing::warn!(worker = NAME, "cycle failed: {e:#}");
                    }
                    // Open a fresh local connection next cycle: a stalled one may never
                    // report itself closed.
                    self.local = None;
                    self.report.send_modify(|r| {
                        r.last_error = Some(format!("the local {role} instance: {e}"));
                        r.local_down_since.get_or_insert_with(Utc::now);
                    });
                    Err(e.to_string())
                }
            };
            if let Some(tx) = reply {
                let _ = tx.send(answer);
            }
        }
        tracing::info!(worker = NAME, "stopped");
    }

    /// One cycle: observe, judge, record, publish. Returns the new report. `now_please`
    /// (a trigger) skips the remaining reconnect backoff.
    pub async fn tick(&mut self, now_please: bool) -> Result<Report, Error> {
        let now = Instant::now();
        let mut transitions = self.begin_attempt(now, now_please);
        let attempt = self.judge.machine.should_attempt(now)
            || self.judge.machine.state() == ConnectionState::Reconnecting;
        // Reading may be cut short by cancellation: nothing is written yet.
        let cancel = self.cancel.clone();
        let mut seen = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            seen = self.observe(attempt) => seen?,
        };
        let role = self.settings.instance_role;
        let recent = self.period.saturating_mul(2);
        let evidence = rules::peer_evidence(&seen.directions, role, recent);
        let early = !attempt
            && self.judge.machine.state() == ConnectionState::Disconnected
            && rules::reconnect_early(self.judge.peer_evidence, evidence);
        if early {
            // The peer's subscription streams from this side again, or this side's hears
            // from the peer: try now instead of waiting out the backoff.
            tracing::info!(
                worker = NAME,
                "local evidence that the {} instance is back: reconnecting now",
                role.peer()
            );
            transitions.extend(self.begin_attempt(now, true));
            seen = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                seen = self.observe(true) => seen?,
            };
        }
        self.judge.peer_evidence = evidence;
        let subscription = incoming(self.settings.instance_role);
        // Whether the slot this side streams from exists on the peer (`None`: the peer did
        // not answer). Without a subscription naming it, the configured slot is looked up.
        let incoming_slot_exists = match (&seen.unreachable, self.remote.as_ref()) {
            (None, Some(remote)) => match seen.directions.iter().find(|d| d.name == subscription) {
                Some(d) if d.slot.is_some() => Some(true),
                Some(d) if d.subscription.is_some() => Some(false),
                _ => catalog::slot(remote, &self.settings.replication.slot_name)
                    .await
                    .ok()
                    .map(|s| s.is_some()),
            },
            _ => None,
        };
        let Some(local) = self.local.as_ref() else {
            return Err(Error::Stalled);
        };
        let judge = &mut self.judge;
        let settings = &self.settings;

        let failing = match seen.unreachable {
            None => judge.errors.observe(
                &seen.directions,
                now,
                settings
                    .daemon
                    .monitor_interval
                    .saturating_mul(3)
                    .max(APPLY_QUIET_MIN),
            ),
            Some(_) => Vec::new(),
        };
        let lag_ms = rules::worst_lag(&seen.directions);
        let observation = rules::observation(
            seen.unreachable.as_deref(),
            &seen.directions,
            &failing,
            settings.daemon.degraded_lag,
        );
        transitions.extend(judge.machine.observe(&observation, now, rand::random()));
        if transitions
            .iter()
            .any(|t| t.to == ConnectionState::Disconnected)
        {
            judge.awaiting_reconnect = true;
        }
        let state = judge.machine.state();
        // CONNECTED means both slots exist and stream (a missing slot keeps the state
        // DEGRADED and raises its CRITICAL alert instead).
        let reconnected = state == ConnectionState::Connected
            && std::mem::replace(&mut judge.awaiting_reconnect, false);
        for t in &transitions {
            record_transition(local, t).await?;
        }
        let beat = sync_state::heartbeat(
            local,
            lag_ms,
            matches!(
                state,
                ConnectionState::Connected | ConnectionState::Degraded
            ),
        )
        .await?;

        let disconnected_since = judge.machine.disconnected_since();
        let not_streaming = judge.streams.observe(
            &seen.directions,
            seen.unreachable.is_none(),
            now,
            settings.alerts.not_streaming_critical,
        );
        let inputs = rules::inputs(
            &subscription,
            state,
            disconnected_since.map(|s| now.saturating_duration_since(s)),
            &seen.directions,
            &failing,
            lag_ms,
            beat.storage_queue_size,
            settings
                .alerts
                .disk_path
                .as_deref()
                .and_then(disk_free_percent),
            not_streaming,
        );
        let conditions = rules::evaluate(&settings.alerts, &inputs);
        let incoming_slot = seen
            .directions
            .iter()
            .find(|d| d.name == subscription)
            .and_then(|d| d.subscription.as_ref())
            .and_then(|s| s.slot_name.clone());
        let peer_down = seen.unreachable.is_some();
        let (started, cleared) = judge.book.update(conditions, Utc::now(), &|kind| {
            rules::unknown_while_peer_down(kind, peer_down, incoming_slot.as_deref())
                || rules::slot_missing_persists(kind, incoming_slot_exists)
        });
        let active = judge.book.active();
        let notify = Notify {
            tx: self.notify.as_ref(),
            instance: settings.instance_role,
        };
        for c in &started {
            sync_log::record_alert(local, NAME, c, false).await?;
            notify.send(c, false);
        }
        for a in &cleared {
            sync_log::record_alert(local, NAME, &a.condition, true).await?;
            notify.send(&a.condition, true);
        }
        // Offer every other raised alert again: the notifier's per-kind rate limit turns
        // this into a reminder, and retries a send that failed.
        for a in &active {
            if !started.iter().any(|c| c.kind == a.condition.kind) {
                notify.send(&a.condition, false);
            }
        }
        if reconnected {
            let _ = self.immediate_sync.send("reconnected");
            sync_log::insert(
                local,
                &sync_log::Entry {
                    sync_type: SyncType::Connection,
                    status: Status::Info,
                    records_synced: 0,
                    error_message: Some(
                        "reconnected with both slots in place: immediate sync cycle signalled",
                    ),
                    details: serde_json::json!({ "signal": "immediate_sync" }),
                },
            )
            .await?;
        }

        // Last, so the status shows this cycle's own entries.
        let recorded = Recorded::read(local).await?;

        let to_utc = |i: Instant| {
            let ago = now.saturating_duration_since(i);
            let ahead = i.saturating_duration_since(now);
            Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default()
                + chrono::Duration::from_std(ahead).unwrap_or_default()
        };
        let next_attempt = judge.machine.next_attempt();
        self.report.send_modify(|r| {
            r.state = state;
            if let Some(t) = transitions.last() {
                r.state_reason = t.reason.clone();
            }
            r.disconnected_since = disconnected_since.map(to_utc);
            r.next_reconnect_at = match state {
                ConnectionState::Disconnected => next_attempt.map(to_utc),
                _ => None,
            };
            r.lag_ms = lag_ms;
            r.directions = seen.directions;
            r.alerts = active;
            r.sync_enabled = beat.sync_enabled;
            r.storage_queue_size = beat.storage_queue_size;
            r.checked_at = Some(Utc::now());
            r.cycles += 1;
            r.last_error = None;
            r.recorded = Some(recorded);
            if r.local_down_since.take().is_some() {
                tracing::info!(worker = NAME, "the local instance answers again");
            }
        });
        Ok(self.report.borrow().clone())
    }

    /// DISCONNECTED -> RECONNECTING when an attempt is due (at once on a trigger).
    fn begin_attempt(&mut self, now: Instant, now_please: bool) -> Vec<Transition> {
        let m = &mut self.judge.machine;
        if now_please {
            m.expedite(now);
        }
        m.begin_attempt(now).into_iter().collect()
    }

    /// Connect (local first: without it nothing can be recorded), then read both
    /// directions. A peer that fails is forgotten and what the local instance alone can
    /// tell is read again.
    async fn observe(&mut self, attempt: bool) -> Result<Seen, Error> {
        self.connect_local().await?;
        let mut unreachable = None;
        if !attempt {
            unreachable = Some("waiting for the next reconnect attempt".to_string());
        } else if let Err(why) = self.connect_remote().await {
            unreachable = Some(why);
        }
        let Some(local) = self.local.as_ref() else {
            return Err(Error::Stalled);
        };
        let role = self.settings.instance_role;
        let remote = if attempt { self.remote.as_ref() } else { None };
        let peer_failed =
            match tokio::time::timeout(REMOTE_TIMEOUT, health::collect(role, Some(local), remote))
                .await
            {
                Ok(mut snapshot) => {
                    if let Some(e) = snapshot.local_error.take() {
                        return Err(Error::Local(e));
                    }
                    match snapshot.remote_error.take() {
                        None => {
                            return Ok(Seen {
                                directions: streaming(snapshot.directions),
                                unreachable,
                            })
                        }
                        Some(e) => e.to_string(),
                    }
                }
                Err(_) => {
                    // The cycle timed out: blame the peer only if the local instance answers.
                    let local_ok = tokio::time::timeout(
                        Duration::from_secs(2),
                        local.simple_query("SELECT 1"),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok());
                    if !local_ok {
                        return Err(Error::Stalled);
                    }
                    format!("no answer within {REMOTE_TIMEOUT:?}")
                }
            };
        self.remote = None;
        let mut snapshot = health::collect(role, Some(local), None).await;
        if let Some(e) = snapshot.local_error.take() {
            return Err(Error::Local(e));
        }
        Ok(Seen {
            directions: streaming(snapshot.directions),
            unreachable: unreachable.or(Some(peer_failed)),
        })
    }

    /// Open the local connection when there is none (applying migrations), and bring back
    /// what the previous run knew on the first cycle.
    async fn connect_local(&mut self) -> Result<(), Error> {
        if self.local.as_ref().is_none_or(|c| c.is_closed()) {
            self.local = None;
            let mut client = pg::connect(self.settings.local_monitor(), "local", "monitor").await?;
            store::migrations::migrate(&mut client).await?;
            self.local = Some(client);
        }
        if !self.restored {
            if let Some(local) = self.local.as_ref() {
                restore(local, &mut self.judge).await?;
            }
            self.restored = true;
        }
        Ok(())
    }

    /// Open the remote connection when there is none; `Err` says why the peer is
    /// unreachable.
    async fn connect_remote(&mut self) -> Result<(), String> {
        if self.remote.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.remote = None;
        let c = pg::connect(self.settings.remote_monitor(), "remote", "monitor")
            .await
            .map_err(|e| e.to_string())?;
        catalog::server_info(&c).await.map_err(|e| e.to_string())?;
        self.remote = Some(c);
        Ok(())
    }
}

/// The directions as the monitor judges them (see [`DirectionHealth::streaming`]).
fn streaming(directions: Vec<DirectionHealth>) -> Vec<DirectionHealth> {
    directions
        .into_iter()
        .map(DirectionHealth::streaming)
        .collect()
}

/// Where the monitor's notifications go.
struct Notify<'a> {
    tx: Option<&'a mpsc::Sender<Notification>>,
    instance: Role,
}

impl Notify<'_> {
    fn send(&self, c: &Condition, cleared: bool) {
        let Some(tx) = self.tx else {
            return;
        };
        let n = Notification {
            kind: c.kind.clone(),
            severity: c.level,
            instance: self.instance.to_string(),
            title: c.title.clone(),
            message: c.message.clone(),
            runbook: c.runbook.map(str::to_string),
            cleared,
        };
        if tx.try_send(n).is_err() {
            tracing::warn!(worker = NAME, kind = %c.kind, "notification queue full: dropped (the alert stays in sync_log)");
        }
    }
}

/// Bring back what the previous run of this process knew: alerts still raised (their
/// latest `sync_log` entry is not RESOLVED) and when the peer became unreachable.
async fn restore(local: &Client, judge: &mut Judge) -> Result<(), pg::Error> {
    // Other workers' alerts (`clock_offset`) are theirs to restore and clear.
    let restored = sync_log::raised_alerts(
        local,
        |k| k.parse::<rules::AlertKind>().is_ok(),
        rules::runbook,
    )
    .await?;
    if !restored.is_empty() {
        tracing::info!(
            worker = NAME,
            "{} alert(s) still raised from before the restart",
            restored.len()
        );
    }
    judge.book.restore(restored);
    if let Some(since) = sync_log::open_disconnection(local).await? {
        let ago = (Utc::now() - since).to_std().unwrap_or_default();
        judge.machine.restore_disconnected_since(
            Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
        );
        judge.awaiting_reconnect = true;
    }
    Ok(())
}

async fn record_transition(local: &Client, t: &Transition) -> Result<(), pg::Error> {
    let status = match t.to {
        ConnectionState::Connected | ConnectionState::Reconnecting => Status::Info,
        ConnectionState::Degraded | ConnectionState::Disconnected => {
            Status::Level(Severity::Warning)
        }
    };
    let message = format!("{} -> {}: {}", t.from.as_str(), t.to.as_str(), t.reason);
    match t.to {
        ConnectionState::Connected => tracing::info!(worker = NAME, "{message}"),
        _ => tracing::warn!(worker = NAME, "{message}"),
    }
    sync_log::insert(
        local,
        &sync_log::Entry {
            sync_type: SyncType::Connection,
            status,
            records_synced: 0,
            error_message: Some(&message),
            details: serde_json::json!({ "from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason }),
        },
    )
    .await
    .map(|_| ())
}

/// Free space on the filesystem holding `path`, in percent.
fn disk_free_percent(path: &std::path::Path) -> Option<f64> {
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
