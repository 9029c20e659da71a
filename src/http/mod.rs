//! The HTTP API: health and metrics without a token, everything else behind the admin
//! bearer token. Errors are JSON; no response carries a password or SQL text.

mod conflicts;
mod error;
mod metrics;
mod scan;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

pub use error::ApiError;

use crate::config::Settings;
use crate::replication::monitor::{Report, TriggerRequest};
use crate::replication::state::ConnectionState;
use crate::store::{sync_log, sync_state};

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
    /// Connections to the local instance for log queries and control.
    pub pool: Pool,
    /// Ask the monitor for a cycle now.
    pub trigger: mpsc::Sender<TriggerRequest>,
}

/// The router.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/api/sync/status", get(status))
        .route("/api/sync/log", get(log))
        .route("/api/sync/pause", post(pause))
        .route("/api/sync/resume", post(resume))
        .route("/api/sync/trigger", post(trigger))
        .route("/api/sync/conflicts", get(conflicts::list))
        .route("/api/sync/conflicts/{id}", get(conflicts::show))
        .route("/api/sync/conflicts/{id}/resolve", post(conflicts::resolve))
        .route("/api/sync/scan", post(scan::scan))
        .route("/api/sync/integrity-check", post(scan::integrity))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health/sync", get(health))
        .route("/metrics", get(metrics::metrics))
        .merge(admin)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Compare digests rather than the strings, so neither where they differ nor the token's
/// length shows in the time taken.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.settings.daemon.admin_token.as_ref() else {
        return ApiError::Unauthorized("the admin API is disabled: set DUPLEX_ADMIN_TOKEN")
            .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.is_empty() || !constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
        return ApiError::Unauthorized("missing or wrong bearer token").into_response();
    }
    next.run(req).await
}

async fn health(State(state): State<AppState>) -> Response {
    let r = state.report.borrow().clone();
    let limit = state.settings.daemon.degraded_lag.as_millis() as i64;
    let stale_after = chrono::Duration::seconds(
        (state.settings.daemon.monitor_interval.as_secs() * 3).max(10) as i64,
    );
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
            .is_some_and(|at| chrono::Utc::now() - at > stale_after) =>
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
    let code = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = state.report.borrow().clone();
    let conflicts = state.conflicts.borrow().clone();
    // With the local instance down, the monitor's view is still worth showing: what the
    // database holds is left out rather than the whole answer failing.
    let (sync_state, last_success, recent) = if report.local_up() {
        let client = state.pool.get().await.map_err(ApiError::pool)?;
        let sync_state = sync_state::read(&client).await.map_err(ApiError::store)?;
        let last_success = sync_log::last_success(&client)
            .await
            .map_err(ApiError::store)?
            .map(|(sync_type, at)| json!({ "sync_type": sync_type, "at": at }));
        let recent = sync_log::recent(&client, None, None, 20)
            .await
            .map_err(ApiError::store)?;
        (json!(sync_state), last_success, json!(recent))
    } else {
        (Value::Null, None, Value::Null)
    };
    Ok(Json(json!({
        "local_up": report.local_up(),
        "local_down_since": report.local_down_since,
        "role": report.role,
        "sync_state": sync_state,
        "connection_state": report.state,
        "state_reason": report.state_reason,
        "disconnected_since": report.disconnected_since,
        "next_reconnect_at": report.next_reconnect_at,
        "lag_ms": report.lag_ms,
        "directions": report.directions,
        "storage_queue_size": report.storage_queue_size,
        "last_successful_sync": last_success,
        "active_alerts": report.alerts.iter().chain(&conflicts.alerts).collect::<Vec<_>>(),
        "recent_log": recent,
        "checked_at": report.checked_at,
        "last_error": report.last_error,
        "conflicts": conflicts,
    })))
}

async fn log(
    State(state): State<AppState>,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::BadRequest(format!(
            "the query string cannot be read: {}",
            e.body_text()
        ))
    })?;
    for key in params.keys() {
        if !["status", "type", "limit"].contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter `{key}`: use status, type or limit"
            )));
        }
    }
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
    let entries = sync_log::recent(
        &client,
        status,
        params.get("type").map(String::as_str),
        limit,
    )
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
    sync_log::insert(
        &client,
        &sync_log::Entry {
            sync_type: sync_log::SyncType::Control,
            status: sync_log::Status::Info,
            records_synced: 0,
            error_message: Some(&format!("sync {what} through the API")),
            details: json!({ "sync_enabled": enabled }),
        },
    )
    .await
    .map_err(ApiError::store)?;
    state.report.send_modify(|r| r.sync_enabled = enabled);
    tracing::info!("sync {what} through the API");
    Ok(Json(json!({ "sync_enabled": enabled })))
}

async fn pause(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    set_enabled(&state, false).await
}

async fn resume(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    set_enabled(&state, true).await
}

async fn trigger(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state
        .trigger
        .send(tx)
        .await
        .map_err(|_| ApiError::Unavailable("the monitor is not running".into()))?;
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), rx)
        .await
        .map_err(|_| ApiError::Unavailable("the cycle did not finish within 30 s".into()))?
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
    use super::constant_time_eq;

    #[test]
    fn token_comparison_needs_an_exact_match() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
