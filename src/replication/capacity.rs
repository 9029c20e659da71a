//! Room on a cluster for duplex's replication: logical replication workers, worker
//! processes, replication slots, WAL senders and replication origins, against what is in
//! use. Without room PostgreSQL does not fail: the new subscription's worker, or the table
//! sync worker of an initial copy, simply never starts, and setup would wait in silence.
//! So setup refuses up front, naming the setting to raise, and `duplex check` shows the
//! headroom.
//!
//! Reading is one query per cluster ([`read`]); judging is pure ([`Capacity::subscriber_problems`],
//! [`Capacity::publisher_problems`], [`Capacity::headroom`]).

use tokio_postgres::Client;

use crate::model::Role;
use crate::pg::{Context, Error};

/// What a setup run is about to add.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// A new subscription here: one apply worker (and its origin) here, one slot and one
    /// WAL sender on the peer.
    pub subscription: bool,
    /// An initial copy: for its duration, one table sync worker (and origin) here, one more
    /// slot and WAL sender on the peer.
    pub copy: bool,
}

impl Needs {
    fn workers(self) -> i64 {
        i64::from(self.subscription) + i64::from(self.copy)
    }
}

/// Limits and use of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// `max_worker_processes`.
    pub max_worker_processes: i64,
    /// `max_logical_replication_workers`.
    pub max_logical_workers: i64,
    /// `max_sync_workers_per_subscription`.
    pub max_sync_workers: i64,
    /// `max_replication_slots`.
    pub max_slots: i64,
    /// `max_wal_senders`.
    pub max_wal_senders: i64,
    /// How many replication origins can be active, and the setting that says so:
    /// `max_active_replication_origins` on PostgreSQL 18, `max_replication_slots` before.
    pub max_origins: i64,
    /// See `max_origins`.
    pub origins_setting: String,
    /// Enabled subscriptions of the whole cluster (every database): each wants an apply
    /// worker, running or waiting for one.
    pub enabled_subscriptions: i64,
    /// Logical replication workers running (apply, table sync, parallel apply).
    pub logical_workers: i64,
    /// Background worker processes running, the logical replication launcher included.
    pub background_workers: i64,
    /// Replication slots.
    pub slots: i64,
    /// WAL senders running.
    pub wal_senders: i64,
    /// Replication origins holding an active-origin slot; `None` when this login may not
    /// read `pg_replication_origin_status`.
    pub origins: Option<i64>,
}

/// Server processes that are not background workers (auxiliary processes, backends).
const NOT_BACKGROUND_WORKERS: &str = "'client backend', 'autovacuum launcher', \
    'autovacuum worker', 'background writer', 'checkpointer', 'walwriter', 'startup', \
    'walsender', 'walreceiver', 'archiver', 'io worker', 'walsummarizer', 'slotsync worker', \
    'standalone backend', 'logger'";

/// Read the limits and use of the connected cluster.
pub async fn read(client: &Client) -> Result<Capacity, Error> {
    let sql = format!(
        "SELECT current_setting('max_worker_processes')::bigint,
                current_setting('max_logical_replication_workers')::bigint,
                current_setting('max_sync_workers_per_subscription')::bigint,
                current_setting('max_replication_slots')::bigint,
                current_setting('max_wal_senders')::bigint,
                coalesce(current_setting('max_active_replication_origins', true),
                         current_setting('max_replication_slots'))::bigint,
                CASE WHEN current_setting('max_active_replication_origins', true) IS NULL
                     THEN 'max_replication_slots' ELSE 'max_active_replication_origins' END,
                (SELECT count(*) FROM pg_subscription WHERE subenabled),
                (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL),
                (SELECT count(*) FROM pg_stat_activity
                  WHERE backend_type NOT IN ({NOT_BACKGROUND_WORKERS})),
                (SELECT count(*) FROM pg_replication_slots),
                (SELECT count(*) FROM pg_stat_replication)"
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .context("reading replication capacity (settings and what is in use)")?;
    // Superuser or pg_read_all_stats... the function is superuser-only by default: a login
    // without it simply gets no origin count.
    let origins = client
        .query_one("SELECT count(*) FROM pg_replication_origin_status", &[])
        .await
        .ok()
        .map(|r| r.get::<_, i64>(0));
    Ok(Capacity {
        max_worker_processes: row.get(0),
        max_logical_workers: row.get(1),
        max_sync_workers: row.get(2),
        max_slots: row.get(3),
        max_wal_senders: row.get(4),
        max_origins: row.get(5),
        origins_setting: row.get(6),
        enabled_subscriptions: row.get(7),
        logical_workers: row.get(8),
        background_workers: row.get(9),
        slots: row.get(10),
        wal_senders: row.get(11),
        origins,
    })
}

fn raise(setting: &str, at_least: i64, side: Role) -> String {
    format!(
        "raise it to at least {at_least} (`ALTER SYSTEM SET {setting} = {at_least}`) and restart the {side} instance"
    )
}

impl Capacity {
    /// Logical replication workers wanted now: one per enabled subscription, or the running
    /// count when table sync or parallel apply workers make it higher.
    fn logical_demand(&self) -> i64 {
        self.enabled_subscriptions.max(self.logical_workers)
    }

    /// Why the subscriber `side` cannot run what setup is about to add (empty: it can).
    pub fn subscriber_problems(&self, side: Role, needs: Needs) -> Vec<String> {
        let mut problems = Vec::new();
        let add = needs.workers();
        if add == 0 {
            return problems;
        }
        let what = match (needs.subscription, needs.copy) {
            (true, true) => "its apply worker and a table sync worker for the initial copy",
            (true, false) => "its apply worker",
            _ => "a table sync worker to copy the new tables",
        };
        let demand = self.logical_demand();
        if demand + add > self.max_logical_workers {
            problems.push(format!(
                "the {side} instance has no room for duplex's subscription: max_logical_replication_workers is {max}, {demand} are in use or wanted by the cluster's {subs} enabled subscription(s), and duplex needs {add} more ({what}); without a free worker it would never start. Stop a subscription you do not need, or {fix}",
                max = self.max_logical_workers,
                subs = self.enabled_subscriptions,
                fix = raise("max_logical_replication_workers", demand + add, side),
            ));
        }
        if needs.copy && self.max_sync_workers < 1 {
            problems.push(format!(
                "max_sync_workers_per_subscription is 0 on the {side} instance, so the initial copy can never start: {}",
                raise("max_sync_workers_per_subscription", 2, side)
            ));
        }
        let missing = (self.enabled_subscriptions - self.logical_workers).max(0);
        let processes = self.background_workers + missing + add;
        if processes > self.max_worker_processes {
            problems.push(format!(
                "the {side} instance has no room for more worker processes: max_worker_processes is {max} and {used} background workers run or wait (logical replication, parallel query, extensions); duplex needs {add} more ({what}). {fix}",
                max = self.max_worker_processes,
                used = self.background_workers + missing,
                fix = raise("max_worker_processes", processes, side),
            ));
        }
        if let Some(origins) = self.origins {
            if origins + add > self.max_origins {
                problems.push(format!(
                    "the {side} instance has no free replication origin: {setting} is {max} and {origins} are active; duplex's subscription needs {add} more ({what}). {fix}",
                    setting = self.origins_setting,
                    max = self.max_origins,
                    fix = raise(&self.origins_setting, origins + add, side),
                ));
            }
        }
        problems
    }

    /// Why the publisher `side` cannot serve what the peer's setup is about to add.
    pub fn publisher_problems(&self, side: Role, needs: Needs) -> Vec<String> {
        let mut problems = Vec::new();
        let add = needs.workers();
        if add == 0 {
            return problems;
        }
        let what = if needs.copy {
            "the subscription's slot and, during the initial copy, one for the table being copied"
        } else {
            "the subscription's slot"
        };
        if self.slots + add > self.max_slots {
            problems.push(format!(
                "the {side} instance has no free replication slot: max_replication_slots is {max}, {used} exist, and duplex needs {add} ({what}). Drop a slot you do not need (see runbooks/replication-slot-dropped.md for duplex's own), or {fix}",
                max = self.max_slots,
                used = self.slots,
                fix = raise("max_replication_slots", self.slots + add, side),
            ));
        }
        if self.wal_senders + add > self.max_wal_senders {
            problems.push(format!(
                "the {side} instance has no free WAL sender: max_wal_senders is {max}, {used} run, and duplex needs {add} (one per slot streaming). {fix}",
                max = self.max_wal_senders,
                used = self.wal_senders,
                fix = raise("max_wal_senders", self.wal_senders + add, side),
            ));
        }
        problems
    }

    /// One line of what is in use against each limit, for `duplex check`.
    pub fn headroom(&self) -> String {
        let origins = match self.origins {
            Some(n) => format!("{n} of {}", self.max_origins),
            None => format!("? of {}", self.max_origins),
        };
        format!(
            "logical replication workers {} of {}, worker processes {} of {}, replication slots {} of {}, WAL senders {} of {}, replication origins {origins} ({})",
            self.logical_demand(),
            self.max_logical_workers,
            self.background_workers,
            self.max_worker_processes,
            self.slots,
            self.max_slots,
            self.wal_senders,
            self.max_wal_senders,
            self.origins_setting,
        )
    }

    /// What would stop one more subscription with an initial copy here, or a copy from here
    /// (a re-setup after a dropped slot, new tables): the problems with nothing spare.
    pub fn no_spare(&self, side: Role) -> Vec<String> {
        let spare = Needs {
            subscription: false,
            copy: true,
        };
        let mut problems = self.subscriber_problems(side, spare);
        problems.extend(self.publisher_problems(side, spare));
        problems
    }

    /// The notice setup prints while an initial copy has had no table sync worker for
    /// `secs` seconds.
    pub fn stall_notice(&self, side: Role, secs: u64) -> String {
        format!(
            "{side}: no table sync worker has started for {secs} s. {} of max_logical_replication_workers = {} are in use or wanted and {} of max_worker_processes = {} run on the {side} instance: when none is free the copy waits until one is (other subscriptions hold them). Stop a subscription you do not need or raise the setting (restart needed); `duplex check` shows the headroom",
            self.logical_demand(),
            self.max_logical_workers,
            self.background_workers,
            self.max_worker_processes,
        )
    }
}

/// Table sync workers running for subscription `name` of the connected database.
pub async fn sync_workers(client: &Client, name: &str) -> Result<i64, Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_subscription
              WHERE subname = $1 AND relid IS NOT NULL AND pid IS NOT NULL",
            &[&name],
        )
        .await
        .context("reading pg_stat_subscription")?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL's defaults with one subscription running.
    fn defaults() -> Capacity {
        Capacity {
            max_worker_processes: 8,
            max_logical_workers: 4,
            max_sync_workers: 2,
            max_slots: 10,
            max_wal_senders: 10,
            max_origins: 10,
            origins_setting: "max_active_replication_origins".into(),
            enabled_subscriptions: 1,
            logical_workers: 1,
            background_workers: 2,
            slots: 1,
            wal_senders: 1,
            origins: Some(1),
        }
    }

    const NEW_WITH_COPY: Needs = Needs {
        subscription: true,
        copy: true,
    };

    #[test]
    fn room_left_means_no_problem() {
        let c = defaults();
        assert!(c.subscriber_problems(Role::Cloud, NEW_WITH_COPY).is_empty());
        assert!(c.publisher_problems(Role::Main, NEW_WITH_COPY).is_empty());
        assert!(c.no_spare(Role::Main).is_empty());
    }

    #[test]
    fn nothing_to_add_is_never_refused() {
        let mut c = defaults();
        c.enabled_subscriptions = 9;
        c.slots = 10;
        assert!(c
            .subscriber_problems(Role::Cloud, Needs::default())
            .is_empty());
        assert!(c
            .publisher_problems(Role::Main, Needs::default())
            .is_empty());
    }

    #[test]
    fn full_logical_workers_name_the_setting_and_the_value_to_set() {
        let mut c = defaults();
        c.enabled_subscriptions = 3;
        c.logical_workers = 3;
        c.background_workers = 4;
        let p = c.subscriber_problems(Role::Cloud, NEW_WITH_COPY);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("max_logical_replication_workers is 4, 3 are in use"));
        assert!(p[0].contains("ALTER SYSTEM SET max_logical_replication_workers = 5"));
        assert!(p[0].contains("restart the cloud instance"));
        // Without a copy one worker is enough.
        let apply_only = Needs {
            subscription: true,
            copy: false,
        };
        assert!(c.subscriber_problems(Role::Main, apply_only).is_empty());
    }

    #[test]
    fn enabled_subscriptions_waiting_for_a_worker_count_as_used() {
        let mut c = defaults();
        c.enabled_subscriptions = 4;
        c.logical_workers = 0;
        let p = c.subscriber_problems(Role::Cloud, NEW_WITH_COPY);
        assert!(p[0].contains("4 are in use or wanted"), "{p:?}");
    }

    #[test]
    fn worker_processes_sync_workers_and_origins_are_each_checked() {
        let mut c = defaults();
        c.max_logical_workers = 32;
        c.background_workers = 7;
        c.max_sync_workers = 0;
        c.origins = Some(10);
        let p = c.subscriber_problems(Role::Cloud, NEW_WITH_COPY);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("max_sync_workers_per_subscription is 0"));
        assert!(p[1].contains("max_worker_processes = 9"));
        assert!(p[2].contains("max_active_replication_origins = 12"));
        c.origins = None;
        assert_eq!(c.subscriber_problems(Role::Cloud, NEW_WITH_COPY).len(), 2);
    }

    #[test]
    fn a_full_publisher_names_slots_and_wal_senders() {
        let mut c = defaults();
        c.slots = 9;
        c.wal_senders = 10;
        let p = c.publisher_problems(Role::Main, NEW_WITH_COPY);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("max_replication_slots = 11"));
        assert!(p[1].contains("max_wal_senders = 12"));
        assert!(!c.no_spare(Role::Main).is_empty());
    }

    #[test]
    fn a_stalled_copy_is_explained_with_the_numbers() {
        let mut c = defaults();
        c.enabled_subscriptions = 4;
        let n = c.stall_notice(Role::Cloud, 15);
        assert!(
            n.starts_with("cloud: no table sync worker has started for 15 s"),
            "{n}"
        );
        assert!(
            n.contains("4 of max_logical_replication_workers = 4"),
            "{n}"
        );
        assert!(n.contains("`duplex check` shows the headroom"), "{n}");
    }

    #[test]
    fn headroom_shows_use_against_each_limit() {
        let h = defaults().headroom();
        assert_eq!(
            h,
            "logical replication workers 1 of 4, worker processes 2 of 8, replication slots 1 of 10, WAL senders 1 of 10, replication origins 1 of 10 (max_active_replication_origins)"
        );
    }
}
