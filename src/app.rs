//! `duplex run`: check the local instance, start the workers and the HTTP API, and stop
//! them all on SIGINT/SIGTERM within the shutdown deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::conflict::worker::{self as housekeeping, Housekeeper};
use crate::http::{self, AppState};
use crate::mirror::worker::{self as mirror, Mirror};
use crate::notify::{self, Notifier};
use crate::pg;
use crate::replication::monitor::{self, Monitor};
use crate::replication::scanner::{self, Scanner};
use crate::retention::{self, Retention};
use crate::shutdown::{cancel_on_signal, Workers};
use crate::store::{self, sync_state};

/// How long workers get to stop after the signal.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(4500);

/// Errors that stop `duplex run` from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local instance cannot be used.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// The recorded role differs.
    #[error(transparent)]
    State(#[from] sync_state::Error),
    /// The API address cannot be bound.
    #[error("cannot listen on {addr} ({source}): is another duplex running? Set DUPLEX_HTTP_ADDR to a free address")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another `duplex run` already controls this database.
    #[error("another duplex run already controls this database ({holder}): only one controller may run per instance. Stop that one first (or use its API), or point LOCAL_DB_URL at the database this controller is for")]
    AlreadyRunning {
        /// Who holds the controller lock, as recorded in `duplex.controller`.
        holder: String,
    },
    /// The notification settings are unusable.
    #[error("notifications: {0}")]
    Notify(String),
    /// The API's certificate or key cannot be used.
    #[error("the API's TLS certificate: {0}")]
    Tls(String),
    /// The connection pool could not be built.
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

/// Run until `cancel` (or a signal) and return once every worker stopped or was aborted.
pub async fn run(settings: Settings, cancel: CancellationToken) -> Result<(), Error> {
    // Listen for signals first, so a stop during start-up is still a clean exit.
    cancel_on_signal(cancel.clone());
    let settings = Arc::new(settings);
    let role = settings.instance_role;
    let mut local = pg::connect(settings.local_monitor(), "local", "run").await?;
    let applied = store::migrations::migrate(&mut local).await?;
    if !applied.is_empty() {
        tracing::info!("applied migrations {applied:?}");
    }
    sync_state::ensure_role(&local, role, settings.sync_enabled).await?;
    // Said once at start: the scanner and `duplex check` go by the configuration, so a
    // configuration that selects other tables than were set up should be noticed here.
    match crate::replication::selection::compare(&settings, &local).await {
        Ok(sel) => {
            for s in sel.sentences(&settings.tables) {
                tracing::warn!("{}; {}", s.message, s.hint);
            }
        }
        Err(e) => {
            tracing::warn!("could not compare the configured tables with what was set up: {e:#}")
        }
    }
    if !settings.sync_enabled {
        // SYNC_ENABLED=false forces a pause; otherwise the persisted pause state stands.
        sync_state::set_enabled(&local, false).await?;
    }
    // The status answers from memory from the first request on, before the first cycle.
    let recorded = monitor::Recorded::read(&local).await?;
    drop(local);
    // One controller per instance: the lock lives as long as this session, which this
    // process keeps until it exits (PostgreSQL releases it if the process dies).
    let controller = pg::connect(settings.local_monitor(), "local", "controller").await?;
    if !store::controller::try_lock(&controller).await? {
        let holder = match store::controller::holder(&controller).await? {
            Some(h) => h.to_string(),
            None => "its pid, host and address are not recorded yet".into(),
        };
        return Err(Error::AlreadyRunning { holder });
    }
    store::controller::record(
        &controller,
        std::process::id() as i32,
        &hostname(),
        &settings.daemon.http_addr.to_string(),
    )
    .await?;

    let notifier =
        Notifier::new(settings.notifications.clone()).map_err(|e| Error::Notify(e.to_string()))?;
    let notifier = notifier.is_configured().then_some(notifier);
    let (notify_tx, notify_rx) = tokio::sync::mpsc::channel(64);

    let pool_cfg = pg::pg_config(settings.local_monitor(), "local", "api")?;
    let mgr = deadpool_postgres::Manager::new(
        pool_cfg,
        pg::tls_connector(settings.local_monitor(), "local")?,
    );
    let pool = deadpool_postgres::Pool::builder(mgr)
        .max_size(http::POOL_SIZE)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(pg::CONNECT_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Pool(e.to_string()))?;

    let tls = match (&settings.daemon.tls_cert, &settings.daemon.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls::acceptor(cert, key).map_err(Error::Tls)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(settings.daemon.http_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: settings.daemon.http_addr,
            source,
        })?;
    if settings.daemon.admin_token.is_none() {
        tracing::warn!("DUPLEX_ADMIN_TOKEN is not set: the admin API answers 401 to everything");
    }
    let fd_limit = http::server::raise_fd_limit();
    let max_connections =
        http::server::connection_limit(settings.daemon.http_max_connections, fd_limit);
    if (max_connections as u64) < settings.daemon.http_max_connections {
        tracing::warn!(
            "the HTTP API takes at most {max_connections} connections, not daemon.http_max_connections = {}: this process may open only {} files (raise its limit, e.g. LimitNOFILE in its systemd unit)",
            settings.daemon.http_max_connections,
            fd_limit.unwrap_or(0)
        );
    }

    let workers = Workers::new();
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::channel(4);
    let monitor = Monitor::new(
        settings.clone(),
        notifier.as_ref().map(|_| notify_tx.clone()),
        trigger_rx,
    );
    monitor
        .report()
        .send_modify(|r| r.recorded = Some(recorded));
    let connection = monitor.report().subscribe();
    let peer = monitor.report().subscribe();
    let scanner = Scanner::new(settings.clone(), monitor.immediate_sync());
    let mirror = Mirror::new(
        settings.clone(),
        monitor.immediate_sync(),
        Arc::new(move || {
            peer.borrow().state == crate::replication::state::ConnectionState::Disconnected
        }),
    );
    let housekeeper = Housekeeper::new(
        settings.clone(),
        std::sync::Arc::new(move || {
            connection.borrow().state == crate::replication::state::ConnectionState::Connected
        }),
        notifier.as_ref().map(|_| notify_tx),
    );
    if let Some(notifier) = notifier {
        workers.spawn(
            notify::worker::NAME,
            notify::worker::run(notifier, notify_rx, cancel.clone()),
        );
    }
    let state = AppState::new(
        settings.clone(),
        monitor.report(),
        http::WorkerReports {
            conflicts: housekeeper.report(),
            storage: mirror.report(),
            scanner: scanner.report(),
        },
        pool,
        trigger_tx,
        Arc::new(http::server::Stats::default()),
    );
    let connections = state.connections.clone();
    workers.spawn(monitor::NAME, monitor.run(cancel.clone()));
    workers.spawn(housekeeping::NAME, housekeeper.run(cancel.clone()));
    workers.spawn(scanner::NAME, scanner.run(cancel.clone()));
    workers.spawn(
        retention::NAME,
        Retention::new(settings.clone()).run(cancel.clone()),
    );
    workers.spawn(mirror::NAME, mirror.run(cancel.clone()));
    let app = http::router(state);
    workers.spawn(
        "http",
        http::server::serve(
            listener,
            app,
            max_connections,
            connections,
            tls,
            cancel.clone(),
        ),
    );
    tracing::info!(
        role = %role,
        api = %settings.daemon.http_addr,
        "duplex running; monitor every {} s",
        settings.daemon.monitor_interval.as_secs()
    );

    cancel.cancelled().await;
    let stragglers = workers.shutdown(SHUTDOWN_DEADLINE).await;
    // Release the controller lock only once every worker has stopped.
    drop(controller);
    if stragglers.is_empty() {
        tracing::info!("all workers stopped");
    } else {
        tracing::warn!(
            "workers that did not stop in time: {}",
            stragglers.join(", ")
        );
    }
    Ok(())
}

/// This machine's host name, for the controller record.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is passed along.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
