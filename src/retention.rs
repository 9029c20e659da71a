//! The `sync_log` retention worker of `duplex run`: once at start and then every hour,
//! deletes the entries of `duplex.sync_log` older than `daemon.sync_log_retention_days`,
//! 1000 per statement, until none is left. The entries a restart reads back (the latest
//! entry of each alert kind, the latest connection transitions, the latest success of each
//! kind of work) are never deleted: the statement itself excludes them
//! (`store::sync_log::prune_older_than`).
//!
//! Hourly because retention is counted in days: an hour late is immaterial, and a cycle
//! with nothing to delete is one cheap statement. The run at start clears a backlog after
//! an upgrade or a long stop. Pause (`sync_enabled = false`) is not honoured: pruning moves
//! no application data. The worker stops when its cancellation token is cancelled, between
//! cycles, or between two batches of a long backlog (each batch is its own transaction, so
//! the rest simply waits for the next cycle).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::pg;
use crate::store::sync_log;

/// The worker's name in the registry and in logs.
pub const NAME: &str = "sync_log_retention";
/// Time between cycles.
pub const PERIOD: Duration = Duration::from_secs(3600);
/// Rows per statement: short transactions that never hold many row locks.
pub const BATCH: i64 = 1000;
/// Longest one batch may take.
const BATCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of one cycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement failed or the connection could not be opened (retried next cycle).
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// A batch did not finish in time (retried next cycle).
    #[error("pruning a batch of duplex.sync_log did not finish within {0:?}")]
    Timeout(Duration),
}

/// The retention worker.
pub struct Retention {
    settings: Arc<Settings>,
    period: Duration,
    local: Option<Client>,
}

impl Retention {
    /// A worker for `settings`, running every [`PERIOD`].
    pub fn new(settings: Arc<Settings>) -> Self {
        Retention {
            settings,
            period: PERIOD,
            local: None,
        }
    }

    /// Run a cycle now and then every [`PERIOD`] until `cancel`; a failed cycle is logged
    /// and retried at the next one.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! { biased; _ = cancel.cancelled() => break, _ = every.tick() => {} }
            let started = Instant::now();
            if let Err(e) = self.tick(&cancel).await {
                tracing::warn!(worker = NAME, "tick failed: {e:#}");
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

    /// One cycle: delete old entries batch by batch until a batch comes back short (or
    /// `cancel` is cancelled between two batches); returns how many went, and logs it at
    /// info when any did.
    pub async fn tick(&mut self, cancel: &CancellationToken) -> Result<u64, Error> {
        if self.local.as_ref().is_none_or(|c| c.is_closed()) {
            self.local = None;
            self.local = Some(pg::connect(self.settings.local_monitor(), "local", NAME).await?);
        }
        let Some(local) = self.local.as_ref() else {
            return Ok(0);
        };
        let days = self.settings.daemon.sync_log_retention_days;
        let result = prune(local, days, cancel).await;
        if local.is_closed() {
            self.local = None;
        }
        let total = result?;
        if total > 0 {
            tracing::info!(
                worker = NAME,
                pruned = total,
                "pruned {total} sync_log entries past daemon.sync_log_retention_days = {days}"
            );
        }
        Ok(total)
    }
}

/// Delete entries older than `days` in batches of [`BATCH`] until a batch comes back short
/// or `cancel` is cancelled; the total.
async fn prune(local: &Client, days: u64, cancel: &CancellationToken) -> Result<u64, Error> {
    // Much further back the cutoff would fall before PostgreSQL's earliest timestamp
    // (4713 BC) and the statement would fail; a million days (2,700 years) keeps all.
    let days = i32::try_from(days.min(1_000_000)).unwrap_or(1_000_000);
    let mut total = 0;
    loop {
        let n = tokio::time::timeout(
            BATCH_TIMEOUT,
            sync_log::prune_older_than(local, days, BATCH),
        )
        .await
        .map_err(|_| Error::Timeout(BATCH_TIMEOUT))??;
        total += n;
        if n < BATCH as u64 || cancel.is_cancelled() {
            return Ok(total);
        }
    }
}
