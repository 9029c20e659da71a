//! `[daemon]`: the controller's timing and HTTP API.

use std::net::SocketAddr;
use std::time::Duration;

use config::ValueKind;
use serde::Serialize;

use super::keys::{as_secs, as_secs_list, human_secs, Key, Problems, Section, DAY};
use crate::secret::Secret;

pub(super) const HTTP_ADDR: Key = Key::env("daemon.http_addr", "DUPLEX_HTTP_ADDR");
pub(super) const ADMIN_TOKEN: Key = Key::env("daemon.admin_token", "DUPLEX_ADMIN_TOKEN");
pub(super) const MONITOR_INTERVAL: Key = Key::env(
    "daemon.monitor_interval_secs",
    "DUPLEX_MONITOR_INTERVAL_SECS",
);
const DEGRADED_LAG: Key = Key::file("daemon.degraded_lag_secs");
const RECONNECT_BACKOFF: Key = Key::file("daemon.reconnect_backoff_secs");
const RECONNECT_MAX: Key = Key::file("daemon.reconnect_max_secs");
const RECONNECT_JITTER: Key = Key::file("daemon.reconnect_jitter");
const SYNC_LOG_RETENTION_DAYS: Key = Key::file("daemon.sync_log_retention_days");
const HTTP_MAX_CONNECTIONS: Key = Key::file("daemon.http_max_connections");
pub(super) const TLS_CERT: Key = Key::env("daemon.tls_cert", "DUPLEX_TLS_CERT");
pub(super) const TLS_KEY: Key = Key::env("daemon.tls_key", "DUPLEX_TLS_KEY");
pub(super) const TLS_CA: Key = Key::env("daemon.tls_ca", "DUPLEX_TLS_CA");
const ALLOW_PLAINTEXT_HTTP: Key = Key::file("daemon.allow_plaintext_http");
const KEYS: &[Key] = &[
    HTTP_ADDR,
    ADMIN_TOKEN,
    MONITOR_INTERVAL,
    DEGRADED_LAG,
    RECONNECT_BACKOFF,
    RECONNECT_MAX,
    RECONNECT_JITTER,
    SYNC_LOG_RETENTION_DAYS,
    HTTP_MAX_CONNECTIONS,
    TLS_CERT,
    TLS_KEY,
    TLS_CA,
    ALLOW_PLAINTEXT_HTTP,
];

/// Shortest admin token `duplex run` accepts: a guessable token would open pause, resume,
/// scans and conflict resolution to anyone who can reach the API.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// Longest reconnect delay, in the list or as `reconnect_max_secs`.
const MAX_RECONNECT_SECS: u64 = DAY;

/// `[daemon]`: the controller's timing and HTTP API.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonSettings {
    /// `DUPLEX_HTTP_ADDR`: where the API listens. Default `127.0.0.1:8787`.
    pub http_addr: SocketAddr,
    /// `DUPLEX_ADMIN_TOKEN`: bearer token for the admin API. Unset: the admin API answers 401.
    pub admin_token: Option<Secret>,
    /// `DUPLEX_MONITOR_INTERVAL_SECS`: replication monitor period. Default 30 s.
    #[serde(rename = "monitor_interval_secs", serialize_with = "as_secs")]
    pub monitor_interval: Duration,
    /// `degraded_lag_secs`: lag above which the connection is DEGRADED and health fails.
    /// Default 60 s.
    #[serde(rename = "degraded_lag_secs", serialize_with = "as_secs")]
    pub degraded_lag: Duration,
    /// `reconnect_backoff_secs`: reconnect delays while DISCONNECTED, in order. Default 30,
    /// 60, 120, 300, 600 s.
    #[serde(rename = "reconnect_backoff_secs", serialize_with = "as_secs_list")]
    pub reconnect_backoff: Vec<Duration>,
    /// `reconnect_max_secs`: longest reconnect delay once the list is used up. Default 3600 s.
    #[serde(rename = "reconnect_max_secs", serialize_with = "as_secs")]
    pub reconnect_max: Duration,
    /// Random spread added to each delay, as a fraction (0.0-1.0). Default 0.1.
    pub reconnect_jitter: f64,
    /// `sync_log_retention_days`: entries of `duplex.sync_log` older than this are pruned,
    /// except the ones a restart reads back (the latest entry of each alert kind, the
    /// latest connection transitions, the latest success of each kind of work). Default 30.
    pub sync_log_retention_days: u64,
    /// `http_max_connections`: open API connections at most; at the limit a new
    /// connection closes the oldest one that is not in the middle of a request. Default
    /// 1024 (lowered at start-up to fit the process's file descriptor limit).
    pub http_max_connections: u64,
    /// `DUPLEX_TLS_CERT` / `DUPLEX_TLS_KEY`: the API's certificate chain and private key
    /// (PEM). With them the API speaks HTTPS only.
    pub tls_cert: Option<std::path::PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// `DUPLEX_TLS_CA`: the CA certificate(s) the CLI verifies the API's certificate with;
    /// set, the CLI speaks HTTPS to the API. Default: `tls_cert` (a self-signed certificate).
    pub tls_ca: Option<std::path::PathBuf>,
    /// `allow_plaintext_http`: serve plain HTTP on a non-loopback address (behind a
    /// TLS-terminating proxy). Default false: `duplex run` refuses to.
    pub allow_plaintext_http: bool,
    /// How problems name the admin token: its variable or its file key.
    #[serde(skip)]
    admin_token_label: &'static str,
}

const DEFAULT_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 8787);
const DEFAULT_BACKOFF: [u64; 5] = [30, 60, 120, 300, 600];

impl DaemonSettings {
    pub(super) fn parse(top: &config::Map<String, config::Value>, problems: &mut Problems) -> Self {
        let mut d = Section::table(top, "daemon", KEYS, problems);
        let http_addr = match d.string(&HTTP_ADDR) {
            None => SocketAddr::from(DEFAULT_ADDR),
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                let label = d.label(&HTTP_ADDR);
                d.problems.push(format!(
                    "{label} `{raw}` is not an address: use host:port, e.g. 127.0.0.1:8787"
                ));
                SocketAddr::from(DEFAULT_ADDR)
            }),
        };
        let reconnect_backoff = match d.raw(&RECONNECT_BACKOFF) {
            None => DEFAULT_BACKOFF.to_vec(),
            Some(v) => {
                let items: Vec<String> = match &v.kind {
                    ValueKind::Array(a) => a.iter().map(|x| x.to_string()).collect(),
                    _ => v
                        .to_string()
                        .split(',')
                        .map(|x| x.trim().to_string())
                        .collect(),
                };
                let parsed: Vec<u64> = items
                    .iter()
                    .filter_map(|x| x.parse().ok())
                    .filter(|n| (1..=MAX_RECONNECT_SECS).contains(n))
                    .collect();
                if parsed.len() != items.len() || parsed.is_empty() {
                    d.problems.push(format!("daemon.reconnect_backoff_secs must be a list of positive whole numbers of seconds up to {MAX_RECONNECT_SECS}{}, e.g. [30, 60, 120, 300, 600]", human_secs(MAX_RECONNECT_SECS)));
                    DEFAULT_BACKOFF.to_vec()
                } else {
                    parsed
                }
            }
        };
        let reconnect_jitter = match d.raw(&RECONNECT_JITTER).cloned() {
            None => 0.1,
            Some(v) => match v.clone().into_float() {
                Ok(f) if (0.0..=1.0).contains(&f) => f,
                _ => {
                    d.problems.push(format!(
                        "daemon.reconnect_jitter must be a fraction between 0 and 1, got `{v}`"
                    ));
                    0.1
                }
            },
        };
        let tls_cert: Option<std::path::PathBuf> = d.string(&TLS_CERT).map(Into::into);
        let tls_key: Option<std::path::PathBuf> = d.string(&TLS_KEY).map(Into::into);
        if tls_cert.is_some() != tls_key.is_some() {
            d.problems.push("daemon.tls_cert and daemon.tls_key go together (DUPLEX_TLS_CERT, DUPLEX_TLS_KEY): give both files, or neither");
        }
        DaemonSettings {
            http_addr,
            admin_token: d.secret(&ADMIN_TOKEN),
            admin_token_label: d.label(&ADMIN_TOKEN),
            monitor_interval: d.secs(&MONITOR_INTERVAL, 30, 3600),
            degraded_lag: d.secs(&DEGRADED_LAG, 60, 7 * DAY),
            reconnect_backoff: reconnect_backoff
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            reconnect_max: d.secs(&RECONNECT_MAX, 3600, MAX_RECONNECT_SECS),
            reconnect_jitter,
            sync_log_retention_days: d.positive(&SYNC_LOG_RETENTION_DAYS, 30, 3650),
            http_max_connections: d.positive(&HTTP_MAX_CONNECTIONS, 1024, 65_536),
            tls_cert,
            tls_key,
            tls_ca: d.string(&TLS_CA).map(Into::into),
            allow_plaintext_http: d.bool(&ALLOW_PLAINTEXT_HTTP, false),
        }
    }

    /// What stops `duplex run` from serving, beyond what every command checks: an admin
    /// token shorter than [`MIN_ADMIN_TOKEN_CHARS`]. The commands that only present the
    /// token to a daemon (`pause`, `status`, ...) do not need this. The token is never
    /// shown, only its length.
    ///
    /// Also: a non-loopback address without TLS, unless `allow_plaintext_http` says a
    /// TLS-terminating proxy is in front: the token would cross the network in clear.
    pub fn serve_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(t) = &self.admin_token {
            if t.expose().chars().count() < MIN_ADMIN_TOKEN_CHARS {
                problems.push(format!(
                    "{} is {} characters long: `duplex run` needs an admin token of at least {MIN_ADMIN_TOKEN_CHARS} characters (generate one with `openssl rand -hex 32`), or leave it unset to turn the admin API off",
                    self.admin_token_label,
                    t.expose().chars().count()
                ));
            }
        }
        if !self.http_addr.ip().is_loopback()
            && self.tls_cert.is_none()
            && !self.allow_plaintext_http
        {
            problems.push(format!(
                "the API would listen on {} in plain HTTP, so its admin token would cross the network in clear: give it a certificate (DUPLEX_TLS_CERT and DUPLEX_TLS_KEY), keep it on 127.0.0.1, or set daemon.allow_plaintext_http = true when a TLS-terminating proxy is in front",
                self.http_addr
            ));
        }
        problems
    }

    /// The CA file the CLI verifies the API's certificate with: `tls_ca`, else (beside a
    /// daemon with a self-signed certificate) `tls_cert`; `None`: the API is plain HTTP.
    pub fn client_tls(&self) -> Option<std::path::PathBuf> {
        self.tls_ca.clone().or_else(|| self.tls_cert.clone())
    }
}
