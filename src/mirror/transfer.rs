//! One file from the peer's store to the local one: streamed chunk by chunk through the
//! shared throttle and a SHA-256, and published under its key only when the bytes match
//! the expected hash and size. Transient store errors are retried (up to
//! [`MAX_ATTEMPTS`] attempts, exponential backoff with jitter); a mismatch or a
//! permanent error ends the transfer for this cycle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::store::{Fault, Store, StoreError};
use super::throttle::Throttle;
use crate::store::storage_queue::Missing;

/// Attempts per transfer and cycle for transient errors.
pub const MAX_ATTEMPTS: u32 = 3;

/// How a transfer runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Part size (and the most one transfer buffers).
    pub part_size: usize,
    /// First backoff; doubled per attempt, +-50% jitter.
    pub backoff: Duration,
    /// No bytes for this long: a transient failure.
    pub stall: Duration,
}

/// A verified, published copy.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// Bytes copied.
    pub bytes: u64,
    /// Their SHA-256.
    pub sha256: String,
    /// Attempts it took.
    pub attempts: u32,
    /// Seconds, backoff included.
    pub seconds: f64,
    /// When its last byte was read from the peer (what `MAX_TRANSFER_RATE` paces).
    #[serde(skip)]
    pub read_until: Instant,
}

/// Why a transfer did not publish.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Failure {
    /// The peer's bytes are not what the row says: nothing was published.
    #[error("the peer's copy does not match the row: expected sha256 {expected_sha256} ({expected_size} bytes), got sha256 {actual_sha256} ({actual_size} bytes); nothing was published. It is retried on a later cycle (the peer's copy may still be uploading); if it persists, the source object is corrupt: see runbooks/storage-mismatch.md")]
    Mismatch {
        /// From the row.
        expected_sha256: String,
        /// From the row.
        expected_size: i64,
        /// Of the bytes received (`not computed` when the size already differed).
        actual_sha256: String,
        /// Bytes received (or announced by the peer).
        actual_size: i64,
    },
    /// A store refused or kept failing.
    #[error("{message}{}", hint(*fault))]
    Store {
        /// Its kind.
        fault: Fault,
        /// What happened.
        message: String,
    },
    /// The controller is stopping; the entry stays queued.
    #[error("cancelled: the controller is stopping")]
    Cancelled,
}

fn hint(f: Fault) -> &'static str {
    match f {
        Fault::NotFound => " (the peer's store does not have it yet; retried on a later cycle)",
        Fault::NoBucket => " (the bucket does not exist: check REMOTE_STORAGE_URL / LOCAL_STORAGE_URL; see runbooks/storage-access.md)",
        Fault::Denied => " (the credentials are refused: check the access keys; see runbooks/storage-access.md)",
        Fault::Transient => " (gave up after 3 attempts; retried on a later cycle)",
        Fault::Permanent => " (retried on a later cycle)",
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store {
            fault: e.fault,
            message: e.message,
        }
    }
}

impl Failure {
    /// Worth retrying within this cycle.
    fn transient(&self) -> bool {
        matches!(self, Failure::Store { fault, .. } if fault.is_transient())
    }
}

/// Copy `file` from `src` to `dst`, verified; `Err` with the failure and the attempts made.
///
/// Reading from the peer needs a [`ReadPermit`] (one of `MAX_CONCURRENT_TRANSFERS`), taken
/// by the caller in queue order. It is held until the bytes are verified (retries and
/// their backoff included), and through the publishing upload only when that continues a
/// multipart upload. A file published in one request (up to one part) hands its permit on
/// before that request, so the next file's download overlaps
/// this one's upload, as a copy that streams from one store to the other would; it never
/// holds more than one part in memory.
pub async fn copy(
    src: &Store,
    dst: &Store,
    file: &Missing,
    opts: &Options,
    throttle: &Throttle,
    cancel: &CancellationToken,
    mut permit: ReadPermit,
) -> Result<Done, (Failure, u32)> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if !permit.ensure(cancel).await {
            return Err((Failure::Cancelled, attempt));
        }
        match once(src, dst, file, opts, throttle, cancel, &mut permit).await {
            Ok((bytes, sha256, read_until)) => {
                return Ok(Done {
                    bytes,
                    sha256,
                    attempts: attempt,
                    seconds: started.elapsed().as_secs_f64(),
                    read_until,
                })
            }
            Err(f) if f.transient() && attempt < MAX_ATTEMPTS => {
                let wait = backoff(opts.backoff, attempt);
                tracing::info!(
                    key = %file.object_key,
                    attempt,
                    "transfer failed, retrying in {wait:?}: {f}"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err((Failure::Cancelled, attempt)),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(f) => return Err((f, attempt)),
        }
    }
}

/// A transfer's permit to read from the peer (one of `MAX_CONCURRENT_TRANSFERS`).
pub struct ReadPermit {
    held: Option<OwnedSemaphorePermit>,
    from: Arc<Semaphore>,
}

impl ReadPermit {
    /// `held`, taken from `from` (by the caller, in queue order).
    pub fn new(held: OwnedSemaphorePermit, from: Arc<Semaphore>) -> Self {
        ReadPermit {
            held: Some(held),
            from,
        }
    }

    /// Hold a permit again (a retry after it was handed on); false if cancelled.
    async fn ensure(&mut self, cancel: &CancellationToken) -> bool {
        if self.held.is_none() {
            self.held = tokio::select! {
                _ = cancel.cancelled() => return false,
                p = self.from.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return false,
                },
            };
        }
        true
    }

    /// Let the next file start reading.
    fn hand_on(&mut self) {
        self.held = None;
    }
}

/// `base * 2^(attempt-1)`, +-50% jitter.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << (attempt - 1).min(10));
    exp.mul_f64(0.5 + rand::random::<f64>())
}

async fn once(
    src: &Store,
    dst: &Store,
    file: &Missing,
    opts: &Options,
    throttle: &Throttle,
    cancel: &CancellationToken,
    permit: &mut ReadPermit,
) -> Result<(u64, String, Instant), Failure> {
    let key = &file.object_key;
    let (mut reader, announced) = src.get(key).await?;
    if let Some(len) = announced {
        if len != file.size {
            return Err(Failure::Mismatch {
                expected_sha256: file.sha256.clone(),
                expected_size: file.size,
                actual_sha256: "not computed (the size differs)".into(),
                actual_size: len,
            });
        }
    }
    let mut writer = dst
        .writer(key, opts.part_size, u64::try_from(file.size).unwrap_or(0))
        .await?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let result: Result<(), Failure> = async {
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(Failure::Cancelled),
                n = tokio::time::timeout(opts.stall, reader.next()) => n,
            };
            let chunk = match next {
                Err(_) => {
                    return Err(Failure::Store {
                        fault: Fault::Transient,
                        message: format!(
                            "reading {key}: no bytes for {} s (stalled)",
                            opts.stall.as_secs()
                        ),
                    })
                }
                Ok(None) => return Ok(()),
                Ok(Some(chunk)) => chunk?,
            };
            received += chunk.len() as u64;
            if received > file.size as u64 {
                return Err(Failure::Mismatch {
                    expected_sha256: file.sha256.clone(),
                    expected_size: file.size,
                    actual_sha256: "not computed (the object is larger)".into(),
                    actual_size: received as i64,
                });
            }
            throttle.take(chunk.len()).await;
            hasher.update(&chunk);
            writer.write(&chunk).await?;
        }
    }
    .await;
    if let Err(f) = result {
        writer.abort().await;
        return Err(f);
    }
    let read_until = Instant::now();
    let sha256 = format!("{:x}", hasher.finalize());
    if sha256 != file.sha256 || received != file.size as u64 {
        writer.abort().await;
        return Err(Failure::Mismatch {
            expected_sha256: file.sha256.clone(),
            expected_size: file.size,
            actual_sha256: sha256,
            actual_size: received as i64,
        });
    }
    if writer.single_request() {
        permit.hand_on();
    }
    writer.finish(&sha256).await?;
    Ok((received, sha256, read_until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..=3 {
            let d = backoff(base, attempt);
            let nominal = 100.0 * f64::from(1u32 << (attempt - 1));
            let ms = d.as_secs_f64() * 1000.0;
            assert!(
                ms >= nominal * 0.5 && ms <= nominal * 1.5,
                "{attempt}: {ms}"
            );
        }
    }
}
