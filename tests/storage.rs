//! The object-storage mirror against the lab: two PostgreSQL clusters and two Garage
//! servers (`scripts/lab.sh up`; `eval "$(scripts/lab.sh env)"` exports their URLs and
//! keys). Each test uses its own databases and its own key prefix in both buckets.
//! Objects are written and read back through `aws-sdk-s3` directly, not duplex's code.

mod common;

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};

use common::{insert_user, text, wait_until, Pair, EXAMPLE_TABLES, FAST_DAEMON};

/// The storage configuration of these tests: the example app's JumpLog, small parts so
/// that a 12 MiB file goes up in three, fast retries.
const STORAGE: &str = r#"
[storage]
part_size_bytes = "5MiB"
retry_backoff_ms = 50

[storage.tables."JumpLog"]
key = "storageUrl"
hash = "hash"
size = "fileSize"
priority = "createdAt"
"#;

/// One side's store for one test: a bucket on an S3 server and this test's prefix.
#[derive(Clone)]
struct Side {
    endpoint: String,
    bucket: String,
    prefix: String,
    region: String,
    key_id: String,
    secret: String,
    client: aws_sdk_s3::Client,
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/lab.sh up and eval \"$(scripts/lab.sh env)\" (scripts/test.sh does both)")
    })
}

fn s3_client(endpoint: &str, region: &str, key_id: &str, secret: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(key_id, secret, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl Side {
    /// The lab's `MAIN` or `CLOUD` store, under prefix `t-<id>/`.
    fn lab(which: &str, id: &str) -> Side {
        let url = url::Url::parse(&env(&format!("{which}_STORAGE_URL"))).expect("storage URL");
        let endpoint = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().expect("host"),
            url.port().expect("port")
        );
        let bucket = url.path().trim_matches('/').to_string();
        let region = url
            .query_pairs()
            .find(|(k, _)| k == "region")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| "us-east-1".into());
        let key_id = env(&format!("{which}_STORAGE_ACCESS_KEY_ID"));
        let secret = env(&format!("{which}_STORAGE_SECRET_ACCESS_KEY"));
        Side {
            client: s3_client(&endpoint, &region, &key_id, &secret),
            endpoint,
            bucket,
            prefix: format!("t-{id}/"),
            region,
            key_id,
            secret,
        }
    }

    /// `LOCAL_STORAGE_URL` / `REMOTE_STORAGE_URL` for this side.
    fn url(&self) -> String {
        format!(
            "{}/{}/{}?region={}",
            self.endpoint,
            self.bucket,
            self.prefix.trim_end_matches('/'),
            self.region
        )
    }

    async fn put(&self, key: &str, bytes: &[u8]) {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "putting {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    /// The object's bytes, `None` when absent.
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .send()
            .await
        {
            Ok(o) => Some(o.body.collect().await.expect("reading body").to_vec()),
            Err(e) => {
                let missing = e.as_service_error().is_some_and(|s| s.is_no_such_key());
                assert!(
                    missing,
                    "getting {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                );
                None
            }
        }
    }

    /// Every key under this test's prefix (relative to it).
    async fn keys(&self) -> Vec<String> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .send()
            .await
            .expect("listing");
        out.contents()
            .iter()
            .filter_map(|o| {
                o.key()
                    .and_then(|k| k.strip_prefix(&self.prefix))
                    .map(str::to_string)
            })
            .collect()
    }
}

/// Environment for `duplex` on the side whose store is `local`.
fn storage_env(local: &Side, remote: &Side) -> Vec<(String, String)> {
    vec![
        ("LOCAL_STORAGE_URL".into(), local.url()),
        ("LOCAL_STORAGE_ACCESS_KEY_ID".into(), local.key_id.clone()),
        (
            "LOCAL_STORAGE_SECRET_ACCESS_KEY".into(),
            local.secret.clone(),
        ),
        ("REMOTE_STORAGE_URL".into(), remote.url()),
        ("REMOTE_STORAGE_ACCESS_KEY_ID".into(), remote.key_id.clone()),
        (
            "REMOTE_STORAGE_SECRET_ACCESS_KEY".into(),
            remote.secret.clone(),
        ),
    ]
}

/// `duplex <args>` as `role` with the given stores; (exit code, stdout, stderr).
async fn duplex(
    pair: &Pair,
    role: &str,
    env: &[(String, String)],
    args: &[&str],
) -> (i32, String, String) {
    let out = pair
        .duplex(role, args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .await
        .expect("running duplex");
    let (o, e) = text(&out);
    (out.status.code().unwrap_or(-1), o, e)
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// Insert a JumpLog row `id` referencing `url` with the given hash and size, created
/// `age_secs` ago (newest first means smallest age first).
/// [`jump`] for a file whose row states `data`'s true hash and size.
async fn jump_for(c: &tokio_postgres::Client, id: &str, url: &str, data: &[u8], age_secs: i64) {
    jump(c, id, url, &sha256(data), data.len() as i64, age_secs).await;
}

async fn jump(
    c: &tokio_postgres::Client,
    id: &str,
    url: &str,
    hash: &str,
    size: i64,
    age_secs: i64,
) {
    c.execute(
        r#"INSERT INTO "JumpLog" ("id", "userId", "jumpNumber", "altitude", "freefallTime",
                                  "storageUrl", "hash", "fileSize", "createdAt")
           VALUES ($1, 'u1', 1, 4000, 60, $2, $3, $4, now() - make_interval(secs => $5))"#,
        &[&id, &url, &hash, &size, &(age_secs as f64)],
    )
    .await
    .expect("inserting JumpLog");
}

async fn storage_log(
    c: &tokio_postgres::Client,
    sync_type: &str,
) -> Vec<(String, i64, String, serde_json::Value)> {
    c.query(
        "SELECT status, records_synced, coalesce(error_message, ''), details FROM duplex.sync_log
          WHERE sync_type = $1 ORDER BY id",
        &[&sync_type],
    )
    .await
    .expect("reading sync_log")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn queue_len(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM duplex.storage_queue WHERE state <> 'invalid'",
        &[],
    )
    .await
    .expect("counting the queue")
    .get(0)
}

async fn pair_with_user() -> Pair {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{STORAGE}"));
    for c in [pair.main().await, pair.cloud().await] {
        insert_user(&c, "u1", Some("Jumper")).await;
    }
    pair
}

#[tokio::test]
async fn files_referenced_on_main_arrive_from_cloud_with_identical_bytes_and_hash() {
    let pair = pair_with_user().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let files = [
        ("jumps/u1/small.bin", bytes(1, 1000)),
        ("jumps/u1/empty.bin", Vec::new()),
        ("jumps/u1/big.bin", bytes(3, 12 * 1024 * 1024 + 17)),
    ];
    let main = pair.main().await;
    for (i, (key, data)) in files.iter().enumerate() {
        cloud_s.put(key, data).await;
        // One row names its file by an s3:// URL of cloud's bucket: only the key counts.
        let url = if i == 0 {
            format!("s3://duplex-cloud/{key}")
        } else {
            key.to_string()
        };
        jump(
            &main,
            &format!("j{i}"),
            &url,
            &sha256(data),
            data.len() as i64,
            i as i64,
        )
        .await;
    }
    let env = storage_env(&main_s, &cloud_s);

    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync", "--json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["transferred"], 3, "{out}");
    assert_eq!(report["scan"]["missing"], 3, "{out}");
    for (key, data) in &files {
        let copy = main_s
            .get(key)
            .await
            .unwrap_or_else(|| panic!("{key} missing on main"));
        assert_eq!(sha256(&copy), sha256(data), "{key}");
        assert_eq!(copy.len(), data.len(), "{key}");
    }
    let log = storage_log(&main, "STORAGE_TO_MAIN").await;
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log.iter().all(|(s, n, _, _)| s == "SUCCESS" && *n == 1),
        "{log:?}"
    );
    assert_eq!(storage_log(&main, "storage").await.len(), 1);
    assert_eq!(queue_len(&main).await, 0);
    let located: i64 = main
        .query_one(
            "SELECT count(*) FROM duplex.object_location WHERE local_url LIKE $1",
            &[&format!("{}/%", main_s.endpoint)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(located, 3);
    let size: i64 = main
        .query_one("SELECT storage_queue_size FROM duplex.sync_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(size, 0);

    // A second cycle finds everything in place and logs no second file entry.
    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync", "--json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(report["transferred"], 0, "{out}");
    assert_eq!(report["scan"]["present"], 3, "{out}");
    assert_eq!(storage_log(&main, "STORAGE_TO_MAIN").await.len(), 3);
}

#[tokio::test]
async fn files_referenced_on_cloud_arrive_from_main_and_status_shows_the_queue() {
    let pair = pair_with_user().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let cloud = pair.cloud().await;
    let data = bytes(7, 300_000);
    main_s.put("jumps/u1/a.bin", &data).await;
    jump_for(&cloud, "a", "jumps/u1/a.bin", &data, 0).await;
    let env = storage_env(&cloud_s, &main_s);

    // Scan only: the file is queued, nothing is copied.
    let (code, out, err) = duplex(&pair, "cloud", &env, &["storage", "scan"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("1 missing"), "{out}");
    assert!(cloud_s.get("jumps/u1/a.bin").await.is_none());
    let (code, out, _) = duplex(&pair, "cloud", &env, &["storage", "status", "--json"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["queue"]["queued"], 1, "{out}");
    assert_eq!(status["queue"]["oldest_key"], "jumps/u1/a.bin", "{out}");

    // The application is uploading a file of its own into the same bucket: the cycle's
    // clean-up of unfinished uploads leaves it alone (it is not a queued file).
    let app_key = format!("{}app/uploading.bin", cloud_s.prefix);
    let app_upload = cloud_s
        .client
        .create_multipart_upload()
        .bucket(&cloud_s.bucket)
        .key(&app_key)
        .send()
        .await
        .expect("starting the application's upload");
    let (code, out, err) = duplex(&pair, "cloud", &env, &["storage", "sync"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("copied 1 file(s)"), "{out}");
    assert_eq!(
        cloud_s.get("jumps/u1/a.bin").await.as_deref(),
        Some(&data[..])
    );
    assert_eq!(uploads_in_progress(&cloud_s).await, 1);
    cloud_s
        .client
        .abort_multipart_upload()
        .bucket(&cloud_s.bucket)
        .key(&app_key)
        .upload_id(app_upload.upload_id().expect("an upload id"))
        .send()
        .await
        .expect("aborting the application's upload");
    let log = storage_log(&cloud, "STORAGE_TO_CLOUD").await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].3["sha256"], sha256(&data));
    let (_, out, _) = duplex(&pair, "cloud", &env, &["storage", "status"]).await;
    assert!(out.contains("queue: 0 file(s) waiting"), "{out}");
}

#[tokio::test]
async fn a_corrupt_source_is_never_published_and_succeeds_once_fixed() {
    let pair = pair_with_user().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    let good_small = bytes(11, 4096);
    let good_big = bytes(12, 11 * 1024 * 1024);
    let mut bad_small = good_small.clone();
    bad_small[100] ^= 0xff;
    let mut bad_big = good_big.clone();
    bad_big[9 * 1024 * 1024] ^= 0x01;
    cloud_s.put("small.bin", &bad_small).await;
    cloud_s.put("big.bin", &bad_big).await;
    jump_for(&main, "s", "small.bin", &good_small, 0).await;
    jump_for(&main, "b", "big.bin", &good_big, 1).await;
    let env = storage_env(&main_s, &cloud_s);

    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("2 failed"), "{out}");
    // Nothing under the final keys, nor anything else under the prefix.
    assert!(main_s.keys().await.is_empty(), "{:?}", main_s.keys().await);
    let failed = storage_log(&main, "STORAGE_TO_MAIN").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (status, n, msg, details) in &failed {
        assert_eq!(status, "FAILED");
        assert_eq!(*n, 0);
        assert_eq!(details["reason"], "mismatch", "{details}");
        let key = details["key"].as_str().unwrap();
        let (good, bad) = if key == "small.bin" {
            (&good_small, &bad_small)
        } else {
            (&good_big, &bad_big)
        };
        assert!(
            msg.contains(&sha256(good)) && msg.contains(&sha256(bad)),
            "both hashes named: {msg}"
        );
        assert_eq!(details["actual_sha256"], sha256(bad));
    }
    let states: Vec<String> = main
        .query(
            "SELECT state FROM duplex.storage_queue ORDER BY object_key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["failed", "failed"]);

    // The source is fixed: the next cycle copies both.
    cloud_s.put("small.bin", &good_small).await;
    cloud_s.put("big.bin", &good_big).await;
    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        main_s.get("small.bin").await.as_deref(),
        Some(&good_small[..])
    );
    assert_eq!(
        main_s.get("big.bin").await.map(|b| sha256(&b)),
        Some(sha256(&good_big))
    );
    assert_eq!(queue_len(&main).await, 0);
}

#[tokio::test]
async fn bad_rows_fail_clearly_and_the_rest_of_the_queue_moves() {
    let pair = pair_with_user().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    // The example schema refuses a malformed hash; an app without that check may not.
    main.batch_execute(r#"ALTER TABLE "JumpLog" DROP CONSTRAINT "JumpLog_hash_check""#)
        .await
        .unwrap();
    let good = bytes(21, 5000);
    let other = bytes(22, 20);
    cloud_s.put("ok.bin", &good).await;
    cloud_s.put("sized.bin", &other).await;
    cloud_s.put("absent-on-peer-is-not-this.bin", &other).await;
    jump_for(&main, "good", "ok.bin", &good, 0).await;
    jump(&main, "badhash", "x.bin", "not-a-sha", 5, 1).await;
    jump(
        &main,
        "dotdot",
        "jumps/../../etc/passwd",
        &sha256(&good),
        5,
        2,
    )
    .await;
    jump(&main, "slash", "/abs/path.bin", &sha256(&good), 5, 3).await;
    jump(&main, "size", "sized.bin", &sha256(&other), 10, 4).await;
    jump(&main, "gone", "never-uploaded.bin", &sha256(&other), 20, 5).await;
    let env = storage_env(&main_s, &cloud_s);

    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync", "--json"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(report["transferred"], 1, "{out}");
    assert_eq!(
        main_s.keys().await,
        ["ok.bin"],
        "only the good file was written"
    );
    let log = storage_log(&main, "STORAGE_TO_MAIN").await;
    let failed: Vec<&(String, i64, String, serde_json::Value)> =
        log.iter().filter(|l| l.0 == "FAILED").collect();
    let find = |row: &str| {
        failed
            .iter()
            .find(|l| l.3["row"] == row)
            .unwrap_or_else(|| panic!("no FAILED entry for row {row}: {log:?}"))
            .2
            .clone()
    };
    assert!(
        find("badhash").contains("not a SHA-256"),
        "{}",
        find("badhash")
    );
    assert!(find("dotdot").contains("`..`"), "{}", find("dotdot"));
    assert!(
        find("slash").contains("starts with `/`"),
        "{}",
        find("slash")
    );
    assert!(
        find("size").contains("expected sha256") && find("size").contains("(10 bytes)"),
        "{}",
        find("size")
    );
    assert!(
        find("gone").contains("NoSuchKey") || find("gone").contains("404"),
        "{}",
        find("gone")
    );
    for row in ["badhash", "dotdot", "slash", "size", "gone"] {
        assert!(
            find(row).contains("public.JumpLog row"),
            "names the row: {}",
            find(row)
        );
    }
    assert_eq!(failed.len(), 5, "{log:?}");

    // Invalid rows are reported once, not every cycle.
    let (_, _, _) = duplex(&pair, "main", &env, &["storage", "sync"]).await;
    let again = storage_log(&main, "STORAGE_TO_MAIN").await;
    let invalid_entries = again
        .iter()
        .filter(|l| l.3["reason"] == "invalid_row")
        .count();
    assert_eq!(invalid_entries, 3, "{again:?}");
}

#[tokio::test]
async fn a_missing_peer_bucket_and_wrong_credentials_are_named() {
    let pair = pair_with_user().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    let data = bytes(31, 100);
    jump(&main, "a", "a.bin", &sha256(&data), 100, 0).await;

    let mut no_bucket = cloud_s.clone();
    no_bucket.bucket = format!("no-such-bucket-{}", pair.id);
    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&main_s, &no_bucket),
        &["storage", "sync"],
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("the bucket does not exist"), "{out}");

    let mut wrong = cloud_s.clone();
    wrong.secret = "0".repeat(64);
    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&main_s, &wrong),
        &["storage", "sync"],
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("credentials are refused"), "{out}");
    assert!(
        !out.contains(&"0".repeat(64)) && !err.contains(&"0".repeat(64)),
        "the secret is never printed"
    );
    assert!(main_s.keys().await.is_empty());
}

#[tokio::test]
async fn a_directory_store_receives_files_from_garage() {
    let pair = pair_with_user().await;
    let cloud_s = Side::lab("CLOUD", &pair.id);
    let dir = std::env::temp_dir().join(format!("duplex-fs-{}", pair.id));
    let main = pair.main().await;
    let data = bytes(41, 6 * 1024 * 1024);
    cloud_s.put("d/e/f.bin", &data).await;
    jump_for(&main, "f", "d/e/f.bin", &data, 0).await;
    let env = vec![
        (
            "LOCAL_STORAGE_URL".to_string(),
            format!("file://{}", dir.display()),
        ),
        ("REMOTE_STORAGE_URL".into(), cloud_s.url()),
        (
            "REMOTE_STORAGE_ACCESS_KEY_ID".into(),
            cloud_s.key_id.clone(),
        ),
        (
            "REMOTE_STORAGE_SECRET_ACCESS_KEY".into(),
            cloud_s.secret.clone(),
        ),
    ];
    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        std::fs::read(dir.join("d/e/f.bin"))
            .ok()
            .map(|b| sha256(&b)),
        Some(sha256(&data))
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("d/e"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_daemon_mirrors_on_start_and_trigger_and_honours_pause() {
    let pair = pair_with_user().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{STORAGE}{FAST_DAEMON}"));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    let first = bytes(51, 2000);
    cloud_s.put("first.bin", &first).await;
    jump_for(&main, "first", "first.bin", &first, 0).await;
    let env = storage_env(&main_s, &cloud_s);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = pair.start_daemon("main", &env_ref).await;

    // The first cycle runs at start.
    wait_until(
        "first.bin mirrored by the daemon",
        Duration::from_secs(20),
        || async { main_s.get("first.bin").await.is_some() },
    )
    .await;
    wait_until(
        "the status shows the transfer",
        Duration::from_secs(10),
        || async {
            let (_, v) = daemon.get("/api/sync/status").await;
            v["storage"]["files_transferred"] == 1 && v["storage"]["running"] == false
        },
    )
    .await;
    let (_, metrics) = daemon.call("GET", "/metrics", "").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("duplex_storage_files_transferred_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("duplex_storage_bytes_transferred_total 2000"),
        "{metrics}"
    );

    // Paused: a trigger scans (the queue grows) but copies nothing.
    let (code, _) = daemon.post("/api/sync/pause").await;
    assert_eq!(code, 200);
    let second = bytes(52, 3000);
    cloud_s.put("second.bin", &second).await;
    jump_for(&main, "second", "second.bin", &second, 0).await;
    let (code, _) = daemon.post("/api/sync/trigger").await;
    assert_eq!(code, 200);
    wait_until(
        "the paused cycle queued second.bin",
        Duration::from_secs(20),
        || async {
            let (_, v) = daemon.get("/api/sync/status").await;
            v["storage"]["queue_size"] == 1
                && v["storage"]["last_cycle"]["skipped"] == "sync is paused"
        },
    )
    .await;
    assert!(main_s.get("second.bin").await.is_none());
    let size: i64 = main
        .query_one("SELECT storage_queue_size FROM duplex.sync_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(size, 1);

    // Resumed and triggered: copied.
    daemon.post("/api/sync/resume").await;
    daemon.post("/api/sync/trigger").await;
    wait_until(
        "second.bin mirrored after resume",
        Duration::from_secs(20),
        || async { main_s.get("second.bin").await.is_some() },
    )
    .await;
    let (clean, _) = daemon.stop().await;
    assert!(clean, "duplex run exits 0 on SIGTERM");
}

/// A moto S3 server (`scripts/lab.sh moto-path` installs it) started by one test and
/// stopped by it, by PID.
struct Moto {
    child: tokio::process::Child,
    endpoint: String,
}

impl Moto {
    async fn start() -> Moto {
        let path = env("DUPLEX_MOTO_PATH");
        let addr = common::free_addr();
        let child = tokio::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
            ])
            .env("PYTHONPATH", path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting moto");
        let moto = Moto {
            child,
            endpoint: format!("http://{addr}"),
        };
        wait_until("moto answers", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        moto
    }

    /// A bucket on this server, under this test's prefix.
    async fn side(&self, bucket: &str, id: &str) -> Side {
        let client = s3_client(&self.endpoint, "us-east-1", "testing", "testing");
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("creating a moto bucket");
        Side {
            endpoint: self.endpoint.clone(),
            bucket: bucket.into(),
            prefix: format!("t-{id}/"),
            region: "us-east-1".into(),
            key_id: "testing".into(),
            secret: "testing".into(),
            client,
        }
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process by PID.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

#[tokio::test]
async fn transfers_behave_the_same_against_moto() {
    let pair = pair_with_user().await;
    let moto = Moto::start().await;
    let local = moto.side("mirror-main", &pair.id).await;
    let remote = moto.side("mirror-cloud", &pair.id).await;
    let main = pair.main().await;
    let small = bytes(61, 777);
    let big = bytes(62, 11 * 1024 * 1024 + 5);
    let mut corrupt = bytes(63, 2048);
    remote.put("m/small.bin", &small).await;
    remote.put("m/big.bin", &big).await;
    jump_for(&main, "s", "m/small.bin", &small, 0).await;
    jump_for(&main, "b", "m/big.bin", &big, 1).await;
    jump_for(&main, "c", "m/corrupt.bin", &corrupt, 2).await;
    corrupt[0] ^= 1;
    remote.put("m/corrupt.bin", &corrupt).await;

    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&local, &remote),
        &["storage", "sync", "--json"],
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(report["transferred"], 2, "{out}");
    assert_eq!(report["failed"], 1, "{out}");
    assert_eq!(local.get("m/small.bin").await.as_deref(), Some(&small[..]));
    assert_eq!(
        local.get("m/big.bin").await.map(|b| sha256(&b)),
        Some(sha256(&big))
    );
    assert!(
        local.get("m/corrupt.bin").await.is_none(),
        "a mismatch is never published"
    );
    moto.stop().await;
}

async fn row_versions(c: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    c.query(
        r#"SELECT "id", xmin::text, "storageUrl" FROM "JumpLog" ORDER BY "id""#,
        &[],
    )
    .await
    .expect("reading JumpLog")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn mirroring_writes_no_replicated_row_and_causes_no_conflict() {
    let pair = Pair::new().await;
    pair.set_config(&format!("{EXAMPLE_TABLES}{STORAGE}"));
    insert_user(&pair.main().await, "u1", Some("Jumper")).await;
    pair.setup_both().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let (main, cloud) = (pair.main().await, pair.cloud().await);
    wait_until(
        "the user reached cloud",
        Duration::from_secs(30),
        || async { common::user_exists(&cloud, "u1").await },
    )
    .await;
    // Rows written on cloud, with their files in cloud's store.
    for i in 0..3 {
        let data = bytes(70 + i, 10_000 + i as usize);
        let key = format!("jumps/u1/{i}.bin");
        cloud_s.put(&key, &data).await;
        jump(
            &cloud,
            &format!("r{i}"),
            &format!("s3://duplex-cloud/{key}"),
            &sha256(&data),
            data.len() as i64,
            i as i64,
        )
        .await;
    }
    wait_until("the rows reached main", Duration::from_secs(30), || async {
        row_versions(&main).await.len() == 3
    })
    .await;
    pair.wait_caught_up(Duration::from_secs(30)).await;
    let before = (row_versions(&main).await, row_versions(&cloud).await);

    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&main_s, &cloud_s),
        &["storage", "sync", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(report["transferred"], 3, "{out}");
    pair.wait_caught_up(Duration::from_secs(30)).await;

    // No replicated row was written on either side (same row versions, same URLs), and
    // neither side logged a conflict.
    let after = (row_versions(&main).await, row_versions(&cloud).await);
    assert_eq!(before, after);
    for c in [&main, &cloud] {
        let n: i64 = c
            .query_one("SELECT count(*) FROM duplex.conflict_log", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
    // The local location is recorded locally, in a table that is never published.
    let url: String = main
        .query_one(
            "SELECT local_url FROM duplex.object_location WHERE object_key = 'jumps/u1/0.bin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        url,
        format!(
            "{}/{}/{}jumps/u1/0.bin",
            main_s.endpoint, main_s.bucket, main_s.prefix
        )
    );
    let n: i64 = cloud
        .query_one("SELECT count(*) FROM duplex.object_location", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "main's locations never reach cloud");
}

/// What the fault-injecting proxy does to one request.
#[derive(Debug, Clone, Copy)]
enum Inject {
    /// Answer `500 Internal Server Error` itself.
    Status500,
    /// Read the request, then reset the connection.
    Reset,
    /// Read the request and never answer.
    Stall,
}

/// An HTTP proxy in front of an S3 server that answers each request on a connection of
/// its own (it adds `Connection: close`), applying the scripted faults to the first
/// requests in order and passing the rest through. Stopped (its task aborted) on drop.
struct FaultProxy {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Most requests passed through at the same time.
    max_in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(buf)
}

impl FaultProxy {
    async fn start(target: &str, script: Vec<Inject>) -> FaultProxy {
        FaultProxy::start_at("127.0.0.1:0", target, script).await
    }

    /// A proxy listening on `listen` (an address the test reserved).
    async fn start_at(listen: &str, target: &str, script: Vec<Inject>) -> FaultProxy {
        use tokio::io::AsyncWriteExt;
        let target = target.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            script,
        )));
        let counter = requests.clone();
        let max_in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max = max_in_flight.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (script, counter, target) = (script.clone(), counter.clone(), target.clone());
                let (in_flight, max) = (in_flight.clone(), max.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut client).await else {
                        return;
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let fault = script.lock().unwrap().pop_front();
                    match fault {
                        Some(Inject::Status500) => {
                            let _ = client
                                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                        }
                        Some(Inject::Reset) => {
                            let _ = client.set_zero_linger();
                            drop(client);
                        }
                        Some(Inject::Stall) => {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        }
                        None => {
                            let text = String::from_utf8_lossy(&head);
                            let mut lines: Vec<&str> = text
                                .trim_end()
                                .split("\r\n")
                                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                                .collect();
                            lines.push("Connection: close");
                            let head = format!("{}\r\n\r\n", lines.join("\r\n"));
                            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await
                            else {
                                return;
                            };
                            if server.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            use std::sync::atomic::Ordering::SeqCst;
                            let now = in_flight.fetch_add(1, SeqCst) + 1;
                            max.fetch_max(now, SeqCst);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            in_flight.fetch_sub(1, SeqCst);
                        }
                    }
                });
            }
        });
        FaultProxy {
            addr,
            requests,
            max_in_flight,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn transient_faults_are_retried_and_counted() {
    let pair = pair_with_user().await;
    // One transfer at a time, so the scripted faults meet the files in order; a short
    // stall timeout.
    pair.set_config(&format!(
        "max_concurrent_transfers = 1\n{EXAMPLE_TABLES}{}",
        STORAGE.replace(
            "retry_backoff_ms = 50",
            "retry_backoff_ms = 50\nstall_timeout_secs = 2"
        )
    ));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    let newer = bytes(81, 50_000);
    let older = bytes(82, 60_000);
    cloud_s.put("newer.bin", &newer).await;
    cloud_s.put("older.bin", &older).await;
    jump_for(&main, "newer", "newer.bin", &newer, 0).await;
    jump_for(&main, "older", "older.bin", &older, 60).await;
    let proxy = FaultProxy::start(
        &cloud_s.endpoint,
        vec![
            Inject::Status500,
            Inject::Reset,
            Inject::Stall,
            Inject::Status500,
        ],
    )
    .await;
    let mut remote = cloud_s.clone();
    remote.endpoint = format!("http://{}", proxy.addr);
    let env = storage_env(&main_s, &remote);

    // newer.bin meets 500, reset and stall: three attempts, then FAILED for this cycle;
    // older.bin meets one 500 and succeeds on its second attempt.
    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync", "--json"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(report["transferred"], 1, "{out}");
    assert_eq!(report["failed"], 1, "{out}");
    assert_eq!(report["retries"], 3, "{out}");
    assert_eq!(
        proxy.requests(),
        5,
        "3 attempts for newer.bin, 2 for older.bin"
    );
    let f = &report["failures"][0];
    assert_eq!(f["object_key"], "newer.bin", "{out}");
    assert_eq!(f["attempts"], 3, "{out}");
    assert!(
        f["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{out}"
    );
    assert_eq!(main_s.get("older.bin").await.as_deref(), Some(&older[..]));
    assert!(main_s.get("newer.bin").await.is_none());
    let log = storage_log(&main, "STORAGE_TO_MAIN").await;
    let ok = log
        .iter()
        .find(|l| l.0 == "SUCCESS")
        .expect("older.bin logged");
    assert_eq!(ok.3["attempts"], 2);
    let attempts: i32 = main
        .query_one(
            "SELECT attempts FROM duplex.storage_queue WHERE object_key = 'newer.bin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 3, "attempts are counted in the queue");

    // The script is used up: the next cycle copies newer.bin at once.
    let (code, out, err) = duplex(&pair, "main", &env, &["storage", "sync"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(main_s.get("newer.bin").await.as_deref(), Some(&newer[..]));
    assert_eq!(proxy.requests(), 6);
}

/// `duplex run` for `role`, started and stopped by the test itself (by PID).
async fn start_run(pair: &Pair, role: &str, env: &[(String, String)]) -> tokio::process::Child {
    let addr = common::free_addr();
    let child = pair
        .duplex(role, &["run"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("AWS_CA_BUNDLE")
        .env("DUPLEX_HTTP_ADDR", addr.to_string())
        .env("DUPLEX_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("starting duplex run");
    wait_until("duplex run answers", Duration::from_secs(20), || async {
        duplex::cli::api_call(addr, "GET", "/health/sync", "")
            .await
            .is_ok()
    })
    .await;
    child
}

async fn uploads_in_progress(side: &Side) -> usize {
    side.client
        .list_multipart_uploads()
        .bucket(&side.bucket)
        .prefix(&side.prefix)
        .send()
        .await
        .expect("listing multipart uploads")
        .uploads()
        .len()
}

#[tokio::test]
async fn a_controller_killed_mid_transfer_resumes_without_a_partial_object_or_a_second_log_row() {
    let pair = pair_with_user().await;
    // 2 MB/s: the 12 MB file takes about 6 s, long enough to be killed in the middle.
    pair.set_config(&format!(
        "max_transfer_rate = \"2MB\"\n{EXAMPLE_TABLES}{STORAGE}{FAST_DAEMON}"
    ));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    let small = bytes(91, 1000);
    let big = bytes(92, 12_000_000);
    cloud_s.put("small.bin", &small).await;
    cloud_s.put("big.bin", &big).await;
    jump_for(&main, "small", "small.bin", &small, 0).await;
    jump_for(&main, "big", "big.bin", &big, 10).await;
    let env = storage_env(&main_s, &cloud_s);

    let mut first = start_run(&pair, "main", &env).await;
    wait_until(
        "big.bin is being uploaded",
        Duration::from_secs(30),
        || async { uploads_in_progress(&main_s).await > 0 },
    )
    .await;
    assert!(
        main_s.get("small.bin").await.is_some(),
        "the newer file went first"
    );
    let pid = first.id().expect("pid") as i32;
    // SAFETY: killing our own child process by PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = first.wait().await;
    assert!(
        main_s.get("big.bin").await.is_none(),
        "no partial object under the key"
    );

    let mut second = start_run(&pair, "main", &env).await;
    wait_until(
        "big.bin mirrored after the restart",
        Duration::from_secs(60),
        || async { main_s.get("big.bin").await.is_some() },
    )
    .await;
    assert_eq!(
        main_s.get("big.bin").await.map(|b| sha256(&b)),
        Some(sha256(&big))
    );
    wait_until(
        "the unfinished upload was dropped",
        Duration::from_secs(20),
        || async { uploads_in_progress(&main_s).await == 0 },
    )
    .await;
    let pid = second.id().expect("pid") as i32;
    // SAFETY: signalling our own child process by PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), second.wait())
        .await
        .expect("duplex run stops on SIGTERM")
        .unwrap();
    assert!(status.success());
    let log = storage_log(&main, "STORAGE_TO_MAIN").await;
    for key in ["small.bin", "big.bin"] {
        let n = log
            .iter()
            .filter(|l| l.0 == "SUCCESS" && l.3["key"] == key)
            .count();
        assert_eq!(n, 1, "one SUCCESS row for {key}: {log:?}");
    }
}

#[tokio::test]
async fn the_transfer_rate_stays_within_five_percent_of_the_limit() {
    let pair = pair_with_user().await;
    pair.set_config(&format!(
        "max_transfer_rate = \"2MB\"\n{EXAMPLE_TABLES}{STORAGE}"
    ));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    // Three files, 20 MB in all: about 10 s at 2 MB/s, shared by three transfers.
    for (i, len) in [6_000_000usize, 7_000_000, 7_000_000].iter().enumerate() {
        let data = bytes(100 + i as u64, *len);
        let key = format!("rate/{i}.bin");
        cloud_s.put(&key, &data).await;
        jump(
            &main,
            &format!("r{i}"),
            &key,
            &sha256(&data),
            *len as i64,
            i as i64,
        )
        .await;
    }
    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&main_s, &cloud_s),
        &["storage", "sync", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(report["transferred"], 3, "{out}");
    let rate = report["rate_bytes_per_sec"].as_f64().unwrap();
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    assert!(
        (rate - 2_000_000.0).abs() / 2_000_000.0 < 0.05,
        "measured {rate:.0} B/s for a limit of 2000000 (load average {load}): {out}"
    );
}

#[tokio::test]
async fn at_most_max_concurrent_transfers_run_at_once() {
    let pair = pair_with_user().await;
    // Throttled so that transfers overlap; MAX_CONCURRENT_TRANSFERS is the default, 3.
    pair.set_config(&format!(
        "max_transfer_rate = \"4MB\"\n{EXAMPLE_TABLES}{STORAGE}"
    ));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    for i in 0..7 {
        let data = bytes(200 + i, 1_000_000);
        let key = format!("c/{i}.bin");
        cloud_s.put(&key, &data).await;
        jump(
            &main,
            &format!("c{i}"),
            &key,
            &sha256(&data),
            data.len() as i64,
            i as i64,
        )
        .await;
    }
    let proxy = FaultProxy::start(&cloud_s.endpoint, Vec::new()).await;
    let mut remote = cloud_s.clone();
    remote.endpoint = format!("http://{}", proxy.addr);
    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&main_s, &remote),
        &["storage", "sync", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(main_s.keys().await.len(), 7);
    assert_eq!(
        proxy
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        3,
        "three transfers at once, never more"
    );
}

#[tokio::test]
async fn the_queue_grows_while_disconnected_and_drains_on_reconnection() {
    let pair = Pair::new().await;
    // Cycles only at start and on signals (the 5-minute schedule never comes).
    pair.set_config(&format!("{EXAMPLE_TABLES}{STORAGE}{FAST_DAEMON}"));
    insert_user(&pair.main().await, "u1", Some("Jumper")).await;
    pair.setup_both().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    let mut proxy = common::Proxy::start(common::cloud_port()).await;
    let remote_db = proxy.url(&pair.db);
    let mut env = storage_env(&main_s, &cloud_s);
    env.push(("REMOTE_DB_URL".into(), remote_db));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = pair.start_daemon("main", &env_ref).await;
    wait_until("CONNECTED", Duration::from_secs(30), || async {
        d.state().await == "CONNECTED"
    })
    .await;

    proxy.stop().await;
    wait_until("DISCONNECTED", Duration::from_secs(30), || async {
        d.state().await == "DISCONNECTED"
    })
    .await;
    let data = bytes(300, 40_000);
    cloud_s.put("late.bin", &data).await;
    jump_for(&main, "late", "late.bin", &data, 0).await;
    d.post("/api/sync/trigger").await;
    wait_until(
        "the file is queued, not copied",
        Duration::from_secs(20),
        || async {
            let (_, v) = d.get("/api/sync/status").await;
            v["storage"]["queue_size"] == 1
                && v["storage"]["last_cycle"]["skipped"]
                    .as_str()
                    .is_some_and(|s| s.contains("DISCONNECTED"))
        },
    )
    .await;
    assert!(main_s.get("late.bin").await.is_none());

    // Back: the reconnection signal starts a cycle at once.
    proxy.resume().await;
    wait_until(
        "late.bin mirrored after reconnection",
        Duration::from_secs(30),
        || async { main_s.get("late.bin").await.is_some() },
    )
    .await;
    let (_, v) = d.get("/api/sync/status").await;
    assert_eq!(v["connection_state"], "CONNECTED", "{v}");
    let (clean, _) = d.stop().await;
    assert!(clean);
}

#[tokio::test]
async fn a_thousand_queued_files_complete_without_errors() {
    let pair = pair_with_user().await;
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    // Upload 1,000 small files to cloud's store, 16 at a time.
    let mut keys = Vec::new();
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..1000u64 {
        let data = bytes(1000 + i, 2048 + (i as usize % 7) * 100);
        let key = format!("load/{i:04}.bin");
        keys.push((key.clone(), sha256(&data), data.len() as i64));
        let side = cloud_s.clone();
        uploads.spawn(async move { side.put(&key, &data).await });
        if uploads.len() >= 16 {
            uploads.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = uploads.join_next().await {
        r.unwrap();
    }
    main.execute(
        r#"INSERT INTO "JumpLog" ("id", "userId", "jumpNumber", "altitude", "freefallTime",
                                  "storageUrl", "hash", "fileSize")
           SELECT k, 'u1', 1, 4000, 60, k, h, s
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(k, h, s)"#,
        &[
            &keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
            &keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>(),
            &keys.iter().map(|k| k.2).collect::<Vec<_>>(),
        ],
    )
    .await
    .unwrap();

    // Run it while sampling its memory (VmRSS, and the kernel's peak VmHWM) from /proc.
    let env = storage_env(&main_s, &cloud_s);
    let child = pair
        .duplex("main", &["storage", "sync", "--json"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running duplex");
    let pid = child.id().expect("pid");
    let status_path = format!("/proc/{pid}/status");
    let sampler = tokio::spawn(async move {
        let mut samples: Vec<(u64, u64)> = Vec::new();
        loop {
            let Ok(text) = tokio::fs::read_to_string(&status_path).await else {
                break;
            };
            let kb = |field: &str| {
                text.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
            };
            match (kb("VmRSS:"), kb("VmHWM:")) {
                (Some(rss), Some(hwm)) => samples.push((rss, hwm)),
                _ => break, // a zombie: it has exited
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples
    });
    let output = child.wait_with_output().await.expect("waiting for duplex");
    let samples = sampler.await.unwrap();
    let (out, err) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    // Flat memory: what it holds in the second quarter of the run (transfers going) does
    // not grow with the files done (a leak of 10 kB per file would add 10 MB by the last
    // quarter), and stays small.
    assert!(samples.len() >= 8, "too few memory samples: {samples:?}");
    let quarter = samples.len() / 4;
    let early = samples[quarter..2 * quarter]
        .iter()
        .map(|s| s.0)
        .max()
        .unwrap();
    let late = samples[samples.len() - quarter..]
        .iter()
        .map(|s| s.0)
        .max()
        .unwrap();
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    assert!(
        late <= early + 8_000,
        "RSS grew from {early} kB in the second quarter to {late} kB in the last"
    );
    assert!(peak < 100_000, "peak RSS {peak} kB");
    assert_eq!(report["scan"]["missing"], 1000);
    assert_eq!(report["transferred"], 1000);
    assert_eq!(report["failed"], 0);
    assert_eq!(main_s.keys().await.len(), 1000);
    assert_eq!(queue_len(&main).await, 0);
    let ok: i64 = main
        .query_one(
            "SELECT count(*) FROM duplex.sync_log WHERE sync_type = 'STORAGE_TO_MAIN' AND status = 'SUCCESS'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 1000);
}

/// The alerts of kind `kind` in `status["active_alerts"]`.
fn active_alert<'a>(status: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    status["active_alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == kind))
}

/// (status, message) of the `alert` entries of `kind` in sync_log, oldest first.
async fn alert_log(c: &tokio_postgres::Client, kind: &str) -> Vec<(String, String)> {
    storage_log(c, "alert")
        .await
        .into_iter()
        .filter(|l| l.3["kind"] == kind)
        .map(|l| (l.0, l.2))
        .collect()
}

#[tokio::test]
async fn queue_and_disk_alerts_fire_from_a_real_queue_and_resolve_when_it_drains() {
    let pair = pair_with_user().await;
    // Warn above 2 queued files; "low disk" at under 100% free with more than 2 queued, so
    // any real filesystem qualifies while the queue is long.
    pair.set_config(&format!(
        "{EXAMPLE_TABLES}{STORAGE}{FAST_DAEMON}
[alerts]
queue_warning = 2
disk_free_min_percent = 100
disk_queue_min = 2
"
    ));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    for i in 0..3u64 {
        let data = bytes(400 + i, 30_000);
        let key = format!("alert/{i}.bin");
        cloud_s.put(&key, &data).await;
        jump(
            &main,
            &format!("a{i}"),
            &key,
            &sha256(&data),
            data.len() as i64,
            i as i64,
        )
        .await;
    }
    // The peer's store is down: its address has no server yet.
    let store_addr = common::free_addr();
    let mut remote = cloud_s.clone();
    remote.endpoint = format!("http://{store_addr}");
    let disk = std::env::temp_dir();
    let mut env = storage_env(&main_s, &remote);
    env.push(("DUPLEX_DISK_PATH".into(), disk.display().to_string()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = pair.start_daemon("main", &env_ref).await;

    wait_until(
        "the storage_queue and disk_low alerts are raised",
        Duration::from_secs(30),
        || async {
            let (_, v) = d.get("/api/sync/status").await;
            active_alert(&v, "storage_queue").is_some() && active_alert(&v, "disk_low").is_some()
        },
    )
    .await;
    let (_, status) = d.get("/api/sync/status").await;
    assert_eq!(status["storage"]["queue_size"], 3, "{status}");
    let queue = active_alert(&status, "storage_queue").unwrap();
    assert_eq!(queue["level"], "WARNING", "{queue}");
    assert_eq!(
        queue["title"], "3 files wait in the storage queue",
        "{queue}"
    );
    let low = active_alert(&status, "disk_low").unwrap();
    assert!(
        low["title"]
            .as_str()
            .is_some_and(|t| t.ends_with("disk free with 3 files queued")),
        "{low}"
    );
    assert!(
        low["message"]
            .as_str()
            .is_some_and(|m| m.contains(&disk.display().to_string())),
        "the alert names the watched path: {low}"
    );
    // The transfers failed and say why.
    let failed = storage_log(&main, "STORAGE_TO_MAIN").await;
    assert!(
        failed
            .iter()
            .any(|l| l.0 == "FAILED" && l.2.contains("alert/")),
        "{failed:?}"
    );
    assert_eq!(
        alert_log(&main, "storage_queue").await,
        vec![(
            "WARNING".to_string(),
            "the storage queue holds 3 files (threshold 2)".to_string()
        )]
    );

    // The store is back: the next cycle drains the queue and both alerts resolve.
    let proxy = FaultProxy::start_at(&store_addr.to_string(), &cloud_s.endpoint, Vec::new()).await;
    d.post("/api/sync/trigger").await;
    wait_until(
        "the queue drained and the alerts cleared",
        Duration::from_secs(30),
        || async {
            let (_, v) = d.get("/api/sync/status").await;
            v["storage"]["queue_size"] == 0
                && active_alert(&v, "storage_queue").is_none()
                && active_alert(&v, "disk_low").is_none()
        },
    )
    .await;
    assert!(proxy.requests() > 0);
    assert_eq!(main_s.keys().await.len(), 3);
    for kind in ["storage_queue", "disk_low"] {
        let log = alert_log(&main, kind).await;
        assert_eq!(log.len(), 2, "raised once, resolved once: {log:?}");
        assert_eq!(log[1].0, "RESOLVED", "{log:?}");
        assert!(log[1].1.starts_with("cleared: "), "{log:?}");
    }
    let (clean, _) = d.stop().await;
    assert!(clean);
}

#[tokio::test]
async fn files_are_transferred_newest_first() {
    let pair = pair_with_user().await;
    // One transfer at a time: the order of the log rows is the order of the transfers.
    pair.set_config(&format!(
        "max_concurrent_transfers = 1\n{EXAMPLE_TABLES}{STORAGE}"
    ));
    let (main_s, cloud_s) = (Side::lab("MAIN", &pair.id), Side::lab("CLOUD", &pair.id));
    let main = pair.main().await;
    // Key order and insertion order both differ from age order.
    let files = [
        ("b.bin", 300),
        ("d.bin", 10),
        ("a.bin", 3600),
        ("c.bin", 60),
    ];
    for (i, (key, age)) in files.iter().enumerate() {
        let data = bytes(500 + i as u64, 10_000 + i * 1000);
        cloud_s.put(key, &data).await;
        jump(
            &main,
            &format!("n{i}"),
            key,
            &sha256(&data),
            data.len() as i64,
            *age,
        )
        .await;
    }
    let (code, out, err) = duplex(
        &pair,
        "main",
        &storage_env(&main_s, &cloud_s),
        &["storage", "sync", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let order: Vec<String> = storage_log(&main, "STORAGE_TO_MAIN")
        .await
        .into_iter()
        .filter(|l| l.0 == "SUCCESS")
        .map(|l| l.3["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(order, ["d.bin", "c.bin", "b.bin", "a.bin"], "newest first");
}

#[tokio::test]
async fn the_local_store_refuses_a_publishing_upload_whose_bytes_differ_from_the_verified_hash() {
    // duplex signs a single-request upload with the SHA-256 it verified while reading from
    // the peer instead of hashing the bytes again; the server checks the bytes against it.
    // Bytes that changed on the way (here: a wrong hash for them) are refused, not stored.
    let side = Side::lab("MAIN", &format!("sig{}", std::process::id()));
    let store = duplex::mirror::s3::S3Store::new(
        &side.endpoint,
        &side.bucket,
        &side.prefix,
        &side.region,
        &side.key_id,
        &duplex::secret::Secret::new(side.secret.clone()),
        Duration::from_secs(10),
    );
    let data = bytes(91, 300_000);
    let other = sha256(&bytes(92, 300_000));
    let err = store
        .put("signed.bin", data.clone().into(), &other)
        .await
        .expect_err("bytes that do not match the signed hash must be refused");
    assert!(!err.message.is_empty());
    assert!(side.get("signed.bin").await.is_none(), "nothing stored");

    store
        .put("signed.bin", data.clone().into(), &sha256(&data))
        .await
        .expect("the verified hash is accepted");
    assert_eq!(side.get("signed.bin").await.as_deref(), Some(&data[..]));
    store.delete("signed.bin").await.expect("clean up");
}
