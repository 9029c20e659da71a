//! Signals to a cancellation token, and one registry of named background workers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancel `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot listen for SIGTERM: {e}");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received, stopping"),
                _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}

/// Every background worker of the process, spawned with a name so that shutdown can say
/// which one did not stop.
#[derive(Clone, Default)]
pub struct Workers {
    tracker: TaskTracker,
    running: Arc<Mutex<Vec<(&'static str, tokio::task::AbortHandle)>>>,
}

impl Workers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn `fut` as worker `name` inside a tracing span.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use tracing::Instrument;
        let handle = self
            .tracker
            .spawn(fut.instrument(tracing::info_span!("worker", name)));
        if let Ok(mut running) = self.running.lock() {
            running.push((name, handle.abort_handle()));
        }
        tracing::debug!(worker = name, "started");
    }

    /// Wait up to `deadline` for every worker to finish (after the token was cancelled).
    /// Returns the names of those that did not, after aborting them.
    pub async fn shutdown(&self, deadline: Duration) -> Vec<&'static str> {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let mut stragglers = Vec::new();
        if let Ok(running) = self.running.lock() {
            for (name, handle) in running.iter() {
                if !handle.is_finished() {
                    tracing::warn!(worker = name, "did not stop within {deadline:?}; aborting");
                    handle.abort();
                    stragglers.push(*name);
                }
            }
        }
        stragglers
    }
}

/// Wait between two cycles of a worker that runs on a schedule and on signals (the
/// monitor's immediate-sync and reconnection signals, a trigger): the reason it woke
/// (`"schedule"`, the signal's own name, or `"signal"` when signals were missed), or `None`
/// once `cancel` fires. When the signal channel is closed (the daemon is stopping), it
/// waits for the cancellation.
pub async fn next_cycle(
    every: &mut tokio::time::Interval,
    signal: &mut tokio::sync::broadcast::Receiver<&'static str>,
    cancel: &CancellationToken,
) -> Option<&'static str> {
    use tokio::sync::broadcast::error::RecvError;
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        _ = every.tick() => Some("schedule"),
        s = signal.recv() => match s {
            Ok(s) => Some(s),
            Err(RecvError::Lagged(_)) => Some("signal"),
            Err(RecvError::Closed) => {
                cancel.cancelled().await;
                None
            }
        },
    }
}
