//! One object store, whichever kind ([`Store`]): paginated listing, HEAD, streaming reads,
//! and writes that become visible under their key only when [`Writer::finish`] is called
//! (a single PUT of a buffered small object, a completed multipart upload, or a rename of
//! a temporary file), so a copy that fails verification is never seen.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};

use super::fs::{FsReader, FsStore, FsWriter};
use super::s3::S3Store;
use crate::config::Endpoint;

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

    /// A writer for `key` holding at most `part_size` bytes in memory.
    pub async fn writer(&self, key: &str, part_size: usize) -> Result<Writer, StoreError> {
        match self {
            Store::S3(s) => Ok(Writer::S3 {
                store: s.clone(),
                key: key.to_string(),
                part_size,
                buf: BytesMut::with_capacity(part_size.min(1 << 20)),
                upload: None,
                parts: Vec::new(),
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

    /// Remove what a controller killed mid-transfer left (unfinished multipart uploads,
    /// temporary files); returns how many.
    pub async fn clean_unfinished(&self) -> Result<usize, StoreError> {
        match self {
            Store::S3(s) => s.abort_stale_uploads().await,
            Store::Fs(f) => Ok(f.remove_stale_temps().await),
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
    },
    /// A temporary file.
    Fs(FsWriter),
}

impl Writer {
    /// Append `chunk`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        match self {
            Writer::S3 {
                store,
                key,
                part_size,
                buf,
                upload,
                parts,
            } => {
                buf.extend_from_slice(chunk);
                if buf.len() >= *part_size {
                    let id = match upload {
                        Some(id) => id.clone(),
                        None => {
                            let id = store.start_multipart(key).await?;
                            *upload = Some(id.clone());
                            id
                        }
                    };
                    let body = buf.split().freeze();
                    let n = parts.len() as i32 + 1;
                    parts.push(store.upload_part(key, &id, n, body).await?);
                }
                Ok(())
            }
            Writer::Fs(w) => w.write(chunk).await,
        }
    }

    /// Publish: the object becomes visible under its key.
    pub async fn finish(self) -> Result<(), StoreError> {
        match self {
            Writer::S3 {
                store,
                key,
                buf,
                upload,
                mut parts,
                ..
            } => match upload {
                None => store.put(&key, buf.freeze()).await,
                Some(id) => {
                    let result = async {
                        if !buf.is_empty() {
                            let n = parts.len() as i32 + 1;
                            parts.push(store.upload_part(&key, &id, n, buf.freeze()).await?);
                        }
                        store.complete_multipart(&key, &id, parts).await
                    }
                    .await;
                    if result.is_err() {
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
                store, key, upload, ..
            } => {
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
