//! One mirror cycle: scan (inventory against the local store's listing, queue updated),
//! then, unless sync is paused or the peer is disconnected, transfer due files newest
//! first, at most `MAX_CONCURRENT_TRANSFERS` at once. One `sync_log` row per file
//! (`STORAGE_TO_MAIN` / `STORAGE_TO_CLOUD`) and one `storage` row per cycle.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::inventory::{self, Invalid, ScanReport};
use super::store::Store;
use super::throttle::Throttle;
use super::transfer::{self, Done, Failure};
use crate::config::Settings;
use crate::model::{Role, Severity};
use crate::pg::{self, Context};
use crate::store::storage_queue::{self, Due, Missing, Summary};
use crate::store::sync_log::{self, Status, SyncType};
use crate::store::{object_location, sync_state};

/// Due entries read ahead at a time.
const ROUND: i64 = 100;
/// Failures listed in a report.
const MAX_LISTED: usize = 100;
/// After this many failed attempts in all, wait an hour between tries.
const PATIENT_AFTER: i32 = 9;

/// A transfer task's result: the file, its attempts before this cycle, the outcome.
type Finished = (Missing, i32, Result<Done, (Failure, u32)>);

/// Errors that stop a cycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mirror is not configured.
    #[error("the storage mirror is not configured: {0}")]
    NotConfigured(String),
    /// A database failed.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// The scan failed.
    #[error(transparent)]
    Scan(#[from] inventory::Error),
    /// The state row is for the other role.
    #[error(transparent)]
    State(#[from] sync_state::Error),
    /// The local store failed.
    #[error("the local store: {0}")]
    Store(#[from] super::store::StoreError),
    /// The task recording finished transfers failed.
    #[error("recording finished transfers failed: {0}")]
    Recorder(String),
    /// Another cycle runs against this database.
    #[error("another storage mirror cycle is running against this database (the daemon, or another `duplex storage sync`); try again when it is done")]
    Busy,
}

/// What to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    /// Scan only, change nothing; report what would be transferred.
    pub dry_run: bool,
    /// Scan (and update the queue), but transfer nothing.
    pub scan_only: bool,
}

/// A file that failed this cycle.
#[derive(Debug, Clone, Serialize)]
pub struct FileFailure {
    /// The file.
    #[serde(flatten)]
    pub file: Missing,
    /// Why (a sentence).
    pub error: String,
    /// The structured reason.
    pub failure: Failure,
    /// Attempts this cycle.
    pub attempts: u32,
}

/// What one cycle did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// Seconds taken.
    pub seconds: f64,
    /// The scan.
    pub scan: ScanReport,
    /// Why transfers were skipped, if they were.
    pub skipped: Option<String>,
    /// Files published this cycle.
    pub transferred: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files that failed this cycle.
    pub failed: u64,
    /// Transient errors retried this cycle (attempts beyond the first).
    pub retries: u64,
    /// Bytes per second over the transfer phase: from its start until the last byte of
    /// the last file copied was read from the peer (the bytes `MAX_TRANSFER_RATE` paces;
    /// publishing that last file and the database writes after it are not counted).
    pub rate_bytes_per_sec: f64,
    /// The failures (at most 100).
    pub failures: Vec<FileFailure>,
    /// Rows found unusable this cycle (new ones only).
    pub invalid: Vec<Invalid>,
    /// Dry run: files that would be transferred (at most 100).
    pub would_transfer: Vec<Missing>,
    /// The queue after the cycle.
    pub queue: Summary,
}

/// Something that happened during a cycle, for live progress.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// A file was published.
    Done {
        /// Its bytes.
        bytes: u64,
    },
    /// A file failed.
    Failed,
}

/// The mirror's sync_log type for files arriving on `role`.
pub fn sync_type(role: Role) -> SyncType {
    match role {
        Role::Main => SyncType::StorageToMain,
        Role::Cloud => SyncType::StorageToCloud,
    }
}

/// Both stores, or why not.
pub fn stores(settings: &Settings) -> Result<(Store, Store), Error> {
    let s = &settings.storage;
    let mut missing = Vec::new();
    if s.local.is_none() {
        missing.push("LOCAL_STORAGE_URL is not set");
    }
    if s.remote.is_none() {
        missing.push("REMOTE_STORAGE_URL is not set");
    }
    if s.tables.is_empty() {
        missing.push("no [storage.tables] names the file columns (e.g. [storage.tables.\"JumpLog\"] key = \"storageUrl\", hash = \"hash\", size = \"fileSize\")");
    }
    match (&s.local, &s.remote) {
        (Some(l), Some(r)) if missing.is_empty() => Ok((
            Store::open(l, s.stall_timeout),
            Store::open(r, s.stall_timeout),
        )),
        _ => Err(Error::NotConfigured(missing.join("; "))),
    }
}

/// Apply duplex's migrations and seed the state row (refusing a role mismatch), so the
/// storage commands work before `duplex run` ever ran here.
pub async fn prepare(client: &mut Client, settings: &Settings) -> Result<(), Error> {
    crate::store::migrations::migrate(client).await?;
    sync_state::ensure_role(client, settings.instance_role, settings.sync_enabled).await?;
    Ok(())
}

/// One cycle. `peer_disconnected` (from the monitor) holds transfers back; `on_event` sees
/// each file's outcome as it happens.
pub async fn run(
    settings: &Settings,
    req: Request,
    throttle: &Throttle,
    peer_disconnected: bool,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<CycleReport, Error> {
    let (local_store, remote_store) = stores(settings)?;
    let started = Instant::now();
    let mut report = CycleReport {
        dry_run: req.dry_run,
        started_at: Some(Utc::now()),
        ..CycleReport::default()
    };
    let mut reader = pg::connect(&settings.local_db_url, "local", "storage").await?;
    let db = pg::connect(&settings.local_db_url, "local", "storage").await?;
    prepare(&mut reader, settings).await?;
    if !req.dry_run && !storage_queue::try_lock(&db).await? {
        return Err(Error::Busy);
    }
    let role = settings.instance_role;
    if !req.dry_run {
        match clean_unfinished(&local_store, &db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} unfinished upload(s) left in the local store"),
            Err(e) => tracing::debug!("cannot look for unfinished uploads: {e}"),
        }
    }
    let scan_id = Utc::now().timestamp_millis();
    let (scan, invalid, sample) = inventory::scan(
        &mut reader,
        (!req.dry_run).then_some(&db),
        &settings.storage,
        &local_store,
        scan_id,
        MAX_LISTED,
    )
    .await?;
    report.scan = scan;
    if req.dry_run {
        report.would_transfer = sample;
        report.invalid = invalid;
        report.queue = storage_queue::summary(&db).await?;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    for i in &invalid {
        let msg = format!(
            "{} row {} cannot be mirrored: {}; nothing was transferred for it (fix the row)",
            i.file.table, i.file.row_ref, i.reason
        );
        tracing::warn!("{msg}");
        sync_log::insert(
            &db,
            &sync_log::Entry {
                sync_type: sync_type(role),
                status: Status::Level(Severity::Failed),
                records_synced: 0,
                error_message: Some(&msg),
                details: serde_json::json!({
                    "reason": "invalid_row", "table": i.file.table, "row": i.file.row_ref,
                    "key": i.file.object_key, "expected_sha256": i.file.sha256,
                    "expected_size": i.file.size, "why": i.reason,
                }),
            },
        )
        .await?;
    }
    report.invalid = invalid;

    if req.scan_only {
        report.skipped = Some("scan only".into());
    } else if !sync_state::read(&db).await?.sync_enabled {
        report.skipped = Some("sync is paused".into());
    } else if peer_disconnected {
        report.skipped = Some("the peer is DISCONNECTED: files wait in the queue".into());
    } else {
        transfers(
            settings,
            &db,
            reader,
            &local_store,
            &remote_store,
            throttle,
            cancel,
            on_event,
            &mut report,
        )
        .await?;
    }
    report.queue = storage_queue::summary(&db).await?;
    sync_state::set_storage_queue_size(&db, report.queue.queued).await?;
    report.seconds = started.elapsed().as_secs_f64();
    let message = match (&report.skipped, report.failed) {
        (Some(why), _) => Some(format!("transfers skipped: {why}")),
        (None, 0) => None,
        (None, n) => Some(format!(
            "{n} file(s) failed this cycle (see the STORAGE_TO_{} entries)",
            role.as_db()
        )),
    };
    sync_log::insert(
        &db,
        &sync_log::Entry {
            sync_type: SyncType::Storage,
            status: if report.failed > 0 {
                Status::Level(Severity::Warning)
            } else if report.skipped.is_some() {
                Status::Info
            } else {
                Status::Success
            },
            records_synced: report.transferred as i64,
            error_message: message.as_deref(),
            details: serde_json::json!({
                "scan": report.scan, "transferred": report.transferred, "bytes": report.bytes,
                "failed": report.failed, "retries": report.retries,
                "rate_bytes_per_sec": report.rate_bytes_per_sec, "seconds": report.seconds,
                "queued": report.queue.queued, "skipped": report.skipped,
            }),
        },
    )
    .await?;
    Ok(report)
}

/// Remove what a controller killed mid-transfer left in the local store: temporary
/// files, and the unfinished multipart uploads of keys still in the queue. Uploads of
/// other keys are left alone: the application may be uploading into the same bucket.
/// Runs under the queue's lock, so no transfer of this database is in progress.
async fn clean_unfinished(local: &Store, db: &Client) -> Result<usize, Error> {
    let mut n = local.remove_stale_temps().await;
    let uploads = local.unfinished_uploads().await?;
    if uploads.is_empty() {
        return Ok(n);
    }
    let keys: Vec<&str> = uploads.iter().map(|(k, _)| k.as_str()).collect();
    let queued = storage_queue::queued_among(db, &keys).await?;
    for (key, id) in uploads.iter().filter(|(k, _)| queued.contains(k)) {
        match local.abort_upload(key, id).await {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!("could not abort the unfinished upload of {key}: {e}"),
        }
    }
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
async fn transfers(
    settings: &Settings,
    db: &Client,
    recorder_db: Client,
    local: &Store,
    remote: &Store,
    throttle: &Throttle,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(Event) + Send),
    report: &mut CycleReport,
) -> Result<(), Error> {
    let opts = transfer::Options {
        part_size: settings.storage.part_size_bytes as usize,
        backoff: Duration::from_millis(settings.storage.retry_backoff_ms),
        stall: settings.storage.stall_timeout,
    };
    let mut pool = Pool {
        running: JoinSet::new(),
        in_flight: HashSet::new(),
        waiting: VecDeque::new(),
        exhausted: false,
        since: storage_queue::clock(db).await?,
        limit: settings.max_concurrent_transfers.max(1) as usize,
        reading: Arc::new(Semaphore::new(
            settings.max_concurrent_transfers.max(1) as usize
        )),
        remote: remote.clone(),
        local: local.clone(),
        opts,
        throttle: throttle.clone(),
        // Its own token: an error below stops this cycle's transfers, not the worker.
        cancel: cancel.child_token(),
    };
    let role = settings.instance_role;
    let phase = Instant::now();
    let mut read_secs: f64 = 0.0;
    let mut recorder = Recorder::start(recorder_db, role, local.clone());
    let outcome: Result<(), Error> = async {
        pool.fill(db, None).await?;
        loop {
            // Wait for a transfer to end, a reading permit to start the next file, or the
            // recorder to have committed finished files.
            let more = pool.can_start();
            let first = tokio::select! {
                joined = pool.running.join_next() => match joined {
                    Some(j) => j,
                    None if more => {
                        pool.fill(db, None).await?;
                        continue;
                    }
                    None => break,
                },
                permit = pool.reading.clone().acquire_owned(), if more => {
                    pool.fill(db, permit.ok()).await?;
                    continue;
                }
                Some(reply) = recorder.replies.recv() => {
                    for (key, bytes) in recorder.take(reply)? {
                        pool.in_flight.remove(&key);
                        on_event(Event::Done { bytes });
                    }
                    continue;
                }
            };
            // Take every transfer that has finished by now and start as many new ones
            // first. Keys stay in `in_flight` until recorded, so that reading ahead does
            // not pick them up again.
            let mut joined = vec![first];
            while let Some(j) = pool.running.try_join_next() {
                joined.push(j);
            }
            let filled = pool.fill(db, None).await;
            // Every finished file goes to the recorder before any error is returned.
            let mut failed = Vec::new();
            for j in joined {
                let Ok((file, before, result)) = j else {
                    continue; // a panicked transfer: its entry stays queued (not retried this cycle)
                };
                match result {
                    Ok(d) => {
                        report.transferred += 1;
                        report.bytes += d.bytes;
                        report.retries += u64::from(d.attempts - 1);
                        let secs = d.read_until.duration_since(phase).as_secs_f64();
                        read_secs = read_secs.max(secs);
                        if read_secs > 0.0 {
                            report.rate_bytes_per_sec = report.bytes as f64 / read_secs;
                        }
                        recorder.record(file, d);
                    }
                    Err((Failure::Cancelled, _)) => {
                        pool.in_flight.remove(&file.object_key);
                    }
                    Err((failure, attempts)) => failed.push((file, before, failure, attempts)),
                }
            }
            for (file, before, failure, attempts) in failed {
                report.failed += 1;
                report.retries += u64::from(attempts.saturating_sub(1));
                on_event(Event::Failed);
                let error = failure.to_string();
                record_failed(db, role, &file, &failure, &error, attempts, before).await?;
                pool.in_flight.remove(&file.object_key);
                if report.failures.len() < MAX_LISTED {
                    report.failures.push(FileFailure {
                        file,
                        error,
                        failure,
                        attempts,
                    });
                }
            }
            filled?;
        }
        Ok(())
    }
    .await;
    // Stop what still runs after an error (each transfer aborts its upload), hand every
    // file that finished to the recorder, and wait for it.
    if outcome.is_err() {
        pool.cancel.cancel();
    }
    while let Some(joined) = pool.running.join_next().await {
        if let Ok((file, _, Ok(done))) = joined {
            recorder.record(file, done);
        }
    }
    let (recorded, unrecorded, recorder_error) = recorder.finish().await;
    for (_, bytes) in recorded {
        on_event(Event::Done { bytes });
    }
    // What the recorder could not record: once more on the cycle's own connection, one
    // file per transaction, so that no published file is left without its records.
    for item in unrecorded {
        match record_done(db, role, local, std::slice::from_ref(&item)).await {
            Ok(()) => on_event(Event::Done {
                bytes: item.1.bytes,
            }),
            Err(e) => {
                tracing::warn!(key = %item.0.object_key, "a finished transfer could not be recorded: {e}");
            }
        }
    }
    match (outcome, recorder_error) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

/// The transfers of one cycle, fed from the queue newest first: at most `limit` reading
/// from the peer (the `reading` permits), at most twice that running (the others publish
/// verified files).
struct Pool {
    running: JoinSet<Finished>,
    /// Keys being transferred (still in the queue table until recorded).
    in_flight: HashSet<String>,
    /// Due entries read ahead, newest first.
    waiting: VecDeque<Due>,
    /// The queue had nothing more due.
    exhausted: bool,
    /// Entries updated after this (failed this cycle) wait for a later cycle.
    since: DateTime<Utc>,
    limit: usize,
    /// `limit` permits: transfers reading from the peer at once.
    reading: Arc<Semaphore>,
    remote: Store,
    local: Store,
    opts: transfer::Options,
    throttle: Throttle,
    cancel: CancellationToken,
}

impl Pool {
    /// Whether another transfer could start now (a reading permit aside).
    fn can_start(&self) -> bool {
        self.running.len() < 2 * self.limit
            && !(self.waiting.is_empty() && self.exhausted)
            && !self.cancel.is_cancelled()
    }

    /// Start transfers, newest first, while a reading permit is free (`permit`, then
    /// others) and fewer than twice `limit` run (the others publish verified files, see
    /// `transfer::copy`); reads the next entries (skipping those in flight) when the ones
    /// read ahead are used up. Permits are taken here, in queue order.
    async fn fill(
        &mut self,
        db: &Client,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Error> {
        while self.running.len() < 2 * self.limit && !self.cancel.is_cancelled() {
            if self.waiting.is_empty() && !self.exhausted {
                let skip: Vec<&str> = self.in_flight.iter().map(String::as_str).collect();
                self.waiting
                    .extend(storage_queue::due(db, self.since, &skip, ROUND).await?);
                self.exhausted = self.waiting.is_empty();
            }
            if self.waiting.is_empty() {
                break;
            }
            let Some(p) = permit
                .take()
                .or_else(|| self.reading.clone().try_acquire_owned().ok())
            else {
                break;
            };
            let Some(d) = self.waiting.pop_front() else {
                break;
            };
            self.in_flight.insert(d.file.object_key.clone());
            let (src, dst, o, th, c, reading) = (
                self.remote.clone(),
                self.local.clone(),
                self.opts.clone(),
                self.throttle.clone(),
                self.cancel.clone(),
                self.reading.clone(),
            );
            self.running.spawn(async move {
                let permit = transfer::ReadPermit::new(p, reading);
                let r = transfer::copy(&src, &dst, &d.file, &o, &th, &c, permit).await;
                (d.file, d.attempts, r)
            });
        }
        Ok(())
    }
}

/// Record finished transfers: for each, its location, its `sync_log` row, and its queue
/// entry done, all in one transaction (one WAL flush for the lot: per-file overhead on
/// 1,000 small files). Should the process die before the commit, the next scan finds the
/// objects in place and drops their entries without log rows; never two rows for one file.
/// Records finished transfers on a connection of its own, so that the cycle keeps starting
/// transfers while a commit is made: what finished meanwhile is committed together next
/// (the slower the commits, the more files share one). A batch that fails is retried
/// file by file; what still fails comes back with the error, for the cycle to try again
/// on its own connection.
struct Recorder {
    files: Option<mpsc::UnboundedSender<(Missing, Done)>>,
    replies: mpsc::UnboundedReceiver<Reply>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Files the recorder could not take (it ended) or gave back unrecorded.
    unrecorded: Vec<(Missing, Done)>,
}

/// What the recorder says about a batch.
enum Reply {
    /// Committed: their keys and bytes.
    Recorded(Vec<(String, u64)>),
    /// These could not be recorded, for this reason.
    Failed(Error, Vec<(Missing, Done)>),
}

/// Files recorded in one transaction at most.
const RECORD_BATCH: usize = 500;

impl Recorder {
    fn start(db: Client, role: Role, local: Store) -> Recorder {
        let (files, mut rx) = mpsc::unbounded_channel::<(Missing, Done)>();
        let (tx, replies) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
                let batch = std::mem::take(&mut batch);
                let keys = |b: &[(Missing, Done)]| -> Vec<(String, u64)> {
                    b.iter()
                        .map(|(f, d)| (f.object_key.clone(), d.bytes))
                        .collect()
                };
                let reply = match record_done(&db, role, &local, &batch).await {
                    Ok(()) => vec![Reply::Recorded(keys(&batch))],
                    Err(_) if batch.len() > 1 => {
                        // One bad file must not cost the others their records.
                        let (mut done, mut failed, mut first) = (Vec::new(), Vec::new(), None);
                        for item in batch {
                            match record_done(&db, role, &local, std::slice::from_ref(&item)).await
                            {
                                Ok(()) => done.push(item),
                                Err(e) => {
                                    first.get_or_insert(e);
                                    failed.push(item);
                                }
                            }
                        }
                        let mut r = vec![Reply::Recorded(keys(&done))];
                        if let Some(e) = first {
                            r.push(Reply::Failed(e, failed));
                        }
                        r
                    }
                    Err(e) => vec![Reply::Failed(e, batch)],
                };
                for r in reply {
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            }
        });
        Recorder {
            files: Some(files),
            replies,
            task: Some(task),
            unrecorded: Vec::new(),
        }
    }

    /// Queue a verified, published file for its records.
    fn record(&mut self, file: Missing, done: Done) {
        let item = (file, done);
        let item = match &self.files {
            Some(tx) => match tx.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => item,
            },
            None => item,
        };
        self.unrecorded.push(item);
    }

    /// A reply: the keys and bytes recorded, or the error (the files it concerns are
    /// kept for [`Recorder::finish`]).
    fn take(&mut self, reply: Reply) -> Result<Vec<(String, u64)>, Error> {
        match reply {
            Reply::Recorded(keys) => Ok(keys),
            Reply::Failed(e, files) => {
                for (file, _) in &files {
                    tracing::warn!(key = %file.object_key, "a finished transfer could not be recorded: {e}");
                }
                self.unrecorded.extend(files);
                Err(e)
            }
        }
    }

    /// Commit what is queued and stop. Returns the keys (and bytes) recorded since the
    /// last reply read, the files left unrecorded, and the first error.
    async fn finish(&mut self) -> (Vec<(String, u64)>, Vec<(Missing, Done)>, Option<Error>) {
        self.files = None;
        let mut all = Vec::new();
        let mut first_error = None;
        while let Some(r) = self.replies.recv().await {
            match self.take(r) {
                Ok(keys) => all.extend(keys),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                first_error.get_or_insert(Error::Recorder(e.to_string()));
            }
        }
        (all, std::mem::take(&mut self.unrecorded), first_error)
    }
}

/// Record finished transfers: for each, its location, its `sync_log` row, and its queue
/// entry done, all in one transaction (one WAL flush for the lot: per-file overhead on
/// 1,000 small files). Should the process die before the commit, the next scan finds the
/// objects in place and drops their entries without log rows; never two rows for one file.
async fn record_done(
    db: &Client,
    role: Role,
    local: &Store,
    done: &[(Missing, Done)],
) -> Result<(), Error> {
    if done.is_empty() {
        return Ok(());
    }
    db.batch_execute("BEGIN")
        .await
        .context("starting the transaction that records transfers")?;
    let mut result = Ok(());
    for (file, d) in done {
        result = record_done_in(db, role, local, file, d).await;
        if result.is_err() {
            break;
        }
    }
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    db.batch_execute(end)
        .await
        .context("ending the transaction that records transfers")?;
    result
}

async fn record_done_in(
    db: &Client,
    role: Role,
    local: &Store,
    file: &Missing,
    done: &Done,
) -> Result<(), Error> {
    object_location::record(
        db,
        &file.object_key,
        &local.url_of(&file.object_key),
        &done.sha256,
        done.bytes as i64,
    )
    .await?;
    sync_log::insert(
        db,
        &sync_log::Entry {
            sync_type: sync_type(role),
            status: Status::Success,
            records_synced: 1,
            error_message: None,
            details: serde_json::json!({
                "key": file.object_key, "table": file.table, "row": file.row_ref,
                "sha256": done.sha256, "bytes": done.bytes, "attempts": done.attempts,
                "seconds": done.seconds,
            }),
        },
    )
    .await?;
    storage_queue::done(db, &file.object_key).await?;
    Ok(())
}

async fn record_failed(
    db: &Client,
    role: Role,
    file: &Missing,
    failure: &Failure,
    error: &str,
    attempts: u32,
    attempts_before: i32,
) -> Result<(), Error> {
    let retry_after = if attempts_before + attempts as i32 >= PATIENT_AFTER {
        3600.0
    } else {
        0.0
    };
    storage_queue::failed(db, &file.object_key, attempts as i32, error, retry_after).await?;
    let msg = format!(
        "{} ({} row {}): {error}",
        file.object_key, file.table, file.row_ref
    );
    tracing::warn!("storage transfer failed: {msg}");
    let mut details = serde_json::json!({
        "key": file.object_key, "table": file.table, "row": file.row_ref,
        "attempts": attempts, "expected_sha256": file.sha256, "expected_size": file.size,
    });
    if let (Some(d), Ok(serde_json::Value::Object(f))) =
        (details.as_object_mut(), serde_json::to_value(failure))
    {
        d.extend(f);
    }
    sync_log::insert(
        db,
        &sync_log::Entry {
            sync_type: sync_type(role),
            status: Status::Level(Severity::Failed),
            records_synced: 0,
            error_message: Some(&msg),
            details,
        },
    )
    .await?;
    Ok(())
}
