//! The parsing helpers every section uses: a [`Key`] names one setting once (its path in
//! the file and its environment variable), a [`Section`] reads typed values and collects
//! every problem.

use std::time::Duration;

use config::{Map, Value, ValueKind};
use serde::Serializer;

use crate::secret::{Secret, SecretUrl};

/// Seconds in a day, for the bounds of `_secs` keys.
pub const DAY: u64 = 86_400;
/// Upper bound of counts compared with database figures (queue sizes).
pub const MAX_COUNT: u64 = 1_000_000_000;

/// One setting: its dotted path in the file and, if it has one, its environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `daemon.monitor_interval_secs`, or `instance_role` at the top level.
    pub path: &'static str,
    /// `DUPLEX_MONITOR_INTERVAL_SECS`, when the environment can set it.
    pub env: Option<&'static str>,
}

impl Key {
    /// A key the environment cannot set.
    pub const fn file(path: &'static str) -> Key {
        Key { path, env: None }
    }

    /// A key the environment variable `env` overrides.
    pub const fn env(path: &'static str, env: &'static str) -> Key {
        Key {
            path,
            env: Some(env),
        }
    }

    /// `(variable, path)`, for [`super::ENV_KEYS`].
    pub const fn env_pair(self) -> (&'static str, &'static str) {
        match self.env {
            Some(e) => (e, self.path),
            None => panic!("this key has no environment variable"),
        }
    }

    /// The key inside its section.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }

    /// How problems name it when the environment set it: the variable when there is one,
    /// else the path. [`Section::label`] picks the source that actually set the value.
    pub fn label(&self) -> &'static str {
        self.env.unwrap_or(self.path)
    }
}

/// Every problem found, reported together, and which keys the environment set (so a
/// problem names the variable or the file key, whichever the user wrote).
#[derive(Debug, Default)]
pub struct Problems {
    /// One sentence each: what is wrong and what to do.
    pub list: Vec<String>,
    /// Paths (`daemon.monitor_interval_secs`) whose value came from the environment.
    pub from_env: std::collections::BTreeSet<&'static str>,
}

impl Problems {
    /// Add one sentence: what is wrong and what to do.
    pub fn push(&mut self, p: impl Into<String>) {
        self.list.push(p.into());
    }

    /// How to name `key` in a problem: its environment variable when the environment set
    /// it, else its path in the file.
    pub fn label(&self, key: &Key) -> &'static str {
        match key.env {
            Some(var) if self.from_env.contains(key.path) => var,
            _ => key.path,
        }
    }
}

/// One table of the file (or the top level) with its known keys.
pub struct Section<'p> {
    map: Map<String, Value>,
    /// Problems found so far.
    pub problems: &'p mut Problems,
}

impl<'p> Section<'p> {
    /// The top level of the configuration.
    pub fn top(map: Map<String, Value>, known: &[&str], problems: &'p mut Problems) -> Self {
        unknown_keys(&map, known, "", problems);
        Section { map, problems }
    }

    /// The sub-table `name` of `top` (empty when absent), checked against `keys`.
    pub fn table(
        top: &Map<String, Value>,
        name: &str,
        keys: &[Key],
        problems: &'p mut Problems,
    ) -> Self {
        let map = match top.get(name).map(|v| v.clone().into_table()) {
            None => Map::new(),
            Some(Ok(t)) => t,
            Some(Err(_)) => {
                problems.push(format!("`{name}` must be a table ([{name}])"));
                Map::new()
            }
        };
        let known: Vec<&str> = keys.iter().map(Key::name).collect();
        unknown_keys(&map, &known, &format!("{name}."), problems);
        Section { map, problems }
    }

    /// How to name `key` in a problem (see [`Problems::label`]).
    pub fn label(&self, key: &Key) -> &'static str {
        self.problems.label(key)
    }

    /// The raw value of `key`.
    pub fn raw(&self, key: &Key) -> Option<&Value> {
        self.map.get(key.name())
    }

    /// A string.
    pub fn string(&mut self, key: &Key) -> Option<String> {
        let value = self.map.get(key.name())?;
        match value.clone().into_string() {
            Ok(s) => Some(s),
            Err(_) => {
                let label = self.label(key);
                self.problems.push(format!("{label} must be a string"));
                None
            }
        }
    }

    /// A whole number from 1 to `max`. Every number duplex reads has an upper bound, so
    /// that no later arithmetic on it (seconds to milliseconds, a period times three) can
    /// overflow; a value outside the range is a problem naming the key and the range.
    pub fn positive(&mut self, key: &Key, default: u64, max: u64) -> u64 {
        self.whole(key, default, max, "")
    }

    /// A whole number of seconds from 1 to `max_secs`.
    pub fn secs(&mut self, key: &Key, default_secs: u64, max_secs: u64) -> Duration {
        Duration::from_secs(self.whole(key, default_secs, max_secs, &human_secs(max_secs)))
    }

    /// A whole number from 1 to `max`; `note` follows the bound in a problem (` (1 day)`).
    pub fn whole(&mut self, key: &Key, default: u64, max: u64, note: &str) -> u64 {
        let Some(value) = self.map.get(key.name()) else {
            return default;
        };
        let label = self.label(key);
        let shown = match value.clone().into_int() {
            Ok(n) if n > 0 && (n as u64) <= max => return n as u64,
            Ok(n) => n.to_string(),
            Err(_) => format!("`{value}`"),
        };
        self.problems.push(range_problem(label, max, note, &shown));
        default
    }

    /// `true` or `false`.
    pub fn bool(&mut self, key: &Key, default: bool) -> bool {
        match self.map.get(key.name()) {
            None => default,
            Some(v) => v.clone().into_bool().unwrap_or_else(|_| {
                let label = self.problems.label(key);
                self.problems
                    .push(format!("{label} must be true or false, got `{v}`"));
                default
            }),
        }
    }

    /// A size such as `5GB`.
    pub fn bytes(&mut self, key: &Key, default: u64) -> u64 {
        match self.map.get(key.name()) {
            None => default,
            Some(v) => parse_rate(&v.to_string()).unwrap_or_else(|e| {
                let label = self.problems.label(key);
                self.problems.push(format!("{label}: {e}"));
                default
            }),
        }
    }

    /// A secret; empty counts as unset.
    pub fn secret(&mut self, key: &Key) -> Option<Secret> {
        self.string(key)
            .filter(|s| !s.trim().is_empty())
            .map(Secret::new)
    }

    /// A list of names: a TOML array or a comma-separated string.
    pub fn list(&mut self, key: &Key) -> Option<Vec<String>> {
        let value = self.map.get(key.name())?.clone();
        let label = self.label(key);
        Some(string_list(&value, label, self.problems))
    }

    /// A URL with one of `schemes` and a host; the raw value is never echoed.
    pub fn url(&mut self, key: &Key, schemes: &[&str]) -> Option<SecretUrl> {
        let raw = self.string(key)?;
        if raw.trim().is_empty() {
            return None;
        }
        let label = self.label(key);
        match SecretUrl::parse(&raw) {
            Ok(url) if schemes.contains(&url.url().scheme()) && url.url().host_str().is_some() => {
                Some(url)
            }
            Ok(url) => {
                self.problems.push(format!(
                    "{label} is malformed: expected {}://user:password@host:port/... (got scheme `{}`{})",
                    schemes[0],
                    url.url().scheme(),
                    if url.url().host_str().is_none() { " and no host" } else { "" }
                ));
                None
            }
            Err(e) => {
                // Never echo the raw value: it may hold a password.
                self.problems.push(format!(
                    "{label} is malformed: {e}; expected {}://user:password@host:port/...",
                    schemes[0]
                ));
                None
            }
        }
    }
}

fn unknown_keys(map: &Map<String, Value>, known: &[&str], section: &str, problems: &mut Problems) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(format!(
                "unknown key `{section}{key}`: remove it or fix its spelling (known keys: {})",
                known.join(", ")
            ));
        }
    }
}

/// Names from a TOML array or a comma-separated string.
pub fn string_list(value: &Value, label: &str, problems: &mut Problems) -> Vec<String> {
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

/// The sentence for a whole number outside 1..=`max`: names the key and the range.
fn range_problem(label: &str, max: u64, note: &str, shown: &str) -> String {
    format!("{label} must be a positive whole number up to {max}{note}, got {shown}")
}

/// ` (7 days)`: a bound in seconds as a person reads it, for problems.
pub fn human_secs(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3600 && s % 3600 == 0 => (s / 3600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!(" ({n} {unit}{})", if n == 1 { "" } else { "s" })
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

/// Serialize a `Duration` as whole seconds (the file's `_secs` keys).
pub fn as_secs<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// Serialize a list of `Duration`s as whole seconds.
pub fn as_secs_list<S: Serializer>(d: &[std::time::Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(d.iter().map(Duration::as_secs))
}
