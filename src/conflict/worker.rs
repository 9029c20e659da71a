//! The conflict housekeeping worker of `duplex run`. Every cycle, each step under its own
//! timeout, a failing step logged and the others still run:
//!
//! 1. merge the conflicts the peer detected into the local `duplex.conflict_log`, so each
//!    side's log holds every conflict once (deduplicated by `conflict_key`);
//! 2. empty `duplex.change_meta`, the insert-only carrier of base versions;
//! 3. delete tombstones older than `conflicts.tombstone_retention_secs`, only while the
//!    replication monitor says CONNECTED (both directions streaming and caught up enough);
//! 4. prune resolved conflict-log entries older than `conflicts.log_retention_days`;
//! 5. measure the offset between the two servers' clocks (round-trip compensated) and raise
//!    or clear the `clock_offset` WARNING.
//!
//! Pause (`sync_enabled = false`) is not honoured on purpose: housekeeping moves no
//! application data, only duplex's own traces. The worker owns its state (`&mut self`),
//! publishes its latest [`Report`] through a `tokio::sync::watch` channel and stops when
//! its cancellation token is cancelled, between cycles only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Active, Book, Condition};
use crate::config::Settings;
use crate::model::{Role, Severity};
use crate::notify::Notification;
use crate::pg;
use crate::store::sync_log;
use crate::store::{change_meta, conflict_log, tombstone};

/// The worker's name in the registry and in logs.
pub const NAME: &str = "conflict_housekeeping";
/// The alert raised when the servers' clocks drift apart.
pub const CLOCK_ALERT: &str = "clock_offset";
/// Rows per statement.
const BATCH: i64 = 1000;
/// Batches per step and cycle, so one cycle stays bounded; the rest waits a cycle.
const MAX_BATCHES: usize = 50;
/// Longest one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the clock measurement may take (a slow round trip makes it meaningless).
const CLOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of one step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement failed or a connection could not be opened.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// The step did not finish in time.
    #[error("{0} did not finish within {1:?}")]
    Timeout(&'static str, Duration),
}

/// The offset between the two servers' clocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClockOffset {
    /// Peer's clock minus this side's, in milliseconds (positive: the peer is ahead).
    pub offset_ms: f64,
    /// Round trip of the measurement, in milliseconds; the offset is exact to half of it.
    pub round_trip_ms: f64,
    /// When it was measured (this side's clock).
    pub measured_at: DateTime<Utc>,
}

/// The offset from a local reading `t0`, the peer's reading `r` and a local reading `t1`:
/// the peer is assumed to have read its clock halfway through the round trip.
pub fn clock_offset(t0: DateTime<Utc>, r: DateTime<Utc>, t1: DateTime<Utc>) -> ClockOffset {
    let micros = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64;
    let round_trip = micros(t1 - t0);
    let midpoint = t0 + (t1 - t0) / 2;
    ClockOffset {
        offset_ms: micros(r - midpoint) / 1000.0,
        round_trip_ms: round_trip / 1000.0,
        measured_at: t1,
    }
}

/// Measure the offset between the servers of `local` and `remote` (what `duplex status`
/// calls directly, and the worker every cycle). The caller bounds it with a timeout.
pub async fn measure_clock(local: &Client, remote: &Client) -> Result<ClockOffset, pg::Error> {
    use pg::Context;
    const NOW: &str = "SELECT clock_timestamp()";
    let t0: DateTime<Utc> = local
        .query_one(NOW, &[])
        .await
        .context("reading the local clock")?
        .get(0);
    let r: DateTime<Utc> = remote
        .query_one(NOW, &[])
        .await
        .context("reading the peer's clock")?
        .get(0);
    let t1: DateTime<Utc> = local
        .query_one(NOW, &[])
        .await
        .context("reading the local clock")?
        .get(0);
    Ok(clock_offset(t0, r, t1))
}

/// The `clock_offset` WARNING when `|offset|` exceeds `warning_ms` (pure).
pub fn clock_rule(offset: &ClockOffset, warning_ms: u64) -> Option<Condition> {
    if offset.offset_ms.abs() <= warning_ms as f64 {
        return None;
    }
    Some(Condition {
        kind: CLOCK_ALERT.into(),
        level: Severity::Warning,
        title: format!(
            "the servers' clocks differ by {:.0} ms",
            offset.offset_ms.abs()
        ),
        message: format!(
            "the peer's clock is {:.0} ms {} this server's (threshold {warning_ms} ms, measured over a {:.0} ms round trip). last_write_wins trusts the servers' clocks to pick the newer write: fix NTP (chrony/timesyncd) on both database servers",
            offset.offset_ms.abs(),
            if offset.offset_ms > 0.0 { "ahead of" } else { "behind" },
            offset.round_trip_ms,
        ),
        runbook: None,
        details: serde_json::json!({
            "offset_ms": offset.offset_ms,
            "round_trip_ms": offset.round_trip_ms,
            "threshold_ms": warning_ms,
        }),
    })
}

/// What the worker knows after its latest cycle.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// The latest clock measurement; `None` until the peer answered once.
    pub clock: Option<ClockOffset>,
    /// Peer conflicts copied into the local log since start.
    pub merged_total: u64,
    /// `change_meta` rows deleted since start.
    pub change_meta_deleted_total: u64,
    /// Tombstones deleted since start.
    pub tombstones_deleted_total: u64,
    /// Resolved conflict-log entries pruned since start.
    pub log_pruned_total: u64,
    /// Raised alerts of this worker (`clock_offset`).
    pub alerts: Vec<Active>,
    /// Cycles run since start.
    pub cycles: u64,
    /// End of the latest cycle.
    pub checked_at: Option<DateTime<Utc>>,
    /// The steps that failed in the latest cycle, with why.
    pub errors: Vec<String>,
}

/// Whether both directions are caught up enough to forget old tombstones (the replication
/// monitor's state is CONNECTED). A function, so this module needs nothing from
/// `replication`.
pub type CaughtUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// The housekeeping worker.
pub struct Housekeeper {
    settings: Arc<Settings>,
    period: Duration,
    local: Option<Client>,
    remote: Option<Client>,
    /// Highest peer conflict-log id merged; 0 after a restart (re-reading is harmless).
    watermark: i64,
    caught_up: CaughtUp,
    book: Book,
    restored: bool,
    notify: Option<mpsc::Sender<Notification>>,
    report: watch::Sender<Report>,
}

impl Housekeeper {
    /// A worker for `settings`; `caught_up` gates tombstone collection, notifications go
    /// to `notify` (the notifier worker).
    pub fn new(
        settings: Arc<Settings>,
        caught_up: CaughtUp,
        notify: Option<mpsc::Sender<Notification>>,
    ) -> Self {
        Housekeeper {
            period: settings.daemon.monitor_interval,
            settings,
            local: None,
            remote: None,
            watermark: 0,
            caught_up,
            book: Book::default(),
            restored: false,
            notify,
            report: watch::Sender::new(Report::default()),
        }
    }

    /// The published report: `borrow()` reads the latest.
    pub fn report(&self) -> watch::Receiver<Report> {
        self.report.subscribe()
    }

    /// Run a cycle every `monitor_interval` until `cancel`; cancellation interrupts only
    /// the wait between cycles.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! { biased; _ = cancel.cancelled() => break, _ = every.tick() => {} }
            let started = Instant::now();
            self.tick().await;
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

    /// One cycle: every step, each under its own timeout; a step that fails is logged once
    /// (`{e:#}`) and listed in the report, and the following steps still run.
    pub async fn tick(&mut self) -> Report {
        let mut errors = Vec::new();
        let mut fail = |step: &str, e: Error| {
            tracing::warn!(worker = NAME, step, "{e:#}");
            errors.push(format!("{step}: {e}"));
        };
        let mut counts = Counts::default();
        let mut clock = None;

        if let Err(e) = self.connect_local().await {
            fail("local", e);
        }
        let peer_up = match self.connect_remote().await {
            Ok(()) => true,
            Err(e) => {
                fail("peer", e);
                false
            }
        };
        if let Some(local) = self.local.as_ref() {
            let peer = self.settings.instance_role.peer();
            if let (true, Some(remote)) = (peer_up, self.remote.as_ref()) {
                let merge = merge(
                    local,
                    remote,
                    peer,
                    &mut self.watermark,
                    self.settings.conflicts.log_retention_days,
                );
                match timed("merge", STEP_TIMEOUT, merge).await {
                    Ok(n) => counts.merged = n,
                    Err(e) => fail("merge", e),
                }
                match timed("clock", CLOCK_TIMEOUT, async {
                    Ok(measure_clock(local, remote).await?)
                })
                .await
                {
                    Ok(c) => clock = Some(c),
                    Err(e) => fail("clock", e),
                }
            }
            let carrier = batches(|| change_meta::delete_batch(local, BATCH));
            match timed("change_meta", STEP_TIMEOUT, carrier).await {
                Ok(n) => counts.change_meta = n,
                Err(e) => fail("change_meta", e),
            }
            if (self.caught_up)() {
                let retention = self.settings.conflicts.tombstone_retention;
                let gc = batches(|| tombstone::delete_older_than(local, retention, BATCH));
                match timed("tombstones", STEP_TIMEOUT, gc).await {
                    Ok(n) => counts.tombstones = n,
                    Err(e) => fail("tombstones", e),
                }
            }
            let days = days(self.settings.conflicts.log_retention_days);
            let prune = batches(|| conflict_log::prune_resolved(local, days, BATCH));
            match timed("log_retention", STEP_TIMEOUT, prune).await {
                Ok(n) => counts.pruned = n,
                Err(e) => fail("log_retention", e),
            }
        }
        if let Err(e) = self.judge_clock(clock.as_ref()).await {
            fail("alert", e);
        }
        if self.local.as_ref().is_some_and(|c| c.is_closed()) {
            self.local = None;
        }
        if self.remote.as_ref().is_some_and(|c| c.is_closed()) || !peer_up {
            self.remote = None;
        }
        let alerts = self.book.active();
        self.report.send_modify(|r| {
            if clock.is_some() {
                r.clock = clock;
            }
            r.merged_total += counts.merged;
            r.change_meta_deleted_total += counts.change_meta;
            r.tombstones_deleted_total += counts.tombstones;
            r.log_pruned_total += counts.pruned;
            r.alerts = alerts;
            r.cycles += 1;
            r.checked_at = Some(Utc::now());
            r.errors = errors;
        });
        self.report.borrow().clone()
    }

    /// Raise or clear `clock_offset`; an unknown offset (peer down) keeps it as it is.
    async fn judge_clock(&mut self, clock: Option<&ClockOffset>) -> Result<(), Error> {
        let Some(local) = self.local.as_ref() else {
            return Ok(());
        };
        if !self.restored {
            restore(local, &mut self.book).await?;
            self.restored = true;
        }
        let condition =
            clock.and_then(|c| clock_rule(c, self.settings.conflicts.clock_offset_warning_ms));
        let unknown = clock.is_none();
        let (started, cleared) =
            self.book
                .update(condition.into_iter().collect(), Utc::now(), &|_| unknown);
        for c in &started {
            sync_log::record_alert(local, NAME, c, false).await?;
            self.send(c, false);
        }
        for a in &cleared {
            sync_log::record_alert(local, NAME, &a.condition, true).await?;
            self.send(&a.condition, true);
        }
        Ok(())
    }

    fn send(&self, c: &Condition, cleared: bool) {
        let Some(tx) = self.notify.as_ref() else {
            return;
        };
        let n = Notification {
            kind: c.kind.clone(),
            severity: c.level,
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

    async fn connect_local(&mut self) -> Result<(), Error> {
        if self.local.as_ref().is_none_or(|c| c.is_closed()) {
            self.local = None;
            self.local = Some(pg::connect(self.settings.local_monitor(), "local", NAME).await?);
        }
        Ok(())
    }

    async fn connect_remote(&mut self) -> Result<(), Error> {
        if self.remote.as_ref().is_none_or(|c| c.is_closed()) {
            self.remote = None;
            self.remote = Some(pg::connect(self.settings.remote_monitor(), "remote", NAME).await?);
        }
        Ok(())
    }
}

/// Rows handled by one cycle.
#[derive(Debug, Default)]
struct Counts {
    merged: u64,
    change_meta: u64,
    tombstones: u64,
    pruned: u64,
}

/// `log_retention_days` as the statements take it.
fn days(d: u64) -> i32 {
    i32::try_from(d).unwrap_or(i32::MAX)
}

async fn timed<T>(
    step: &'static str,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::Timeout(step, limit))?
}

/// Run a batched delete until a batch comes back short (or [`MAX_BATCHES`]); the total.
async fn batches<F, Fut>(mut one: F) -> Result<u64, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, pg::Error>>,
{
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        let n = one().await?;
        total += n;
        if n < BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// Copy the peer's own conflicts above `watermark`, batch by batch, advancing it as each
/// batch lands (a timeout keeps what was done).
async fn merge(
    local: &Client,
    remote: &Client,
    peer: Role,
    watermark: &mut i64,
    retention_days: u64,
) -> Result<u64, Error> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        let batch =
            conflict_log::peer_batch(remote, peer, *watermark, BATCH, days(retention_days)).await?;
        let Some(last) = batch.last_id else {
            break;
        };
        total += conflict_log::insert_merged(local, &batch).await?;
        *watermark = last;
        if batch.count < BATCH {
            break;
        }
    }
    Ok(total)
}

/// A `clock_offset` alert still raised before a restart (its latest `sync_log` entry is
/// not RESOLVED).
async fn restore(local: &Client, book: &mut Book) -> Result<(), pg::Error> {
    book.restore(sync_log::raised_alerts(local, |k| k == CLOCK_ALERT, |_| None).await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + ms).unwrap_or_default()
    }

    #[test]
    fn the_offset_compares_the_peer_with_the_middle_of_the_round_trip() {
        // Local reads at 0 and 100 ms, the peer reads 850: its clock is 800 ms ahead.
        let c = clock_offset(at(0), at(850), at(100));
        assert_eq!((c.offset_ms, c.round_trip_ms), (800.0, 100.0));
        assert_eq!(c.measured_at, at(100));
        let c = clock_offset(at(0), at(-1000), at(40));
        assert_eq!((c.offset_ms, c.round_trip_ms), (-1020.0, 40.0));
        assert_eq!(clock_offset(at(5), at(6), at(7)).offset_ms, 0.0);
    }

    #[test]
    fn clock_offset_warns_above_the_threshold_either_way_and_names_ntp() {
        let c = |ms: f64| ClockOffset {
            offset_ms: ms,
            round_trip_ms: 2.0,
            measured_at: at(0),
        };
        assert_eq!(clock_rule(&c(500.0), 500), None);
        assert_eq!(clock_rule(&c(-499.0), 500), None);
        let ahead = clock_rule(&c(750.0), 500).expect("a warning");
        assert_eq!(
            (ahead.kind.as_str(), ahead.level),
            ("clock_offset", Severity::Warning)
        );
        assert!(
            ahead.message.contains("last_write_wins trusts"),
            "{}",
            ahead.message
        );
        assert!(ahead.message.contains("NTP"), "{}", ahead.message);
        assert!(ahead.message.contains("ahead of"), "{}", ahead.message);
        let behind = clock_rule(&c(-2000.0), 500).expect("a warning");
        assert!(behind.message.contains("behind"), "{}", behind.message);
    }

    #[test]
    fn a_clock_alert_is_raised_once_and_stays_while_the_peer_is_unknown() {
        let mut book = Book::default();
        let far = ClockOffset {
            offset_ms: 900.0,
            round_trip_ms: 1.0,
            measured_at: at(0),
        };
        let cond = || clock_rule(&far, 500).into_iter().collect::<Vec<_>>();
        assert_eq!(book.update(cond(), at(0), &|_| false).0.len(), 1);
        assert!(book.update(cond(), at(1), &|_| false).0.is_empty());
        // Peer down: the offset is unknown, the alert stays.
        assert!(book.update(vec![], at(2), &|_| true).1.is_empty());
        assert_eq!(book.update(vec![], at(3), &|_| false).1.len(), 1);
    }
}
