//! The table selection: what the configuration selects compared with what is set up, for
//! `duplex check`, `duplex status` and the start-up of `duplex run`.
//!
//! "Set up" is what `duplex setup` recorded in `duplex.replicated_table` (it records the
//! selection on both instances, since it sets both publications). When nothing was
//! recorded (a setup by an older duplex, or the psql scripts on a database without
//! duplex's schema) it is what this side's publication publishes: the publication is what
//! actually replicates. A difference is reported as a difference, naming the tables and
//! what `duplex setup` would do about it; it is never turned into generic advice to run
//! setup, which would widen (or narrow) replication by accident.

use serde::Serialize;
use tokio_postgres::Client;

use super::{catalog, outgoing, resolve_tables};
use crate::config::{Settings, TableSelection};
use crate::model::TableName;
use crate::pg;
use crate::store::replicated_table;

/// Where the set-up selection was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Source {
    /// `duplex.replicated_table`, written by `duplex setup` (or the psql scripts when
    /// duplex's schema exists).
    Recorded,
    /// Nothing recorded: this side's outgoing publication, by name.
    Publication(String),
}

impl Source {
    /// How a sentence names it: "the tables recorded at setup in ..." or "publication X ...".
    pub fn describe(&self) -> String {
        match self {
            Source::Recorded => "the tables recorded at setup in duplex.replicated_table".into(),
            Source::Publication(p) => {
                format!("publication {p} (no selection was recorded here by `duplex setup`)")
            }
        }
    }
}

/// The configured selection beside the set-up one.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The configured tables, resolved on the local instance.
    #[serde(serialize_with = "names")]
    pub configured: Vec<TableName>,
    /// The tables set up, sorted; `None` when nothing is set up on this side (nothing
    /// recorded, no publication).
    #[serde(serialize_with = "opt_names")]
    pub set_up: Option<Vec<TableName>>,
    /// Where `set_up` was read from; `None` with it.
    pub source: Option<Source>,
    /// Configured but not set up: `duplex setup` would start replicating them.
    #[serde(serialize_with = "names")]
    pub not_replicated: Vec<TableName>,
    /// Set up but not configured: `duplex setup` would stop replicating them.
    #[serde(serialize_with = "names")]
    pub not_configured: Vec<TableName>,
}

fn names<S: serde::Serializer>(t: &[TableName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(t.iter().map(ToString::to_string))
}

fn opt_names<S: serde::Serializer>(t: &Option<Vec<TableName>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => names(t, s),
        None => s.serialize_none(),
    }
}

/// One finding about the selection: what differs, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    /// What differs, naming the tables.
    pub message: String,
    /// What `duplex setup` would do about it, and the other way out.
    pub hint: String,
}

impl Comparison {
    /// Compare `configured` with `set_up` (both in any order).
    pub fn new(
        mut configured: Vec<TableName>,
        set_up: Option<(Vec<TableName>, Source)>,
    ) -> Comparison {
        configured.sort();
        configured.dedup();
        let (set_up, source) = match set_up {
            Some((mut t, s)) => {
                t.sort();
                t.dedup();
                (Some(t), Some(s))
            }
            None => (None, None),
        };
        let (not_replicated, not_configured) = match &set_up {
            Some(s) => (minus(&configured, s), minus(s, &configured)),
            None => (Vec::new(), Vec::new()),
        };
        Comparison {
            configured,
            set_up,
            source,
            not_replicated,
            not_configured,
        }
    }

    /// The configuration selects other tables than are set up.
    pub fn differs(&self) -> bool {
        !self.not_replicated.is_empty() || !self.not_configured.is_empty()
    }

    /// The tables that both are configured and replicate (the configured ones when nothing
    /// is set up yet): what the per-table findings should be about.
    pub fn in_both(&self) -> Vec<TableName> {
        match &self.set_up {
            Some(s) => self
                .configured
                .iter()
                .filter(|t| s.contains(t))
                .cloned()
                .collect(),
            None => self.configured.clone(),
        }
    }

    /// One sentence per direction of difference (none when the selections agree).
    /// `selection` is the configuration's `[tables]`, named in the hints so a reader sees
    /// where the configured list came from.
    pub fn sentences(&self, selection: &TableSelection) -> Vec<Sentence> {
        let Some(source) = &self.source else {
            return Vec::new();
        };
        let configured_by = format!(
            "The configuration in use selects {}; it was compared with {}.",
            describe_selection(selection),
            source.describe()
        );
        let mut out = Vec::new();
        if !self.not_replicated.is_empty() {
            out.push(Sentence {
                message: format!(
                    "configured but not replicated: {}",
                    list(&self.not_replicated)
                ),
                hint: format!(
                    "to start replicating them run `duplex setup` with this configuration (cloud first, then main): that widens replication, their rows are copied to the other side and their changes flow both ways from then on. If they should stay local, leave them out of [tables]. {configured_by}"
                ),
            });
        }
        if !self.not_configured.is_empty() {
            out.push(Sentence {
                message: format!(
                    "replicated but not in the configuration: {}",
                    list(&self.not_configured)
                ),
                hint: format!(
                    "`duplex setup` with this configuration would stop replicating them (their rows stay where they are). If they should keep replicating, add them to [tables]. {configured_by}"
                ),
            });
        }
        out
    }
}

/// `[tables]` in words: "every table of schema public (the default)", ...
pub fn describe_selection(selection: &TableSelection) -> String {
    match selection {
        TableSelection::Schema { schema, exclude } if exclude.is_empty() => {
            let default = if schema == "public" {
                " (the default when no --config file sets [tables])"
            } else {
                ""
            };
            format!("every table of schema {schema}{default}")
        }
        TableSelection::Schema { schema, exclude } => {
            format!(
                "every table of schema {schema} except {}",
                exclude.join(", ")
            )
        }
        TableSelection::Include { tables } => {
            format!("the {} table(s) of tables.include", tables.len())
        }
    }
}

/// `a` without the tables of `b`.
fn minus(a: &[TableName], b: &[TableName]) -> Vec<TableName> {
    a.iter().filter(|t| !b.contains(t)).cloned().collect()
}

/// `public.A, public.B`.
pub fn list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What was set up on the instance behind `local` for `settings`' role: the recorded
/// selection, else the outgoing publication's tables, else `None`.
pub async fn set_up(
    settings: &Settings,
    local: &Client,
) -> Result<Option<(Vec<TableName>, Source)>, pg::Error> {
    if let Some(recorded) = replicated_table::recorded(local).await? {
        return Ok(Some((recorded, Source::Recorded)));
    }
    let publication = outgoing(settings.instance_role);
    Ok(catalog::publication_tables(local, &publication)
        .await?
        .map(|t| (t, Source::Publication(publication))))
}

/// Read both selections from the local instance and compare them.
pub async fn compare(settings: &Settings, local: &Client) -> Result<Comparison, pg::Error> {
    let configured = resolve_tables(local, settings).await?;
    Ok(Comparison::new(configured, set_up(settings, local).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableName {
        TableName {
            schema: "public".into(),
            name: name.into(),
        }
    }

    fn public() -> TableSelection {
        TableSelection::Schema {
            schema: "public".into(),
            exclude: Vec::new(),
        }
    }

    #[test]
    fn a_wider_default_selection_names_the_extra_tables_and_says_setup_would_widen() {
        let c = Comparison::new(
            vec![
                t("User"),
                t("DeviceFileIndex"),
                t("JumpLog"),
                t("DeviceCommandQueue"),
            ],
            Some((vec![t("JumpLog"), t("User")], Source::Recorded)),
        );
        assert!(c.differs());
        assert_eq!(c.in_both(), vec![t("JumpLog"), t("User")]);
        let s = c.sentences(&public());
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(
            s[0].message,
            "configured but not replicated: public.DeviceCommandQueue, public.DeviceFileIndex"
        );
        assert!(s[0]
            .hint
            .starts_with("to start replicating them run `duplex setup`"));
        assert!(s[0].hint.contains("widens replication"), "{}", s[0].hint);
        assert!(
            s[0].hint
                .contains("every table of schema public (the default"),
            "{}",
            s[0].hint
        );
        assert!(s[0]
            .hint
            .contains("the tables recorded at setup in duplex.replicated_table"));
    }

    #[test]
    fn a_narrower_selection_names_the_tables_setup_would_stop_replicating() {
        let c = Comparison::new(
            vec![t("User")],
            Some((
                vec![t("User"), t("JumpLog")],
                Source::Publication("duplex_main_to_cloud".into()),
            )),
        );
        let s = c.sentences(&TableSelection::Include {
            tables: vec![t("User")],
        });
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(
            s[0].message,
            "replicated but not in the configuration: public.JumpLog"
        );
        assert!(s[0].hint.contains("would stop replicating them"));
        assert!(s[0].hint.contains("the 1 table(s) of tables.include"));
        assert!(s[0].hint.contains("publication duplex_main_to_cloud"));
    }

    #[test]
    fn both_directions_of_difference_are_each_named() {
        let c = Comparison::new(
            vec![t("A"), t("B")],
            Some((vec![t("B"), t("C")], Source::Recorded)),
        );
        let s = c.sentences(&public());
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].message.ends_with(": public.A"));
        assert!(s[1].message.ends_with(": public.C"));
    }

    #[test]
    fn equal_selections_or_nothing_set_up_say_nothing() {
        let same = Comparison::new(
            vec![t("B"), t("A")],
            Some((vec![t("A"), t("B")], Source::Recorded)),
        );
        assert!(!same.differs());
        assert!(same.sentences(&public()).is_empty());
        let none = Comparison::new(vec![t("A")], None);
        assert!(!none.differs());
        assert!(none.sentences(&public()).is_empty());
        assert_eq!(none.in_both(), vec![t("A")]);
    }
}
