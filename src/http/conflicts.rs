//! `/api/sync/conflicts`: the conflict log and manual resolution (admin token).

use std::collections::HashMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::{query_params, ApiError, AppState};
use crate::conflict::diff::entry_json;
use crate::conflict::resolve::{self, Choice};
use crate::store::conflict_log;

/// `GET /api/sync/conflicts?resolved=true|false&table=&limit=`: newest first.
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query_params(params, &["resolved", "table", "limit"])?;
    let filter = filter(&params)?;
    let client = state.pool.get().await.map_err(ApiError::pool)?;
    let entries = conflict_log::list(&client, &filter)
        .await
        .map_err(ApiError::store)?;
    let entries: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(Json(json!({ "conflicts": entries })))
}

/// The list filter from query parameters; a bad value is a 400 naming the parameter.
fn filter(params: &HashMap<String, String>) -> Result<conflict_log::Filter, ApiError> {
    for key in params.keys() {
        if !["resolved", "table", "limit"].contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter `{key}`: use resolved, table or limit"
            )));
        }
    }
    let open = match params.get("resolved").map(String::as_str) {
        None => None,
        Some("true") => Some(false),
        Some("false") => Some(true),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "parameter `resolved` must be true or false".into(),
            ))
        }
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
    let table = params.get("table").filter(|t| !t.is_empty()).cloned();
    Ok(conflict_log::Filter { open, table, limit })
}

/// The `{id}` of the path: a whole number, else a 400 (a path that does not decode too).
fn parse_id(raw: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(raw) =
        raw.map_err(|_| ApiError::BadRequest("the conflict id is not a whole number".into()))?;
    raw.parse::<i64>().map_err(|_| {
        ApiError::BadRequest(format!(
            "conflict id `{}` is not a whole number",
            raw.escape_default()
        ))
    })
}

/// `GET /api/sync/conflicts/{id}`: one entry with its field-level diff.
pub async fn show(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id)?;
    let client = state.pool.get().await.map_err(ApiError::pool)?;
    let entry = conflict_log::get(&client, id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::Missing(format!("conflict {id} does not exist")))?;
    Ok(Json(entry_json(&entry)))
}

/// Body of `POST /api/sync/conflicts/{id}/resolve`.
#[derive(Debug, serde::Deserialize)]
pub struct ResolveBody {
    /// `MAIN` or `CLOUD`.
    choice: String,
}

/// `POST /api/sync/conflicts/{id}/resolve` with `{"choice":"MAIN"|"CLOUD"}`.
pub async fn resolve(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ResolveBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id)?;
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON {{\"choice\": \"MAIN\" or \"CLOUD\"}}: {}",
            e.body_text()
        ))
    })?;
    let choice = match body.choice.as_str() {
        "MAIN" => Choice::Main,
        "CLOUD" => Choice::Cloud,
        other => {
            return Err(ApiError::BadRequest(format!(
                "`choice` must be MAIN or CLOUD, not `{other}`"
            )))
        }
    };
    match resolve::resolve(&state.settings, id, choice).await {
        Ok(done) => {
            tracing::info!("conflict {id} resolved through the API: {}", choice.as_db());
            Ok(Json(json!({
                "id": done.id,
                "resolved": true,
                "choice": done.choice,
                "written": done.written,
            })))
        }
        Err(e) => Err(match e {
            resolve::Error::NotFound(_) => ApiError::Missing(e.to_string()),
            resolve::Error::AlreadyResolved { .. } | resolve::Error::Changed { .. } => {
                ApiError::Conflict(e.to_string())
            }
            resolve::Error::Unsupported { .. } => ApiError::BadRequest(e.to_string()),
            resolve::Error::Database(e) => match e {
                crate::pg::Error::Query { .. } => ApiError::store(e),
                other => {
                    tracing::warn!("resolving conflict {id}: {other}");
                    ApiError::Unavailable(
                        "a database cannot be reached; nothing was resolved".into(),
                    )
                }
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_parameters_default_and_bad_values_name_the_parameter() {
        let f = filter(&params(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((f.open, f.limit), (None, 50));
        let f = filter(&params(&[("resolved", "false"), ("table", "User")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((f.open, f.table.as_deref()), (Some(true), Some("User")));
        for (k, v) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("resolved", "yes"),
            ("x", "1"),
        ] {
            match filter(&params(&[(k, v)])) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains(k), "{m}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }
}
