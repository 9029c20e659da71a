//! Catalog queries about replication objects: one function per query.

use tokio_postgres::Client;

use crate::model::TableName;
use crate::pg::{Context, Error};

/// Server facts that decide whether logical replication can work.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 180006.
    pub version_num: i32,
    /// `server_version`, e.g. `18.6`.
    pub version: String,
    /// `wal_level`.
    pub wal_level: String,
    /// `track_commit_timestamp` (`on`/`off`).
    pub track_commit_timestamp: String,
    /// `max_replication_slots`.
    pub max_replication_slots: i32,
    /// `max_wal_senders`.
    pub max_wal_senders: i32,
    /// The database duplex is connected to.
    pub database: String,
}

/// Read [`ServerInfo`].
pub async fn server_info(client: &Client) -> Result<ServerInfo, Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    current_setting('server_version'),
                    current_setting('wal_level'),
                    current_setting('track_commit_timestamp'),
                    current_setting('max_replication_slots')::int,
                    current_setting('max_wal_senders')::int,
                    current_database()::text",
            &[],
        )
        .await
        .context("reading server settings")?;
    Ok(ServerInfo {
        version_num: row.get(0),
        version: row.get(1),
        wal_level: row.get(2),
        track_commit_timestamp: row.get(3),
        max_replication_slots: row.get(4),
        max_wal_senders: row.get(5),
        database: row.get(6),
    })
}

/// Ordinary and partitioned tables of `schema` (not partitions), sorted.
pub async fn schema_tables(client: &Client, schema: &str) -> Result<Vec<String>, Error> {
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              ORDER BY 1",
            &[&schema],
        )
        .await
        .context("listing tables")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// One column's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// `format_type` of its type, e.g. `timestamp(3) without time zone`.
    pub type_name: String,
    /// `NOT NULL`?
    pub not_null: bool,
}

/// What replication needs to know about a table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `relreplident`: `d` default (primary key), `i` index, `f` full, `n` nothing.
    pub replica_identity: String,
    /// Whether the table has a primary key.
    pub has_primary_key: bool,
    /// Whether an index is marked as replica identity.
    pub has_identity_index: bool,
    /// Columns in order.
    pub columns: Vec<Column>,
}

impl TableInfo {
    /// Whether UPDATE and DELETE can replicate: a key identifies each row.
    pub fn identity_usable(&self) -> bool {
        match self.replica_identity.as_str() {
            "d" => self.has_primary_key,
            "i" => self.has_identity_index,
            "f" => true,
            _ => false,
        }
    }
}

/// Read [`TableInfo`] for `table`, or `None` when it does not exist.
pub async fn table_info(client: &Client, table: &TableName) -> Result<Option<TableInfo>, Error> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .context(format!("looking up table {table}"))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull
               FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&oid],
        )
        .await
        .context(format!("reading columns of {table}"))?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
        })
        .collect();
    Ok(Some(TableInfo {
        replica_identity: row.get(1),
        has_primary_key: row.get(2),
        has_identity_index: row.get(3),
        columns,
    }))
}

/// Tables of publication `name`, or `None` when it does not exist.
pub async fn publication_tables(
    client: &Client,
    name: &str,
) -> Result<Option<Vec<TableName>>, Error> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .context("looking up publication")?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let mut tables: Vec<TableName> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .context("listing publication tables")?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    tables.sort();
    Ok(Some(tables))
}

/// A subscription in the connected database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Subscription {
    /// Subscription name.
    pub name: String,
    /// `subenabled`.
    pub enabled: bool,
    /// Slot on the publisher, if any.
    pub slot_name: Option<String>,
    /// PID of the apply worker, when one runs.
    pub worker_pid: Option<i32>,
    /// Tables with their sync state (`i` init, `d` copying, `f`/`s` syncing, `r` ready).
    pub tables: Vec<(TableName, String)>,
    /// Publications it subscribes to.
    pub publications: Vec<String>,
}

impl Subscription {
    /// True when every table finished its initial copy.
    pub fn initial_copy_done(&self) -> bool {
        self.tables.iter().all(|(_, s)| s == "r")
    }
}

/// The connection string of subscription `name` of the connected database; `None` when
/// there is no such subscription or this login may not read it (superuser only).
pub async fn subscription_conninfo(client: &Client, name: &str) -> Result<Option<String>, Error> {
    match client
        .query_opt(
            "SELECT subconninfo FROM pg_subscription
              WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
    {
        Ok(row) => Ok(row.map(|r| r.get(0))),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(None)
        }
        Err(e) => Err(e).context("reading a subscription's connection string"),
    }
}

/// Whether the walsender streaming from slot `slot` uses TLS, with the protocol version;
/// `None` when no walsender holds the slot.
pub async fn stream_tls(
    client: &Client,
    slot: &str,
) -> Result<Option<(bool, Option<String>)>, Error> {
    Ok(client
        .query_opt(
            "SELECT s.ssl, s.version FROM pg_replication_slots r
               JOIN pg_stat_ssl s ON s.pid = r.active_pid
              WHERE r.slot_name = $1",
            &[&slot],
        )
        .await
        .context("reading pg_stat_ssl for the walsender")?
        .map(|r| (r.get(0), r.get(1))))
}

/// `pg_hba.conf` lines that let `user` in beyond one application database: to physical
/// replication (`replication`) or to every database (`all`), as (line, type, databases,
/// users, address). `None` when this login may not read `pg_hba_file_rules`.
pub async fn broad_hba_lines(
    client: &Client,
    user: &str,
) -> Result<Option<Vec<(i32, String, String, String, String)>>, Error> {
    let rows = match client
        .query(
            "SELECT line_number, type, array_to_string(database, ','),
                    array_to_string(user_name, ','), coalesce(address, '')
               FROM pg_hba_file_rules
              WHERE error IS NULL AND type <> 'local'
                AND ('replication' = ANY(database) OR 'all' = ANY(database))
                AND ('all' = ANY(user_name) OR $1 = ANY(user_name))
                AND auth_method <> 'reject'
              ORDER BY line_number",
            &[&user],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Ok(None)
        }
        Err(e) => return Err(e).context("reading pg_hba_file_rules"),
    };
    Ok(Some(
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect(),
    ))
}

/// The session's user and whether it is a superuser.
pub async fn current_login(client: &Client) -> Result<(String, bool), Error> {
    let r = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .context("reading the current login")?;
    Ok((r.get(0), r.get(1)))
}

/// Login roles that can read `pg_subscription.subconninfo`: superusers, and the other
/// members of `pg_read_all_data`, each as a comma-separated list.
pub async fn conninfo_readers(client: &Client) -> Result<(String, String), Error> {
    let row = client
        .query_one(
            "SELECT coalesce(string_agg(rolname, ', ' ORDER BY rolname) FILTER (WHERE rolsuper), ''),
                    coalesce(string_agg(rolname, ', ' ORDER BY rolname)
                      FILTER (WHERE NOT rolsuper AND pg_has_role(oid, 'pg_read_all_data', 'MEMBER')), '')
               FROM pg_roles WHERE rolcanlogin",
            &[],
        )
        .await
        .context("listing the roles that can read subscription connection strings")?;
    Ok((row.get(0), row.get(1)))
}

/// Read subscription `name` of the connected database, or `None`.
pub async fn subscription(client: &Client, name: &str) -> Result<Option<Subscription>, Error> {
    let Some(row) = client
        .query_opt(
            "SELECT s.oid, s.subenabled, s.subslotname::text,
                    (SELECT st.pid FROM pg_stat_subscription st
                      WHERE st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL LIMIT 1),
                    s.subpublications::text[]
               FROM pg_subscription s
              WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .context("looking up subscription")?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let tables = client
        .query(
            "SELECT n.nspname::text, c.relname::text, r.srsubstate::text
               FROM pg_subscription_rel r
               JOIN pg_class c ON c.oid = r.srrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.srsubid = $1 ORDER BY 1, 2",
            &[&oid],
        )
        .await
        .context("reading subscription tables")?
        .iter()
        .map(|r| {
            (
                TableName {
                    schema: r.get(0),
                    name: r.get(1),
                },
                r.get(2),
            )
        })
        .collect();
    Ok(Some(Subscription {
        name: name.to_string(),
        enabled: row.get(1),
        slot_name: row.get(2),
        worker_pid: row.get(3),
        publications: row.get(4),
        tables,
    }))
}

/// A replication slot on the connected server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Slot {
    /// Slot name.
    pub name: String,
    /// A walsender is streaming from it.
    pub active: bool,
    /// `wal_status`: `reserved`, `extended`, `unreserved`, `lost`.
    pub wal_status: Option<String>,
    /// WAL the slot still has to send: current LSN minus `confirmed_flush_lsn`.
    pub pending_bytes: Option<i64>,
    /// WAL kept on disk for it: current LSN minus `restart_lsn`.
    pub retained_bytes: Option<i64>,
}

/// Read slot `name`, or `None`.
pub async fn slot(client: &Client, name: &str) -> Result<Option<Slot>, Error> {
    let row = client
        .query_opt(
            "SELECT active, wal_status,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .context("looking up replication slot")?;
    Ok(row.map(|r| Slot {
        name: name.to_string(),
        active: r.get(0),
        wal_status: r.get(1),
        pending_bytes: r.get(2),
        retained_bytes: r.get(3),
    }))
}

/// Attributes of a role.
#[derive(Debug, Clone)]
pub struct RoleInfo {
    /// `rolcanlogin`.
    pub login: bool,
    /// `rolreplication`.
    pub replication: bool,
}

/// Read role `name`, or `None`.
pub async fn role(client: &Client, name: &str) -> Result<Option<RoleInfo>, Error> {
    Ok(client
        .query_opt(
            "SELECT rolcanlogin, rolreplication FROM pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .context("looking up role")?
        .map(|r| RoleInfo {
            login: r.get(0),
            replication: r.get(1),
        }))
}

/// The tables of `tables` that `role` cannot SELECT (the role must exist).
pub async fn tables_without_select(
    client: &Client,
    role: &str,
    tables: &[TableName],
) -> Result<Vec<TableName>, Error> {
    let mut missing = Vec::new();
    for t in tables {
        let ok: bool = client
            .query_one(
                "SELECT has_table_privilege($1, format('%I.%I', $2::text, $3::text), 'SELECT')",
                &[&role, &t.schema, &t.name],
            )
            .await
            .context("checking table privileges")?
            .get(0);
        if !ok {
            missing.push(t.clone());
        }
    }
    Ok(missing)
}

/// Whether `role` has USAGE on `schema`.
pub async fn has_schema_usage(client: &Client, role: &str, schema: &str) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT has_schema_privilege($1, $2, 'USAGE')",
            &[&role, &schema],
        )
        .await
        .context("checking schema privileges")?
        .get(0))
}

/// Whether `role` may connect to the current database.
pub async fn has_connect(client: &Client, role: &str) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT has_database_privilege($1, current_database(), 'CONNECT')",
            &[&role],
        )
        .await
        .context("checking database privileges")?
        .get(0))
}

/// Names of duplex's logical slots (`duplex_%`) that belong to the connected database.
pub async fn duplex_slots_in_database(client: &Client) -> Result<Vec<String>, Error> {
    Ok(client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots
              WHERE slot_type = 'logical' AND database = current_database()
                AND slot_name LIKE 'duplex\\_%'
              ORDER BY 1",
            &[],
        )
        .await
        .context("listing duplex slots")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The publisher's walsender for one subscription (`pg_stat_replication`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sender {
    /// `state`, e.g. `streaming`, `catchup`.
    pub state: Option<String>,
    /// `sync_state`, e.g. `async`.
    pub sync_state: Option<String>,
    /// LSNs as text.
    pub sent_lsn: Option<String>,
    /// LSN written by the subscriber.
    pub write_lsn: Option<String>,
    /// LSN flushed by the subscriber.
    pub flush_lsn: Option<String>,
    /// LSN applied by the subscriber.
    pub replay_lsn: Option<String>,
    /// `write_lag` in ms.
    pub write_lag_ms: Option<i64>,
    /// `flush_lag` in ms.
    pub flush_lag_ms: Option<i64>,
    /// `replay_lag` in ms.
    pub replay_lag_ms: Option<i64>,
}

/// The walsender streaming from slot `slot_name`, if any. (Matched through the slot, not
/// `application_name`: every database's subscription has the same name.)
pub async fn sender(client: &Client, slot_name: &str) -> Result<Option<Sender>, Error> {
    let row = client
        .query_opt(
            "SELECT state, sync_state, sent_lsn::text, write_lsn::text, flush_lsn::text,
                    replay_lsn::text,
                    (extract(epoch FROM write_lag) * 1000)::bigint,
                    (extract(epoch FROM flush_lag) * 1000)::bigint,
                    (extract(epoch FROM replay_lag) * 1000)::bigint
               FROM pg_stat_replication
              WHERE pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot_name],
        )
        .await
        .context("reading pg_stat_replication")?;
    Ok(row.map(|r| Sender {
        state: r.get(0),
        sync_state: r.get(1),
        sent_lsn: r.get(2),
        write_lsn: r.get(3),
        flush_lsn: r.get(4),
        replay_lsn: r.get(5),
        write_lag_ms: r.get(6),
        flush_lag_ms: r.get(7),
        replay_lag_ms: r.get(8),
    }))
}

/// Slot health beyond [`Slot`]: what the monitor reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotHealth {
    /// The basics.
    #[serde(flatten)]
    pub slot: Slot,
    /// `safe_wal_size`: bytes that can still be written before the slot is in danger.
    pub safe_wal_size: Option<i64>,
    /// Why the slot was invalidated (PostgreSQL 17+), or `conflicting` on 16.
    pub invalidation_reason: Option<String>,
    /// `confirmed_flush_lsn`: how far the subscriber confirmed. It does not move while a
    /// change keeps failing to apply.
    pub confirmed_flush_lsn: Option<String>,
}

/// Read [`SlotHealth`] for `name`, or `None`. Works on every version: the row is read as
/// JSON, so `invalidation_reason` (PostgreSQL 17+) or `conflicting` (16) is used when present.
pub async fn slot_health(client: &Client, name: &str) -> Result<Option<SlotHealth>, Error> {
    let row = client
        .query_opt(
            "SELECT active, wal_status,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    safe_wal_size, to_jsonb(s)
               FROM pg_replication_slots s WHERE slot_name = $1",
            &[&name],
        )
        .await
        .context("reading pg_replication_slots")?;
    Ok(row.map(|r| {
        let json: serde_json::Value = r.get(5);
        let invalidation_reason = match json.get("invalidation_reason") {
            Some(reason) => reason.as_str().map(str::to_string),
            None => (json.get("conflicting") == Some(&serde_json::Value::Bool(true)))
                .then(|| "conflicting".to_string()),
        };
        SlotHealth {
            slot: Slot {
                name: name.to_string(),
                active: r.get(0),
                wal_status: r.get(1),
                pending_bytes: r.get(2),
                retained_bytes: r.get(3),
            },
            safe_wal_size: r.get(4),
            invalidation_reason,
            confirmed_flush_lsn: json
                .get("confirmed_flush_lsn")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
    }))
}

/// Subscriber-side counters and timestamps of one subscription.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SubscriptionStats {
    /// `apply_error_count`.
    pub apply_error_count: i64,
    /// `sync_error_count`.
    pub sync_error_count: i64,
    /// `confl_*` counters (PostgreSQL 18+), by name without the prefix.
    pub conflicts: std::collections::BTreeMap<String, i64>,
    /// Milliseconds since the apply worker last heard from the publisher.
    pub ms_since_last_message: Option<i64>,
    /// Milliseconds since the last WAL position reported back to the publisher was sent
    /// (`now() - latest_end_time`).
    pub ms_since_latest_end: Option<i64>,
}

/// Read [`SubscriptionStats`] for `name` in the connected database.
pub async fn subscription_stats(client: &Client, name: &str) -> Result<SubscriptionStats, Error> {
    let mut stats = SubscriptionStats::default();
    let row = client
        .query_opt(
            "SELECT to_jsonb(s) FROM pg_stat_subscription_stats s
              WHERE s.subid = (SELECT oid FROM pg_subscription WHERE subname = $1
                  AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            &[&name],
        )
        .await
        .context("reading pg_stat_subscription_stats")?;
    if let Some(row) = row {
        let json: serde_json::Value = row.get(0);
        if let Some(map) = json.as_object() {
            for (k, v) in map {
                let n = v.as_i64().unwrap_or(0);
                match k.as_str() {
                    "apply_error_count" => stats.apply_error_count = n,
                    "sync_error_count" => stats.sync_error_count = n,
                    k if k.starts_with("confl_") => {
                        stats
                            .conflicts
                            .insert(k.trim_start_matches("confl_").to_string(), n);
                    }
                    _ => {}
                }
            }
        }
    }
    let row = client
        .query_opt(
            "SELECT (extract(epoch FROM now() - last_msg_receipt_time) * 1000)::bigint,
                    (extract(epoch FROM now() - latest_end_time) * 1000)::bigint
               FROM pg_stat_subscription
              WHERE subname = $1 AND relid IS NULL AND pid IS NOT NULL
                AND subid IN (SELECT oid FROM pg_subscription
                               WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))
              LIMIT 1",
            &[&name],
        )
        .await
        .context("reading pg_stat_subscription")?;
    if let Some(r) = row {
        stats.ms_since_last_message = r.get(0);
        stats.ms_since_latest_end = r.get(1);
    }
    Ok(stats)
}

/// State of one trigger on a table: `O` enabled (origin and local), `R` replica only,
/// `A` always, `D` disabled; `None` when missing.
pub async fn trigger_state(
    client: &Client,
    table: &TableName,
    trigger: &str,
) -> Result<Option<String>, Error> {
    Ok(client
        .query_opt(
            "SELECT tgenabled::text FROM pg_trigger
              WHERE tgrelid = format('%I.%I', $1::text, $2::text)::regclass AND tgname = $3",
            &[&table.schema, &table.name, &trigger],
        )
        .await
        .context(format!("reading the triggers of {table}"))?
        .map(|r| r.get(0)))
}

/// Whether relation `name` (e.g. `duplex.change_meta`) exists.
pub async fn relation_exists(client: &Client, name: &str) -> Result<bool, Error> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .context(format!("looking for {name}"))?
        .get(0))
}
