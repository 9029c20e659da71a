//! `duplex setup`: provision replication into this side, idempotently.
//!
//! For role R with peer P, setup makes sure that:
//! - both instances have the replication role with only the grants it needs;
//! - both publications exist (`duplex_R_to_P` on R, `duplex_P_to_R` on P) with the
//!   configured tables;
//! - R subscribes to P's publication (`duplex_P_to_R`, slot `REPLICATION_SLOT_NAME` on P),
//!   with `origin = none` so that changes which arrived by replication are not sent back.
//!
//! Cloud copies the initial data from main (`copy_data = true`) and setup waits for that
//! copy; main subscribes with `copy_data = false`, and only once cloud's copy finished, so
//! no copied row is ever sent back. Every check runs before anything is changed: a refusal
//! changes nothing.
//!
//! Once its statements ran, setup records the tables it set up in
//! `duplex.replicated_table` on both instances (it set both publications), so `duplex
//! check`, `status` and `run` compare the configuration with what was set up
//! ([`super::selection`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::capacity;
use super::catalog::{self, Column, TableInfo};
use super::monitor_role;
use super::resolution;
use super::{incoming, meta_publication, outgoing, resolve_tables, Error};
use crate::config::Settings;
use crate::conflict::triggers::{self, HashMode};
use crate::model::{Role, TableName};
use crate::pg::{self, conninfo, conninfo_value, quote_ident, quote_literal, Context};
use crate::store::{replicated_table, schema_migrations, sync_log, sync_state};

/// Which connection a step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The instance this duplex runs beside.
    Local,
    /// The peer.
    Remote,
}

/// One statement setup would run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Where it runs.
    pub target: Target,
    /// Which instance that is.
    pub instance: Role,
    /// What it does, for a person.
    pub what: String,
    /// The SQL to execute (may hold the replication password).
    sql: String,
    /// The SQL as printed: the password replaced by `********`.
    pub shown: String,
    /// What undoes this step on the same instance if a later step fails (the slot setup
    /// creates on the peer before subscribing).
    pub undo: Option<String>,
}

impl Step {
    /// The SQL to execute. It may hold the replication password: never print it.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// What setup found and would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Statements to run, in order.
    pub steps: Vec<Step>,
    /// Things worth knowing that do not stop setup.
    pub warnings: Vec<String>,
    /// The tables that replicate.
    pub tables: Vec<TableName>,
    /// Whether setup creates or refreshes the local subscription (so cloud waits for its copy).
    pub subscription_changes: bool,
    /// duplex's own migrations not yet applied on the local instance (file names).
    pub pending_migrations: Vec<&'static str>,
    /// `duplex.replicated_table` on either instance does not hold `tables` yet: setup
    /// records them there once its statements ran.
    pub record_selection: bool,
}

impl Plan {
    /// The plan as SQL a person can read: the password is redacted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.pending_migrations.is_empty() {
            let _ = writeln!(
                out,
                "-- on the local instance: create schema duplex and apply sql/migrations/{} (in one transaction, under an advisory lock)\n",
                self.pending_migrations.join(", sql/migrations/")
            );
        }
        for step in &self.steps {
            let _ = writeln!(
                out,
                "-- on {} ({}): {}\n{};\n",
                step.instance,
                match step.target {
                    Target::Local => "local",
                    Target::Remote => "remote",
                },
                step.what,
                step.shown
            );
        }
        if self.record_selection {
            let _ = writeln!(
                out,
                "-- on both instances: record the {} replicated table(s) in duplex.replicated_table (what `duplex check` compares the configuration with), after the statements above\n",
                self.tables.len()
            );
        }
        out
    }

    /// Nothing to execute, migrate or record.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.pending_migrations.is_empty() && !self.record_selection
    }
}

/// What setup would refuse on, and what it read to decide: shared by [`plan`] and
/// `duplex check`, so the two name the same problems with the same words.
#[derive(Debug)]
pub struct Preflight {
    /// Each a sentence saying what is wrong and what to do; empty when setup may proceed.
    pub problems: Vec<String>,
    /// The local database is recorded as the other role: every other finding about the
    /// replication objects would be misleading.
    pub role_mismatch: bool,
    /// The configured tables, resolved on the local instance.
    pub tables: Vec<TableName>,
    /// Things worth knowing that do not stop setup.
    pub warnings: Vec<String>,
    local_info: catalog::ServerInfo,
    remote_info: catalog::ServerInfo,
    existing_sub: Option<catalog::Subscription>,
    applied: Vec<i32>,
    resolution: Vec<(String, String)>,
}

/// The server problems setup refuses on (version, wal_level), as sentences.
pub fn server_problems(side: Role, info: &catalog::ServerInfo) -> Vec<String> {
    let mut problems = Vec::new();
    if info.version_num < 160_000 {
        problems.push(format!(
            "the {side} instance runs PostgreSQL {}; bidirectional replication needs 16 or newer (for `origin = none`): upgrade it",
            info.version
        ));
    }
    if info.wal_level != "logical" {
        problems.push(format!(
            "wal_level is `{}` on the {side} instance: run `ALTER SYSTEM SET wal_level = logical` there and restart it",
            info.wal_level
        ));
    }
    problems
}

/// The sentence for a database recorded as another role than the one it is used as.
fn role_problem(recorded: &str, configured: Role, local: bool) -> String {
    if local {
        sync_state::Error::RoleMismatch {
            recorded: recorded.to_lowercase(),
            configured,
        }
        .to_string()
    } else {
        format!(
            "the remote database is recorded as the {} instance but should be the {configured} instance: point REMOTE_DB_URL at the {configured} database (see runbooks/role-mismatch.md)",
            recorded.to_lowercase()
        )
    }
}

/// Every check setup makes before changing anything; changes nothing.
pub async fn preflight(
    settings: &Settings,
    local: &Client,
    remote: &Client,
) -> Result<Preflight, Error> {
    let role = settings.instance_role;
    let peer = role.peer();
    let mut problems = Vec::new();

    let local_info = catalog::server_info(local).await?;
    let remote_info = catalog::server_info(remote).await?;
    for (side, info) in [(role, &local_info), (peer, &remote_info)] {
        problems.extend(server_problems(side, info));
    }
    let (recorded_role, applied) = local_duplex_state(local).await?;
    let mut role_mismatch = false;
    if let Some(recorded) = recorded_role.filter(|r| r != role.as_db()) {
        problems.push(role_problem(&recorded, role, true));
        role_mismatch = true;
    }
    if let Some(recorded) = sync_state::recorded_role(remote)
        .await?
        .filter(|r| r != peer.as_db())
    {
        problems.push(role_problem(&recorded, peer, false));
        role_mismatch = true;
    }

    let tables = resolve_tables(local, settings).await?;
    if tables.is_empty() {
        problems.push(format!(
            "no table to replicate on the {role} instance: check [tables] in the configuration"
        ));
    }
    for table in &tables {
        let here = catalog::table_info(local, table).await?;
        let there = catalog::table_info(remote, table).await?;
        let (here, there) = match (here, there) {
            (Some(h), Some(t)) => (h, t),
            (h, t) => {
                for (side, info) in [(role, h), (peer, t)] {
                    if info.is_none() {
                        problems.push(format!(
                            "table {table} does not exist on the {side} instance: create it there (same definition on both sides) or remove it from [tables]"
                        ));
                    }
                }
                continue;
            }
        };
        for (side, info) in [(role, &here), (peer, &there)] {
            if !info.identity_usable() {
                problems.push(format!(
                    "table {table} has no primary key or usable replica identity on the {side} instance, so its updates and deletes cannot replicate: add a primary key (or ALTER TABLE {} REPLICA IDENTITY FULL)",
                    table.quoted()
                ));
            }
        }
        let diffs = column_differences(role, &here, peer, &there);
        if !diffs.is_empty() {
            problems.push(format!(
                "table {table} differs between the two instances: {}; make both definitions the same",
                diffs.join("; ")
            ));
        }
    }

    let slot_name = &settings.replication.slot_name;
    let existing_sub = catalog::subscription(local, &incoming(role)).await?;
    if existing_sub.is_none() && !role_mismatch {
        if let Some(slot) = catalog::slot(remote, slot_name).await? {
            problems.push(format!(
                "replication slot {slot_name} already exists on the {peer} instance ({}) but no subscription here uses it: if it is a leftover, drop it on {peer} with `SELECT pg_drop_replication_slot('{slot_name}')`, or set REPLICATION_SLOT_NAME to another name",
                if slot.active { "active" } else { "inactive" }
            ));
        }
    }
    if role == Role::Main && existing_sub.is_none() && !role_mismatch {
        match catalog::subscription(remote, &incoming(Role::Cloud)).await? {
            None => problems.push(
                "cloud has not subscribed to main yet: run `duplex setup` with INSTANCE_ROLE=cloud first. Cloud copies the initial data from main, and main subscribes only after that copy, so copied rows are never sent back".into(),
            ),
            Some(sub) if !sub.initial_copy_done() => problems.push(format!(
                "cloud's initial copy from main is still running (not ready: {}): wait until it finishes, then run setup for main again",
                not_ready(&sub)
            )),
            Some(_) => {}
        }
    }
    if !role_mismatch {
        // Room for what setup is about to add: without it the new worker never starts and
        // setup would wait on "still copying" in silence.
        let needs = capacity::Needs {
            subscription: existing_sub.is_none(),
            copy: role == Role::Cloud
                && existing_sub
                    .as_ref()
                    .is_none_or(|s| subscribed_tables(s) != tables),
        };
        problems.extend(
            capacity::read(local)
                .await?
                .subscriber_problems(role, needs),
        );
        problems.extend(
            capacity::read(remote)
                .await?
                .publisher_problems(peer, needs),
        );
    }
    let mut warnings = Vec::new();
    let mode = HashMode::for_versions(local_info.version_num, remote_info.version_num);
    let resolution =
        resolution_steps(settings, local, &tables, mode, &mut problems, &mut warnings).await?;
    Ok(Preflight {
        problems,
        role_mismatch,
        tables,
        warnings,
        local_info,
        remote_info,
        existing_sub,
        applied,
        resolution,
    })
}

/// Check both instances and compute the statements setup needs; changes nothing.
pub async fn plan(settings: &Settings, local: &Client, remote: &Client) -> Result<Plan, Error> {
    let role = settings.instance_role;
    let peer = role.peer();
    let Preflight {
        mut problems,
        tables,
        mut warnings,
        local_info,
        remote_info,
        existing_sub,
        applied,
        resolution,
        ..
    } = preflight(settings, local, remote).await?;
    let password = settings.replication.password.as_ref();
    if password.is_none() {
        problems.push("DUPLEX_REPLICATION_PASSWORD is not set: set it (or replication.password) to the password the replication role should use".into());
    }
    let (Some(password), true) = (password, problems.is_empty()) else {
        return Err(Error::Refused(problems));
    };
    // The role on this side has `password`; the peer's role has the peer password when one
    // is set (one password per direction), else the same.
    let peer_password = settings
        .replication
        .peer_password
        .as_ref()
        .unwrap_or(password);
    let (password_var, peer_password_var) = match settings.replication.peer_password {
        Some(_) => (
            "DUPLEX_REPLICATION_PASSWORD",
            "DUPLEX_PEER_REPLICATION_PASSWORD",
        ),
        None => ("DUPLEX_REPLICATION_PASSWORD", "DUPLEX_REPLICATION_PASSWORD"),
    };
    let slot_name = &settings.replication.slot_name;

    let mut plan = Plan {
        tables: tables.clone(),
        pending_migrations: crate::store::migrations::MIGRATIONS
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| m.name)
            .collect(),
        record_selection: replicated_table::recorded(local).await?.as_ref() != Some(&tables)
            || replicated_table::recorded(remote).await?.as_ref() != Some(&tables),
        ..Plan::default()
    };
    if local_info.track_commit_timestamp != "on" || remote_info.track_commit_timestamp != "on" {
        plan.warnings.push("track_commit_timestamp is off on at least one instance: conflict resolution by last write needs it (ALTER SYSTEM SET track_commit_timestamp = on; restart)".into());
    }
    let user = &settings.replication.user;
    for (target, instance, client) in [(Target::Local, role, local), (Target::Remote, peer, remote)]
    {
        let mut add = |what: String, sql: String, shown: Option<String>| {
            plan.steps.push(Step {
                target,
                instance,
                what,
                shown: shown.unwrap_or_else(|| sql.clone()),
                undo: None,
                sql,
            })
        };
        let db = if target == Target::Local {
            &local_info.database
        } else {
            &remote_info.database
        };
        let (password, password_var) = if target == Target::Local {
            (password, password_var)
        } else {
            (peer_password, peer_password_var)
        };
        let existing_role = catalog::role(client, user).await?;
        match &existing_role {
            None => add(
                format!("create replication role {user} (LOGIN REPLICATION, not superuser)"),
                create_role_sql(user, &quote_literal(&scram_verifier(password.expose()))),
                Some(create_role_sql(user, "'********'")),
            ),
            Some(r) if !r.login || !r.replication => add(
                format!("give role {user} LOGIN and REPLICATION"),
                format!("ALTER ROLE {} WITH LOGIN REPLICATION", quote_ident(user)),
                None,
            ),
            Some(_) => {
                let url = if target == Target::Local {
                    &settings.local_db_url
                } else {
                    &settings.remote_db_url
                };
                match login_works(url, user, password.expose()).await {
                    LoginProbe::Ok => {}
                    LoginProbe::WrongPassword => add(
                        format!("set the password of {user} to {password_var} (the old one did not log in; sent as a SCRAM verifier, never in clear)"),
                        format!(
                            "ALTER ROLE {} WITH PASSWORD {}",
                            quote_ident(user),
                            quote_literal(&scram_verifier(password.expose()))
                        ),
                        Some(format!("ALTER ROLE {} WITH PASSWORD '********'", quote_ident(user))),
                    ),
                    LoginProbe::Other(e) => warnings.push(format!(
                        "could not test the {user} login on the {instance} instance ({e}); if the subscription cannot connect, check pg_hba.conf and the password"
                    )),
                }
            }
        }
        let exists = existing_role.is_some();
        if !exists || !catalog::has_connect(client, user).await? {
            add(
                format!("let {user} connect to database {db}"),
                format!(
                    "GRANT CONNECT ON DATABASE {} TO {}",
                    quote_ident(db),
                    quote_ident(user)
                ),
                None,
            );
        }
        let mut schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
        schemas.dedup();
        for schema in schemas {
            if !exists || !catalog::has_schema_usage(client, user, schema).await? {
                add(
                    format!("let {user} use schema {schema}"),
                    format!(
                        "GRANT USAGE ON SCHEMA {} TO {}",
                        quote_ident(schema),
                        quote_ident(user)
                    ),
                    None,
                );
            }
        }
        let missing = if exists {
            catalog::tables_without_select(client, user, &tables).await?
        } else {
            tables.clone()
        };
        if !missing.is_empty() {
            add(
                format!(
                    "let {user} read the {} replicated table(s) for the initial copy",
                    missing.len()
                ),
                format!(
                    "GRANT SELECT ON TABLE {} TO {}",
                    table_list(&missing),
                    quote_ident(user)
                ),
                None,
            );
        }
        let publication = if target == Target::Local {
            outgoing(role)
        } else {
            incoming(role)
        };
        match catalog::publication_tables(client, &publication).await? {
            None => add(
                format!("publish the {} replicated table(s)", tables.len()),
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')",
                    quote_ident(&publication),
                    table_list(&tables)
                ),
                None,
            ),
            Some(current) if current != tables => add(
                format!("change publication {publication} to the configured tables"),
                format!(
                    "ALTER PUBLICATION {} SET TABLE {}",
                    quote_ident(&publication),
                    table_list(&tables)
                ),
                None,
            ),
            Some(_) => {}
        }
        // The conflict metadata travels through its own insert-only publication; the
        // replication role reads it for the initial copy like the tables.
        let meta_ready = catalog::relation_exists(client, "duplex.change_meta").await?;
        if !meta_ready || !exists || !catalog::has_schema_usage(client, user, "duplex").await? {
            add(
                format!("let {user} use schema duplex"),
                format!("GRANT USAGE ON SCHEMA duplex TO {}", quote_ident(user)),
                None,
            );
        }
        let meta_table = TableName {
            schema: "duplex".into(),
            name: "change_meta".into(),
        };
        if !meta_ready
            || !exists
            || !catalog::tables_without_select(client, user, std::slice::from_ref(&meta_table))
                .await?
                .is_empty()
        {
            add(
                format!("let {user} read duplex.change_meta for the initial copy"),
                format!(
                    "GRANT SELECT ON TABLE duplex.change_meta TO {}",
                    quote_ident(user)
                ),
                None,
            );
        }
        let meta = meta_publication(&publication);
        if catalog::publication_tables(client, &meta).await?.is_none() {
            add(
                "publish duplex.change_meta (inserts only): what each change was based on".into(),
                format!(
                    "CREATE PUBLICATION {} FOR TABLE duplex.change_meta WITH (publish = 'insert')",
                    quote_ident(&meta)
                ),
                None,
            );
        }
        if let Some(pw) = &settings.monitor.password {
            let m = &settings.monitor.user;
            let url = if target == Target::Local {
                &settings.local_db_url
            } else {
                &settings.remote_db_url
            };
            let wrong = catalog::role(client, m).await?.is_some()
                && matches!(
                    login_works(url, m, pw.expose()).await,
                    LoginProbe::WrongPassword
                );
            let done = schema_migrations::applied_if_any(client).await?;
            let pending = crate::store::migrations::MIGRATIONS
                .iter()
                .any(|x| !done.contains(&x.version));
            for st in monitor_role::steps(
                client,
                m,
                &scram_verifier(pw.expose()),
                wrong,
                &tables,
                pending,
            )
            .await?
            {
                add(st.what, st.sql, Some(st.shown));
            }
        }
    }
    // Resolution before the subscription, so the first incoming change is already settled.
    for (what, sql) in resolution {
        plan.steps.push(Step {
            target: Target::Local,
            instance: role,
            what,
            shown: sql.clone(),
            undo: None,
            sql,
        });
    }

    plan.warnings.extend(warnings);
    let sub_name = incoming(role);
    let copy_data = role == Role::Cloud;
    let host = settings
        .replication
        .peer_host
        .clone()
        .or_else(|| settings.remote_db_url.url().host_str().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    let port = settings
        .replication
        .peer_port
        .or_else(|| settings.remote_db_url.url().port())
        .unwrap_or(5432);
    // The peer's server connects with libpq: pass on the TLS mode and CA file the URL asks
    // for (libpq's own default, prefer, when it names none). The CA file's path must be
    // readable by this side's PostgreSQL server too (docs/security.md). A client
    // certificate in the URL is duplex's own login, not the replication role's: not passed.
    let sslmode = settings
        .remote_db_url
        .url()
        .query_pairs()
        .filter(|(k, _)| k == "sslmode" || k == "sslrootcert")
        .map(|(k, v)| format!(" {k}={}", conninfo_value(&v)))
        .collect::<String>();
    let conninfo = |pw: &str| {
        format!(
            "host={} port={port} dbname={} user={} password={}{sslmode}",
            conninfo_value(&host),
            conninfo_value(&remote_info.database),
            conninfo_value(user),
            pw
        )
    };
    // This side's subscription logs in to the peer's role.
    let desired_conninfo = conninfo(&conninfo_value(peer_password.expose()));
    if let Some(step) = peer_subscription_password(remote, peer, password.expose()).await? {
        plan.steps.push(step);
    }
    match existing_sub {
        None => {
            // The slot is created first, on the peer, from this side's own session: a
            // CREATE SUBSCRIPTION that creates it holds a transaction here while the peer
            // waits for every transaction running there to end, so two setups running at
            // once on the two sides wait for each other.
            let slot_sql = format!(
                "SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                quote_literal(slot_name)
            );
            plan.steps.push(Step {
                target: Target::Remote,
                instance: peer,
                what: format!("create replication slot {slot_name} for this side's subscription"),
                shown: slot_sql.clone(),
                undo: Some(format!(
                    "SELECT pg_drop_replication_slot({})",
                    quote_literal(slot_name)
                )),
                sql: slot_sql,
            });
            let stmt = |conn: String| {
                format!(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}, {} WITH (slot_name = {}, create_slot = false, origin = none, copy_data = {copy_data}, disable_on_error = false, streaming = parallel)",
                    quote_ident(&sub_name),
                    quote_literal(&conn),
                    quote_ident(&sub_name),
                    quote_ident(&meta_publication(&sub_name)),
                    quote_literal(slot_name),
                )
            };
            plan.steps.push(Step {
                target: Target::Local,
                instance: role,
                what: format!(
                    "subscribe to {peer}'s publication (slot {slot_name} on {peer}, {})",
                    if copy_data {
                        "copying main's existing rows"
                    } else {
                        "no initial copy: cloud already copied main's rows"
                    }
                ),
                sql: stmt(desired_conninfo),
                shown: stmt(conninfo("********")),
                undo: None,
            });
            plan.subscription_changes = true;
        }
        Some(sub) => {
            if sub.slot_name.as_deref() != Some(slot_name.as_str()) {
                plan.warnings.push(format!(
                    "subscription {sub_name} uses slot {} but REPLICATION_SLOT_NAME is {slot_name}: the existing subscription is kept",
                    sub.slot_name.as_deref().unwrap_or("(none)")
                ));
            }
            if !sub.enabled {
                plan.warnings.push(format!(
                    "subscription {sub_name} is disabled: see runbooks/subscription-disabled.md"
                ));
            }
            // A rotated password (or a new peer address) reaches the subscription too:
            // without this it would fail at its next reconnect.
            match catalog::subscription_conninfo(local, &sub_name).await? {
                Some(current) if !conninfo::same(&current, &desired_conninfo) => {
                    let sql = |c: &str| {
                        format!(
                            "ALTER SUBSCRIPTION {} CONNECTION {}",
                            quote_ident(&sub_name),
                            quote_literal(c)
                        )
                    };
                    plan.steps.push(Step {
                        target: Target::Local,
                        instance: role,
                        what: format!("update subscription {sub_name}'s connection to {peer} (password or address changed)"),
                        sql: sql(&desired_conninfo),
                        shown: sql(&conninfo("********")),
                        undo: None,
                    });
                }
                Some(_) => {}
                None => plan.warnings.push(format!(
                    "cannot read subscription {sub_name}'s connection string (superuser only): if the replication password changed, run setup as a superuser to update it"
                )),
            }
            let meta = meta_publication(&sub_name);
            if !sub.publications.contains(&meta) {
                let sql = format!(
                    "ALTER SUBSCRIPTION {} ADD PUBLICATION {} WITH (copy_data = false)",
                    quote_ident(&sub_name),
                    quote_ident(&meta)
                );
                plan.steps.push(Step {
                    target: Target::Local,
                    instance: role,
                    what: format!("subscribe to {meta} as well"),
                    shown: sql.clone(),
                    undo: None,
                    sql,
                });
            }
            if subscribed_tables(&sub) != tables {
                let sql = format!(
                    "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = {copy_data})",
                    quote_ident(&sub_name)
                );
                plan.steps.push(Step {
                    target: Target::Local,
                    instance: role,
                    what: "pick up the publication's new table list".into(),
                    shown: sql.clone(),
                    undo: None,
                    sql,
                });
                plan.subscription_changes = true;
            }
        }
    }
    Ok(plan)
}

/// Install, refresh or remove in-stream conflict resolution on this side's tables:
/// `(what, sql)` for each table whose installed triggers are missing, disabled or were
/// generated from another definition or policy. Bad policy configuration is a refusal.
async fn resolution_steps(
    settings: &Settings,
    local: &Client,
    tables: &[TableName],
    mode: HashMode,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, String)>, Error> {
    for name in settings.conflicts.tables.keys() {
        if !tables.iter().any(|t| &t.to_string() == name) {
            warnings.push(format!(
                "[conflicts.tables] names {name}, which does not replicate: its policy is unused"
            ));
        }
    }
    let mut out = Vec::new();
    for t in resolution::inspect(settings, local, settings.instance_role, tables, mode).await? {
        if let Err(p) = &t.effective {
            problems.push(p.clone());
            continue;
        }
        let Some(generated) = &t.generated else {
            warnings.push(format!(
                "table {} has no primary key: conflicts on it are not resolved in the stream (add a primary key)",
                t.table
            ));
            continue;
        };
        if !t.current() {
            out.push((
                format!(
                    "install in-stream conflict resolution on {} ({})",
                    t.table,
                    t.describe()
                ),
                generated.sql.clone(),
            ));
        }
    }
    for table in resolution::stale_installs(local, tables).await? {
        out.push((
            format!("remove in-stream conflict resolution from {table}: it no longer replicates"),
            triggers::remove(&table),
        ));
    }
    Ok(out)
}

/// `duplex setup --remove-resolution`: the statements that remove in-stream conflict
/// resolution (triggers, functions, duplex's per-table state) from this side.
pub async fn removal_plan(local: &Client, role: Role) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    for table in resolution::stale_installs(local, &[]).await? {
        let sql = triggers::remove(&table);
        plan.steps.push(Step {
            target: Target::Local,
            instance: role,
            what: format!("remove in-stream conflict resolution from {table}"),
            shown: sql.clone(),
            undo: None,
            sql,
        });
    }
    Ok(plan)
}

/// The role recorded in `duplex.sync_state` and the applied migration versions, read
/// without creating anything (both empty before duplex first ran here).
async fn local_duplex_state(local: &Client) -> Result<(Option<String>, Vec<i32>), pg::Error> {
    let role = sync_state::recorded_role(local).await?;
    let applied = schema_migrations::applied_if_any(local).await?;
    Ok((role, applied))
}

enum LoginProbe {
    Ok,
    WrongPassword,
    Other(String),
}

/// Try to log in as the replication role with the configured password, the way the
/// peer's subscription will.
async fn login_works(url: &crate::secret::SecretUrl, user: &str, password: &str) -> LoginProbe {
    let mut cfg = match pg::pg_config(url, "setup", "setup") {
        Ok(c) => c,
        Err(e) => return LoginProbe::Other(e.to_string()),
    };
    cfg.user(user).password(password);
    let tls = match pg::tls_connector(url, "setup") {
        Ok(t) => t,
        Err(e) => return LoginProbe::Other(e.to_string()),
    };
    match cfg.connect(tls).await {
        Ok(_) => LoginProbe::Ok,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) => {
            LoginProbe::WrongPassword
        }
        Err(e) => LoginProbe::Other(pg::describe(&e)),
    }
}

/// Create the role unless it exists: two setups started at once (one per side) may both
/// try, and the loser must not fail.
/// The SCRAM-SHA-256 verifier of `password`: what PostgreSQL stores, so the password itself
/// never travels in a statement a server could log.
fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// The step that gives the peer's subscription (which logs in to this side's replication
/// role) the current password, when its stored connection string has another one.
async fn peer_subscription_password(
    remote: &Client,
    peer: Role,
    password: &str,
) -> Result<Option<Step>, Error> {
    let name = incoming(peer);
    let Some(current) = catalog::subscription_conninfo(remote, &name).await? else {
        return Ok(None);
    };
    let Some(pairs) = conninfo::parse(&current) else {
        return Ok(None);
    };
    if conninfo::get(&pairs, "password") == Some(password) {
        return Ok(None);
    }
    let sql = |pw: &str| {
        format!(
            "ALTER SUBSCRIPTION {} CONNECTION {}",
            quote_ident(&name),
            quote_literal(&conninfo::render(&conninfo::set(&pairs, "password", pw)))
        )
    };
    Ok(Some(Step {
        target: Target::Remote,
        instance: peer,
        what: format!("give {peer}'s subscription {name} the current replication password"),
        sql: sql(password),
        shown: sql("********"),
        undo: None,
    }))
}

fn create_role_sql(user: &str, password_literal: &str) -> String {
    format!(
        "DO $duplex$ BEGIN CREATE ROLE {} WITH LOGIN REPLICATION NOSUPERUSER PASSWORD {password_literal}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $duplex$",
        quote_ident(user)
    )
}

fn table_list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The application tables `sub` replicates, sorted (duplex's own carrier left out).
fn subscribed_tables(sub: &catalog::Subscription) -> Vec<TableName> {
    let mut subscribed: Vec<TableName> = sub
        .tables
        .iter()
        .map(|(t, _)| t.clone())
        .filter(|t| t.schema != "duplex")
        .collect();
    subscribed.sort();
    subscribed
}

fn not_ready(sub: &catalog::Subscription) -> String {
    sub.tables
        .iter()
        .filter(|(_, s)| s != "r")
        .map(|(t, s)| format!("{t} ({s})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_column(c: &Column) -> String {
    format!(
        "{}{}",
        c.type_name,
        if c.not_null { " NOT NULL" } else { "" }
    )
}

/// The differing columns of one table, as sentences.
fn column_differences(a: Role, here: &TableInfo, b: Role, there: &TableInfo) -> Vec<String> {
    let theirs: BTreeMap<&str, &Column> =
        there.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let ours: BTreeMap<&str, &Column> = here.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut out = Vec::new();
    for c in &here.columns {
        match theirs.get(c.name.as_str()) {
            None => out.push(format!("column \"{}\" exists only on {a}", c.name)),
            Some(t) if *t != c => out.push(format!(
                "column \"{}\" is {} on {a} but {} on {b}",
                c.name,
                describe_column(c),
                describe_column(t)
            )),
            Some(_) => {}
        }
    }
    for c in &there.columns {
        if !ours.contains_key(c.name.as_str()) {
            out.push(format!("column \"{}\" exists only on {b}", c.name));
        }
    }
    out
}

/// Session settings for setup's statements (see [`apply`]).
const SETUP_TIMEOUTS: &str = "SET statement_timeout = '10min'; SET lock_timeout = '10min'";
/// Setup's statements carry the replication password (a subscription's connection string):
/// the servers must not log them, not with `log_statement = ddl`, not as the statement of
/// an error, not as a slow statement. Superuser-only settings; setup runs as one.
const QUIET_SESSION: &str = "SET log_statement = 'none'; SET log_min_error_statement = 'panic';
  SET log_min_duration_statement = -1; SET log_min_duration_sample = -1";

/// What [`apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Steps executed, as described to a person.
    pub done: Vec<String>,
}

/// Execute `plan`, wait for cloud's initial copy, and verify the slot on the peer.
pub async fn apply(
    settings: &Settings,
    local: &mut Client,
    remote: &mut Client,
    plan: &Plan,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, Error> {
    let role = settings.instance_role;
    crate::store::migrations::migrate(local).await?;
    // The peer's publication carries its duplex.change_meta, so its schema must exist too.
    crate::store::migrations::migrate(remote).await?;
    // Creating a subscription creates its slot on the peer, which waits for every
    // transaction running there to end: on a busy server that can outlast the session's
    // 30 s statement timeout. Setup is run by a person: give it time.
    for c in [&*local, &*remote] {
        c.batch_execute(SETUP_TIMEOUTS)
            .await
            .context("setting setup's statement timeout")?;
    }
    for (side, c) in [(role, &*local), (role.peer(), remote)] {
        if let Err(e) = c.batch_execute(QUIET_SESSION).await {
            progress(&format!(
                "warning: {side}: could not turn statement logging off for setup's session ({}); the server may log the subscription's connection string with its password: run setup as a superuser",
                pg::describe(&e)
            ));
        }
    }
    sync_state::ensure_role(local, role, settings.sync_enabled).await?;
    let mut report = Report::default();
    let mut undo: Vec<(&Client, &str)> = Vec::new();
    for step in &plan.steps {
        let client: &Client = match step.target {
            Target::Local => local,
            Target::Remote => remote,
        };
        if let Err(e) = client
            .batch_execute(&step.sql)
            .await
            .context(format!("on {}: {}", step.instance, step.what))
        {
            // Leave no slot behind that the next run would refuse as a leftover.
            for (c, sql) in undo.iter().rev() {
                if let Err(u) = c.batch_execute(sql).await {
                    tracing::warn!("could not undo a setup step ({sql}): {}", pg::describe(&u));
                }
            }
            return Err(e.into());
        }
        if let Some(sql) = &step.undo {
            undo.push((client, sql));
        }
        progress(&format!("{}: {}", step.instance, step.what));
        report
            .done
            .push(format!("{}: {}", step.instance, step.what));
    }
    // Both publications now carry the configured tables: record them on both instances,
    // before waiting for the copy (which may time out while replication goes on).
    if plan.record_selection {
        for client in [&mut *local, &mut *remote] {
            replicated_table::replace(client, &plan.tables).await?;
        }
        let line = format!(
            "{role} and {}: record the {} replicated table(s) in duplex.replicated_table",
            role.peer(),
            plan.tables.len()
        );
        progress(&line);
        report.done.push(line);
    }
    let sub_name = incoming(role);
    if plan.subscription_changes && role == Role::Cloud {
        wait_for_initial_copy(settings, local, &sub_name, progress).await?;
    }
    let slot = &settings.replication.slot_name;
    if catalog::slot(&*remote, slot).await?.is_none() {
        return Err(Error::SlotMissing {
            slot: slot.clone(),
            peer: role.peer(),
        });
    }
    if !report.done.is_empty() {
        sync_log::insert(
            local,
            &sync_log::Entry {
                sync_type: sync_log::SyncType::Setup,
                status: sync_log::Status::Success,
                records_synced: report.done.len() as i64,
                error_message: None,
                details: serde_json::json!({
                    "steps": report.done,
                    "tables": plan.tables.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    "slot": slot,
                }),
            },
        )
        .await?;
    }
    Ok(report)
}

/// How long an initial copy may go without a table sync worker before setup says so.
const STALL_NOTICE_AFTER: Duration = Duration::from_secs(15);
/// How often setup repeats that notice while it lasts.
const STALL_NOTICE_EVERY: Duration = Duration::from_secs(60);

async fn wait_for_initial_copy(
    settings: &Settings,
    local: &Client,
    sub_name: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let timeout = settings.replication.initial_copy_timeout;
    let started = Instant::now();
    let mut last_report = Instant::now();
    // A copy with no table sync worker for a while is usually waiting for a free worker.
    let mut last_sync_worker = Instant::now();
    let mut last_stall_notice: Option<Instant> = None;
    loop {
        let sub = catalog::subscription(local, sub_name).await?;
        if sub.as_ref().is_some_and(|s| !s.initial_copy_done()) {
            if capacity::sync_workers(local, sub_name).await? > 0 {
                last_sync_worker = Instant::now();
            } else if last_sync_worker.elapsed() >= STALL_NOTICE_AFTER
                && last_stall_notice.is_none_or(|t| t.elapsed() >= STALL_NOTICE_EVERY)
            {
                let secs = last_sync_worker.elapsed().as_secs();
                progress(
                    &capacity::read(local)
                        .await?
                        .stall_notice(settings.instance_role, secs),
                );
                last_stall_notice = Some(Instant::now());
            }
        }
        match sub {
            Some(sub) if sub.initial_copy_done() => {
                progress(&format!(
                    "cloud: initial copy of {} table(s) finished in {:.1} s",
                    sub.tables.len(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            Some(sub) if started.elapsed() >= timeout => {
                return Err(Error::InitialCopyTimeout {
                    secs: timeout.as_secs(),
                    tables: not_ready(&sub),
                })
            }
            Some(sub) => {
                if last_report.elapsed() >= Duration::from_secs(10) {
                    progress(&format!("cloud: still copying: {}", not_ready(&sub)));
                    last_report = Instant::now();
                }
            }
            None => {
                return Err(Error::Refused(vec![format!(
                    "subscription {sub_name} disappeared during setup: run setup again"
                )]))
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            not_null,
        }
    }

    fn table(columns: Vec<Column>) -> TableInfo {
        TableInfo {
            replica_identity: "d".into(),
            has_primary_key: true,
            has_identity_index: false,
            columns,
        }
    }

    #[test]
    fn differing_columns_are_each_named() {
        let main = table(vec![
            col("id", "text", true),
            col("updatedAt", "timestamp(3) without time zone", true),
            col("onlyMain", "integer", false),
        ]);
        let cloud = table(vec![
            col("id", "text", true),
            col("updatedAt", "timestamp with time zone", true),
            col("onlyCloud", "integer", false),
        ]);
        let diffs = column_differences(Role::Main, &main, Role::Cloud, &cloud);
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        assert!(diffs[0].contains("\"updatedAt\" is timestamp(3)"));
        assert!(diffs[1].contains("\"onlyMain\" exists only on main"));
        assert!(diffs[2].contains("\"onlyCloud\" exists only on cloud"));
    }

    #[test]
    fn identical_tables_have_no_differences() {
        let a = table(vec![col("id", "bigint", true)]);
        assert!(column_differences(Role::Main, &a, Role::Cloud, &a.clone()).is_empty());
    }
}
