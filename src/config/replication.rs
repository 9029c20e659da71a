//! `[replication]` and `[tables]`: what replicates and how setup provisions it.

use std::time::Duration;

use serde::Serialize;

use super::keys::{as_secs, string_list, Key, Problems, Section, DAY};
use crate::model::{Role, TableName};
use crate::secret::Secret;

const USER: Key = Key::file("replication.user");
pub(super) const PASSWORD: Key = Key::env("replication.password", "DUPLEX_REPLICATION_PASSWORD");
pub(super) const PEER_PASSWORD: Key = Key::env(
    "replication.peer_password",
    "DUPLEX_PEER_REPLICATION_PASSWORD",
);
pub(super) const SLOT_NAME: Key = Key::env("replication.slot_name", "REPLICATION_SLOT_NAME");
const PEER_HOST: Key = Key::file("replication.peer_host");
const PEER_PORT: Key = Key::file("replication.peer_port");
const INITIAL_COPY_TIMEOUT: Key = Key::file("replication.initial_copy_timeout_secs");
const KEYS: &[Key] = &[
    USER,
    PASSWORD,
    PEER_PASSWORD,
    SLOT_NAME,
    PEER_HOST,
    PEER_PORT,
    INITIAL_COPY_TIMEOUT,
];

const INCLUDE: Key = Key::file("tables.include");
const SCHEMA: Key = Key::file("tables.schema");
const EXCLUDE: Key = Key::file("tables.exclude");
const TABLE_KEYS: &[Key] = &[INCLUDE, SCHEMA, EXCLUDE];

/// Replication provisioning settings (`[replication]` in the file).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationSettings {
    /// Role the peer's subscription logs in as. Default `duplex_replicator`.
    pub user: String,
    /// Its password on this side (`DUPLEX_REPLICATION_PASSWORD`), which the peer's
    /// subscription uses. Required by `duplex setup`.
    pub password: Option<Secret>,
    /// The password of the role on the peer (`DUPLEX_PEER_REPLICATION_PASSWORD`), which this
    /// side's subscription uses. Default: the same as `password`. Set both sides crosswise
    /// to have one password per direction.
    pub peer_password: Option<Secret>,
    /// Slot on the peer that this side's subscription uses (`REPLICATION_SLOT_NAME`).
    /// Default `duplex_cloud_to_main` for main, `duplex_main_to_cloud` for cloud.
    pub slot_name: String,
    /// Host the local server uses to reach the peer for its subscription. Default: the
    /// host of `REMOTE_DB_URL`.
    pub peer_host: Option<String>,
    /// Port for the same. Default: the port of `REMOTE_DB_URL`.
    pub peer_port: Option<u16>,
    /// `initial_copy_timeout_secs`: how long `duplex setup` waits for cloud's initial copy.
    /// Default 600 s.
    #[serde(rename = "initial_copy_timeout_secs", serialize_with = "as_secs")]
    pub initial_copy_timeout: Duration,
}

impl ReplicationSettings {
    /// `role` is `None` when INSTANCE_ROLE is invalid (already reported).
    pub(super) fn parse(
        top: &config::Map<String, config::Value>,
        role: Option<Role>,
        problems: &mut Problems,
    ) -> Self {
        let mut r = Section::table(top, "replication", KEYS, problems);
        let user = r
            .string(&USER)
            .unwrap_or_else(|| "duplex_replicator".into());
        if !valid_slot_name(&user) {
            r.problems.push(format!(
                "replication.user `{user}` must be 1-63 lower-case letters, digits or underscores"
            ));
        }
        let password = r
            .string(&PASSWORD)
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let peer_password = r
            .string(&PEER_PASSWORD)
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let default_slot = match role {
            Some(Role::Main) | None => "duplex_cloud_to_main",
            Some(Role::Cloud) => "duplex_main_to_cloud",
        };
        let slot_name = r.string(&SLOT_NAME).unwrap_or_else(|| default_slot.into());
        if !valid_slot_name(&slot_name) || !slot_name.starts_with("duplex_") {
            let label = r.label(&SLOT_NAME);
            r.problems.push(format!(
                "{label} `{slot_name}` must start with `duplex_` and use only lower-case letters, digits and underscores (at most 63)"
            ));
        }
        let peer_host = r.string(&PEER_HOST);
        let peer_port = r
            .raw(&PEER_PORT)
            .cloned()
            .and_then(|v| match v.clone().into_int() {
                Ok(p) if (1..=65535).contains(&p) => Some(p as u16),
                _ => {
                    r.problems.push(format!(
                        "replication.peer_port must be a port number, got `{v}`"
                    ));
                    None
                }
            });
        ReplicationSettings {
            user,
            password,
            peer_password,
            slot_name,
            peer_host,
            peer_port,
            initial_copy_timeout: r.secs(&INITIAL_COPY_TIMEOUT, 600, 7 * DAY),
        }
    }
}

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

impl TableSelection {
    fn public() -> Self {
        TableSelection::Schema {
            schema: "public".into(),
            exclude: Vec::new(),
        }
    }

    /// `[tables]`; default: schema `public`, nothing excluded.
    pub(super) fn parse(top: &config::Map<String, config::Value>, problems: &mut Problems) -> Self {
        match top.get("tables").map(|v| v.clone().into_table()) {
            None => Self::public(),
            Some(Err(_)) => {
                problems.push(
                    "`tables` must be a table: [tables] with include = [...] or schema/exclude",
                );
                Self::public()
            }
            Some(Ok(_)) => {
                let mut t = Section::table(top, "tables", TABLE_KEYS, problems);
                let schema = t.string(&SCHEMA).unwrap_or_else(|| "public".into());
                match (t.raw(&INCLUDE).cloned(), t.raw(&EXCLUDE).is_some()) {
                    (Some(_), true) => {
                        t.problems.push("tables.include and tables.exclude are both set: use either an include list or a schema with exclusions");
                        TableSelection::Schema {
                            schema,
                            exclude: Vec::new(),
                        }
                    }
                    (Some(inc), false) => {
                        let mut list = Vec::new();
                        for raw in string_list(&inc, INCLUDE.label(), t.problems) {
                            match parse_table(&raw, &schema) {
                                Some(t) => list.push(t),
                                None => t.problems.push(format!("tables.include: `{raw}` is not a table name: write `Table` or `schema.Table`, unquoted")),
                            }
                        }
                        if list.is_empty() {
                            t.problems.push("tables.include is empty: name at least one table, or remove it to replicate the whole schema");
                        }
                        TableSelection::Include { tables: list }
                    }
                    (None, _) => TableSelection::Schema {
                        schema,
                        exclude: t.list(&EXCLUDE).unwrap_or_default(),
                    },
                }
            }
        }
    }
}

pub(super) fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `Table` (in `default_schema`) or `schema.Table`, unquoted.
pub(super) fn parse_table(raw: &str, default_schema: &str) -> Option<TableName> {
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
