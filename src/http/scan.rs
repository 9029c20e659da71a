//! `POST /api/sync/scan` (one scanner pass now) and `POST /api/sync/integrity-check`
//! (counts and checksums of every replicated table), answering the same JSON as
//! `duplex scan --json` and `duplex integrity --json`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::Value;

use super::{query_params, ApiError, AppState};
use crate::conflict::scan;
use crate::replication::scanner::{self, Error, Request};

type Params = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn flag(q: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match q.get(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ApiError::BadRequest(format!(
            "{name} must be true or false, got `{v}`"
        ))),
    }
}

fn api_error(e: Error) -> ApiError {
    match e {
        Error::NotScanner { .. } => ApiError::Conflict(e.to_string()),
        Error::UnknownTable(_) => ApiError::Missing(e.to_string()),
        Error::Scan(scan::Error::NotCaughtUp { .. }) => ApiError::Unavailable(e.to_string()),
        Error::Scan(scan::Error::Pg(p)) | Error::Pg(p) => ApiError::store(p),
    }
}

/// `POST /api/sync/scan?table=&dry_run=&full=`: one scanner pass now.
pub async fn scan(State(state): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    let q = query_params(p, &["table", "dry_run", "full"])?;
    let req = Request {
        table: q.get("table").cloned(),
        dry_run: flag(&q, "dry_run", false)?,
        full: flag(&q, "full", false)?,
        stop_when_paused: false,
    };
    let report = scanner::scan(&state.settings, &req)
        .await
        .map_err(api_error)?;
    serde_json::to_value(&report)
        .map(Json)
        .map_err(|e| ApiError::Unavailable(format!("rendering the report: {e}")))
}

/// `POST /api/sync/integrity-check?table=&checksum=` (checksum defaults to true).
pub async fn integrity(State(state): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    let q = query_params(p, &["table", "checksum"])?;
    let report = scanner::integrity(
        &state.settings,
        q.get("table").map(String::as_str),
        flag(&q, "checksum", true)?,
    )
    .await
    .map_err(api_error)?;
    serde_json::to_value(&report)
        .map(Json)
        .map_err(|e| ApiError::Unavailable(format!("rendering the report: {e}")))
}
