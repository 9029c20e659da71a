//! The `storage_mirror` worker of `duplex run`: a cycle ([`super::cycle`]) every
//! `SYNC_INTERVAL_MINUTES`, and at once on the monitor's immediate-sync signal (after a
//! reconnection, or `duplex trigger`). Transfers wait while sync is paused or the peer is
//! DISCONNECTED (the queue keeps growing and is drained on reconnection). Publishes its
//! [`Report`] through a `watch` channel. Stops when its token is cancelled: between
//! cycles, or inside one between chunks (an unfinished copy is dropped, never published;
//! its entry stays queued).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::cycle::{self, CycleReport, Event, Request};
use super::throttle::Throttle;
use crate::config::Settings;

/// The worker's name in the registry and in logs.
pub const NAME: &str = "storage_mirror";

/// What the worker has done since the process started, and its latest cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Both stores and at least one table are configured.
    pub configured: bool,
    /// What is missing when not configured.
    pub not_configured: Option<String>,
    /// A cycle is running now.
    pub running: bool,
    /// Files published since start.
    pub files_transferred: u64,
    /// Bytes published since start.
    pub bytes_transferred: u64,
    /// Transfers that failed since start.
    pub failures: u64,
    /// Bytes per second of the cycle in progress (0 between cycles).
    pub current_rate_bytes_per_sec: f64,
    /// Files waiting (pending or failed) after the latest cycle.
    pub queue_size: i64,
    /// Bytes waiting.
    pub queued_bytes: i64,
    /// Rows that cannot be mirrored.
    pub invalid_rows: i64,
    /// Priority (e.g. createdAt) of the oldest waiting file.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Its key.
    pub oldest_pending_key: Option<String>,
    /// When the latest cycle ended.
    pub last_cycle_at: Option<DateTime<Utc>>,
    /// Its report.
    pub last_cycle: Option<CycleReport>,
    /// Why the latest cycle failed, if it did.
    pub last_error: Option<String>,
}

/// Whether the peer is DISCONNECTED now (from the monitor's report).
pub type PeerDown = Arc<dyn Fn() -> bool + Send + Sync>;

/// The worker.
pub struct Mirror {
    settings: Arc<Settings>,
    period: Duration,
    signal: broadcast::Receiver<&'static str>,
    peer_down: PeerDown,
    throttle: Throttle,
    report: watch::Sender<Report>,
}

impl Mirror {
    /// A worker that runs a cycle every `sync_interval` and on every `signal`.
    pub fn new(
        settings: Arc<Settings>,
        signal: broadcast::Receiver<&'static str>,
        peer_down: PeerDown,
    ) -> Self {
        let not_configured = cycle::stores(&settings).err().map(|e| e.to_string());
        Mirror {
            period: settings.sync_interval,
            throttle: Throttle::new(settings.max_transfer_rate_bytes),
            signal,
            peer_down,
            report: watch::Sender::new(Report {
                configured: not_configured.is_none(),
                not_configured,
                ..Report::default()
            }),
            settings,
        }
    }

    /// The latest report.
    pub fn report(&self) -> watch::Receiver<Report> {
        self.report.subscribe()
    }

    /// Run until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        if !self.report.borrow().configured {
            tracing::info!(
                worker = NAME,
                "{}: the storage mirror stays idle",
                self.report
                    .borrow()
                    .not_configured
                    .clone()
                    .unwrap_or_default()
            );
            cancel.cancelled().await;
            return;
        }
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let Some(why) =
                crate::shutdown::next_cycle(&mut every, &mut self.signal, &cancel).await
            else {
                break;
            };
            let started = Instant::now();
            // The monitor signals a reconnection before it publishes its report: the
            // signal itself says the peer is back.
            match self.tick(why == "reconnected", &cancel).await {
                Ok(r) => tracing::info!(
                    worker = NAME,
                    why,
                    "cycle done: {} missing, {} transferred ({} bytes), {} failed, {} queued{}",
                    r.scan.missing,
                    r.transferred,
                    r.bytes,
                    r.failed,
                    r.queue.queued,
                    r.skipped
                        .as_deref()
                        .map(|s| format!("; transfers skipped: {s}"))
                        .unwrap_or_default()
                ),
                Err(e) => tracing::warn!(worker = NAME, why, "cycle failed: {e:#}"),
            }
            if started.elapsed() > self.period {
                tracing::warn!(
                    worker = NAME,
                    "cycle took {:?}, longer than its period {:?}",
                    started.elapsed(),
                    self.period
                );
            }
        }
        tracing::info!(worker = NAME, "stopped");
    }

    /// One cycle; the report is updated as files complete and at the end. `reconnected`:
    /// the peer is known to be back, whatever the monitor's report says yet.
    pub async fn tick(
        &mut self,
        reconnected: bool,
        cancel: &CancellationToken,
    ) -> Result<CycleReport, cycle::Error> {
        let peer_down = !reconnected && (self.peer_down)();
        self.report.send_modify(|r| {
            r.running = true;
            r.current_rate_bytes_per_sec = 0.0;
        });
        let phase = Instant::now();
        let report = &self.report;
        let mut cycle_bytes = 0u64;
        let mut on_event = |e: Event| {
            report.send_modify(|r| match e {
                Event::Done { bytes } => {
                    r.files_transferred += 1;
                    r.bytes_transferred += bytes;
                    cycle_bytes += bytes;
                    r.current_rate_bytes_per_sec =
                        cycle_bytes as f64 / phase.elapsed().as_secs_f64().max(0.001);
                }
                Event::Failed => r.failures += 1,
            })
        };
        let result = cycle::run(
            &self.settings,
            Request::default(),
            &self.throttle,
            peer_down,
            cancel,
            &mut on_event,
        )
        .await;
        self.report.send_modify(|r| {
            r.running = false;
            r.current_rate_bytes_per_sec = 0.0;
            r.last_cycle_at = Some(Utc::now());
            match &result {
                Ok(c) => {
                    r.queue_size = c.queue.queued;
                    r.queued_bytes = c.queue.queued_bytes;
                    r.invalid_rows = c.queue.invalid;
                    r.oldest_pending_at = c.queue.oldest_priority;
                    r.oldest_pending_key = c.queue.oldest_key.clone();
                    r.last_cycle = Some(c.clone());
                    r.last_error = None;
                }
                Err(e) => r.last_error = Some(e.to_string()),
            }
        });
        result
    }
}
