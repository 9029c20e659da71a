//! The notifier worker: sends what the monitor queues, one at a time, so a slow webhook
//! never delays a monitor cycle.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Notification, Notifier};

/// The worker's name in the registry and in logs.
pub const NAME: &str = "notifier";

/// Send every queued notification until `cancel` (a send in progress is abandoned: the
/// alert is already in `sync_log`) or until every sender is gone.
pub async fn run(
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
            tracing::warn!(worker = NAME, kind = %n.kind, "notification failed: {e}");
        }
    }
    tracing::info!(worker = NAME, "stopped");
}
