//! The listener of the HTTP API: an accept loop with a connection limit, HTTP/1.1 on each
//! connection through hyper with a header-read timeout, and a graceful stop.
//!
//! A client that opens connections and sends nothing (or a request line a byte at a
//! time) must not take the API away from `/health/sync`:
//! - every connection must deliver its request head within [`HEADER_READ_TIMEOUT`], and
//!   an idle keep-alive connection is closed after the same time (hyper starts the timer
//!   whenever it waits for a request head, the first or the next one);
//! - at most `max_connections` are open; at the limit the connection accepted next
//!   closes the oldest one that has no request in progress (a half-open or idle one), so a
//!   new client that sends its request at once, a health probe, is always served, and
//!   descriptors never run out. Only when every open connection is in the middle of a
//!   request is the new one closed at once;
//! - the soft `RLIMIT_NOFILE` is raised to the hard limit at start, and the connection
//!   limit lowered to fit what the process may open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a connection may take to send a request head, and how long an idle
/// keep-alive connection is kept.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors kept free of API connections for the database connections, the
/// notifier, logs and the listener itself.
pub const RESERVED_FDS: u64 = 128;
/// How long connections get to finish their requests after the stop signal.
const DRAIN: Duration = Duration::from_secs(3);
/// Pause after a failed `accept` (descriptors exhausted by something else): no busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest request head (and read buffer) hyper accepts.
const MAX_BUF: usize = 64 * 1024;

/// Connection counts, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open connections.
    pub open: AtomicU64,
    /// Connections closed to make room for a new one, since start.
    pub evicted: AtomicU64,
    /// New connections closed at once because every open one was busy, since start.
    pub refused: AtomicU64,
}

/// Raise the soft limit on open files to the hard limit, and return the soft limit in
/// force afterwards (`None` when it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // `rlim_t` is `u64` on 64-bit Linux, not on every target.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

/// The connection limit in force: the configured one, lowered to leave
/// [`RESERVED_FDS`] of the descriptor limit free (but at least 8).
pub fn connection_limit(configured: u64, fd_limit: Option<u64>) -> usize {
    let fits = fd_limit.map_or(configured, |l| l.saturating_sub(RESERVED_FDS).max(8));
    usize::try_from(configured.min(fits)).unwrap_or(usize::MAX)
}

/// One open connection, as the limit sees it.
struct Conn {
    /// Requests in progress on it.
    busy: Arc<AtomicUsize>,
    /// Close it now.
    evict: CancellationToken,
}

/// Open connections by age (ids increase).
#[derive(Default)]
struct Registry {
    conns: BTreeMap<u64, Conn>,
}

impl Registry {
    /// Make room for one more under `limit`: close the oldest connection with no request
    /// in progress. `false` when every one is busy.
    fn make_room(&mut self, limit: usize) -> bool {
        if self.conns.len() < limit {
            return true;
        }
        let idle = self
            .conns
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| self.conns.remove(&id)) {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Registered {
    id: u64,
    registry: Arc<Mutex<Registry>>,
    stats: Arc<Stats>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry).conns.remove(&self.id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in progress on its connection while alive.
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn enter(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        InProgress(busy.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve `app` on `listener` with at most `max_connections` open connections until
/// `cancel`; then stop accepting, let requests in progress finish for a moment, and close
/// everything.
///
/// With `tls`, every connection is HTTPS: its handshake must finish within the
/// header-read timeout, or the connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    stats: Arc<Stats>,
    tls: Option<super::tls::TlsAcceptor>,
    cancel: CancellationToken,
) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or another transient error): wait rather than spin.
                if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("HTTP API: cannot accept a connection: {e}");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = CancellationToken::new();
        {
            let mut reg = lock(&registry);
            let before = reg.conns.len();
            if !reg.make_room(max_connections) {
                drop(reg);
                stats.refused.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
            if reg.conns.len() < before {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
            next_id += 1;
            reg.conns.insert(
                next_id,
                Conn {
                    busy: busy.clone(),
                    evict: evict.clone(),
                },
            );
        }
        stats.open.fetch_add(1, Ordering::Relaxed);
        let registered = Registered {
            id: next_id,
            registry: registry.clone(),
            stats: stats.clone(),
        };
        let _ = stream.set_nodelay(true);
        let (app, cancel, tls) = (app.clone(), cancel.clone(), tls.clone());
        tasks.spawn(async move {
            match tls {
                None => connection(stream, peer, app, busy, evict, cancel, registered).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        h = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)) => h,
                        _ = evict.cancelled() => return,
                        _ = cancel.cancelled() => return,
                    };
                    // A failed or slow handshake (plain HTTP on the TLS port, a client that
                    // does not trust the certificate) just closes the connection.
                    if let Ok(Ok(tls)) = handshake {
                        connection(tls, peer, app, busy, evict, cancel, registered).await;
                    }
                }
            }
        });
    }
    drop(listener);
    // Each connection saw the same token and is shutting down gracefully.
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            "HTTP API: {} connections still open after {DRAIN:?}: closing them",
            tasks.len()
        );
        tasks.shutdown().await;
    }
}

/// One connection: HTTP/1.1 until the client closes it, it times out, it is evicted, or
/// the server stops.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
    cancel: CancellationToken,
    _registered: Registered,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let in_progress = InProgress::enter(&busy);
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = app.oneshot(req).await;
            drop(in_progress);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // A closed, timed-out or malformed connection ends here; nothing to report.
        _ = conn.as_mut() => {}
        // Dropping the connection closes the socket.
        _ = evict.cancelled() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(busy: usize) -> (Conn, CancellationToken) {
        let evict = CancellationToken::new();
        (
            Conn {
                busy: Arc::new(AtomicUsize::new(busy)),
                evict: evict.clone(),
            },
            evict,
        )
    }

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let mut reg = Registry::default();
        let (busy_old, t1) = conn(1);
        let (idle_old, t2) = conn(0);
        let (idle_new, t3) = conn(0);
        reg.conns.insert(1, busy_old);
        reg.conns.insert(2, idle_old);
        reg.conns.insert(3, idle_new);
        assert!(reg.make_room(4), "under the limit nothing is closed");
        assert_eq!(reg.conns.len(), 3);
        assert!(reg.make_room(3));
        assert!(!t1.is_cancelled(), "a connection with a request is kept");
        assert!(t2.is_cancelled(), "the oldest idle one is closed");
        assert!(!t3.is_cancelled());
        assert_eq!(reg.conns.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn when_every_connection_is_busy_there_is_no_room() {
        let mut reg = Registry::default();
        let (a, ta) = conn(1);
        reg.conns.insert(1, a);
        assert!(!reg.make_room(1));
        assert!(!ta.is_cancelled());
    }

    #[test]
    fn the_limit_leaves_descriptors_for_the_rest_of_the_process() {
        assert_eq!(connection_limit(1024, Some(1_048_576)), 1024);
        assert_eq!(connection_limit(1024, Some(1024)), 896);
        assert_eq!(connection_limit(1024, Some(100)), 8);
        assert_eq!(connection_limit(50, None), 50);
    }
}
