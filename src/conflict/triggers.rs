//! The in-stream resolution installed on each replicated table, generated from the catalog.
//!
//! Two row triggers per table:
//! - `duplex_capture` (ordinary, so it fires for local writes only): before each insert,
//!   update or delete it writes a `duplex.change_meta` row (incarnation, the md5 of the
//!   version the change was based on) that travels just ahead of the change; a delete also
//!   leaves a tombstone.
//! - `duplex_resolve` (`ENABLE REPLICA`, so it fires only in the apply worker): decides each
//!   incoming change against the local row by the table's policy, writes the winner itself
//!   (under the subscription's origin, so it is not sent back), logs the conflict, and
//!   returns NULL when the local version stays.
//!
//! Plus one function for an update of an incarnation deleted here, called from
//! `duplex.meta_receive` because PostgreSQL fires no trigger for an update of a missing row.
//! Pure: the SQL is a function of the table's shape, its policy and the side.

use sha2::{Digest, Sha256};

use super::policy::{Effective, Policy};
use crate::model::quote_ident;
use crate::model::{Role, TableName};
use crate::pg::catalog::Computed;
use crate::pg::quote_literal;

/// What the generator needs to know about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// The table.
    pub table: TableName,
    /// Columns in order: name and `format_type`.
    pub columns: Vec<(String, String)>,
    /// Primary-key (or replica-identity index) columns, in key order.
    pub key: Vec<String>,
    /// Other unique indexes: name and columns (plain, non-partial indexes only).
    pub unique: Vec<(String, Vec<String>)>,
    /// Generated columns and identity columns `GENERATED ALWAYS`: the resolution writes
    /// the others, and fingerprints and logs rows without the generated ones (a `BEFORE`
    /// trigger's `NEW` has them NULL; the stored row has them computed).
    pub computed: Computed,
    /// Columns whose values PostgreSQL may store out of line (TOAST): an update that leaves
    /// one unchanged is sent without its value.
    pub toastable: Vec<String>,
    /// Whether the server has `pg_column_toast_chunk_id` (PostgreSQL 17 and later), which
    /// tells a value stored out of line (unchanged by an update) from one being written.
    pub toast_chunk_id: bool,
}

/// Names of what is installed for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Capture function (in schema duplex).
    pub capture: String,
    /// Resolve function.
    pub resolve: String,
    /// Update-of-a-deleted-row function.
    pub update_of_deleted: String,
}

/// Trigger names on the application table.
pub const CAPTURE_TRIGGER: &str = "duplex_capture";
/// See [`CAPTURE_TRIGGER`].
pub const RESOLVE_TRIGGER: &str = "duplex_resolve";

/// Function names for `table`: a readable stem plus a hash, within PostgreSQL's 63 bytes.
pub fn names(table: &TableName) -> Names {
    let hash = hex_prefix(&table.to_string(), 10);
    let stem: String = table
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    Names {
        capture: format!("capture_{stem}_{hash}"),
        resolve: format!("resolve_{stem}_{hash}"),
        update_of_deleted: format!("uod_{stem}_{hash}"),
    }
}

fn hex_prefix(text: &str, len: usize) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(len)
        .collect()
}

/// The SQL that installs (or replaces) resolution on one table, and its fingerprint.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Statements, to run in one transaction.
    pub sql: String,
    /// sha256 of `sql`, recorded in `duplex.resolution` so `duplex check` can spot a stale install.
    pub fingerprint: String,
    /// Function names.
    pub names: Names,
}

/// First half of the advisory lock duplex takes on a key (`dplx`); the second is the hash of
/// the table and key. The two-int form, so no application lock taken as one bigint can
/// collide with it.
pub const KEY_LOCK_SPACE: i32 = 0x6470_6c78;

/// A transaction-level advisory lock on the key `dx_k` of the table named `rel` (a SQL
/// literal): the capture and the resolve trigger take it before creating a row of a key
/// that was deleted before, so that they never wait for each other in opposite orders.
fn key_lock(rel: &str) -> String {
    format!(
        "pg_catalog.pg_advisory_xact_lock({KEY_LOCK_SPACE}, pg_catalog.hashtext({rel} || dx_k))"
    )
}

/// How a row version is fingerprinted, identically on both servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMode {
    /// `hash_record_extended(row, 0)`: binary and fast, but only stable within one major
    /// version (and one column layout, which setup guarantees). For servers of the same major.
    Binary,
    /// md5 of the row's text under pinned settings (`TimeZone`, `DateStyle`, ...): slower,
    /// for servers of different major versions.
    Text,
}

impl HashMode {
    /// The mode for two servers' `server_version_num`s.
    pub fn for_versions(a: i32, b: i32) -> HashMode {
        if a / 10_000 == b / 10_000 {
            HashMode::Binary
        } else {
            HashMode::Text
        }
    }

    fn hash(self, rec: &str) -> String {
        match self {
            HashMode::Binary => format!("hash_record_extended({rec}, 0)::text"),
            HashMode::Text => format!("md5({rec}::text)"),
        }
    }

    /// Options of the trigger functions. They run as their owner, the role that ran `duplex
    /// setup` (`SECURITY DEFINER`), so that the application's roles need no rights on
    /// duplex's schema: the capture trigger runs as whoever writes the table, the resolve
    /// trigger as the table's owner. Such a function must pin its `search_path`, or a
    /// caller's schema could shadow an operator it uses.
    fn trigger_options(self) -> String {
        match self {
            HashMode::Binary => "SECURITY DEFINER SET search_path = pg_catalog, pg_temp".into(),
            HashMode::Text => format!("SECURITY DEFINER {}", self.options()),
        }
    }

    /// Options of the other functions (called by duplex's own, never by the application).
    /// Every name in the generated code is schema-qualified (the apply worker runs with an
    /// empty `search_path`; `pg_catalog` is always searched), so the binary mode pins
    /// nothing: a `SET` option costs a settings save and restore per call.
    fn options(self) -> &'static str {
        match self {
            HashMode::Binary => "",
            HashMode::Text => "SET search_path = pg_catalog, pg_temp SET \"TimeZone\" = 'UTC' SET \"DateStyle\" = 'ISO, YMD' SET \"IntervalStyle\" = 'postgres' SET extra_float_digits = 1 SET bytea_output = 'hex'",
        }
    }
}

/// Generate the installation SQL for `shape` on side `me`.
pub fn generate(shape: &TableShape, eff: &Effective, me: Role, mode: HashMode) -> Generated {
    let pinned = mode.options();
    let definer = mode.trigger_options();
    let computed = &shape.computed;
    let q = |c: &str| quote_ident(c);
    let stored: Vec<&str> = shape
        .columns
        .iter()
        .map(|(c, _)| c.as_str())
        .filter(|c| computed.insertable(c))
        .collect();
    let row_hash = |rec: &str| {
        if computed.generated.is_empty() {
            mode.hash(rec)
        } else {
            let fields: Vec<String> = stored.iter().map(|c| format!("{rec}.{}", q(c))).collect();
            mode.hash(&format!("ROW({})", fields.join(", ")))
        }
    };
    let jsonb = |rec: &str| computed.strip(&format!("to_jsonb({rec})"));
    let names = names(&shape.table);
    let tbl = shape.table.quoted();
    let rel = quote_literal(&shape.table.to_string());
    // The incoming row (`NEW`) and a row given as jsonb (`dx_p_row`), written by the
    // resolution itself: generated columns are left to the server.
    let (insert_new, insert_json) = if computed.any() {
        let list = stored.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
        let over = computed.overriding();
        let values = stored
            .iter()
            .map(|c| format!("NEW.{}", q(c)))
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!("INSERT INTO {tbl} ({list}) {over}VALUES ({values}) ON CONFLICT DO NOTHING"),
            format!("INSERT INTO {tbl} ({list}) {over}SELECT {list} FROM jsonb_populate_record(NULL::{tbl}, dx_p_row)"),
        )
    } else {
        (
            format!("INSERT INTO {tbl} VALUES (NEW.*) ON CONFLICT DO NOTHING"),
            format!("INSERT INTO {tbl} SELECT * FROM jsonb_populate_record(NULL::{tbl}, dx_p_row)"),
        )
    };
    let key_json = |rec: &str| {
        format!(
            "jsonb_build_array({})::text",
            shape
                .key
                .iter()
                .map(|c| format!("{rec}.{}", q(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let key_eq = |rec: &str| {
        shape
            .key
            .iter()
            .map(|c| format!("{} = {rec}.{}", q(c), q(c)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let key_from_text = shape
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = shape
                .columns
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, t)| t.as_str())
                .unwrap_or("text");
            format!("{} = (dx_p_key::jsonb->>{i})::{ty}", q(c))
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let set_new = shape
        .columns
        .iter()
        .filter(|(c, _)| computed.updatable(c))
        .map(|(c, _)| format!("{} = NEW.{}", q(c), q(c)))
        .collect::<Vec<_>>()
        .join(", ");
    // Does the incoming version (NEW) beat the local one (`rec`)?
    let incoming_wins = |rec: &str| match (eff.policy, &eff.updated_at) {
        (Policy::LastWriteWins, Some(col)) => format!(
            "coalesce(NEW.{c}, '-infinity') {op} coalesce({rec}.{c}, '-infinity')",
            c = q(col),
            // Ties go to main: on cloud the incoming version is main's.
            op = if me == Role::Cloud { ">=" } else { ">" }
        ),
        _ => (me == Role::Cloud).to_string(),
    };
    // conflict_log's main_version / cloud_version from (local, incoming).
    let versions = |local: &str, incoming: &str| match me {
        Role::Main => format!("{local}, {incoming}"),
        Role::Cloud => format!("{incoming}, {local}"),
    };
    let winner = match me {
        Role::Main => "CASE WHEN dx_incoming_wins THEN 'CLOUD' ELSE 'MAIN' END",
        Role::Cloud => "CASE WHEN dx_incoming_wins THEN 'MAIN' ELSE 'CLOUD' END",
    };
    let pair_hash = match me {
        Role::Main => "dx_lh || dx_nh",
        Role::Cloud => "dx_nh || dx_lh",
    };
    // main_authoritative and manual: main's insert or update always wins on cloud.
    let main_overrides = eff.policy.main_wins() && me == Role::Cloud;
    let pol = quote_literal(eff.policy.as_str());
    let me_lit = quote_literal(me.as_str());
    // Deletes: named from main's side (main's change first).
    let (deleted_here, deleted_there) = match me {
        Role::Main => ("'delete_update'", "'update_delete'"),
        Role::Cloud => ("'update_delete'", "'delete_update'"),
    };

    // A different row holding a unique value the incoming row needs: settle it by policy
    // (the loser is removed on this side only; the peer settles the same pair the same way).
    let unique_checks: String = shape
        .unique
        .iter()
        .map(|(_, cols)| {
            let same = cols
                .iter()
                .map(|c| format!("{} = NEW.{}", q(c), q(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            format!(
                r#"
    SELECT * INTO dx_u FROM {tbl} WHERE {same} AND NOT ({key_eq_new}) FOR UPDATE;
    IF FOUND THEN
      dx_lh := {hash_u}; dx_nh := {hash_new};
      dx_incoming_wins := {wins_u};
      -- Two keys compete for one value: the entry is named by main's row on both sides.
      PERFORM duplex.log_conflict({rel}, {main_key}, 'unique_key', {versions_u}, dx_pol, {winner},
        md5('unique_key' || {rel} || {main_key} || {cloud_key} || {pair_hash}), dx_me);
      IF NOT dx_incoming_wins THEN RETURN NULL; END IF;
      DELETE FROM {tbl} WHERE {key_eq_u};
    END IF;"#,
                key_eq_new = key_eq("NEW"),
                hash_u = row_hash("dx_u"),
                main_key = if me == Role::Main {
                    key_json("dx_u")
                } else {
                    "dx_k".to_string()
                },
                cloud_key = if me == Role::Main {
                    "dx_k".to_string()
                } else {
                    key_json("dx_u")
                },
                hash_new = row_hash("NEW"),
                wins_u = incoming_wins("dx_u"),
                versions_u = versions(&jsonb("dx_u"), &jsonb("NEW")),
                key_eq_u = key_eq("dx_u"),
            )
        })
        .collect();
    let unique_changed = if shape.unique.is_empty() {
        "false".to_string()
    } else {
        let mut cols: Vec<&String> = shape.unique.iter().flat_map(|(_, c)| c).collect();
        cols.sort();
        cols.dedup();
        cols.iter()
            .map(|c| format!("NEW.{} IS DISTINCT FROM OLD.{}", q(c), q(c)))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    // What an update carries besides the change: main's whole row on a main_authoritative
    // or manual table; elsewhere the values PostgreSQL will not send, those of large
    // columns the update leaves unchanged (stored out of line, they travel as "unchanged"
    // and the receiver fills them in from its own row). The receiver needs them only when
    // the update meets a concurrent one: the winning version must arrive whole, and both
    // sides must fingerprint the same versions.
    let main_row_on_update = if eff.policy.main_wins() && me == Role::Main {
        "to_jsonb(NEW)".to_string()
    } else {
        let carried: Vec<String> = shape
            .toastable
            .iter()
            .filter(|c| computed.insertable(c))
            .map(|c| {
                let stored_apart = if shape.toast_chunk_id {
                    format!(
                        "pg_catalog.pg_column_toast_chunk_id(NEW.{}) IS NOT NULL",
                        q(c)
                    )
                } else {
                    // Without the chunk id (PostgreSQL 16): any value big enough to have
                    // been moved out of line.
                    format!("pg_catalog.pg_column_size(NEW.{}) > 100", q(c))
                };
                format!(
                    "{lit}, CASE WHEN {stored_apart} THEN to_jsonb(NEW.{col}) END",
                    lit = quote_literal(c),
                    col = q(c)
                )
            })
            .collect();
        if carried.is_empty() {
            "NULL".to_string()
        } else {
            format!(
                "nullif(jsonb_strip_nulls(jsonb_build_object({})), '{{}}'::jsonb)",
                carried.join(", ")
            )
        }
    };

    // main_authoritative and manual, on main: an incoming incarnation that loses to main's
    // row is dead here (cloud adopts main's row, so its own incarnation ends there too).
    // Its tombstone names main's incarnation as the cause: cloud creates the key again only
    // after deleting main's row or its own, and has then seen one of the two. Its later
    // delete is then no conflict (it was over already), so it is not logged.
    let buries = eff.policy.main_wins() && me == Role::Main;
    let bury = if buries {
        format!(
            "
        IF dx_m_inc <> dx_l_inc THEN
          INSERT INTO duplex.tombstone (rel, key, inc, base, cause) VALUES ({rel}, dx_k, dx_m_inc, {hash_new}, dx_l_inc) ON CONFLICT DO NOTHING;
        END IF;",
            hash_new = row_hash("NEW"),
        )
    } else {
        String::new()
    };

    // On cloud (main_authoritative and manual): main's version takes the key from a row of
    // another incarnation, `inc`, whose last version is `row`. Kept, in case main deleted
    // its incarnation before it saw that row (see the restore in the delete path).
    let displace = |inc: &str, row: &str| {
        format!(
            "
      INSERT INTO duplex.displaced (rel, key, by_inc, inc, seen, \"row\") VALUES ({rel}, dx_k, dx_m_inc, {inc}, dx_l_seen, {row})
        ON CONFLICT (rel, key) DO UPDATE SET by_inc = EXCLUDED.by_inc, inc = EXCLUDED.inc, seen = EXCLUDED.seen, \"row\" = EXCLUDED.\"row\", displaced_at = now();"
        )
    };

    // On main, an incoming row that did not replace ours: bury its incarnation.
    let bury_kept = format!(
        "
          SELECT coalesce((SELECT ri.inc FROM duplex.row_incarnation ri WHERE ri.rel = {rel} AND ri.key = dx_k), '0') INTO dx_l_inc;{bury}"
    );

    let capture = format!(
        r#"CREATE OR REPLACE FUNCTION duplex.{capture}() RETURNS trigger LANGUAGE plpgsql
{definer}
AS $duplex$
DECLARE dx_k text; dx_i text; dx_s text[]; dx_c jsonb;
BEGIN
  IF TG_OP = 'INSERT' THEN
    -- Only a key re-created after a delete needs metadata: a new incarnation that has seen
    -- those deletes. (BEFORE INSERT also fires for a row ON CONFLICT will skip: that row
    -- keeps its own.) Any other insert travels alone.
    dx_k := {key_new};
    IF EXISTS (SELECT 1 FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_k) THEN
      -- The key's lock before its incarnation, as the apply worker takes it before the row:
      -- an incoming insert of the key being applied meanwhile is committed first (then the
      -- row exists, and ours will be skipped or fail) instead of deadlocking with ours.
      PERFORM {key_lock};
      IF NOT EXISTS (SELECT 1 FROM {tbl} WHERE {key_eq_new}) THEN
        SELECT array_agg(t.inc) INTO dx_s FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_k;
        dx_i := pg_catalog.gen_random_uuid()::text;
        PERFORM duplex.set_incarnation({rel}, dx_k, dx_i, dx_s);
        INSERT INTO duplex.change_meta VALUES ({rel}, dx_k, 'I', dx_i, NULL, NULL, dx_s);
      END IF;
    END IF;
    RETURN NEW;
  END IF;
  dx_k := {key_old};
  SELECT ri.inc INTO dx_i FROM duplex.row_incarnation ri WHERE ri.rel = {rel} AND ri.key = dx_k;
  dx_i := coalesce(dx_i, '0');
  IF TG_OP = 'UPDATE' THEN
    -- An assignment, not inside the INSERT: a query's parameters no longer tell a value
    -- stored out of line.
    dx_c := {main_row_on_update};
    INSERT INTO duplex.change_meta VALUES ({rel}, dx_k, 'U', dx_i, {hash_old}, dx_c, NULL);
    RETURN NEW;
  END IF;
  INSERT INTO duplex.tombstone (rel, key, inc, base) VALUES ({rel}, dx_k, dx_i, {hash_old}) ON CONFLICT DO NOTHING;
  IF dx_i <> '0' THEN
    DELETE FROM duplex.row_incarnation WHERE rel = {rel} AND key = dx_k;
  END IF;{delete_seen}{forget_displaced}
  INSERT INTO duplex.change_meta VALUES ({rel}, dx_k, 'D', dx_i, {hash_old}, NULL, dx_s);
  RETURN OLD;
END $duplex$;
"#,
        capture = q(&names.capture),
        delete_seen = if buries {
            // Which incarnations of the key main knew dead when it deleted this one, each
            // with its cause ("inc cause"): cloud, holding a row of its own that main's
            // version replaced, tells from them whether main will keep that row.
            format!(
                "
  SELECT array_agg(t.inc || ' ' || coalesce(t.cause, t.inc)) INTO dx_s FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_k;"
            )
        } else {
            String::new()
        },
        forget_displaced = if main_overrides {
            // The row that replaced one of cloud's is gone: nothing to put back any more.
            format!("\n  DELETE FROM duplex.displaced d WHERE d.rel = {rel} AND d.key = dx_k;")
        } else {
            String::new()
        },
        key_lock = key_lock(&rel),
        key_new = key_json("NEW"),
        key_old = key_json("OLD"),
        key_eq_new = key_eq("NEW"),
        hash_old = row_hash("OLD"),
    );

    let resolve = format!(
        r#"CREATE OR REPLACE FUNCTION duplex.{resolve}() RETURNS trigger LANGUAGE plpgsql
{definer}
AS $duplex$
DECLARE
  dx_me constant text := {me_lit};
  dx_pol constant text := {pol};
  dx_k text; dx_m duplex.change_meta; dx_m_inc text := '0'; dx_m_base text; dx_m_seen text[]; dx_m_row jsonb; dx_l_inc text; dx_l_seen text[];
  dx_l {tbl}%ROWTYPE; dx_u {tbl}%ROWTYPE; dx_d duplex.displaced;
  dx_lh text; dx_nh text; dx_cause text; dx_tomb boolean; dx_concurrent boolean; dx_incoming_wins boolean; dx_typ text;
BEGIN
  -- (Our own writes below do not come back here: the trigger fires at depth 0 only.)
  IF TG_OP = 'INSERT' THEN dx_k := {key_new}; ELSE dx_k := {key_old}; END IF;
  -- The metadata of this change, if it came: duplex.meta_receive kept it for us.
  dx_m := nullif(current_setting('duplex.m', true), '')::duplex.change_meta;
  IF dx_m.rel = {rel} AND dx_m.key = dx_k AND dx_m.op = left(TG_OP, 1) THEN
    dx_m_inc := dx_m.inc; dx_m_base := dx_m.base; dx_m_seen := dx_m.seen; dx_m_row := dx_m."row";
  END IF;

  IF TG_OP = 'INSERT' THEN
    dx_tomb := EXISTS (SELECT 1 FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_k);
    IF dx_tomb THEN
      -- A local insert may be giving this key a new incarnation right now: take the key's
      -- lock before writing the row, as the capture takes it before the incarnation.
      PERFORM {key_lock};
    END IF;
    IF NOT {main_overrides} AND dx_tomb THEN
      -- A dead incarnation whose death the insert's writer had not seen: neither it nor
      -- the delete that killed it (its cause) is in the insert's seen list. The first
      -- such delete: the one that killed the insert on its own side, where this side's
      -- deletes arrive in order.
      SELECT t.inc, t.base, coalesce(t.cause, t.inc) INTO dx_l_inc, dx_m_base, dx_cause FROM duplex.tombstone t
       WHERE t.rel = {rel} AND t.key = dx_k AND t.inc <> ALL (coalesce(dx_m_seen, '{{}}'))
         AND coalesce(t.cause, t.inc) <> ALL (coalesce(dx_m_seen, '{{}}'))
       ORDER BY t.deleted_at, t.inc LIMIT 1;
      IF FOUND THEN
        -- This side deleted the key and the insert was made without seeing that delete:
        -- the delete wins, and the incoming incarnation is dead here too, killed by it.
        -- The entry is named by the deleted incarnation, as the other side names it when
        -- the delete reaches it.
        INSERT INTO duplex.tombstone (rel, key, inc, base, cause) VALUES ({rel}, dx_k, dx_m_inc, dx_m_base, nullif(dx_cause, dx_m_inc)) ON CONFLICT DO NOTHING;
        dx_typ := {deleted_here};
        PERFORM duplex.log_conflict({rel}, dx_k, dx_typ, {versions_dead}, dx_pol, 'DELETED',
          md5(dx_typ || {rel} || dx_k || dx_l_inc || coalesce(dx_m_base, '')), dx_me);
        RETURN NULL;
      END IF;
    END IF;
    -- Usually nothing is in the way: write the row (here, not by the apply worker, so that
    -- a local insert of the same key committing meanwhile is settled below, not an error).
    {insert_new};
    IF FOUND THEN
      IF dx_m_inc <> '0' THEN
        PERFORM duplex.set_incarnation({rel}, dx_k, dx_m_inc, dx_m_seen);
      END IF;
      RETURN NULL;
    END IF;
    FOR dx_attempt IN 1..3 LOOP
      SELECT * INTO dx_l FROM {tbl} WHERE {key_eq_new} FOR UPDATE;
      IF FOUND THEN
        dx_lh := {hash_l}; dx_nh := {hash_new};
        IF dx_lh = dx_nh THEN{bury_same}
          RETURN NULL;
        END IF;
        dx_incoming_wins := {wins_l};
        PERFORM duplex.log_conflict({rel}, dx_k, 'insert_insert', {versions_l}, dx_pol, {winner},
          md5('insert_insert' || {rel} || dx_k || {pair_hash}), dx_me);
        IF dx_incoming_wins THEN{unique_checks}{displace_insert}
          UPDATE {tbl} SET {set_new} WHERE {key_eq_l};
          PERFORM duplex.set_incarnation({rel}, dx_k, dx_m_inc, dx_m_seen);
        END IF;{bury_insert}
        RETURN NULL;
      END IF;{unique_checks}
      {insert_new};
      IF FOUND THEN
        PERFORM duplex.set_incarnation({rel}, dx_k, dx_m_inc, dx_m_seen);
        RETURN NULL;
      END IF;
      -- A local insert of the same key committed meanwhile: settle against it.
    END LOOP;
    RAISE EXCEPTION 'duplex: could not apply an insert into % (key %): the key keeps changing locally', {rel}, dx_k;
  END IF;

  SELECT ri.inc, ri.seen INTO dx_l_inc, dx_l_seen FROM duplex.row_incarnation ri WHERE ri.rel = {rel} AND ri.key = dx_k;
  dx_l_inc := coalesce(dx_l_inc, '0');
  dx_lh := {hash_old};

  IF TG_OP = 'DELETE' THEN
    IF dx_l_inc <> dx_m_inc AND (dx_m_inc = ANY (coalesce(dx_l_seen, '{{}}')){dead_here}) THEN
      -- The peer deleted an incarnation that ours was created after{dead_here_comment}: ours stays.
      INSERT INTO duplex.tombstone (rel, key, inc, base) VALUES ({rel}, dx_k, dx_m_inc, dx_m_base) ON CONFLICT DO NOTHING;
      RETURN NULL;
    END IF;{restore}
    dx_concurrent := dx_m_base IS NULL OR dx_lh <> dx_m_base OR dx_l_inc <> dx_m_inc;
    IF dx_concurrent THEN
      -- Changed here while deleted there. A delete wins, except that main's version wins
      -- a main_authoritative or manual table.
      dx_incoming_wins := NOT ({main_wins} AND dx_me = 'main');
      dx_typ := {deleted_there};
      PERFORM duplex.log_conflict({rel}, dx_k, dx_typ, {versions_old_deleted}, dx_pol,
        CASE WHEN dx_incoming_wins THEN 'DELETED' ELSE 'MAIN' END,
        md5(dx_typ || {rel} || dx_k || dx_m_inc || coalesce(dx_m_base, '')), dx_me);
      IF NOT dx_incoming_wins THEN RETURN NULL; END IF;
    END IF;
    -- Our incarnation dies of the peer's delete (its cause, when it is another one).
    INSERT INTO duplex.tombstone (rel, key, inc, base, cause) VALUES ({rel}, dx_k, dx_l_inc, dx_m_base, nullif(dx_m_inc, dx_l_inc)) ON CONFLICT DO NOTHING;
    IF dx_m_inc <> dx_l_inc THEN
      INSERT INTO duplex.tombstone (rel, key, inc, base) VALUES ({rel}, dx_k, dx_m_inc, dx_m_base) ON CONFLICT DO NOTHING;
    END IF;
    IF dx_l_inc <> '0' OR dx_l_seen IS NOT NULL THEN
      DELETE FROM duplex.row_incarnation WHERE rel = {rel} AND key = dx_k;
    END IF;
    RETURN OLD;
  END IF;

  -- UPDATE: a change based on the version we have is no conflict.
  dx_concurrent := dx_m_base IS NULL OR dx_lh <> dx_m_base;
  IF dx_l_inc <> dx_m_inc THEN
    IF dx_m_inc = ANY (coalesce(dx_l_seen, '{{}}'))
       OR EXISTS (SELECT 1 FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_k AND t.inc = dx_m_inc) THEN
      -- An update of an incarnation deleted here (logged by duplex.{uod}).
      IF NOT {main_overrides} THEN RETURN NULL; END IF;
    END IF;
    dx_concurrent := true;
  END IF;
  IF dx_concurrent THEN
    IF dx_m_row IS NOT NULL THEN
      -- The sender's own values of what the update did not send (see the capture).
      NEW := jsonb_populate_record(NEW, dx_m_row);
    END IF;
    dx_nh := {hash_new};
    IF dx_lh <> dx_nh THEN
      dx_incoming_wins := {wins_old};
      PERFORM duplex.log_conflict({rel}, dx_k, 'update_update', {versions_old}, dx_pol, {winner},
        md5('update_update' || {rel} || dx_k || {pair_hash}), dx_me);
      IF NOT dx_incoming_wins THEN{bury_update}
        RETURN NULL;
      END IF;
    END IF;
    IF dx_m_inc <> dx_l_inc THEN{displace_update}
      PERFORM duplex.set_incarnation({rel}, dx_k, dx_m_inc, dx_m_seen);
    END IF;
  END IF;
  IF {unique_changed} THEN{unique_checks}
  END IF;
  RETURN NEW;
END $duplex$;
"#,
        resolve = q(&names.resolve),
        uod = q(&names.update_of_deleted),
        key_lock = key_lock(&rel),
        bury_insert = if buries {
            format!(
                "
        IF NOT dx_incoming_wins THEN{bury_kept}
        END IF;"
            )
        } else {
            String::new()
        },
        // The same values under another incarnation: ours stays, so theirs is dead here
        // as when it loses (main's later deletes must name it, see the restore on cloud).
        bury_same = if buries {
            bury_kept.clone()
        } else {
            String::new()
        },
        bury_update = bury,
        displace_insert = if main_overrides {
            format!(
                "
          SELECT ri.inc, ri.seen INTO dx_l_inc, dx_l_seen FROM duplex.row_incarnation ri WHERE ri.rel = {rel} AND ri.key = dx_k;
          IF coalesce(dx_l_inc, '0') <> dx_m_inc THEN{displace}
          END IF;",
                displace = displace("coalesce(dx_l_inc, '0')", &jsonb("dx_l")),
            )
        } else {
            String::new()
        },
        displace_update = if main_overrides {
            displace("dx_l_inc", &jsonb("OLD"))
        } else {
            String::new()
        },
        restore = if main_overrides {
            let cols: Vec<String> = shape
                .columns
                .iter()
                .filter(|(c, _)| computed.updatable(c))
                .map(|(c, _)| q(c))
                .collect();
            let cols = cols.join(", ");
            format!(
                r#"
    IF dx_m_inc = dx_l_inc THEN
      SELECT * INTO dx_d FROM duplex.displaced d WHERE d.rel = {rel} AND d.key = dx_k AND d.by_inc = dx_l_inc;
      IF FOUND THEN
        -- Main's incarnation replaced one of ours here; whatever happens now settles it.
        DELETE FROM duplex.displaced d WHERE d.rel = {rel} AND d.key = dx_k;
        -- Main deleted its incarnation without having seen ours, and no delete main knew
        -- of was missed by ours: main keeps ours when it arrives there (after this
        -- delete), so it comes back here.
        IF dx_m_seen IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(dx_m_seen) dx_e
            WHERE pg_catalog.split_part(dx_e, ' ', 1) = dx_d.inc
               OR (pg_catalog.split_part(dx_e, ' ', 1) <> ALL (coalesce(dx_d.seen, '{{}}'))
                   AND pg_catalog.split_part(dx_e, ' ', 2) <> ALL (coalesce(dx_d.seen, '{{}}')))) THEN
          BEGIN
            UPDATE {tbl} SET ({cols}) = (SELECT {cols} FROM pg_catalog.jsonb_populate_record(NULL::{tbl}, dx_d."row")) WHERE {key_eq_old};
            INSERT INTO duplex.tombstone (rel, key, inc, base) VALUES ({rel}, dx_k, dx_m_inc, dx_m_base) ON CONFLICT DO NOTHING;
            PERFORM duplex.set_incarnation({rel}, dx_k, dx_d.inc, dx_d.seen);
            dx_typ := {deleted_there};
            PERFORM duplex.log_conflict({rel}, dx_k, dx_typ, NULL, dx_d."row", dx_pol, 'CLOUD',
              md5(dx_typ || {rel} || dx_k || dx_m_inc || coalesce(dx_m_base, '') || dx_d.inc), dx_me);
            RETURN NULL;
          EXCEPTION WHEN OTHERS THEN
            -- Its values no longer fit (a unique value taken since, a column added): main's
            -- delete applies (docs/conflicts.md, runbooks/unique-collision.md).
            RAISE WARNING 'duplex: could not put back the row of % % that main''s version had replaced: %', {rel}, dx_k, SQLERRM;
          END;
        END IF;
      END IF;
    END IF;"#,
                key_eq_old = key_eq("OLD"),
            )
        } else {
            String::new()
        },
        dead_here = if buries {
            format!(" OR EXISTS (SELECT 1 FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_k AND t.inc = dx_m_inc)")
        } else {
            String::new()
        },
        dead_here_comment = if buries {
            ", or one that already lost to ours"
        } else {
            ""
        },
        hash_l = row_hash("dx_l"),
        hash_new = row_hash("NEW"),
        hash_old = row_hash("OLD"),
        key_new = key_json("NEW"),
        key_old = key_json("OLD"),
        key_eq_new = key_eq("NEW"),
        key_eq_l = key_eq("dx_l"),
        wins_l = incoming_wins("dx_l"),
        wins_old = incoming_wins("OLD"),
        versions_l = versions(&jsonb("dx_l"), &jsonb("NEW")),
        versions_old = versions(&jsonb("OLD"), &jsonb("NEW")),
        versions_dead = versions("NULL", &jsonb("NEW")),
        versions_old_deleted = versions(&jsonb("OLD"), "NULL"),
        main_wins = eff.policy.main_wins(),
    );

    let update_of_deleted = format!(
        r#"CREATE OR REPLACE FUNCTION duplex.{uod}(dx_p_key text, dx_p_inc text, dx_p_row jsonb) RETURNS void LANGUAGE plpgsql
{pinned}
AS $duplex$
DECLARE dx_me constant text := {me_lit}; dx_pol constant text := {pol}; dx_b text; dx_typ text;
BEGIN
  IF EXISTS (SELECT 1 FROM {tbl} WHERE {key_from_text}) THEN RETURN; END IF;
  SELECT t.base INTO dx_b FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_p_key AND t.inc = dx_p_inc;
  dx_typ := {deleted_here};
  IF {main_overrides} AND dx_p_row IS NOT NULL THEN
    -- Main updated a row cloud deleted: main's version wins, so it comes back here; the
    -- update that follows then applies to it.
    {insert_json};
    DELETE FROM duplex.tombstone t WHERE t.rel = {rel} AND t.key = dx_p_key AND t.inc = dx_p_inc;
    PERFORM duplex.set_incarnation({rel}, dx_p_key, dx_p_inc, NULL);
    PERFORM duplex.log_conflict({rel}, dx_p_key, dx_typ, dx_p_row, NULL, dx_pol, 'MAIN',
      md5(dx_typ || {rel} || dx_p_key || dx_p_inc || coalesce(dx_b, '')), dx_me);
  ELSE
    PERFORM duplex.log_conflict({rel}, dx_p_key, dx_typ, {versions_uod}, dx_pol, 'DELETED',
      md5(dx_typ || {rel} || dx_p_key || dx_p_inc || coalesce(dx_b, '')), dx_me);
  END IF;
END $duplex$;
"#,
        uod = q(&names.update_of_deleted),
        // Only main's whole row is a version (another update carries a few columns).
        versions_uod = versions("NULL", "NULL"),
    );

    let triggers = format!(
        r#"DROP TRIGGER IF EXISTS {cap_t} ON {tbl};
DROP TRIGGER IF EXISTS {res_t} ON {tbl};
CREATE TRIGGER {cap_t} BEFORE INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW EXECUTE FUNCTION duplex.{capture}();
CREATE TRIGGER {res_t} BEFORE INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW WHEN (pg_catalog.pg_trigger_depth() < 1) EXECUTE FUNCTION duplex.{resolve}();
ALTER TABLE {tbl} ENABLE REPLICA TRIGGER {res_t};
COMMENT ON FUNCTION duplex.{capture}() IS {cap_c};
COMMENT ON FUNCTION duplex.{resolve}() IS {res_c};
REVOKE ALL ON FUNCTION duplex.{capture}() FROM PUBLIC;
REVOKE ALL ON FUNCTION duplex.{resolve}() FROM PUBLIC;
REVOKE ALL ON FUNCTION duplex.{uod}(text, text, jsonb) FROM PUBLIC;
"#,
        uod = q(&names.update_of_deleted),
        cap_t = q(CAPTURE_TRIGGER),
        res_t = q(RESOLVE_TRIGGER),
        capture = q(&names.capture),
        resolve = q(&names.resolve),
        cap_c = quote_literal(&format!(
            "duplex: capture of local changes to {}",
            shape.table
        )),
        res_c = quote_literal(&format!(
            "duplex: in-stream resolution for {} ({})",
            shape.table, eff.policy
        )),
    );
    let body = format!("{capture}{resolve}{update_of_deleted}{triggers}");
    let fingerprint = hex_prefix(&body, 64);
    let record = crate::store::resolution::record_sql(
        &rel,
        &pol,
        &eff.updated_at
            .as_deref()
            .map(quote_literal)
            .unwrap_or_else(|| "NULL".into()),
        &me_lit,
        &quote_literal(&fingerprint),
        &quote_literal(&names.update_of_deleted),
    );
    Generated {
        sql: format!("{body}{record}"),
        fingerprint,
        names,
    }
}

/// SQL that removes resolution from one table (triggers, functions, its record).
pub fn remove(table: &TableName) -> String {
    let n = names(table);
    let tbl = table.quoted();
    format!(
        "DROP TRIGGER IF EXISTS {cap_t} ON {tbl};
DROP TRIGGER IF EXISTS {res_t} ON {tbl};
DROP FUNCTION IF EXISTS duplex.{capture}();
DROP FUNCTION IF EXISTS duplex.{resolve}();
DROP FUNCTION IF EXISTS duplex.{uod}(text, text, jsonb);
DELETE FROM duplex.resolution WHERE rel = {rel};
DELETE FROM duplex.row_incarnation WHERE rel = {rel};
DELETE FROM duplex.tombstone WHERE rel = {rel};
DELETE FROM duplex.displaced WHERE rel = {rel};
",
        cap_t = quote_ident(CAPTURE_TRIGGER),
        res_t = quote_ident(RESOLVE_TRIGGER),
        capture = quote_ident(&n.capture),
        resolve = quote_ident(&n.resolve),
        uod = quote_ident(&n.update_of_deleted),
        rel = quote_literal(&table.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> TableShape {
        TableShape {
            table: TableName {
                schema: "public".into(),
                name: "Group Member".into(),
            },
            columns: vec![
                ("groupId".into(), "text".into()),
                ("userId".into(), "integer".into()),
                ("email".into(), "text".into()),
                ("updatedAt".into(), "timestamp(3) without time zone".into()),
            ],
            key: vec!["groupId".into(), "userId".into()],
            unique: vec![("gm_email_key".into(), vec!["email".into()])],
            computed: Computed::default(),
            toastable: vec![],
            toast_chunk_id: true,
        }
    }

    fn lww() -> Effective {
        Effective {
            policy: Policy::LastWriteWins,
            updated_at: Some("updatedAt".into()),
            configured: false,
        }
    }

    #[test]
    fn an_update_carries_the_large_values_it_leaves_unchanged_and_the_receiver_uses_them() {
        let mut s = shape();
        s.toastable = vec!["email".into()];
        let eff = Effective {
            policy: Policy::LastWriteWins,
            updated_at: Some("updatedAt".into()),
            configured: false,
        };
        let main = generate(&s, &eff, Role::Main, HashMode::Binary).sql;
        assert!(main.contains(r#"dx_c := nullif(jsonb_strip_nulls(jsonb_build_object('email', CASE WHEN pg_catalog.pg_column_toast_chunk_id(NEW."email") IS NOT NULL THEN to_jsonb(NEW."email") END)), '{}'::jsonb);"#), "{main}");
        assert!(main.contains("NEW := jsonb_populate_record(NEW, dx_m_row);"));
        s.toast_chunk_id = false;
        let pg16 = generate(&s, &eff, Role::Main, HashMode::Binary).sql;
        assert!(pg16.contains(r#"pg_catalog.pg_column_size(NEW."email") > 100"#));
        s.toastable.clear();
        let none = generate(&s, &eff, Role::Main, HashMode::Binary).sql;
        assert!(none.contains("dx_c := NULL;"));
    }

    #[test]
    fn generated_columns_are_not_written_nor_hashed_and_identity_always_is_overridden() {
        let mut s = shape();
        s.columns.push(("total".into(), "numeric".into()));
        s.columns.push(("seq".into(), "bigint".into()));
        s.computed = Computed {
            generated: vec!["total".into()],
            identity_always: vec!["seq".into()],
        };
        let eff = Effective {
            policy: Policy::LastWriteWins,
            updated_at: Some("updatedAt".into()),
            configured: false,
        };
        let sql = generate(&s, &eff, Role::Cloud, HashMode::Binary).sql;
        assert!(sql.contains(r#"("groupId", "userId", "email", "updatedAt", "seq") OVERRIDING SYSTEM VALUE VALUES (NEW."groupId""#), "{sql}");
        assert!(sql.contains(r#"hash_record_extended(ROW(NEW."groupId", NEW."userId", NEW."email", NEW."updatedAt", NEW."seq"), 0)"#), "{sql}");
        assert!(
            sql.contains(r#"(to_jsonb(NEW) - ARRAY['total']::text[])"#),
            "{sql}"
        );
        assert!(
            !sql.contains(r#""total" = NEW."total""#) && !sql.contains(r#""seq" = NEW."seq""#),
            "{sql}"
        );
    }

    #[test]
    fn names_fit_postgres_and_differ_per_table() {
        let long = TableName {
            schema: "public".into(),
            name: "A very long table name that goes on and on and on".into(),
        };
        let n = names(&long);
        assert!(n.update_of_deleted.len() <= 63 && n.resolve.len() <= 63);
        let other = TableName {
            schema: "app".into(),
            name: long.name.clone(),
        };
        assert_ne!(names(&other).resolve, n.resolve);
    }

    #[test]
    fn composite_keys_quoted_names_and_unique_indexes_reach_the_sql() {
        let g = generate(&shape(), &lww(), Role::Main, HashMode::Binary);
        assert!(g.sql.contains(r#"ON "public"."Group Member""#));
        assert!(g
            .sql
            .contains(r#"jsonb_build_array(NEW."groupId", NEW."userId")::text"#));
        assert!(g.sql.contains(
            r#""groupId" = (dx_p_key::jsonb->>0)::text AND "userId" = (dx_p_key::jsonb->>1)::integer"#
        ));
        assert!(g.sql.contains(r#""email" = NEW."email" AND NOT"#));
        assert!(g.sql.contains("ENABLE REPLICA TRIGGER \"duplex_resolve\""));
        // Ties go to main: on main the incoming (cloud) version needs a strictly later time.
        assert!(g.sql.contains(
            r#"coalesce(NEW."updatedAt", '-infinity') > coalesce(dx_l."updatedAt", '-infinity')"#
        ));
        let c = generate(&shape(), &lww(), Role::Cloud, HashMode::Binary);
        assert!(c.sql.contains(
            r#"coalesce(NEW."updatedAt", '-infinity') >= coalesce(dx_l."updatedAt", '-infinity')"#
        ));
        assert_ne!(g.fingerprint, c.fingerprint);
    }

    #[test]
    fn main_authoritative_sends_main_rows_and_lets_main_win_on_cloud() {
        let ma = Effective {
            policy: Policy::MainAuthoritative,
            updated_at: None,
            configured: true,
        };
        let main = generate(&shape(), &ma, Role::Main, HashMode::Binary);
        assert!(main.sql.contains("dx_c := to_jsonb(NEW);"));
        assert!(main
            .sql
            .contains("'U', dx_i, hash_record_extended(OLD, 0)::text, dx_c, NULL)"));
        assert!(main.sql.contains("incoming_wins := false;"));
        let cloud = generate(&shape(), &ma, Role::Cloud, HashMode::Binary);
        assert!(cloud.sql.contains("dx_c := NULL;"), "cloud sends no row");
        assert!(cloud.sql.contains("incoming_wins := true;"));
        // Main's deletes name the incarnations main knew dead; cloud keeps the rows main's
        // version replaced and can put one back. Neither on a last_write_wins table.
        assert!(main
            .sql
            .contains("array_agg(t.inc || ' ' || coalesce(t.cause, t.inc)) INTO dx_s"));
        assert!(cloud.sql.contains("INSERT INTO duplex.displaced"));
        assert!(cloud.sql.contains(
            "PERFORM duplex.set_incarnation('public.Group Member', dx_k, dx_d.inc, dx_d.seen);"
        ));
        for side in [Role::Main, Role::Cloud] {
            let lww = generate(&shape(), &lww(), side, HashMode::Binary).sql;
            assert!(!lww.contains("INSERT INTO duplex.displaced"));
            assert!(!lww.contains("FROM duplex.displaced d"));
            assert!(!lww.contains("coalesce(t.cause, t.inc)) INTO dx_s"));
        }
    }

    #[test]
    fn the_same_input_gives_the_same_fingerprint() {
        assert_eq!(
            generate(&shape(), &lww(), Role::Main, HashMode::Binary).fingerprint,
            generate(&shape(), &lww(), Role::Main, HashMode::Binary).fingerprint
        );
        assert!(remove(&shape().table).contains("DROP FUNCTION IF EXISTS duplex."));
    }
}
