//! The HTTP API: health and metrics without a token, everything else behind the admin
//! bearer token. Errors are JSON; no response carries a password or SQL text.
//!
//! Load is bounded at every step: connections by [`server`] (limit, header-read and idle
//! timeout), wrong tokens per client by [`auth`], every request by a deadline, and the
//! routes that need a database by a few permits each; `/health/sync`, `/metrics` and
//! `/api/sync/status` answer from the workers' latest reports in memory.

mod auth;
mod conflicts;
mod error;
mod metrics;
mod scan;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

pub use error::ApiError;

use crate::config::Settings;
use crate::replication::monitor::{Report, TriggerRequest};
use crate::replication::rules::millis;
use crate::replication::state::ConnectionState;
use crate::store::{sync_log, sync_state};

/// Longest a request may take, except a scan or an integrity check.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a scan or an integrity check through the API may take (each statement of a
/// scan has its own 300 s limit).
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long `POST /api/sync/trigger` waits for its cycle.
pub const TRIGGER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections of the API's pool to the local instance.
pub const POOL_SIZE: usize = 4;
/// Requests using the pool at once; more wait up to [`PERMIT_WAIT`], then get a 503.
const POOL_PERMITS: usize = 8;
/// Scans, integrity checks and manual resolutions at once (each opens its own
/// connections to both instances).
const HEAVY_PERMITS: usize = 2;
/// How long a request waits for a permit before it is answered 503 with `Retry-After`.
const PERMIT_WAIT: Duration = Duration::from_secs(2);
/// Longest accepted query parameter value.
const MAX_PARAM_CHARS: usize = 256;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub settings: Arc<Settings>,
    /// The monitor's latest report (read with `borrow()`; written only by the monitor,
    /// except `sync_enabled` on pause/resume).
    pub report: watch::Sender<Report>,
    /// The conflict housekeeping worker's latest report (clock offset, merge counters).
    pub conflicts: watch::Receiver<crate::conflict::worker::Report>,
    /// The storage mirror's latest report (queue, bytes and files transferred, rate).
    pub storage: watch::Receiver<crate::mirror::worker::Report>,
    /// The verifying scanner's passes, latest pass and latest failure.
    pub scanner: watch::Receiver<crate::replication::scanner::WorkerReport>,
    /// Connections to the local instance for log queries and control.
    pub pool: Pool,
    /// Ask the monitor for a cycle now.
    pub trigger: mpsc::Sender<TriggerRequest>,
    /// Connection counts of the listener, for `/metrics`.
    pub connections: Arc<server::Stats>,
    limits: Arc<Limits>,
}

/// The shared bounds: failed token attempts per client, permits of database routes, and
/// the cached conflict-log totals of `/metrics`.
struct Limits {
    failed: auth::FailedAttempts,
    pool: Bound,
    heavy: Bound,
    conflict_counts: metrics::CountsCache,
}

/// Permits for a group of routes.
#[derive(Clone)]
struct Bound {
    permits: Arc<Semaphore>,
    what: &'static str,
}

/// The latest reports of the workers other than the monitor.
pub struct WorkerReports {
    /// The conflict housekeeping worker's.
    pub conflicts: watch::Receiver<crate::conflict::worker::Report>,
    /// The storage mirror's.
    pub storage: watch::Receiver<crate::mirror::worker::Report>,
    /// The verifying scanner's.
    pub scanner: watch::Receiver<crate::replication::scanner::WorkerReport>,
}

impl AppState {
    /// The state of a router over the workers' reports, the API's pool and the monitor's
    /// trigger channel.
    pub fn new(
        settings: Arc<Settings>,
        report: watch::Sender<Report>,
        workers: WorkerReports,
        pool: Pool,
        trigger: mpsc::Sender<TriggerRequest>,
        connections: Arc<server::Stats>,
    ) -> Self {
        AppState {
            settings,
            report,
            conflicts: workers.conflicts,
            storage: workers.storage,
            scanner: workers.scanner,
            pool,
            trigger,
            connections,
            limits: Arc::new(Limits {
                failed: auth::FailedAttempts::default(),
                pool: Bound {
                    permits: Arc::new(Semaphore::new(POOL_PERMITS)),
                    what: "requests that read the database",
                },
                heavy: Bound {
                    permits: Arc::new(Semaphore::new(HEAVY_PERMITS)),
                    what: "scans, integrity checks and resolutions",
                },
                conflict_counts: metrics::CountsCache::default(),
            }),
        }
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    let deadline = |limit: Duration| middleware::from_fn_with_state(limit, deadline);
    let memory = Router::new()
        .route("/api/sync/status", get(status))
        .route("/api/sync/trigger", post(trigger));
    let pooled = Router::new()
        .route("/api/sync/log", get(log))
        .route("/api/sync/pause", post(pause))
        .route("/api/sync/resume", post(resume))
        .route("/api/sync/conflicts", get(conflicts::list))
        .route("/api/sync/conflicts/{id}", get(conflicts::show))
        .route_layer(middleware::from_fn_with_state(
            state.limits.pool.clone(),
            bounded,
        ));
    let heavy = Router::new()
        .route("/api/sync/conflicts/{id}/resolve", post(conflicts::resolve))
        .route_layer(middleware::from_fn_with_state(
            state.limits.heavy.clone(),
            bounded,
        ));
    let long = Router::new()
        .route("/api/sync/scan", post(scan::scan))
        .route("/api/sync/integrity-check", post(scan::integrity))
        .route_layer(middleware::from_fn_with_state(
            state.limits.heavy.clone(),
            bounded,
        ))
        .route_layer(deadline(LONG_REQUEST_TIMEOUT));
    let admin = memory
        .merge(pooled)
        .merge(heavy)
        .route_layer(deadline(REQUEST_TIMEOUT))
        .merge(long)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health/sync", get(health))
        .route("/metrics", get(metrics::metrics))
        .route_layer(deadline(REQUEST_TIMEOUT))
        .merge(admin)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Answer 503 when the request takes longer than `limit`.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not finish within {} s",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// Run the request with one of the group's permits, waiting at most [`PERMIT_WAIT`].
async fn bounded(State(bound): State<Bound>, req: Request, next: Next) -> Response {
    let permit = tokio::time::timeout(PERMIT_WAIT, bound.permits.clone().acquire_owned()).await;
    let Ok(Ok(_permit)) = permit else {
        return ApiError::Busy(format!(
            "too many {} at once: retry in a second",
            bound.what
        ))
        .into_response();
    };
    next.run(req).await
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.settings.daemon.admin_token.as_ref() else {
        return ApiError::Unauthorized("the admin API is disabled: set DUPLEX_ADMIN_TOKEN")
            .into_response();
    };
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let failed = &state.limits.failed;
    let now = Instant::now();
    // A client that used up its attempts is refused before its token is looked at, so
    // guessing stays slow even when the guess is right.
    if let Some(wait) = failed.blocked(client, now) {
        return ApiError::TooManyAttempts(wait).into_response();
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer);
    if given.is_some_and(|t| auth::constant_time_eq(t.as_bytes(), expected.expose().as_bytes())) {
        return next.run(req).await;
    }
    match failed.fail(client, now) {
        Err(wait) => ApiError::TooManyAttempts(wait).into_response(),
        Ok(n) => {
            if n == auth::MAX_FAILURES {
                tracing::warn!(
                    "admin API: {client} sent {n} missing or wrong tokens within {} s; refusing it until the minute is over",
                    auth::FAILURE_WINDOW.as_secs()
                );
            }
            ApiError::Unauthorized("missing or wrong bearer token").into_response()
        }
    }
}

/// The query parameters, refusing unknown names, control characters (`%00`) and values
/// longer than [`MAX_PARAM_CHARS`]: bad input is a 400 naming the parameter, never
/// something the database is left to reject.
pub(crate) fn query_params(
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::BadRequest(format!(
            "the query string cannot be read: {}",
            e.body_text()
        ))
    })?;
    for (key, value) in &params {
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter `{}`: use {}",
                key.escape_default(),
                allowed.join(", ")
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "parameter `{key}` contains a control character (such as %00): remove it"
            )));
        }
        if value.chars().count() > MAX_PARAM_CHARS {
            return Err(ApiError::BadRequest(format!(
                "parameter `{key}` is longer than {MAX_PARAM_CHARS} characters"
            )));
        }
    }
    Ok(params)
}

async fn health(State(state): State<AppState>) -> Response {
    let limit = millis(state.settings.daemon.degraded_lag);
    // Saturating, and through `Duration`: the interval is bounded by validation, but no
    // setting may make this route panic.
    let stale_after = chrono::Duration::from_std(
        state
            .settings
            .daemon
            .monitor_interval
            .saturating_mul(3)
            .max(Duration::from_secs(10)),
    )
    .unwrap_or(chrono::Duration::MAX);
    // Read what the answer needs under the borrow; the report itself is not cloned.
    let r = state.report.borrow();
    // This route needs no token: the reason names the state, never hosts or users.
    let reason = match (r.state, r.lag_ms) {
        _ if !r.local_up() => Some(format!(
            "the local {} instance does not answer: nothing about replication can be read or recorded",
            r.role
        )),
        _ if r.checked_at.is_none() => Some("no monitor cycle has completed yet".to_string()),
        _ if r.last_error.is_some() => Some("the latest monitor cycle failed".to_string()),
        _ if r
            .checked_at
            .is_some_and(|at| chrono::Utc::now().signed_duration_since(at) > stale_after) =>
        {
            Some("the monitor has not completed a cycle recently".to_string())
        }
        (ConnectionState::Connected, Some(lag)) if lag < limit => None,
        (ConnectionState::Connected, Some(lag)) => {
            Some(format!("replication lag {lag} ms is over {limit} ms"))
        }
        (ConnectionState::Connected, None) => Some("replication lag unknown".into()),
        (s, _) => Some(format!("connection is {}", s.as_str())),
    };
    let body = json!({
        "healthy": reason.is_none(),
        "state": r.state,
        "lag_ms": r.lag_ms,
        "reason": reason,
        "local_up": r.local_up(),
        "local_down_since": r.local_down_since,
        "checked_at": r.checked_at,
    });
    drop(r);
    let code = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /api/sync/status`: from the monitor's and the housekeeper's latest reports in
/// memory, no database round-trip (what the local tables held is read by the monitor once
/// per cycle).
async fn status(State(state): State<AppState>) -> Json<Value> {
    let conflicts = state.conflicts.borrow().clone();
    let storage = state.storage.borrow().clone();
    let scanner = state.scanner.borrow().clone();
    let report = state.report.borrow();
    // With the local instance down, the monitor's view is still worth showing: what the
    // database holds is left out rather than the whole answer failing.
    let recorded = report.recorded.as_ref().filter(|_| report.local_up());
    let body = json!({
        "local_up": report.local_up(),
        "local_down_since": report.local_down_since,
        "role": report.role,
        "sync_state": recorded.map(|r| &r.sync_state),
        "connection_state": report.state,
        "state_reason": report.state_reason,
        "disconnected_since": report.disconnected_since,
        "next_reconnect_at": report.next_reconnect_at,
        "lag_ms": report.lag_ms,
        "directions": report.directions,
        "storage_queue_size": report.storage_queue_size,
        "storage": storage,
        "scanner": scanner,
        "last_successful_sync": recorded
            .and_then(|r| r.last_success.as_ref())
            .map(|(sync_type, at)| json!({ "sync_type": sync_type, "at": at })),
        "active_alerts": report.alerts.iter().chain(&conflicts.alerts).collect::<Vec<_>>(),
        "recent_log": recorded.map(|r| &r.recent_log),
        "checked_at": report.checked_at,
        "last_error": report.last_error,
        "conflicts": conflicts,
    });
    Json(body)
}

async fn log(
    State(state): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query_params(params, &["status", "type", "limit"])?;
    let status = match params.get("status") {
        None => None,
        Some(s) => match sync_log::Status::parse(s) {
            Some(st) => Some(st.as_str()),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "parameter `status` must be one of {}",
                    sync_log::Status::ALL.map(|s| s.as_str()).join(", ")
                )))
            }
        },
    };
    let sync_type = match params.get("type") {
        None => None,
        Some(t) => match sync_log::SyncType::parse(t) {
            Some(t) => Some(t.as_str()),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "parameter `type` must be one of {}",
                    sync_log::SyncType::ALL.map(|t| t.as_str()).join(", ")
                )))
            }
        },
    };
    let limit = match params.get("limit") {
        None => 50,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(
                    "parameter `limit` must be a whole number from 1 to 1000".into(),
                ))
            }
        },
    };
    let client = state.pool.get().await.map_err(ApiError::pool)?;
    let entries = sync_log::recent(&client, status, sync_type, limit)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(json!({ "entries": entries })))
}

async fn set_enabled(state: &AppState, enabled: bool) -> Result<Json<Value>, ApiError> {
    let client = state.pool.get().await.map_err(ApiError::pool)?;
    sync_state::set_enabled(&client, enabled)
        .await
        .map_err(ApiError::store)?;
    let what = if enabled { "resumed" } else { "paused" };
    let message = format!("sync {what} through the API");
    let details = json!({ "sync_enabled": enabled });
    let id = sync_log::insert(
        &client,
        &sync_log::Entry {
            sync_type: sync_log::SyncType::Control,
            status: sync_log::Status::Info,
            records_synced: 0,
            error_message: Some(&message),
            details: details.clone(),
        },
    )
    .await
    .map_err(ApiError::store)?;
    // The status answers from memory: show the change now, not after the next cycle.
    state.report.send_modify(|r| {
        r.sync_enabled = enabled;
        if let Some(rec) = r.recorded.as_mut() {
            rec.sync_state.sync_enabled = enabled;
            rec.push_log(sync_log::Row {
                id,
                sync_type: sync_log::SyncType::Control.as_str().into(),
                status: sync_log::Status::Info.as_str().into(),
                records_synced: 0,
                message: Some(message.clone()),
                details,
                created_at: chrono::Utc::now(),
            });
        }
    });
    tracing::info!("{message}");
    Ok(Json(json!({ "sync_enabled": enabled })))
}

async fn pause(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    set_enabled(&state, false).await
}

async fn resume(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    set_enabled(&state, true).await
}

/// `POST /api/sync/trigger`: queue a cycle and wait for it at most [`TRIGGER_TIMEOUT`].
/// With the monitor's queue full, answer 503 at once rather than wait for room.
async fn trigger(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.trigger.try_send(tx).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::Busy(
            "triggered cycles are already waiting for the monitor: retry once they ran".into(),
        ),
        mpsc::error::TrySendError::Closed(_) => {
            ApiError::Unavailable("the monitor is not running".into())
        }
    })?;
    let report = tokio::time::timeout(TRIGGER_TIMEOUT, rx)
        .await
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "the cycle did not finish within {} s",
                TRIGGER_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|_| ApiError::Unavailable("the monitor stopped".into()))?
        .map_err(ApiError::Unavailable)?;
    Ok(Json(json!({
        "triggered": true,
        "connection_state": report.state,
        "lag_ms": report.lag_ms,
        "cycles": report.cycles,
        "checked_at": report.checked_at,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Result<HashMap<String, String>, ApiError> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        query_params(Query::try_from_uri(&uri), &["type", "limit"])
    }

    #[test]
    fn control_characters_and_unknown_parameters_are_refused_by_name() {
        assert_eq!(params("type=alert").unwrap()["type"], "alert");
        for (q, name) in [
            ("type=%00", "`type` contains a control character"),
            ("type=a%0Ab", "`type` contains a control character"),
            ("limit=%01", "`limit` contains a control character"),
            ("other=1", "unknown parameter `other`"),
        ] {
            match params(q) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains(name), "{q}: {m}"),
                other => panic!("{q}: {other:?}"),
            }
        }
        let long = format!("type={}", "a".repeat(MAX_PARAM_CHARS + 1));
        assert!(matches!(params(&long), Err(ApiError::BadRequest(_))));
    }
}
