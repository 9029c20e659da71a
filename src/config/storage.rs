//! `[storage]` and the storage URLs: where each side's objects live, the credentials to
//! reach them, and which columns of which tables reference files.
//!
//! A storage URL names an endpoint, a bucket and an optional prefix:
//! `http(s)://[KEY_ID:SECRET@]host[:port]/bucket[/prefix][?region=R]` (any S3-compatible
//! server, path-style), `s3://bucket[/prefix]?region=R` (AWS S3), or `file:///dir` (a
//! plain directory).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::keys::{as_secs, Key, Problems, Section};
use super::replication::parse_table;
use crate::secret::{Secret, SecretUrl};

pub(super) const LOCAL_KEY_ID: Key =
    Key::env("storage.local_access_key_id", "LOCAL_STORAGE_ACCESS_KEY_ID");
pub(super) const LOCAL_SECRET: Key = Key::env(
    "storage.local_secret_access_key",
    "LOCAL_STORAGE_SECRET_ACCESS_KEY",
);
pub(super) const REMOTE_KEY_ID: Key = Key::env(
    "storage.remote_access_key_id",
    "REMOTE_STORAGE_ACCESS_KEY_ID",
);
pub(super) const REMOTE_SECRET: Key = Key::env(
    "storage.remote_secret_access_key",
    "REMOTE_STORAGE_SECRET_ACCESS_KEY",
);
const TABLES: Key = Key::file("storage.tables");
const PART_SIZE: Key = Key::file("storage.part_size_bytes");
const RETRY_BACKOFF_MS: Key = Key::file("storage.retry_backoff_ms");
const STALL_TIMEOUT: Key = Key::file("storage.stall_timeout_secs");
const KEYS: &[Key] = &[
    LOCAL_KEY_ID,
    LOCAL_SECRET,
    REMOTE_KEY_ID,
    REMOTE_SECRET,
    TABLES,
    PART_SIZE,
    RETRY_BACKOFF_MS,
    STALL_TIMEOUT,
];
const TABLE_KEYS: &[&str] = &["key", "hash", "size", "priority"];
/// S3's smallest multipart part (all but the last).
const MIN_PART: u64 = 5 * 1024 * 1024;

/// One object store: an S3-compatible bucket (and prefix) or a directory.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Endpoint {
    /// An S3-compatible server, addressed path-style.
    S3 {
        /// `http://127.0.0.1:3900`: scheme, host and port only.
        endpoint: String,
        /// The bucket.
        bucket: String,
        /// Prepended to every object key: empty or ending in `/`.
        prefix: String,
        /// The signing region (Garage: `garage`). Default `us-east-1`.
        region: String,
        /// Access key id.
        access_key_id: String,
        /// Secret access key (never shown).
        secret_access_key: Secret,
    },
    /// A directory: an object's key is its path below the root.
    Fs {
        /// The directory.
        root: PathBuf,
    },
}

impl Endpoint {
    /// For messages: where, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::S3 {
                endpoint,
                bucket,
                prefix,
                ..
            } => format!("{endpoint}/{bucket}/{prefix}"),
            Endpoint::Fs { root } => format!("file://{}", root.display()),
        }
    }
}

/// Which columns of a table reference a file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileColumns {
    /// The object key, or an `s3://bucket/key` URL whose key is used (`"storageUrl"`).
    pub key: String,
    /// Lower-case hex SHA-256 of the object (`"hash"`).
    pub hash: String,
    /// Size in bytes (`"fileSize"`).
    pub size: String,
    /// Newest first by this column (`"createdAt"`); none: by key.
    pub priority: Option<String>,
}

/// `[storage]`: the object-storage mirror.
#[derive(Debug, Clone, Serialize)]
pub struct StorageSettings {
    /// `LOCAL_STORAGE_URL` with its credentials: this side's store. Unset: no mirror.
    pub local: Option<Endpoint>,
    /// `REMOTE_STORAGE_URL` with its credentials: the peer's store.
    pub remote: Option<Endpoint>,
    /// `[storage.tables."JumpLog"]`: `key`, `hash`, `size`, `priority` columns per table
    /// (`schema.table` as key). Default: none (nothing is mirrored).
    pub tables: BTreeMap<String, FileColumns>,
    /// `part_size_bytes`: files above this travel in parts of this size (multipart); also
    /// what one transfer holds in memory at most. Default 8 MiB, at least 5 MiB.
    pub part_size_bytes: u64,
    /// `retry_backoff_ms`: first wait before retrying a transient error (doubled each
    /// time, with jitter, up to 3 attempts). Default 1000.
    pub retry_backoff_ms: u64,
    /// `stall_timeout_secs`: a transfer that receives nothing for this long fails
    /// (transient). Default 30 s.
    #[serde(rename = "stall_timeout_secs", serialize_with = "as_secs")]
    pub stall_timeout: Duration,
}

impl StorageSettings {
    /// Whether the mirror has both stores and at least one table.
    pub fn configured(&self) -> bool {
        self.local.is_some() && self.remote.is_some() && !self.tables.is_empty()
    }

    pub(super) fn parse(
        top: &config::Map<String, config::Value>,
        local_url: Option<(&'static str, String)>,
        remote_url: Option<(&'static str, String)>,
        problems: &mut Problems,
    ) -> Self {
        let mut s = Section::table(top, "storage", KEYS, problems);
        let mut creds = |id: &Key, secret: &Key| {
            let id_v = s.string(id).filter(|v| !v.trim().is_empty());
            let secret_v = s.secret(secret);
            (id_v, secret_v, s.label(id), s.label(secret))
        };
        let local_creds = creds(&LOCAL_KEY_ID, &LOCAL_SECRET);
        let remote_creds = creds(&REMOTE_KEY_ID, &REMOTE_SECRET);
        let local = local_url.and_then(|(label, raw)| {
            endpoint(label, &raw, local_creds)
                .map_err(|e| s.problems.push(e))
                .ok()
        });
        let remote = remote_url.and_then(|(label, raw)| {
            endpoint(label, &raw, remote_creds)
                .map_err(|e| s.problems.push(e))
                .ok()
        });
        let mut tables = BTreeMap::new();
        if let Some(raw) = s.raw(&TABLES).cloned() {
            match raw.into_table() {
                Err(_) => s.problems.push(
                    "storage.tables must be a table of tables: [storage.tables.\"JumpLog\"] key = \"storageUrl\"",
                ),
                Ok(map) => {
                    for (name, value) in map {
                        let Some(table) = parse_table(&name, "public") else {
                            s.problems.push(format!("storage.tables: `{name}` is not a table name: write \"Table\" or \"schema.Table\", unquoted"));
                            continue;
                        };
                        let Ok(entry) = value.into_table() else {
                            s.problems.push(format!("storage.tables.\"{name}\" must be a table with key, hash, size and priority"));
                            continue;
                        };
                        let mut cols: BTreeMap<&str, String> = BTreeMap::new();
                        for (key, v) in entry {
                            match TABLE_KEYS.iter().find(|k| **k == key) {
                                Some(k) => match v.into_string() {
                                    Ok(c) if !c.trim().is_empty() => {
                                        cols.insert(k, c);
                                    }
                                    _ => s.problems.push(format!("storage.tables.\"{name}\".{key} must be a column name")),
                                },
                                None => s.problems.push(format!("unknown key `storage.tables.\"{name}\".{key}`: remove it or fix its spelling (known keys: {})", TABLE_KEYS.join(", "))),
                            }
                        }
                        let mut need = |k: &str| {
                            cols.get(k).cloned().or_else(|| {
                                s.problems.push(format!("storage.tables.\"{name}\".{k} is missing: name the column that holds the file's {}", match k { "key" => "object key", "hash" => "SHA-256 (hex)", _ => "size in bytes" }));
                                None
                            })
                        };
                        let (key, hash, size) = (need("key"), need("hash"), need("size"));
                        if let (Some(key), Some(hash), Some(size)) = (key, hash, size) {
                            tables.insert(
                                table.to_string(),
                                FileColumns { key, hash, size, priority: cols.get("priority").cloned() },
                            );
                        }
                    }
                }
            }
        }
        let part_size_bytes = s.bytes(&PART_SIZE, 8 * 1024 * 1024);
        if part_size_bytes < MIN_PART {
            s.problems.push(format!(
                "storage.part_size_bytes must be at least 5MiB (S3's smallest part), got {part_size_bytes}"
            ));
        }
        StorageSettings {
            local,
            remote,
            tables,
            part_size_bytes: part_size_bytes.max(MIN_PART),
            retry_backoff_ms: s.positive(&RETRY_BACKOFF_MS, 1000, 600_000),
            stall_timeout: s.secs(&STALL_TIMEOUT, 30, 3600),
        }
    }
}

type Creds = (Option<String>, Option<Secret>, &'static str, &'static str);

/// Parse one storage URL (`label` names it in problems). Never echoes the raw value.
fn endpoint(label: &str, raw: &str, creds: Creds) -> Result<Endpoint, String> {
    let url = SecretUrl::parse(raw.trim())
        .map_err(|e| format!("{label} is malformed: {e}; expected http://host:port/bucket[/prefix][?region=R], s3://bucket[/prefix]?region=R or file:///directory"))?;
    let u = url.url();
    let (id_v, secret_v, id_label, secret_label) = creds;
    let segments: Vec<String> = u
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let mut region = None;
    let mut custom_endpoint = None;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "region" if !v.is_empty() => region = Some(v.into_owned()),
            "endpoint" if u.scheme() == "s3" => custom_endpoint = Some(v.into_owned()),
            other => {
                return Err(format!(
                    "{label}: unknown parameter `{other}` (known: region{})",
                    if u.scheme() == "s3" { ", endpoint" } else { "" }
                ))
            }
        }
    }
    let (endpoint, bucket, prefix_parts) = match u.scheme() {
        "file" => {
            if u.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
                return Err(format!("{label}: a file:// URL names a local directory: file:///path (no host)"));
            }
            let root = u
                .to_file_path()
                .map_err(|_| format!("{label}: file:// needs an absolute directory, e.g. file:///var/lib/app/files"))?;
            return Ok(Endpoint::Fs { root });
        }
        "http" | "https" => {
            let Some(host) = u.host_str() else {
                return Err(format!("{label} has no host: expected http://host:port/bucket"));
            };
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let Some((bucket, rest)) = segments.split_first() else {
                return Err(format!(
                    "{label} names no bucket: expected {}://{host}{port}/bucket[/prefix]",
                    u.scheme()
                ));
            };
            (format!("{}://{host}{port}", u.scheme()), bucket.clone(), rest.to_vec())
        }
        "s3" => {
            let Some(bucket) = u.host_str().filter(|h| !h.is_empty()) else {
                return Err(format!("{label} names no bucket: expected s3://bucket[/prefix]?region=R"));
            };
            let region = region.clone().unwrap_or_else(|| "us-east-1".into());
            let endpoint = custom_endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
            (endpoint, bucket.to_string(), segments)
        }
        other => {
            return Err(format!(
                "{label} has scheme `{other}`: use http(s)://host:port/bucket (S3-compatible), s3://bucket (AWS) or file:///directory"
            ))
        }
    };
    let prefix = if prefix_parts.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix_parts.join("/"))
    };
    let access_key_id =
        id_v.or_else(|| (!u.username().is_empty()).then(|| u.username().to_string()));
    let secret_access_key = secret_v.or_else(|| url.password().map(Secret::new));
    match (access_key_id, secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Endpoint::S3 {
            endpoint,
            bucket,
            prefix,
            region: region.unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key,
        }),
        _ => Err(format!(
            "{label} needs credentials: set {id_label} and {secret_label} (or put KEY_ID:SECRET@ in the URL)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Creds {
        (None, None, "ID", "SECRET")
    }

    #[test]
    fn http_urls_name_endpoint_bucket_prefix_and_region() {
        let e = endpoint(
            "LOCAL_STORAGE_URL",
            "http://GK1:s3cr3t@127.0.0.1:3900/duplex-main/jumps/raw?region=garage",
            creds(),
        )
        .unwrap();
        match &e {
            Endpoint::S3 {
                endpoint,
                bucket,
                prefix,
                region,
                access_key_id,
                secret_access_key,
            } => {
                assert_eq!(endpoint, "http://127.0.0.1:3900");
                assert_eq!(bucket, "duplex-main");
                assert_eq!(prefix, "jumps/raw/");
                assert_eq!(region, "garage");
                assert_eq!(access_key_id, "GK1");
                assert_eq!(secret_access_key.expose(), "s3cr3t");
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{e:?} {}", serde_json::to_string(&e).unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn credentials_from_settings_win_and_missing_ones_are_a_problem() {
        let e = endpoint(
            "L",
            "https://s3.example.com/b",
            (Some("K".into()), Some(Secret::new("S")), "ID", "SECRET"),
        )
        .unwrap();
        assert!(
            matches!(e, Endpoint::S3 { ref access_key_id, ref prefix, ref region, .. } if access_key_id == "K" && prefix.is_empty() && region == "us-east-1")
        );
        let err = endpoint("L", "https://s3.example.com/b", creds()).unwrap_err();
        assert!(err.contains("set ID and SECRET"), "{err}");
    }

    #[test]
    fn file_urls_are_directories_and_bad_urls_are_explained() {
        let e = endpoint("L", "file:///var/lib/files", creds()).unwrap();
        assert!(matches!(e, Endpoint::Fs { ref root } if root == &PathBuf::from("/var/lib/files")));
        assert!(endpoint("L", "http://h:1/", creds())
            .unwrap_err()
            .contains("names no bucket"));
        assert!(endpoint("L", "ftp://h/b", creds())
            .unwrap_err()
            .contains("scheme `ftp`"));
        assert!(endpoint("L", "http://a:pw@h/b?color=red", creds())
            .unwrap_err()
            .contains("unknown parameter `color`"));
        let aws = endpoint(
            "L",
            "s3://bkt/p?region=eu-west-1",
            (Some("K".into()), Some(Secret::new("S")), "I", "S"),
        )
        .unwrap();
        assert!(
            matches!(aws, Endpoint::S3 { ref endpoint, ref bucket, ref prefix, .. } if endpoint == "https://s3.eu-west-1.amazonaws.com" && bucket == "bkt" && prefix == "p/")
        );
    }
}
