//! A directory as an object store: an object's key is its path below the root. Unfinished
//! copies are written to a temporary file beside their target (named with
//! [`super::TEMP_MARK`], never listed) and renamed into place once verified.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::store::{Fault, StoreError};
use super::TEMP_MARK;

/// Bytes read at a time.
const CHUNK: usize = 256 * 1024;

/// A directory store.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

fn io_err(op: &str, key: &str, e: &std::io::Error) -> StoreError {
    let fault = match e.kind() {
        std::io::ErrorKind::NotFound => Fault::NotFound,
        std::io::ErrorKind::PermissionDenied => Fault::Denied,
        _ => Fault::Transient,
    };
    StoreError {
        fault,
        message: format!("{op} {key}: {e}"),
    }
}

impl FsStore {
    /// The store rooted at `root`.
    pub fn new(root: PathBuf) -> Self {
        FsStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The object's URL.
    pub fn url_of(&self, key: &str) -> String {
        format!("file://{}", self.path(key).display())
    }

    /// Every object with its size, sorted by key bytes (as S3 lists them). Holds the whole
    /// listing in memory: a directory store is for on-site stores of moderate size.
    pub async fn list_all(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let root = self.root.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if root.exists() {
                walk(&root, &root, &mut out)?;
            }
            out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            Ok::<_, std::io::Error>(out)
        })
        .await
        .map_err(|e| StoreError {
            fault: Fault::Transient,
            message: format!("listing {}: {e}", self.root.display()),
        })?;
        listed.map_err(|e| io_err("listing", &self.root.display().to_string(), &e))
    }

    /// Size of `key`, `None` when absent.
    pub async fn head(&self, key: &str) -> Result<Option<i64>, StoreError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(m.len() as i64)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading the size of", key, &e)),
        }
    }

    /// Open `key` for reading, with its size.
    pub async fn get(&self, key: &str) -> Result<(FsReader, Option<i64>), StoreError> {
        let file = tokio::fs::File::open(self.path(key))
            .await
            .map_err(|e| io_err("opening", key, &e))?;
        let len = file.metadata().await.ok().map(|m| m.len() as i64);
        Ok((
            FsReader {
                file,
                key: key.to_string(),
            },
            len,
        ))
    }

    /// Delete `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", key, &e)),
        }
    }

    /// A writer to a temporary file beside `key`'s path.
    pub async fn writer(&self, key: &str) -> Result<FsWriter, StoreError> {
        let target = self.path(key);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err("creating the directory of", key, &e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{name}{TEMP_MARK}{:016x}", rand::random::<u64>()));
        let file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| io_err("creating a temporary file for", key, &e))?;
        Ok(FsWriter {
            file,
            temp,
            target,
            key: key.to_string(),
        })
    }

    /// Remove temporary files left by a controller killed mid-transfer; returns how many.
    pub async fn remove_stale_temps(&self) -> usize {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            let mut stack = vec![root];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if e.file_name().to_string_lossy().contains(TEMP_MARK)
                        && std::fs::remove_file(&p).is_ok()
                    {
                        n += 1;
                    }
                }
            }
            n
        })
        .await
        .unwrap_or(0)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, i64)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() && !entry.file_name().to_string_lossy().contains(TEMP_MARK) {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push((rel.to_string_lossy().into_owned(), meta.len() as i64));
            }
        }
    }
    Ok(())
}

/// Reads a file in chunks.
pub struct FsReader {
    file: tokio::fs::File,
    key: String,
}

impl FsReader {
    /// The next chunk, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        let mut buf = vec![0u8; CHUNK];
        match self.file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(Bytes::from(buf)))
            }
            Err(e) => Some(Err(io_err("reading", &self.key, &e))),
        }
    }
}

/// A temporary file that becomes `key` on [`FsWriter::finish`].
pub struct FsWriter {
    file: tokio::fs::File,
    temp: PathBuf,
    target: PathBuf,
    key: String,
}

impl FsWriter {
    /// Append `chunk`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| io_err("writing", &self.key, &e))
    }

    /// Flush to disk and rename into place.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        self.file
            .flush()
            .await
            .map_err(|e| io_err("writing", &self.key, &e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_err("syncing", &self.key, &e))?;
        tokio::fs::rename(&self.temp, &self.target)
            .await
            .map_err(|e| io_err("publishing", &self.key, &e))
    }

    /// Remove the temporary file.
    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}
