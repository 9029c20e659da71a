//! API errors as JSON responses. A 500 says what failed, never the SQL or a secret.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Unknown route.
    #[error("no such route")]
    NotFound,
    /// Known route, other method.
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// A parameter is wrong; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current state (e.g. a conflict already resolved).
    #[error("{0}")]
    Conflict(String),
    /// A named thing does not exist; the message says which.
    #[error("{0}")]
    Missing(String),
    /// The daemon cannot do it now.
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests need the same scarce thing (database connections, the monitor)
    /// at once: retry shortly. A 503 with `Retry-After: 1`.
    #[error("{0}")]
    Busy(String),
    /// This client sent too many wrong tokens: a 429 with `Retry-After`.
    #[error("too many failed attempts from this address: retry in {} s", retry_secs(*.0))]
    TooManyAttempts(Duration),
    /// The local database failed.
    #[error("the local database did not answer: {0}")]
    Database(String),
}

impl ApiError {
    /// From a driver error: keep the server's message class, drop the SQL.
    pub fn db(e: tokio_postgres::Error) -> Self {
        tracing::warn!("API database error: {}", crate::pg::describe(&e));
        ApiError::Database(
            e.code()
                .map(|c| format!("SQLSTATE {}", c.code()))
                .unwrap_or_else(|| "connection error".into()),
        )
    }

    /// From a store error: as [`ApiError::db`] for a query, else a connection error.
    pub fn store(e: crate::pg::Error) -> Self {
        match e {
            crate::pg::Error::Query { source, .. } => Self::db(source),
            other => {
                tracing::warn!("API database error: {other}");
                ApiError::Database("connection error".into())
            }
        }
    }

    /// From a pool error: waiting too long for a connection is overload (503, retry),
    /// not a server fault.
    pub fn pool(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                ApiError::Busy(
                    "every database connection of the API is in use: retry in a second".into(),
                )
            }
            deadpool_postgres::PoolError::Backend(_) | deadpool_postgres::PoolError::Timeout(_) => {
                tracing::warn!("API pool error: {e}");
                ApiError::Unavailable("the local database does not answer".into())
            }
            other => {
                tracing::warn!("API pool error: {other}");
                ApiError::Database("no connection available".into())
            }
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_secs(d: Duration) -> u64 {
    d.as_secs()
        .saturating_add(u64::from(d.subsec_nanos() > 0))
        .max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, kind) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Missing(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            ApiError::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "database"),
        };
        let retry_after = match &self {
            ApiError::Busy(_) => Some(1),
            ApiError::TooManyAttempts(wait) => Some(retry_secs(*wait)),
            _ => None,
        };
        let mut response = (
            code,
            Json(json!({ "error": kind, "message": self.to_string() })),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}
