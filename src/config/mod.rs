//! Settings: a TOML file overlaid by environment variables, validated all at once.
//!
//! One file per section; each key (its file path and environment variable) is declared
//! once, as a [`keys::Key`] in its section's file. The environment variable names
//! (`INSTANCE_ROLE`, `LOCAL_DB_URL`, ...) are part of duplex's interface;
//! `docs/configuration.md` documents each one.

mod alerts;
mod conflicts;
mod daemon;
mod keys;
mod monitor;
mod notifications;
mod replication;
mod storage;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use config::{Config, File, FileFormat, Value};
use serde::{Serialize, Serializer};

pub use self::alerts::AlertSettings;
pub use self::conflicts::ConflictSettings;
pub use self::daemon::DaemonSettings;
use self::keys::{Key, Problems, Section};
pub use self::monitor::MonitorSettings;
pub use self::notifications::NotificationSettings;
pub use self::replication::{ReplicationSettings, TableSelection};
pub use self::storage::{Endpoint, FileColumns, StorageSettings};
use crate::model::Role;
use crate::secret::SecretUrl;

const INSTANCE_ROLE: Key = Key::env("instance_role", "INSTANCE_ROLE");
const LOCAL_DB_URL: Key = Key::env("local_db_url", "LOCAL_DB_URL");
const REMOTE_DB_URL: Key = Key::env("remote_db_url", "REMOTE_DB_URL");
const LOCAL_MONITOR_URL: Key = Key::env("local_monitor_url", "LOCAL_MONITOR_URL");
const REMOTE_MONITOR_URL: Key = Key::env("remote_monitor_url", "REMOTE_MONITOR_URL");
const LOCAL_STORAGE_URL: Key = Key::env("local_storage_url", "LOCAL_STORAGE_URL");
const REMOTE_STORAGE_URL: Key = Key::env("remote_storage_url", "REMOTE_STORAGE_URL");
const SYNC_ENABLED: Key = Key::env("sync_enabled", "SYNC_ENABLED");
const SYNC_INTERVAL: Key = Key::env("sync_interval_minutes", "SYNC_INTERVAL_MINUTES");
const MAX_CONCURRENT_TRANSFERS: Key =
    Key::env("max_concurrent_transfers", "MAX_CONCURRENT_TRANSFERS");
const MAX_TRANSFER_RATE: Key = Key::env("max_transfer_rate", "MAX_TRANSFER_RATE");
/// Variable that stands in for `LOCAL_DB_URL` when that is unset or empty.
const DATABASE_URL: &str = "DATABASE_URL";
/// Keys and sections of the top level.
const TOP_KEYS: &[&str] = &[
    INSTANCE_ROLE.path,
    LOCAL_DB_URL.path,
    REMOTE_DB_URL.path,
    LOCAL_MONITOR_URL.path,
    REMOTE_MONITOR_URL.path,
    LOCAL_STORAGE_URL.path,
    REMOTE_STORAGE_URL.path,
    SYNC_ENABLED.path,
    SYNC_INTERVAL.path,
    MAX_CONCURRENT_TRANSFERS.path,
    MAX_TRANSFER_RATE.path,
    "tables",
    "replication",
    "daemon",
    "alerts",
    "notifications",
    "conflicts",
    "monitor",
    "storage",
];

/// The environment variables duplex reads, with the config key each overrides.
pub const ENV_KEYS: &[(&str, &str)] = &[
    INSTANCE_ROLE.env_pair(),
    LOCAL_DB_URL.env_pair(),
    REMOTE_DB_URL.env_pair(),
    LOCAL_MONITOR_URL.env_pair(),
    REMOTE_MONITOR_URL.env_pair(),
    LOCAL_STORAGE_URL.env_pair(),
    REMOTE_STORAGE_URL.env_pair(),
    SYNC_ENABLED.env_pair(),
    SYNC_INTERVAL.env_pair(),
    MAX_CONCURRENT_TRANSFERS.env_pair(),
    replication::SLOT_NAME.env_pair(),
    MAX_TRANSFER_RATE.env_pair(),
    storage::LOCAL_KEY_ID.env_pair(),
    storage::LOCAL_SECRET.env_pair(),
    storage::REMOTE_KEY_ID.env_pair(),
    storage::REMOTE_SECRET.env_pair(),
    replication::PASSWORD.env_pair(),
    replication::PEER_PASSWORD.env_pair(),
    monitor::PASSWORD.env_pair(),
    daemon::HTTP_ADDR.env_pair(),
    daemon::ADMIN_TOKEN.env_pair(),
    daemon::TLS_CERT.env_pair(),
    daemon::TLS_KEY.env_pair(),
    daemon::TLS_CA.env_pair(),
    daemon::MONITOR_INTERVAL.env_pair(),
    alerts::DISK_PATH.env_pair(),
    notifications::WEBHOOK_URL.env_pair(),
    notifications::SMTP_URL.env_pair(),
    notifications::EMAIL_FROM.env_pair(),
    notifications::EMAIL_TO.env_pair(),
];

/// The validated configuration of one duplex process.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `INSTANCE_ROLE`: `main` or `cloud`. Required.
    pub instance_role: Role,
    /// `LOCAL_DB_URL` (or `DATABASE_URL`): the instance duplex runs beside. Required.
    pub local_db_url: SecretUrl,
    /// `REMOTE_DB_URL`: the peer instance. Required.
    pub remote_db_url: SecretUrl,
    /// `LOCAL_MONITOR_URL`: the low-privilege login for everything but `duplex setup`.
    /// Default: `LOCAL_DB_URL`.
    pub local_monitor_url: Option<SecretUrl>,
    /// `REMOTE_MONITOR_URL`: likewise for the peer. Default: `REMOTE_DB_URL`.
    pub remote_monitor_url: Option<SecretUrl>,
    /// `LOCAL_STORAGE_URL`: this side's object store (S3-compatible endpoint, bucket and
    /// prefix, or `file:///dir`); parsed into `storage.local`.
    pub local_storage_url: Option<SecretUrl>,
    /// `REMOTE_STORAGE_URL`: the peer's store; parsed into `storage.remote`.
    pub remote_storage_url: Option<SecretUrl>,
    /// `SYNC_ENABLED`: whether workers that move data run. Default true.
    pub sync_enabled: bool,
    /// `SYNC_INTERVAL_MINUTES`: period of the storage/conflict sync cycle. Default 5 min.
    #[serde(rename = "sync_interval_minutes", serialize_with = "as_minutes")]
    pub sync_interval: Duration,
    /// `MAX_CONCURRENT_TRANSFERS`: parallel object transfers. Default 3.
    pub max_concurrent_transfers: u64,
    /// `MAX_TRANSFER_RATE`: bytes per second across transfers (`10MB`, `512KiB`); 0 means
    /// unlimited. Default 0. Shown under its key, `max_transfer_rate`, in bytes per second.
    #[serde(rename = "max_transfer_rate")]
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
    /// Conflict policies and housekeeping.
    pub conflicts: ConflictSettings,
    /// The monitoring role setup creates.
    pub monitor: MonitorSettings,
    /// The object-storage mirror.
    pub storage: StorageSettings,
}

impl Settings {
    /// The local login of everything but `duplex setup`: `LOCAL_MONITOR_URL`, else
    /// `LOCAL_DB_URL`.
    pub fn local_monitor(&self) -> &SecretUrl {
        self.local_monitor_url
            .as_ref()
            .unwrap_or(&self.local_db_url)
    }

    /// The variable that holds [`Self::local_monitor`].
    pub fn local_monitor_var(&self) -> &'static str {
        match self.local_monitor_url {
            Some(_) => "LOCAL_MONITOR_URL",
            None => "LOCAL_DB_URL",
        }
    }

    /// The variable that holds [`Self::remote_monitor`].
    pub fn remote_monitor_var(&self) -> &'static str {
        match self.remote_monitor_url {
            Some(_) => "REMOTE_MONITOR_URL",
            None => "REMOTE_DB_URL",
        }
    }

    /// The peer login of everything but `duplex setup`: `REMOTE_MONITOR_URL`, else
    /// `REMOTE_DB_URL`.
    pub fn remote_monitor(&self) -> &SecretUrl {
        self.remote_monitor_url
            .as_ref()
            .unwrap_or(&self.remote_db_url)
    }
}

fn as_minutes<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs() / 60)
}

/// Every problem found in the configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// One sentence each: what is wrong and what to do.
    pub problems: Vec<String>,
}

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
    let (top, from_env) = read(path, env)?;
    validate(top, from_env)
}

/// What `duplex pause|resume|trigger` need: the daemon's API address and admin token.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `DUPLEX_HTTP_ADDR` (`daemon.http_addr`). Default `127.0.0.1:8787`.
    pub http_addr: std::net::SocketAddr,
    /// `DUPLEX_ADMIN_TOKEN` (`daemon.admin_token`).
    pub admin_token: Option<crate::secret::Secret>,
    /// When the API speaks TLS: the CA file its certificate is verified with.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Load only the `[daemon]` section (file, then environment): the reduced configuration of
/// the commands that talk to a running daemon and need no database.
pub fn load_api(path: Option<&Path>) -> Result<ApiSettings, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (top, from_env) = read(path, &env)?;
    let mut problems = Problems {
        from_env,
        ..Problems::default()
    };
    let daemon = DaemonSettings::parse(&top, &mut problems);
    if problems.list.is_empty() {
        Ok(ApiSettings {
            http_addr: daemon.http_addr,
            tls_ca: daemon.client_tls(),
            admin_token: daemon.admin_token,
        })
    } else {
        Err(ConfigError {
            problems: problems.list,
        })
    }
}

/// Keys whose values are secrets (URLs with passwords, tokens): [`view`] never shows them.
const SECRET_PATHS: &[&str] = &[
    LOCAL_DB_URL.path,
    REMOTE_DB_URL.path,
    LOCAL_MONITOR_URL.path,
    REMOTE_MONITOR_URL.path,
    LOCAL_STORAGE_URL.path,
    REMOTE_STORAGE_URL.path,
    storage::LOCAL_SECRET.path,
    storage::REMOTE_SECRET.path,
    replication::PASSWORD.path,
    replication::PEER_PASSWORD.path,
    monitor::PASSWORD.path,
    daemon::ADMIN_TOKEN.path,
    notifications::WEBHOOK_URL.path,
    notifications::SMTP_URL.path,
];

/// What `duplex config show` prints: the effective configuration when it is valid; else
/// the values that could be read (secrets redacted) together with the problems.
pub fn view(path: Option<&Path>) -> Result<serde_json::Value, (serde_json::Value, ConfigError)> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    view_from(path, &env)
}

/// Like [`view`], with an explicit environment (for tests).
pub fn view_from(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<serde_json::Value, (serde_json::Value, ConfigError)> {
    let (top, from_env) = match read(path, env) {
        Ok(r) => r,
        Err(e) => return Err((serde_json::Value::Null, e)),
    };
    match validate(top.clone(), from_env) {
        Ok(s) => serde_json::to_value(&s).map_err(|e| {
            (
                serde_json::Value::Null,
                ConfigError {
                    problems: vec![format!("cannot render the configuration: {e}")],
                },
            )
        }),
        Err(e) => {
            let mut raw = serde_json::Map::new();
            for (k, v) in top {
                raw.insert(k.clone(), redact_raw(&k, v));
            }
            Err((serde_json::Value::Object(raw), e))
        }
    }
}

/// A raw value as JSON, with the values of [`SECRET_PATHS`] redacted.
fn redact_raw(path: &str, v: Value) -> serde_json::Value {
    if SECRET_PATHS.contains(&path) {
        return match v.clone().into_string() {
            Ok(s) if path.ends_with("_url") => match SecretUrl::parse(&s) {
                Ok(u) => serde_json::Value::String(u.redacted()),
                Err(_) => serde_json::Value::String("******** (not a URL)".into()),
            },
            _ => serde_json::Value::String("********".into()),
        };
    }
    match v.kind {
        config::ValueKind::Table(t) => serde_json::Value::Object(
            t.into_iter()
                .map(|(k, v)| {
                    let sub = redact_raw(&format!("{path}.{k}"), v);
                    (k, sub)
                })
                .collect(),
        ),
        config::ValueKind::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(|v| redact_raw(path, v)).collect())
        }
        config::ValueKind::Nil => serde_json::Value::Null,
        config::ValueKind::Boolean(b) => b.into(),
        config::ValueKind::I64(n) => n.into(),
        config::ValueKind::I128(n) => n.to_string().into(),
        config::ValueKind::U64(n) => n.into(),
        config::ValueKind::U128(n) => n.to_string().into(),
        config::ValueKind::Float(f) => f.into(),
        config::ValueKind::String(s) => s.into(),
    }
}

/// The file at `path` (if any) overlaid by the environment, unvalidated, and the paths the
/// environment set.
fn read(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<
    (
        config::Map<String, Value>,
        std::collections::BTreeSet<&'static str>,
    ),
    ConfigError,
> {
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
    let mut from_env = std::collections::BTreeSet::new();
    for (var, key) in ENV_KEYS {
        let value = env.get(*var).or_else(|| {
            (*var == "LOCAL_DB_URL")
                .then(|| env.get(DATABASE_URL))
                .flatten()
        });
        // An empty variable counts as unset (and lets DATABASE_URL stand in).
        let value = value.filter(|v| !v.trim().is_empty()).or_else(|| {
            (*var == "LOCAL_DB_URL")
                .then(|| env.get(DATABASE_URL))
                .flatten()
                .filter(|v| !v.trim().is_empty())
        });
        if let Some(value) = value {
            from_env.insert(*key);
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
    Ok((top, from_env))
}

fn validate(
    top: config::Map<String, Value>,
    from_env: std::collections::BTreeSet<&'static str>,
) -> Result<Settings, ConfigError> {
    let mut problems = Problems {
        from_env,
        ..Problems::default()
    };
    let mut t = Section::top(top.clone(), TOP_KEYS, &mut problems);
    // Role names are read case-insensitively and trimmed (`Main`, ` cloud `), as
    // docs/configuration.md says.
    let role = match t.string(&INSTANCE_ROLE) {
        None => {
            t.problems
                .push("INSTANCE_ROLE is not set: set it to `main` (on-site) or `cloud`");
            None
        }
        Some(r) => match r.trim().to_ascii_lowercase().as_str() {
            "main" => Some(Role::Main),
            "cloud" => Some(Role::Cloud),
            _ => {
                let label = t.label(&INSTANCE_ROLE);
                t.problems.push(format!(
                    "{label} is `{}`: allowed values are `main` and `cloud`",
                    r.trim()
                ));
                None
            }
        },
    };
    let pg = &["postgres", "postgresql"];
    let blank =
        |t: &Section<'_>, key: &Key| t.raw(key).is_none_or(|v| v.to_string().trim().is_empty());
    let local = t.url(&LOCAL_DB_URL, pg);
    if local.is_none() && blank(&t, &LOCAL_DB_URL) {
        t.problems.push(
            "LOCAL_DB_URL (or DATABASE_URL) is not set: set it to this instance's postgres:// URL",
        );
    }
    let remote = t.url(&REMOTE_DB_URL, pg);
    if remote.is_none() && blank(&t, &REMOTE_DB_URL) {
        t.problems
            .push("REMOTE_DB_URL is not set: set it to the peer instance's postgres:// URL");
    }
    let local_monitor_url = t.url(&LOCAL_MONITOR_URL, pg);
    let remote_monitor_url = t.url(&REMOTE_MONITOR_URL, pg);
    let storage_url = |t: &mut Section<'_>, key: &Key| {
        let raw = t.string(key).filter(|v| !v.trim().is_empty())?;
        Some((t.label(key), raw))
    };
    let local_storage_raw = storage_url(&mut t, &LOCAL_STORAGE_URL);
    let remote_storage_raw = storage_url(&mut t, &REMOTE_STORAGE_URL);
    // Printable forms (password redacted); `storage` holds the parsed endpoints.
    let local_storage_url = local_storage_raw
        .as_ref()
        .and_then(|(_, r)| SecretUrl::parse(r.trim()).ok());
    let remote_storage_url = remote_storage_raw
        .as_ref()
        .and_then(|(_, r)| SecretUrl::parse(r.trim()).ok());
    let sync_enabled = t.bool(&SYNC_ENABLED, true);
    // Bounded, so the minutes-to-seconds product cannot overflow.
    let sync_interval = Duration::from_secs(t.whole(&SYNC_INTERVAL, 5, 1440, " (1 day)") * 60);
    let max_concurrent_transfers = t.positive(&MAX_CONCURRENT_TRANSFERS, 3, 256);
    let max_transfer_rate_bytes = t.bytes(&MAX_TRANSFER_RATE, 0);
    let tables = TableSelection::parse(&top, &mut problems);
    let replication = ReplicationSettings::parse(&top, role, &mut problems);
    let daemon = DaemonSettings::parse(&top, &mut problems);
    let alerts = AlertSettings::parse(&top, &mut problems);
    let notifications = NotificationSettings::parse(&top, &mut problems);
    let conflicts = ConflictSettings::parse(&top, &mut problems);
    let monitor = MonitorSettings::parse(&top, &mut problems);
    let storage =
        StorageSettings::parse(&top, local_storage_raw, remote_storage_raw, &mut problems);

    match (role, local, remote, problems.list.is_empty()) {
        (Some(instance_role), Some(local_db_url), Some(remote_db_url), true) => Ok(Settings {
            instance_role,
            local_db_url,
            remote_db_url,
            local_monitor_url,
            remote_monitor_url,
            local_storage_url,
            remote_storage_url,
            sync_enabled,
            sync_interval,
            max_concurrent_transfers,
            max_transfer_rate_bytes,
            tables,
            replication,
            daemon,
            alerts,
            notifications,
            conflicts,
            monitor,
            storage,
        }),
        _ => {
            if problems.list.is_empty() {
                problems.push("the configuration is incomplete: set INSTANCE_ROLE, LOCAL_DB_URL and REMOTE_DB_URL");
            }
            Err(ConfigError {
                problems: problems.list,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keys::parse_rate;
    use super::replication::parse_table;
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
        assert_eq!(s.sync_interval, std::time::Duration::from_secs(5 * 60));
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
    fn role_names_are_read_in_any_case_and_trimmed() {
        for raw in ["Main", " MAIN ", "main\n"] {
            let mut e = env(OK);
            e.insert("INSTANCE_ROLE".into(), raw.into());
            assert_eq!(
                load_from(None, &e).unwrap().instance_role,
                Role::Main,
                "{raw:?}"
            );
        }
        let mut e = env(OK);
        e.insert("INSTANCE_ROLE".into(), "ma in".into());
        let text = load_from(None, &e).unwrap_err().to_string();
        assert!(text.contains("INSTANCE_ROLE is `ma in`"), "{text}");
    }

    fn file_with(body: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "duplex-unit-{}-{}.toml",
            std::process::id(),
            body.len()
        ));
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn a_bad_value_is_named_by_the_source_that_set_it() {
        let path = file_with("[daemon]\nmonitor_interval_secs = 0\n");
        let from_file = load_from(Some(&path), &env(OK)).unwrap_err().to_string();
        let mut e = env(OK);
        e.insert("DUPLEX_MONITOR_INTERVAL_SECS".into(), "-5".into());
        let from_env = load_from(Some(&path), &e).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            from_file.contains("daemon.monitor_interval_secs must be a positive whole number"),
            "{from_file}"
        );
        assert!(
            !from_file.contains("DUPLEX_MONITOR_INTERVAL_SECS"),
            "{from_file}"
        );
        assert!(
            from_env.contains("DUPLEX_MONITOR_INTERVAL_SECS must be a positive whole number"),
            "{from_env}"
        );
    }

    #[test]
    fn sync_log_retention_defaults_to_30_days_and_a_bad_value_names_the_key() {
        assert_eq!(
            load_from(None, &env(OK))
                .unwrap()
                .daemon
                .sync_log_retention_days,
            30
        );
        let shown = view_from(None, &env(OK)).unwrap();
        assert_eq!(shown["daemon"]["sync_log_retention_days"], 30, "{shown}");
        for (raw, ok) in [
            ("7", Some(7)),
            ("0", None),
            ("-1", None),
            ("\"a month\"", None),
        ] {
            let path = std::env::temp_dir()
                .join(format!("duplex-unit-retention-{}.toml", std::process::id()));
            std::fs::write(
                &path,
                format!("[daemon]\nsync_log_retention_days = {raw}\n"),
            )
            .unwrap();
            let loaded = load_from(Some(&path), &env(OK));
            std::fs::remove_file(&path).unwrap();
            match (loaded, ok) {
                (Ok(s), Some(days)) => assert_eq!(s.daemon.sync_log_retention_days, days),
                (Err(e), None) => assert!(
                    e.to_string()
                        .contains("daemon.sync_log_retention_days must be a positive whole number"),
                    "{raw}: {e}"
                ),
                (r, _) => panic!("{raw}: unexpected {r:?}"),
            }
        }
    }

    #[test]
    fn numbers_too_large_to_compute_with_are_refused_naming_the_key_and_range() {
        let path = file_with(
            "[daemon]\ndegraded_lag_secs = 9223372036854775807\nmonitor_interval_secs = 3601\nreconnect_backoff_secs = [30, 86401]\n\n[alerts]\nlag_warning_secs = 9223372036854775807\ndisk_free_min_percent = 101\n\n[conflicts]\ntombstone_retention_secs = 9223372036854775807\n",
        );
        let mut e = env(OK);
        e.insert("SYNC_INTERVAL_MINUTES".into(), "9223372036854775807".into());
        let text = load_from(Some(&path), &e).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        for expected in [
            "daemon.degraded_lag_secs must be a positive whole number up to 604800 (7 days), got 9223372036854775807",
            "daemon.monitor_interval_secs must be a positive whole number up to 3600 (1 hour), got 3601",
            "daemon.reconnect_backoff_secs must be a list of positive whole numbers of seconds up to 86400 (1 day)",
            "alerts.lag_warning_secs must be a positive whole number up to 2592000 (30 days)",
            "alerts.disk_free_min_percent must be a positive whole number up to 100, got 101",
            "conflicts.tombstone_retention_secs must be a positive whole number up to 31536000 (365 days)",
            "SYNC_INTERVAL_MINUTES must be a positive whole number up to 1440 (1 day), got 9223372036854775807",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        // The largest allowed values load.
        let path =
            file_with("[daemon]\ndegraded_lag_secs = 604800\nhttp_max_connections = 65536\n");
        let s = load_from(Some(&path), &env(OK)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.daemon.degraded_lag.as_secs(), 604_800);
        assert_eq!(s.daemon.http_max_connections, 65_536);
    }

    #[test]
    fn duplex_run_refuses_an_admin_token_shorter_than_32_characters_without_showing_it() {
        let mut e = env(OK);
        e.insert("DUPLEX_ADMIN_TOKEN".into(), "short-token-s3cr3t".into());
        let s = load_from(None, &e).unwrap();
        let problems = s.daemon.serve_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("DUPLEX_ADMIN_TOKEN is 18 characters long")
                && problems[0].contains("at least 32 characters"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("s3cr3t"), "{problems:?}");
        e.insert("DUPLEX_ADMIN_TOKEN".into(), "x".repeat(32));
        assert!(load_from(None, &e)
            .unwrap()
            .daemon
            .serve_problems()
            .is_empty());
        // Unset: the admin API is off, which `duplex run` allows (with a warning).
        assert!(load_from(None, &env(OK))
            .unwrap()
            .daemon
            .serve_problems()
            .is_empty());
    }

    #[test]
    fn the_view_of_an_invalid_configuration_shows_what_was_read_redacted() {
        let path =
            file_with("max_transfer_rate = \"fast\"\n[daemon]\nadmin_token = \"tok-secret\"\n");
        let (raw, err) = view_from(Some(&path), &env(OK)).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let shown = raw.to_string();
        assert_eq!(raw["instance_role"], "main", "{shown}");
        assert_eq!(raw["max_transfer_rate"], "fast", "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-secret"),
            "{shown}"
        );
        assert!(shown.contains("********"), "{shown}");
        assert!(err.to_string().contains("max_transfer_rate"), "{err}");
    }

    #[test]
    fn the_view_of_a_valid_configuration_uses_config_keys() {
        let shown = view_from(None, &env(OK)).unwrap();
        assert!(shown.get("max_transfer_rate").is_some(), "{shown}");
        assert!(shown.get("max_transfer_rate_bytes").is_none(), "{shown}");
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
