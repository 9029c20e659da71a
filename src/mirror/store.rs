//! One object store, whichever kind ([`Store`]): paginated listing, HEAD, streaming reads,
//! and writes that become visible under their key only when [`Writer::finish`] is called
//! (a single PUT of a buffered small object, a completed multipart upload, or a rename of
//! a temporary file), so a copy that fails verification is never seen.
//!
//! An S3 writer uploads each full part in the background while the caller reads and
//! hashes the next one, with at most [`PARTS_IN_FLIGHT`] uploads at once: memory per
//! transfer stays under `(PARTS_IN_FLIGHT + 1) x part size`.

use std::collections::VecDeque;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};

use super::fs::{FsReader, FsStore, FsWriter};
use super::s3::S3Store;
use crate::config::Endpoint;

/// Part uploads one S3 writer runs at once while it buffers the next part.
pub const PARTS_IN_FLIGHT: usize = 1;

/// What kind of failure an object-store call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Network, timeout, 5xx, 429: worth retrying now.
    Transient,
    /// The object does not exist.
    NotFound,
    /// The bucket does not exist.
    NoBucket,
    /// The credentials are refused (401/403).
    Denied,
    /// Any other refusal: retrying now will not help.
    Permanent,
}

impl Fault {
    /// Retry within this transfer.
    pub fn is_transient(self) -> bool {
        self == Fault::Transient
    }
}

/// An object-store call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// Its kind.
    pub fault: Fault,
    /// What was done and what the store said (no credentials).
    pub message: String,
}

/// An object store.
#[derive(Clone)]
pub enum Store {
    /// An S3-compatible bucket and prefix.
    S3(S3Store),
    /// A directory.
    Fs(FsStore),
}

impl Store {
    /// The store an endpoint names.
    pub fn open(e: &Endpoint, stall: std::time::Duration) -> Store {
        match e {
            Endpoint::S3 {
                endpoint,
                bucket,
                prefix,
                region,
                access_key_id,
                secret_access_key,
            } => Store::S3(S3Store::new(
                endpoint,
                bucket,
                prefix,
                region,
                access_key_id,
                secret_access_key,
                stall,
            )),
            Endpoint::Fs { root } => Store::Fs(FsStore::new(root.clone())),
        }
    }

    /// `key`'s URL in this store, without credentials.
    pub fn url_of(&self, key: &str) -> String {
        match self {
            Store::S3(s) => s.url_of(key),
            Store::Fs(f) => f.url_of(key),
        }
    }

    /// A listing of every object, page by page, in key (byte) order.
    pub fn list(&self) -> Lister {
        Lister {
            store: self.clone(),
            token: None,
            done: false,
        }
    }

    /// Size of `key`, `None` when absent.
    pub async fn head(&self, key: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Store::S3(s) => s.head(key).await,
            Store::Fs(f) => f.head(key).await,
        }
    }

    /// Open `key` for reading: a stream of chunks and the size the store reports.
    pub async fn get(&self, key: &str) -> Result<(Reader, Option<i64>), StoreError> {
        match self {
            Store::S3(s) => {
                let (body, len) = s.get(key).await?;
                Ok((
                    Reader::S3 {
                        body,
                        key: key.to_string(),
                    },
                    len,
                ))
            }
            Store::Fs(f) => {
                let (r, len) = f.get(key).await?;
                Ok((Reader::Fs(r), len))
            }
        }
    }

    /// A writer for `key` holding at most `part_size` bytes in memory; `size` is how many
    /// bytes the caller expects to write (its first buffer is allocated once for that).
    pub async fn writer(
        &self,
        key: &str,
        part_size: usize,
        size: u64,
    ) -> Result<Writer, StoreError> {
        match self {
            Store::S3(s) => Ok(Writer::S3 {
                store: s.clone(),
                key: key.to_string(),
                part_size,
                buf: BytesMut::with_capacity(
                    part_size.min(usize::try_from(size).unwrap_or(usize::MAX)),
                ),
                upload: None,
                parts: Vec::new(),
                in_flight: InFlight::default(),
            }),
            Store::Fs(f) => Ok(Writer::Fs(f.writer(key).await?)),
        }
    }

    /// Delete `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::S3(s) => s.delete(key).await,
            Store::Fs(f) => f.delete(key).await,
        }
    }

    /// Unfinished multipart uploads in this store (none for a directory): (key, upload
    /// id). What a controller killed mid-transfer left, or what another writer (the
    /// application) is uploading right now: the caller decides which are duplex's.
    pub async fn unfinished_uploads(&self) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Store::S3(s) => s.unfinished_uploads().await,
            Store::Fs(_) => Ok(Vec::new()),
        }
    }

    /// Abort the unfinished upload `id` of `key` (see [`Store::unfinished_uploads`]).
    pub async fn abort_upload(&self, key: &str, id: &str) -> Result<(), StoreError> {
        match self {
            Store::S3(s) => s.abort_multipart(key, id).await,
            Store::Fs(_) => Ok(()),
        }
    }

    /// Remove the temporary files a controller killed mid-transfer left in a directory
    /// store (named by duplex, so never the application's); returns how many.
    pub async fn remove_stale_temps(&self) -> usize {
        match self {
            Store::S3(_) => 0,
            Store::Fs(f) => f.remove_stale_temps().await,
        }
    }
}

/// A listing in progress.
pub struct Lister {
    store: Store,
    token: Option<String>,
    done: bool,
}

impl Lister {
    /// The next page of (key, size), `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<(String, i64)>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        match &self.store {
            Store::S3(s) => {
                let (items, next) = s.list_page(self.token.take()).await?;
                self.done = next.is_none();
                self.token = next;
                Ok(Some(items))
            }
            Store::Fs(f) => {
                self.done = true;
                Ok(Some(f.list_all().await?))
            }
        }
    }
}

/// An object being read.
pub enum Reader {
    /// An S3 body.
    S3 {
        /// The body.
        body: ByteStream,
        /// For messages.
        key: String,
    },
    /// A file.
    Fs(FsReader),
}

impl Reader {
    /// The next chunk, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        match self {
            Reader::S3 { body, key } => body.next().await.map(|r| {
                r.map_err(|e| StoreError {
                    fault: Fault::Transient,
                    message: format!(
                        "reading {key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ),
                })
            }),
            Reader::Fs(r) => r.next().await,
        }
    }
}

/// An object being written; invisible under its key until [`Writer::finish`].
pub enum Writer {
    /// Small objects are buffered and PUT at once; larger ones go up in parts.
    S3 {
        /// The store.
        store: S3Store,
        /// The key.
        key: String,
        /// Part size.
        part_size: usize,
        /// Bytes not yet uploaded.
        buf: BytesMut,
        /// The multipart upload, once the object outgrew one part.
        upload: Option<String>,
        /// Parts uploaded.
        parts: Vec<CompletedPart>,
        /// Part uploads running, oldest first.
        in_flight: InFlight,
    },
    /// A temporary file.
    Fs(FsWriter),
}

impl Writer {
    /// Append `chunk`. A full part starts uploading in the background; when
    /// [`PARTS_IN_FLIGHT`] uploads already run, this waits for the oldest one (and returns
    /// its error, if it failed).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        match self {
            Writer::S3 {
                store,
                key,
                part_size,
                buf,
                upload,
                parts,
                in_flight,
            } => {
                let mut rest = chunk;
                while !rest.is_empty() {
                    // Parts of exactly `part_size` bytes: the buffer never outgrows it.
                    let take = (*part_size - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() < *part_size {
                        break;
                    }
                    let id = match upload {
                        Some(id) => id.clone(),
                        None => {
                            let id = store.start_multipart(key).await?;
                            *upload = Some(id.clone());
                            id
                        }
                    };
                    while in_flight.len() >= PARTS_IN_FLIGHT {
                        parts.push(in_flight.next().await?);
                    }
                    let body = std::mem::replace(buf, BytesMut::with_capacity(*part_size));
                    let n = (parts.len() + in_flight.len()) as i32 + 1;
                    in_flight.start(store.clone(), key.clone(), id, n, body.freeze());
                }
                Ok(())
            }
            Writer::Fs(w) => w.write(chunk).await,
        }
    }

    /// Whether [`Writer::finish`] publishes in one request from what is buffered (no
    /// multipart upload started; a file, a rename).
    pub fn single_request(&self) -> bool {
        matches!(self, Writer::S3 { upload: None, .. } | Writer::Fs(_))
    }

    /// Publish: the object becomes visible under its key. `sha256` is the verified hash
    /// of everything written (lowercase hex); a single-request upload signs it as the
    /// payload hash instead of hashing the bytes again.
    pub async fn finish(self, sha256: &str) -> Result<(), StoreError> {
        match self {
            Writer::S3 {
                store,
                key,
                buf,
                upload,
                mut parts,
                mut in_flight,
                ..
            } => match upload {
                None => store.put(&key, buf.freeze(), sha256).await,
                Some(id) => {
                    let result = async {
                        if !buf.is_empty() {
                            while in_flight.len() >= PARTS_IN_FLIGHT {
                                parts.push(in_flight.next().await?);
                            }
                            let n = (parts.len() + in_flight.len()) as i32 + 1;
                            in_flight.start(
                                store.clone(),
                                key.clone(),
                                id.clone(),
                                n,
                                buf.freeze(),
                            );
                        }
                        while !in_flight.is_empty() {
                            parts.push(in_flight.next().await?);
                        }
                        store.complete_multipart(&key, &id, parts).await
                    }
                    .await;
                    if result.is_err() {
                        in_flight.stop().await;
                        let _ = store.abort_multipart(&key, &id).await;
                    }
                    result
                }
            },
            Writer::Fs(w) => w.finish().await,
        }
    }

    /// Give up: nothing becomes visible, what was uploaded is dropped.
    pub async fn abort(self) {
        match self {
            Writer::S3 {
                store,
                key,
                upload,
                mut in_flight,
                ..
            } => {
                in_flight.stop().await;
                if let Some(id) = upload {
                    if let Err(e) = store.abort_multipart(&key, &id).await {
                        tracing::warn!("could not abort the multipart upload of {key}: {e}");
                    }
                }
            }
            Writer::Fs(w) => w.abort().await,
        }
    }
}

/// Part uploads running in the background, oldest first; dropping it stops them (the
/// multipart upload itself is aborted by the writer, or by the next cycle's clean-up).
#[derive(Default)]
pub struct InFlight(VecDeque<tokio::task::JoinHandle<Result<CompletedPart, StoreError>>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn start(&mut self, store: S3Store, key: String, upload_id: String, number: i32, body: Bytes) {
        self.0.push_back(tokio::spawn(async move {
            store.upload_part(&key, &upload_id, number, body).await
        }));
    }

    /// The oldest upload's outcome; call only when not empty. The upload stays in the
    /// set until it has ended, so that dropping this future (a cancelled transfer) still
    /// stops it through the set's `Drop`.
    async fn next(&mut self) -> Result<CompletedPart, StoreError> {
        let Some(handle) = self.0.front_mut() else {
            return Err(StoreError {
                fault: Fault::Permanent,
                message: "internal: no part upload is running".into(),
            });
        };
        let outcome = handle.await;
        self.0.pop_front();
        match outcome {
            Ok(r) => r,
            Err(e) => Err(StoreError {
                fault: Fault::Transient,
                message: format!("a part upload task ended abnormally: {e}"),
            }),
        }
    }

    /// Stop every upload still running.
    fn cancel(&mut self) {
        for h in self.0.drain(..) {
            h.abort();
        }
    }

    /// Stop every upload still running and wait until each has ended, so that none
    /// stores a part after the multipart upload is aborted.
    async fn stop(&mut self) {
        for h in self.0.iter() {
            h.abort();
        }
        while let Some(h) = self.0.pop_front() {
            let _ = h.await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cancel();
    }
}
