//! PostgreSQL access: connections with duplex's session options and identifier quoting.
//! Statements on duplex's own tables live in [`crate::store`].

pub mod catalog;
pub mod conninfo;
pub mod tls;

use std::time::Duration;

use tokio_postgres::Client;

use crate::secret::SecretUrl;

/// Statement timeout set on every duplex session.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lock timeout set on every duplex session.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a connection to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached or refused the login. Usually transient.
    #[error("cannot connect to {target} ({url}): {}", crate::text::chain(.source))]
    Connect {
        /// `local` or `remote`.
        target: &'static str,
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The URL could not be turned into connection parameters.
    #[error("{target} database URL {url} is not usable: {reason}")]
    BadUrl {
        /// `local` or `remote`.
        target: &'static str,
        /// The URL, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A query failed.
    #[error("{context}: {}", describe(.source))]
    Query {
        /// What duplex was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Why a connection could not be opened, as a user tells the cases apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server answered and rejected the credentials (wrong password, no such user,
    /// `pg_hba.conf` refuses them).
    Auth,
    /// The server answered and refused for another reason (no such database, too many
    /// connections, starting up).
    Refused,
    /// Nothing answered: connection refused, timeout, unknown host.
    NoAnswer,
    /// The server answered but TLS failed: it does not offer TLS where the URL requires
    /// it, or its certificate is not signed by `sslrootcert` or names another host.
    Tls,
}

impl Error {
    /// How a connection attempt failed; `None` for errors that are not connection failures.
    pub fn connect_failure(&self) -> Option<ConnectFailure> {
        let Error::Connect { source, .. } = self else {
            return None;
        };
        use tokio_postgres::error::SqlState;
        Some(match source.as_db_error() {
            Some(db)
                if *db.code() == SqlState::INVALID_PASSWORD
                    || *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                ConnectFailure::Auth
            }
            Some(_) => ConnectFailure::Refused,
            // The driver asks for a password the URL does not hold: the server answered.
            None if source.to_string().contains("password missing") => ConnectFailure::Auth,
            None if crate::text::chain(source).contains("TLS") => ConnectFailure::Tls,
            None => ConnectFailure::NoAnswer,
        })
    }

    /// The driver's or server's own words for the failure, without duplex's context.
    pub fn cause(&self) -> String {
        match self {
            Error::Connect { source, .. } | Error::Query { source, .. }
                if source.as_db_error().is_some() =>
            {
                describe(source)
            }
            Error::Connect { source, .. } | Error::Query { source, .. } => {
                crate::text::chain(source)
            }
            Error::BadUrl { reason, .. } => reason.clone(),
        }
    }
}

/// The server's message for a database error (the driver's `Display` says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({})", db.message(), detail),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// Attach what duplex was doing to a driver error.
pub trait Context<T> {
    /// Wrap the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn context(self, context: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Query {
            context: context.into(),
            source,
        })
    }
}

/// Build driver parameters for `url`, with duplex's session options.
pub fn pg_config(
    url: &SecretUrl,
    target: &'static str,
    application: &str,
) -> Result<tokio_postgres::Config, Error> {
    let bad = |reason: String| Error::BadUrl {
        target,
        url: url.redacted(),
        reason,
    };
    let tls = tls_settings(url, target)?;
    // The redacted URL has the password replaced; parse it without the TLS keys (the
    // driver knows only some of them), then put the real password back.
    let mut driver_url = url::Url::parse(&url.redacted()).map_err(|e| bad(e.to_string()))?;
    let rest: Vec<(String, String)> = driver_url
        .query_pairs()
        .filter(|(k, _)| !tls::KEYS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    driver_url.set_query(None);
    if !rest.is_empty() {
        driver_url.query_pairs_mut().extend_pairs(rest);
    }
    let mut cfg: tokio_postgres::Config = driver_url
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    if let Some(password) = url.password() {
        cfg.password(password);
    }
    cfg.ssl_mode(tls.mode.driver());
    cfg.application_name(format!("duplex_{application}"));
    cfg.connect_timeout(CONNECT_TIMEOUT);
    cfg.options(format!(
        "-c statement_timeout={} -c lock_timeout={} -c client_min_messages=warning",
        STATEMENT_TIMEOUT.as_millis(),
        LOCK_TIMEOUT.as_millis()
    ));
    Ok(cfg)
}

/// The TLS settings of `url` (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
pub fn tls_settings(url: &SecretUrl, target: &'static str) -> Result<tls::Settings, Error> {
    tls::Settings::from_query(url.url().query_pairs()).map_err(|reason| Error::BadUrl {
        target,
        url: url.redacted(),
        reason,
    })
}

/// The TLS connector for `url`, its certificate files read.
pub fn tls_connector(
    url: &SecretUrl,
    target: &'static str,
) -> Result<tls::MakeRustlsConnect, Error> {
    tls_settings(url, target)?
        .connector()
        .map_err(|reason| Error::BadUrl {
            target,
            url: url.redacted(),
            reason,
        })
}

/// Open one connection to `url`; the connection task ends when the client is dropped.
pub async fn connect(
    url: &SecretUrl,
    target: &'static str,
    application: &str,
) -> Result<Client, Error> {
    let cfg = pg_config(url, target, application)?;
    let tls = tls_connector(url, target)?;
    let (client, connection) = cfg.connect(tls).await.map_err(|source| Error::Connect {
        target,
        url: url.redacted(),
        source,
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection closed: {e}");
        }
    });
    Ok(client)
}

pub use crate::model::quote_ident;

/// Quote an SQL string literal, for the few statements that take no parameters
/// (`CREATE ROLE ... PASSWORD`, `CREATE SUBSCRIPTION ... CONNECTION`).
pub fn quote_literal(value: &str) -> String {
    let escaped = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

/// Quote a value inside a libpq connection string (`key='value'`).
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("JumpLog"), "\"JumpLog\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(conninfo_value("p'w d"), "'p\\'w d'");
    }
}
