//! Settings: a TOML file overlaid by environment variables, validated all at once.
//!
//! The environment variable names (`INSTANCE_ROLE`, `LOCAL_DB_URL`, ...) are part of
//! duplex's interface; `docs/configuration.md` documents each one.

use std::collections::BTreeMap;
use std::path::Path;

use config::{Config, File, FileFormat, Value, ValueKind};
use serde::Serialize;

use crate::model::{Role, TableName};
use crate::secret::{Secret, SecretUrl};

/// Which tables replicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TableSelection {
    /// Exactly these tables (`schema.table` or `table` in the default schema).
    Include {
        /// Tables, unquoted, exactly as named in the database (case-sensitive).
        tables: Vec<TableName>,
    },
    /// Every ordinary table of `schema` except those listed.
    Schema {
        /// The schema whose tables replicate (default `public`).
        schema: String,
        /// Table names in that schema that stay local.
        exclude: Vec<String>,
    },
}

/// Replication provisioning settings (`[replication]` in the file).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationSettings {
    /// Role the peer's subscription logs in as. Default `duplex_replicator`.
    pub user: String,
    /// Its password (`DUPLEX_REPLICATION_PASSWORD`). Required by `duplex setup`.
    pub password: Option<Secret>,
    /// Slot on the peer that this side's subscription uses (`REPLICATION_SLOT_NAME`).
    /// Default `duplex_cloud_to_main` for main, `duplex_main_to_cloud` for cloud.
    pub slot_name: String,
    /// Host the local server uses to reach the peer for its subscription. Default: the
    /// host of `REMOTE_DB_URL`.
    pub peer_host: Option<String>,
    /// Port for the same. Default: the port of `REMOTE_DB_URL`.
    pub peer_port: Option<u16>,
    /// How long `duplex setup` waits for cloud's initial copy. Default 600.
    pub initial_copy_timeout_secs: u64,
}

/// The validated configuration of one duplex process.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `INSTANCE_ROLE`: `main` or `cloud`. Required.
    pub instance_role: Role,
    /// `LOCAL_DB_URL` (or `DATABASE_URL`): the instance duplex runs beside. Required.
    pub local_db_url: SecretUrl,
    /// `REMOTE_DB_URL`: the peer instance. Required.
    pub remote_db_url: SecretUrl,
    /// `LOCAL_STORAGE_URL`: this side's S3-compatible store (used by the storage mirror).
    pub local_storage_url: Option<SecretUrl>,
    /// `REMOTE_STORAGE_URL`: the peer's store.
    pub remote_storage_url: Option<SecretUrl>,
    /// `SYNC_ENABLED`: whether workers that move data run. Default true.
    pub sync_enabled: bool,
    /// `SYNC_INTERVAL_MINUTES`: period of the storage/conflict sync cycle. Default 5.
    pub sync_interval_minutes: u64,
    /// `MAX_CONCURRENT_TRANSFERS`: parallel object transfers. Default 4.
    pub max_concurrent_transfers: u64,
    /// `MAX_TRANSFER_RATE`: bytes per second across transfers (`10MB`, `512KiB`); 0 means
    /// unlimited. Default 0.
    pub max_transfer_rate_bytes: u64,
    /// Which tables replicate. Default: schema `public`, nothing excluded.
    pub tables: TableSelection,
    /// Replication provisioning.
    pub replication: ReplicationSettings,
    /// The long-running controller (`duplex run`).
    pub daemon: DaemonSettings,
    /// Alert thresholds.
    pub alerts: AlertSettings,
    /// Where alerts are sent.
    pub notifications: NotificationSettings,
}

/// `[daemon]`: the controller's timing and HTTP API.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonSettings {
    /// `DUPLEX_HTTP_ADDR`: where the API listens. Default `127.0.0.1:8787`.
    pub http_addr: std::net::SocketAddr,
    /// `DUPLEX_ADMIN_TOKEN`: bearer token for the admin API. Unset: the admin API answers 401.
    pub admin_token: Option<Secret>,
    /// `DUPLEX_MONITOR_INTERVAL_SECS`: replication monitor period. Default 30.
    pub monitor_interval_secs: u64,
    /// Lag above which the connection is DEGRADED and health fails. Default 60.
    pub degraded_lag_secs: u64,
    /// Reconnect delays while DISCONNECTED, in order. Default 30, 60, 120, 300, 600.
    pub reconnect_backoff_secs: Vec<u64>,
    /// Longest reconnect delay once the list is used up. Default 3600.
    pub reconnect_max_secs: u64,
    /// Random spread added to each delay, as a fraction (0.0-1.0). Default 0.1.
    pub reconnect_jitter: f64,
}

/// `[alerts]`: thresholds; each alert logs once when it starts and once when it clears.
#[derive(Debug, Clone, Serialize)]
pub struct AlertSettings {
    /// Replication lag that raises a WARNING. Default 3600.
    pub lag_warning_secs: u64,
    /// Time disconnected that raises a CRITICAL. Default 86400.
    pub disconnected_critical_secs: u64,
    /// WAL retained by a slot that raises a WARNING (`5GB`). Default 5 GB.
    pub retained_wal_warning_bytes: u64,
    /// Filesystem path whose free space is watched (`DUPLEX_DISK_PATH`). Default: unset.
    pub disk_path: Option<std::path::PathBuf>,
    /// Free space below this percentage (with a storage queue over `disk_queue_min`) warns.
    /// Default 20.
    pub disk_free_min_percent: u64,
    /// Storage queue size that makes low disk space worth a warning. Default 100.
    pub disk_queue_min: u64,
    /// Storage queue size that raises a WARNING on its own. Default 500.
    pub queue_warning: u64,
}

/// `[notifications]`: webhook and e-mail sinks for CRITICAL and FAILED alerts.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationSettings {
    /// `DUPLEX_WEBHOOK_URL`: Slack-compatible incoming webhook (secret).
    pub webhook_url: Option<Secret>,
    /// `DUPLEX_SMTP_URL`: `smtp://user:pass@host:port` or `smtps://...` (secret).
    pub smtp_url: Option<Secret>,
    /// Sender address for e-mail.
    pub email_from: Option<String>,
    /// Recipients (`DUPLEX_EMAIL_TO`, comma-separated).
    pub email_to: Vec<String>,
    /// Send WARNING alerts too. Default false.
    pub include_warnings: bool,
    /// At most one notification per alert kind in this many seconds. Default 900.
    pub rate_limit_secs: u64,
}

/// Every problem found in the configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// One sentence each: what is wrong and what to do.
    pub problems: Vec<String>,
}

/// The environment variables duplex reads, with the config key each overrides.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("INSTANCE_ROLE", "instance_role"),
    ("LOCAL_DB_URL", "local_db_url"),
    ("REMOTE_DB_URL", "remote_db_url"),
    ("LOCAL_STORAGE_URL", "local_storage_url"),
    ("REMOTE_STORAGE_URL", "remote_storage_url"),
    ("SYNC_ENABLED", "sync_enabled"),
    ("SYNC_INTERVAL_MINUTES", "sync_interval_minutes"),
    ("MAX_CONCURRENT_TRANSFERS", "max_concurrent_transfers"),
    ("REPLICATION_SLOT_NAME", "replication.slot_name"),
    ("MAX_TRANSFER_RATE", "max_transfer_rate"),
    ("DUPLEX_REPLICATION_PASSWORD", "replication.password"),
    ("DUPLEX_HTTP_ADDR", "daemon.http_addr"),
    ("DUPLEX_ADMIN_TOKEN", "daemon.admin_token"),
    (
        "DUPLEX_MONITOR_INTERVAL_SECS",
        "daemon.monitor_interval_secs",
    ),
    ("DUPLEX_DISK_PATH", "alerts.disk_path"),
    ("DUPLEX_WEBHOOK_URL", "notifications.webhook_url"),
    ("DUPLEX_SMTP_URL", "notifications.smtp_url"),
    ("DUPLEX_EMAIL_FROM", "notifications.email_from"),
    ("DUPLEX_EMAIL_TO", "notifications.email_to"),
];

const TOP_KEYS: &[&str] = &[
    "instance_role",
    "local_db_url",
    "remote_db_url",
    "local_storage_url",
    "remote_storage_url",
    "sync_enabled",
    "sync_interval_minutes",
    "max_concurrent_transfers",
    "max_transfer_rate",
    "tables",
    "replication",
    "daemon",
    "alerts",
    "notifications",
];
const DAEMON_KEYS: &[&str] = &[
    "http_addr",
    "admin_token",
    "monitor_interval_secs",
    "degraded_lag_secs",
    "reconnect_backoff_secs",
    "reconnect_max_secs",
    "reconnect_jitter",
];
const ALERT_KEYS: &[&str] = &[
    "lag_warning_secs",
    "disconnected_critical_secs",
    "retained_wal_warning_bytes",
    "disk_path",
    "disk_free_min_percent",
    "disk_queue_min",
    "queue_warning",
];
const NOTIFICATION_KEYS: &[&str] = &[
    "webhook_url",
    "smtp_url",
    "email_from",
    "email_to",
    "include_warnings",
    "rate_limit_secs",
];
const TABLE_KEYS: &[&str] = &["include", "schema", "exclude"];
const REPLICATION_KEYS: &[&str] = &[
    "user",
    "password",
    "slot_name",
    "peer_host",
    "peer_port",
    "initial_copy_timeout_secs",
];

/// Load the file at `path` (if any), overlay the process environment, and validate.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    load_from(path, &env)
}

/// Like [`load`], with an explicit environment (for tests).
pub fn load_from(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let mut builder = Config::builder();
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError {
                problems: vec![format!(
                    "config file {} does not exist: pass an existing TOML file to --config (see config.example.toml)",
                    path.display()
                )],
            });
        }
        builder = builder.add_source(File::from(path).format(FileFormat::Toml));
    }
    for (var, key) in ENV_KEYS {
        let value = env.get(*var).or_else(|| {
            (*var == "LOCAL_DB_URL")
                .then(|| env.get("DATABASE_URL"))
                .flatten()
        });
        // An empty variable counts as unset (and lets DATABASE_URL stand in).
        let value = value.filter(|v| !v.trim().is_empty()).or_else(|| {
            (*var == "LOCAL_DB_URL")
                .then(|| env.get("DATABASE_URL"))
                .flatten()
                .filter(|v| !v.trim().is_empty())
        });
        if let Some(value) = value {
            builder = builder
                .set_override(*key, value.as_str())
                .map_err(|e| ConfigError {
                    problems: vec![format!("{var}: {e}")],
                })?;
        }
    }
    let raw = builder.build().map_err(|e| ConfigError {
        problems: vec![format!("cannot read configuration: {e}")],
    })?;
    let top: config::Map<String, Value> =
        raw.try_deserialize()
            .map_err(|e: config::ConfigError| ConfigError {
                problems: vec![format!("cannot read configuration: {e}")],
            })?;
    validate(top)
}

struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }
}

fn unknown_keys(
    map: &config::Map<String, Value>,
    known: &[&str],
    section: &str,
    problems: &mut Problems,
) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(format!(
                "unknown key `{section}{key}`: remove it or fix its spelling (known keys: {})",
                known.join(", ")
            ));
        }
    }
}

fn get_string(
    map: &config::Map<String, Value>,
    key: &str,
    label: &str,
    problems: &mut Problems,
) -> Option<String> {
    let value = map.get(key)?;
    match value.clone().into_string() {
        Ok(s) => Some(s),
        Err(_) => {
            problems.push(format!("{label} must be a string"));
            None
        }
    }
}

fn get_positive(
    map: &config::Map<String, Value>,
    key: &str,
    label: &str,
    default: u64,
    problems: &mut Problems,
) -> u64 {
    let Some(value) = map.get(key) else {
        return default;
    };
    match value.clone().into_int() {
        Ok(n) if n > 0 => n as u64,
        Ok(n) => {
            problems.push(format!("{label} must be a positive whole number, got {n}"));
            default
        }
        Err(_) => {
            problems.push(format!(
                "{label} must be a positive whole number, got `{value}`"
            ));
            default
        }
    }
}

fn get_url(
    map: &config::Map<String, Value>,
    key: &str,
    label: &str,
    schemes: &[&str],
    problems: &mut Problems,
) -> Option<SecretUrl> {
    let raw = get_string(map, key, label, problems)?;
    if raw.trim().is_empty() {
        return None;
    }
    match SecretUrl::parse(&raw) {
        Ok(url) if schemes.contains(&url.url().scheme()) && url.url().host_str().is_some() => {
            Some(url)
        }
        Ok(url) => {
            problems.push(format!(
                "{label} is malformed: expected {}://user:password@host:port/... (got scheme `{}`{})",
                schemes[0],
                url.url().scheme(),
                if url.url().host_str().is_none() { " and no host" } else { "" }
            ));
            None
        }
        Err(e) => {
            // Never echo the raw value: it may hold a password.
            problems.push(format!(
                "{label} is malformed: {e}; expected {}://user:password@host:port/...",
                schemes[0]
            ));
            None
        }
    }
}

/// Parse a rate such as `10MB`, `512KiB`, `1048576` into bytes per second.
pub fn parse_rate(raw: &str) -> Result<u64, String> {
    let s = raw.trim().trim_end_matches("/s");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!(
            "`{raw}` is not a rate: use bytes per second, e.g. 10MB or 512KiB or 0 for unlimited"
        )
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{raw}` has an unknown unit `{other}`: use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{raw}` is too large"))
}

fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_table(raw: &str, default_schema: &str) -> Option<TableName> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    Some(match raw.split_once('.') {
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() => TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        },
        Some(_) => return None,
        None => TableName {
            schema: default_schema.to_string(),
            name: raw.to_string(),
        },
    })
}

fn string_list(value: &Value, label: &str, problems: &mut Problems) -> Vec<String> {
    match &value.kind {
        ValueKind::Array(items) => items
            .iter()
            .filter_map(|v| match v.clone().into_string() {
                Ok(s) => Some(s),
                Err(_) => {
                    problems.push(format!("{label} must be a list of names"));
                    None
                }
            })
            .collect(),
        // Environment-style comma-separated lists.
        ValueKind::String(s) => s
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => {
            problems.push(format!("{label} must be a list of names"));
            Vec::new()
        }
    }
}

fn section(
    top: &config::Map<String, Value>,
    name: &str,
    known: &[&str],
    problems: &mut Problems,
) -> config::Map<String, Value> {
    let map = match top.get(name).map(|v| v.clone().into_table()) {
        None => config::Map::new(),
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            problems.push(format!("`{name}` must be a table ([{name}])"));
            config::Map::new()
        }
    };
    unknown_keys(&map, known, &format!("{name}."), problems);
    map
}

fn get_bool(
    map: &config::Map<String, Value>,
    key: &str,
    label: &str,
    default: bool,
    problems: &mut Problems,
) -> bool {
    match map.get(key) {
        None => default,
        Some(v) => v.clone().into_bool().unwrap_or_else(|_| {
            problems.push(format!("{label} must be true or false, got `{v}`"));
            default
        }),
    }
}

fn get_bytes(
    map: &config::Map<String, Value>,
    key: &str,
    label: &str,
    default: u64,
    problems: &mut Problems,
) -> u64 {
    match map.get(key) {
        None => default,
        Some(v) => parse_rate(&v.to_string()).unwrap_or_else(|e| {
            problems.push(format!("{label}: {e}"));
            default
        }),
    }
}

fn get_secret(
    map: &config::Map<String, Value>,
    key: &str,
    label: &str,
    problems: &mut Problems,
) -> Option<Secret> {
    get_string(map, key, label, problems)
        .filter(|s| !s.trim().is_empty())
        .map(Secret::new)
}

fn daemon_settings(top: &config::Map<String, Value>, problems: &mut Problems) -> DaemonSettings {
    let d = section(top, "daemon", DAEMON_KEYS, problems);
    let http_addr = match get_string(&d, "http_addr", "DUPLEX_HTTP_ADDR", problems) {
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 8787)),
        Some(raw) => raw.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "DUPLEX_HTTP_ADDR `{raw}` is not an address: use host:port, e.g. 127.0.0.1:8787"
            ));
            std::net::SocketAddr::from(([127, 0, 0, 1], 8787))
        }),
    };
    let reconnect_backoff_secs = match d.get("reconnect_backoff_secs") {
        None => vec![30, 60, 120, 300, 600],
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
                .filter(|n| *n > 0)
                .collect();
            if parsed.len() != items.len() || parsed.is_empty() {
                problems.push("daemon.reconnect_backoff_secs must be a list of positive whole numbers of seconds, e.g. [30, 60, 120, 300, 600]");
                vec![30, 60, 120, 300, 600]
            } else {
                parsed
            }
        }
    };
    let reconnect_jitter = match d.get("reconnect_jitter") {
        None => 0.1,
        Some(v) => match v.clone().into_float() {
            Ok(f) if (0.0..=1.0).contains(&f) => f,
            _ => {
                problems.push(format!(
                    "daemon.reconnect_jitter must be a fraction between 0 and 1, got `{v}`"
                ));
                0.1
            }
        },
    };
    DaemonSettings {
        http_addr,
        admin_token: get_secret(&d, "admin_token", "DUPLEX_ADMIN_TOKEN", problems),
        monitor_interval_secs: get_positive(
            &d,
            "monitor_interval_secs",
            "DUPLEX_MONITOR_INTERVAL_SECS",
            30,
            problems,
        ),
        degraded_lag_secs: get_positive(
            &d,
            "degraded_lag_secs",
            "daemon.degraded_lag_secs",
            60,
            problems,
        ),
        reconnect_backoff_secs,
        reconnect_max_secs: get_positive(
            &d,
            "reconnect_max_secs",
            "daemon.reconnect_max_secs",
            3600,
            problems,
        ),
        reconnect_jitter,
    }
}

fn alert_settings(top: &config::Map<String, Value>, problems: &mut Problems) -> AlertSettings {
    let a = section(top, "alerts", ALERT_KEYS, problems);
    let disk_free_min_percent = get_positive(
        &a,
        "disk_free_min_percent",
        "alerts.disk_free_min_percent",
        20,
        problems,
    );
    if disk_free_min_percent > 100 {
        problems.push("alerts.disk_free_min_percent must be at most 100");
    }
    AlertSettings {
        lag_warning_secs: get_positive(
            &a,
            "lag_warning_secs",
            "alerts.lag_warning_secs",
            3600,
            problems,
        ),
        disconnected_critical_secs: get_positive(
            &a,
            "disconnected_critical_secs",
            "alerts.disconnected_critical_secs",
            86_400,
            problems,
        ),
        retained_wal_warning_bytes: get_bytes(
            &a,
            "retained_wal_warning_bytes",
            "alerts.retained_wal_warning_bytes",
            5_000_000_000,
            problems,
        ),
        disk_path: get_string(&a, "disk_path", "DUPLEX_DISK_PATH", problems)
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
        disk_free_min_percent,
        disk_queue_min: get_positive(&a, "disk_queue_min", "alerts.disk_queue_min", 100, problems),
        queue_warning: get_positive(&a, "queue_warning", "alerts.queue_warning", 500, problems),
    }
}

fn notification_settings(
    top: &config::Map<String, Value>,
    problems: &mut Problems,
) -> NotificationSettings {
    let n = section(top, "notifications", NOTIFICATION_KEYS, problems);
    NotificationSettings {
        webhook_url: get_secret(&n, "webhook_url", "DUPLEX_WEBHOOK_URL", problems),
        smtp_url: get_secret(&n, "smtp_url", "DUPLEX_SMTP_URL", problems),
        email_from: get_string(&n, "email_from", "DUPLEX_EMAIL_FROM", problems),
        email_to: n
            .get("email_to")
            .map(|v| string_list(v, "DUPLEX_EMAIL_TO", problems))
            .unwrap_or_default(),
        include_warnings: get_bool(
            &n,
            "include_warnings",
            "notifications.include_warnings",
            false,
            problems,
        ),
        rate_limit_secs: get_positive(
            &n,
            "rate_limit_secs",
            "notifications.rate_limit_secs",
            900,
            problems,
        ),
    }
}

fn validate(top: config::Map<String, Value>) -> Result<Settings, ConfigError> {
    let mut problems = Problems(Vec::new());
    unknown_keys(&top, TOP_KEYS, "", &mut problems);

    let role = match get_string(&top, "instance_role", "INSTANCE_ROLE", &mut problems) {
        None => {
            problems.push("INSTANCE_ROLE is not set: set it to `main` (on-site) or `cloud`");
            None
        }
        Some(r) => match r.trim().to_ascii_lowercase().as_str() {
            "main" => Some(Role::Main),
            "cloud" => Some(Role::Cloud),
            other => {
                problems.push(format!(
                    "INSTANCE_ROLE is `{other}`: allowed values are `main` and `cloud`"
                ));
                None
            }
        },
    };

    let pg = &["postgres", "postgresql"];
    let local = get_url(&top, "local_db_url", "LOCAL_DB_URL", pg, &mut problems);
    let blank = |key: &str| top.get(key).is_none_or(|v| v.to_string().trim().is_empty());
    if local.is_none() && blank("local_db_url") {
        problems.push(
            "LOCAL_DB_URL (or DATABASE_URL) is not set: set it to this instance's postgres:// URL",
        );
    }
    let remote = get_url(&top, "remote_db_url", "REMOTE_DB_URL", pg, &mut problems);
    if remote.is_none() && blank("remote_db_url") {
        problems.push("REMOTE_DB_URL is not set: set it to the peer instance's postgres:// URL");
    }
    let s3 = &["http", "https", "s3"];
    let local_storage_url = get_url(
        &top,
        "local_storage_url",
        "LOCAL_STORAGE_URL",
        s3,
        &mut problems,
    );
    let remote_storage_url = get_url(
        &top,
        "remote_storage_url",
        "REMOTE_STORAGE_URL",
        s3,
        &mut problems,
    );

    let sync_enabled = get_bool(&top, "sync_enabled", "SYNC_ENABLED", true, &mut problems);
    let sync_interval_minutes = get_positive(
        &top,
        "sync_interval_minutes",
        "SYNC_INTERVAL_MINUTES",
        5,
        &mut problems,
    );
    let max_concurrent_transfers = get_positive(
        &top,
        "max_concurrent_transfers",
        "MAX_CONCURRENT_TRANSFERS",
        4,
        &mut problems,
    );
    let max_transfer_rate_bytes = get_bytes(
        &top,
        "max_transfer_rate",
        "MAX_TRANSFER_RATE",
        0,
        &mut problems,
    );

    let tables = match top.get("tables").map(|v| v.clone().into_table()) {
        None => TableSelection::Schema {
            schema: "public".into(),
            exclude: Vec::new(),
        },
        Some(Err(_)) => {
            problems
                .push("`tables` must be a table: [tables] with include = [...] or schema/exclude");
            TableSelection::Schema {
                schema: "public".into(),
                exclude: Vec::new(),
            }
        }
        Some(Ok(t)) => {
            unknown_keys(&t, TABLE_KEYS, "tables.", &mut problems);
            let schema = get_string(&t, "schema", "tables.schema", &mut problems)
                .unwrap_or_else(|| "public".into());
            match (t.get("include"), t.get("exclude")) {
                (Some(_), Some(_)) => {
                    problems.push("tables.include and tables.exclude are both set: use either an include list or a schema with exclusions");
                    TableSelection::Schema {
                        schema,
                        exclude: Vec::new(),
                    }
                }
                (Some(inc), None) => {
                    let mut list = Vec::new();
                    for raw in string_list(inc, "tables.include", &mut problems) {
                        match parse_table(&raw, &schema) {
                            Some(t) => list.push(t),
                            None => problems.push(format!("tables.include: `{raw}` is not a table name: write `Table` or `schema.Table`, unquoted")),
                        }
                    }
                    if list.is_empty() {
                        problems.push("tables.include is empty: name at least one table, or remove it to replicate the whole schema");
                    }
                    TableSelection::Include { tables: list }
                }
                (None, exc) => TableSelection::Schema {
                    schema,
                    exclude: exc
                        .map(|e| string_list(e, "tables.exclude", &mut problems))
                        .unwrap_or_default(),
                },
            }
        }
    };

    let repl = section(&top, "replication", REPLICATION_KEYS, &mut problems);
    let user = get_string(&repl, "user", "replication.user", &mut problems)
        .unwrap_or_else(|| "duplex_replicator".into());
    if !valid_slot_name(&user) {
        problems.push(format!(
            "replication.user `{user}` must be 1-63 lower-case letters, digits or underscores"
        ));
    }
    let password = get_string(
        &repl,
        "password",
        "DUPLEX_REPLICATION_PASSWORD",
        &mut problems,
    )
    .filter(|p| !p.is_empty())
    .map(Secret::new);
    let default_slot = match role {
        Some(Role::Main) | None => "duplex_cloud_to_main",
        Some(Role::Cloud) => "duplex_main_to_cloud",
    };
    let slot_name = get_string(&repl, "slot_name", "REPLICATION_SLOT_NAME", &mut problems)
        .unwrap_or_else(|| default_slot.into());
    if !valid_slot_name(&slot_name) || !slot_name.starts_with("duplex_") {
        problems.push(format!(
            "REPLICATION_SLOT_NAME `{slot_name}` must start with `duplex_` and use only lower-case letters, digits and underscores (at most 63)"
        ));
    }
    let peer_host = get_string(&repl, "peer_host", "replication.peer_host", &mut problems);
    let peer_port = repl
        .get("peer_port")
        .and_then(|v| match v.clone().into_int() {
            Ok(p) if (1..=65535).contains(&p) => Some(p as u16),
            _ => {
                problems.push(format!(
                    "replication.peer_port must be a port number, got `{v}`"
                ));
                None
            }
        });
    let initial_copy_timeout_secs = get_positive(
        &repl,
        "initial_copy_timeout_secs",
        "replication.initial_copy_timeout_secs",
        600,
        &mut problems,
    );

    let daemon = daemon_settings(&top, &mut problems);
    let alerts = alert_settings(&top, &mut problems);
    let notifications = notification_settings(&top, &mut problems);

    match (role, local, remote, problems.0.is_empty()) {
        (Some(instance_role), Some(local_db_url), Some(remote_db_url), true) => Ok(Settings {
            instance_role,
            local_db_url,
            remote_db_url,
            local_storage_url,
            remote_storage_url,
            sync_enabled,
            sync_interval_minutes,
            max_concurrent_transfers,
            max_transfer_rate_bytes,
            tables,
            replication: ReplicationSettings {
                user,
                password,
                slot_name,
                peer_host,
                peer_port,
                initial_copy_timeout_secs,
            },
            daemon,
            alerts,
            notifications,
        }),
        _ => {
            if problems.0.is_empty() {
                problems.push("the configuration is incomplete: set INSTANCE_ROLE, LOCAL_DB_URL and REMOTE_DB_URL");
            }
            Err(ConfigError {
                problems: problems.0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const OK: &[(&str, &str)] = &[
        ("INSTANCE_ROLE", "main"),
        ("LOCAL_DB_URL", "postgres://u:p%40ss@127.0.0.1:5432/app"),
        ("REMOTE_DB_URL", "postgres://u:hunter2@10.0.0.1:5432/app"),
    ];

    #[test]
    fn a_minimal_environment_loads_with_defaults() {
        let s = load_from(None, &env(OK)).unwrap();
        assert_eq!(s.instance_role, Role::Main);
        assert_eq!(s.local_db_url.password(), Some("p@ss"));
        assert_eq!(s.replication.slot_name, "duplex_cloud_to_main");
        assert_eq!(s.sync_interval_minutes, 5);
        assert!(s.sync_enabled);
    }

    #[test]
    fn database_url_is_the_fallback_for_local_db_url() {
        let s = load_from(
            None,
            &env(&[
                ("INSTANCE_ROLE", "cloud"),
                ("DATABASE_URL", "postgres://a@h/db"),
                ("REMOTE_DB_URL", "postgres://a@h2/db"),
            ]),
        )
        .unwrap();
        assert_eq!(s.local_db_url.url().host_str(), Some("h"));
        assert_eq!(s.replication.slot_name, "duplex_main_to_cloud");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load_from(
            None,
            &env(&[
                ("INSTANCE_ROLE", "primary"),
                ("LOCAL_DB_URL", "not a url"),
                ("REMOTE_DB_URL", "mysql://x:secretpw@h/db"),
                ("SYNC_INTERVAL_MINUTES", "0"),
                ("MAX_CONCURRENT_TRANSFERS", "-3"),
                ("MAX_TRANSFER_RATE", "fast"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("allowed values are `main` and `cloud`"),
            "{text}"
        );
        assert!(text.contains("LOCAL_DB_URL is malformed"), "{text}");
        assert!(text.contains("REMOTE_DB_URL is malformed"), "{text}");
        assert!(text.contains("SYNC_INTERVAL_MINUTES"), "{text}");
        assert!(text.contains("MAX_CONCURRENT_TRANSFERS"), "{text}");
        assert!(text.contains("MAX_TRANSFER_RATE"), "{text}");
        assert!(!text.contains("secretpw"), "{text}");
        assert_eq!(err.problems.len(), 6, "{text}");
    }

    #[test]
    fn secrets_never_show_in_debug_or_json() {
        let mut e = env(OK);
        e.insert("DUPLEX_REPLICATION_PASSWORD".into(), "s3cr3t-repl".into());
        let s = load_from(None, &e).unwrap();
        let debug = format!("{s:?}");
        let json = serde_json::to_string(&s).unwrap();
        for out in [debug, json] {
            assert!(!out.contains("hunter2"), "{out}");
            assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
            assert!(!out.contains("s3cr3t-repl"), "{out}");
            assert!(out.contains("********"), "{out}");
        }
    }

    #[test]
    fn empty_variables_count_as_unset_and_query_passwords_are_redacted() {
        let err = load_from(
            None,
            &env(&[
                ("INSTANCE_ROLE", "main"),
                ("LOCAL_DB_URL", ""),
                ("REMOTE_DB_URL", "postgres://a@h/db"),
            ]),
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("LOCAL_DB_URL (or DATABASE_URL) is not set"));
        let s = load_from(
            None,
            &env(&[
                ("INSTANCE_ROLE", "main"),
                ("LOCAL_DB_URL", " "),
                (
                    "DATABASE_URL",
                    "postgres://u@h/db?password=hunter2&sslmode=disable",
                ),
                ("REMOTE_DB_URL", "postgres://a@h2/db"),
            ]),
        )
        .unwrap();
        assert_eq!(s.local_db_url.password(), Some("hunter2"));
        let shown = s.local_db_url.redacted();
        assert!(
            !shown.contains("hunter2") && shown.contains("sslmode=disable"),
            "{shown}"
        );
    }

    #[test]
    fn rates_accept_units() {
        assert_eq!(parse_rate("0").unwrap(), 0);
        assert_eq!(parse_rate("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_rate("512KiB").unwrap(), 512 * 1024);
        assert!(parse_rate("10 parsecs").is_err());
    }

    #[test]
    fn quoted_table_names_parse_from_the_include_list() {
        assert_eq!(
            parse_table("JumpLog", "public").unwrap().quoted(),
            "\"public\".\"JumpLog\""
        );
        assert_eq!(
            parse_table("app.user", "public").unwrap().quoted(),
            "\"app\".\"user\""
        );
    }
}
