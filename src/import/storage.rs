//! Recording and metadata storage: one small interface ([`Storage`]) over two backends, files
//! under a local directory and any S3-compatible object storage.
//!
//! It owns how an object becomes visible: a write is streamed to a place no reader looks at
//! (a `.part` file in the hidden `.partial` directory beside the final one, or an S3 multipart
//! upload) and only
//! [`Upload::finish`] makes it appear under its key, in one atomic step (a rename, or the
//! multipart completion). A crash, a cancelled task, an error or [`Upload::abort`] never leave a
//! half-written object under a final key; at worst they leave a temporary file that
//! [`Storage::clean_partials`] removes on the next attempt.
//!
//! It never builds keys, decides what to store or retries: the caller names the object
//! (`acme/2026/11/29/5000000123.mp3`), holds the call's lease while writing it, and decides what a
//! failure means. Memory per write is bounded and does not grow with the object's size.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt as _, PutMultipartOptions, PutOptions,
    PutPayloadMut, WriteMultipart,
};
use secrecy::ExposeSecret as _;
use tokio::io::AsyncWriteExt as _;

use crate::config::{StorageBackend, StorageSettings};

/// Write buffer of a local upload: few system calls per recording, little memory.
const LOCAL_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Size of every S3 part but the last: the smallest S3 allows, so memory stays small. Objects up
/// to this size are sent with one plain PUT instead of a multipart upload.
const S3_PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts of one upload sent at once. With the part being filled this bounds the memory of one
/// S3 upload to `(S3_MAX_PARTS_IN_FLIGHT + 1) × S3_PART_BYTES` (15 MiB), while still sending one
/// part as the next one fills.
const S3_MAX_PARTS_IN_FLIGHT: usize = 2;
/// Suffix of the temporary files of local uploads (`{file_name}.{16 hex digits}.part`).
const PARTIAL_SUFFIX: &str = ".part";
/// The directory, beside the final files, holding the temporary files of local uploads: looking
/// for a key's leftovers reads only the writes in flight or interrupted there, not a day's
/// thousands of stored calls. (Keys never have a segment starting with `.`.)
const PARTS_DIR: &str = ".partial";

/// Why storage failed. Every variant is worth a retry unless stated.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O failed")]
    Io(#[from] std::io::Error),
    #[error("object storage failed")]
    Object(#[from] object_store::Error),
    /// The key is not a clean relative path (`..`, leading `/`, backslash, empty or hidden
    /// segment, control character). Permanent: the same key fails again.
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
}

/// A finished object: where it is, how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `file:///abs/path/x.mp3` or `s3://bucket/prefix/key`.
    pub location: String,
    pub bytes: u64,
}

/// An object being read: its size, then its bytes in chunks.
pub struct Reading {
    pub bytes: u64,
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, StorageError>>,
}

/// Chunk size of a local read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The configured storage. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Storage {
    Local(LocalStorage),
    S3(ObjectStorage),
}

/// Files under a directory; a key is a path relative to `root`.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    /// Absolute; created, like the directories under it, on the first write.
    pub root: PathBuf,
}

/// An S3-compatible bucket; a key is an object name under an optional prefix.
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    /// Without leading or trailing `/`; empty: none.
    prefix: String,
}

/// An object being written; only [`Upload::finish`] makes it visible under its key.
///
/// Dropping it without `finish` or `abort` (a cancelled task) discards what was written: a local
/// temporary file is removed at once, an S3 multipart upload is aborted in the background.
#[derive(Debug)]
pub struct Upload {
    inner: UploadInner,
}

#[derive(Debug)]
enum UploadInner {
    Local(LocalUpload),
    S3(ObjectUpload),
}

impl Storage {
    /// The storage `settings` describe. Local storage creates nothing yet; S3 storage does not
    /// contact the service yet (a wrong bucket or credential shows on the first write).
    pub fn from_settings(settings: &StorageSettings) -> anyhow::Result<Self> {
        match settings.backend {
            StorageBackend::Local => Ok(Self::Local(
                LocalStorage::new(&settings.root).context("storage.root")?,
            )),
            StorageBackend::S3 => Ok(Self::S3(ObjectStorage::from_settings(settings)?)),
        }
    }

    /// Removes what an interrupted earlier write of `key` may have left (temporary files).
    /// Only called by the holder of the call's lease.
    ///
    /// S3: nothing to do. An interrupted multipart upload is invisible to readers and is
    /// replaced by the next attempt; its stored parts are reclaimed by the bucket's lifecycle
    /// rule `AbortIncompleteMultipartUpload` (set one, e.g. after 1 day).
    #[tracing::instrument(skip_all, fields(key))]
    pub async fn clean_partials(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self {
            Self::Local(local) => local.clean_partials(key).await,
            Self::S3(_) => Ok(()),
        }
    }

    /// Starts writing `key`; nothing is visible under it before [`Upload::finish`], which
    /// replaces any object already there.
    #[tracing::instrument(skip_all, fields(key))]
    pub async fn begin(&self, key: &str, content_type: &str) -> Result<Upload, StorageError> {
        validate_key(key)?;
        let inner = match self {
            Self::Local(local) => UploadInner::Local(local.begin(key).await?),
            Self::S3(object) => UploadInner::S3(object.begin(key, content_type)?),
        };
        Ok(Upload { inner })
    }

    /// Stores a small object (such as the metadata JSON) whole, atomically, replacing any
    /// object already under `key`.
    #[tracing::instrument(skip_all, fields(key, bytes = body.len()))]
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Stored, StorageError> {
        validate_key(key)?;
        match self {
            Self::Local(local) => {
                let mut upload = local.begin(key).await?;
                upload.write(body).await?;
                upload.finish().await
            }
            Self::S3(object) => object.put(key, body, content_type).await,
        }
    }

    /// The whole object under `key`, in memory (meant for small objects); `None` when missing.
    #[tracing::instrument(skip_all, fields(key))]
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        validate_key(key)?;
        match self {
            Self::Local(local) => match tokio::fs::read(local.path(key)).await {
                Ok(body) => Ok(Some(Bytes::from(body))),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Self::S3(object) => match object.store.get(&object.path(key)?).await {
                Ok(result) => Ok(Some(result.bytes().await?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The object under `key` as a stream of chunks, with its size; `None` when missing. Memory
    /// stays bounded whatever the object's size (for serving recordings).
    #[tracing::instrument(skip_all, fields(key))]
    pub async fn read(&self, key: &str) -> Result<Option<Reading>, StorageError> {
        validate_key(key)?;
        match self {
            Self::Local(local) => {
                let file = match tokio::fs::File::open(local.path(key)).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let bytes = file.metadata().await?.len();
                let body = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK_BYTES)
                    .map_err(StorageError::from);
                Ok(Some(Reading {
                    bytes,
                    body: Box::pin(body),
                }))
            }
            Self::S3(object) => match object.store.get(&object.path(key)?).await {
                Ok(result) => Ok(Some(Reading {
                    bytes: result.meta.size,
                    body: Box::pin(result.into_stream().map_err(StorageError::from)),
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Size in bytes of the object under `key`; `None` when missing.
    #[tracing::instrument(skip_all, fields(key))]
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        validate_key(key)?;
        match self {
            Self::Local(local) => match tokio::fs::metadata(local.path(key)).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Self::S3(object) => match object.store.head(&object.path(key)?).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Where `key` is (or would be): `file:///abs/root/key` or `s3://bucket/prefix/key`.
    pub fn location(&self, key: &str) -> String {
        match self {
            Self::Local(local) => local.location(key),
            Self::S3(object) => object.location(key),
        }
    }

    /// Every temporary file of an unfinished local write under the root, as paths relative to
    /// it, sorted (S3: none). For tests and the chaos check; it walks the tree synchronously.
    pub fn partial_files(&self) -> Result<Vec<String>, StorageError> {
        match self {
            Self::Local(local) => local.partial_files(),
            Self::S3(_) => Ok(Vec::new()),
        }
    }
}

impl Upload {
    /// Appends `chunk`. Waits while the backend is busy, so memory stays bounded.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        match &mut self.inner {
            UploadInner::Local(upload) => upload.write(chunk).await,
            UploadInner::S3(upload) => upload.write(chunk).await,
        }
    }

    /// Makes the object visible under its key, all of it at once. On error nothing new is
    /// visible and what was written is discarded.
    pub async fn finish(self) -> Result<Stored, StorageError> {
        match self.inner {
            UploadInner::Local(upload) => upload.finish().await,
            UploadInner::S3(upload) => upload.finish().await,
        }
    }

    /// Discards what was written. Best effort: a failure is logged, and what it leaves is
    /// invisible under the key (see [`Storage::clean_partials`]).
    pub async fn abort(self) {
        match self.inner {
            UploadInner::Local(upload) => upload.abort().await,
            UploadInner::S3(upload) => upload.abort().await,
        }
    }
}

/// Accepts relative paths of non-empty, non-hidden segments separated by `/`. Hidden names
/// (leading `.`, which also rules out `.` and `..`) are reserved for temporary files.
pub(crate) fn validate_key(key: &str) -> Result<(), StorageError> {
    let clean = !key.is_empty()
        && !key.contains("..")
        && !key.contains('\\')
        && !key.chars().any(char::is_control)
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && !segment.starts_with('.'));
    if clean {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Local files

impl LocalStorage {
    /// Storage under `root`, made absolute against the current directory now.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: std::path::absolute(root)?,
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn location(&self, key: &str) -> String {
        let path = self.path(key);
        url::Url::from_file_path(&path)
            .map(String::from)
            .unwrap_or_else(|()| format!("file://{}", path.display()))
    }

    async fn begin(&self, key: &str) -> Result<LocalUpload, StorageError> {
        let final_path = self.path(key);
        let (dir, file_name) = split_path(&final_path)?;
        let parts = dir.join(PARTS_DIR);
        tokio::fs::create_dir_all(&parts).await?;
        let temp_path = parts.join(format!(
            "{file_name}.{:016x}{PARTIAL_SUFFIX}",
            fastrand::u64(..)
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .await?;
        Ok(LocalUpload {
            file: tokio::io::BufWriter::with_capacity(LOCAL_WRITE_BUFFER_BYTES, file),
            temp: TempFile::new(temp_path),
            final_path,
            location: self.location(key),
            bytes: 0,
        })
    }

    async fn clean_partials(&self, key: &str) -> Result<(), StorageError> {
        let final_path = self.path(key);
        let (dir, file_name) = split_path(&final_path)?;
        let mut entries = match tokio::fs::read_dir(dir.join(PARTS_DIR)).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut removed = 0_u32;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            if name
                .to_str()
                .and_then(partial_of)
                .is_some_and(|of| of == file_name)
            {
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed temporary files of an interrupted write");
        }
        Ok(())
    }

    fn partial_files(&self) -> Result<Vec<String>, StorageError> {
        let mut found = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let holds_parts = dir.file_name().is_some_and(|name| name == PARTS_DIR);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    dirs.push(path);
                } else if holds_parts {
                    let relative = path.strip_prefix(&self.root).unwrap_or(&path);
                    found.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// The directory and file name of a key's path (a validated key always has both).
fn split_path(path: &Path) -> Result<(&Path, &str), StorageError> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(StorageError::InvalidKey(path.display().to_string())),
    }
}

/// For a temporary file name `{file_name}.{16 hex digits}.part`, the `file_name` it is for.
fn partial_of(name: &str) -> Option<&str> {
    let rest = name.strip_suffix(PARTIAL_SUFFIX)?;
    let (file_name, random) = rest.rsplit_once('.')?;
    let is_random = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (is_random && !file_name.is_empty()).then_some(file_name)
}

/// A temporary file removed when dropped, unless [`TempFile::keep`] was called.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    /// The file is gone (renamed or removed): nothing left to clean.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Synchronous on purpose: Drop cannot await, and a cancelled task must not leave
            // the file behind. Unlinking is quick; a failure leaves it to `clean_partials`.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug)]
struct LocalUpload {
    // Declared before `temp` so that it is closed before the temporary file is removed.
    file: tokio::io::BufWriter<tokio::fs::File>,
    temp: TempFile,
    final_path: PathBuf,
    location: String,
    bytes: u64,
}

impl LocalUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.file.write_all(&chunk).await?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Flush, fsync, rename over the final name, fsync the directory. Any error (or
    /// cancellation) before the rename drops `temp`, which removes the temporary file.
    async fn finish(self) -> Result<Stored, StorageError> {
        let Self {
            mut file,
            temp,
            final_path,
            location,
            bytes,
        } = self;
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp.path, &final_path).await?;
        temp.keep();
        if let Some(dir) = final_path.parent() {
            // Makes the rename itself durable. Best effort: the data is already synced, and
            // not every file system lets a directory be opened or synced.
            if let Err(error) = sync_dir(dir).await {
                tracing::debug!(%error, dir = %dir.display(), "could not sync directory");
            }
        }
        Ok(Stored { location, bytes })
    }

    async fn abort(self) {
        let Self { file, temp, .. } = self;
        drop(file);
        match tokio::fs::remove_file(&temp.path).await {
            Ok(()) => temp.keep(),
            Err(e) if e.kind() == ErrorKind::NotFound => temp.keep(),
            Err(error) => tracing::warn!(
                error = &error as &dyn std::error::Error,
                path = %temp.path.display(),
                "could not remove the temporary file of an aborted write"
            ),
        }
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

// ---------------------------------------------------------------------------------------------
// S3-compatible object storage

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the store: keep its configuration out of logs.
        f.debug_struct("ObjectStorage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Storage in `bucket` of `store` (which must be that bucket), under `prefix` (may be empty).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        prefix: &str,
    ) -> Result<Self, StorageError> {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix)?;
        }
        Ok(Self {
            store,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// An S3 client from the standard `AWS_*` variables, overridden by `settings`.
    fn from_settings(settings: &StorageSettings) -> anyhow::Result<Self> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.s3_bucket)
            .with_region(&settings.s3_region)
            .with_allow_http(settings.s3_allow_http);
        if !settings.s3_endpoint.is_empty() {
            // Path-style requests (`endpoint/bucket/key`), which MinIO and moto expect.
            builder = builder
                .with_endpoint(&settings.s3_endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if !settings.s3_access_key_id.is_empty() {
            builder = builder.with_access_key_id(&settings.s3_access_key_id);
        }
        if let Some(secret) = &settings.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let store = builder.build().context("building the S3 client")?;
        Self::new(Arc::new(store), &settings.s3_bucket, &settings.s3_prefix)
            .context("storage.s3_prefix")
    }

    fn path(&self, key: &str) -> Result<ObjectPath, StorageError> {
        let full = self.full_key(key);
        ObjectPath::parse(&full).map_err(|_| StorageError::InvalidKey(key.to_string()))
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    fn begin(&self, key: &str, content_type: &str) -> Result<ObjectUpload, StorageError> {
        Ok(ObjectUpload {
            store: Arc::clone(&self.store),
            path: self.path(key)?,
            attributes: content_type_attribute(content_type),
            location: self.location(key),
            bytes: 0,
            state: ObjectUploadState::Buffering(PutPayloadMut::new()),
        })
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Stored, StorageError> {
        let bytes = body.len() as u64;
        let opts = PutOptions::from(content_type_attribute(content_type));
        self.store
            .put_opts(&self.path(key)?, body.into(), opts)
            .await?;
        Ok(Stored {
            location: self.location(key),
            bytes,
        })
    }
}

fn content_type_attribute(content_type: &str) -> Attributes {
    Attributes::from_iter([(Attribute::ContentType, content_type.to_string())])
}

#[derive(Debug)]
struct ObjectUpload {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    attributes: Attributes,
    location: String,
    bytes: u64,
    state: ObjectUploadState,
}

#[derive(Debug)]
enum ObjectUploadState {
    /// Up to one part in memory; finished with a single PUT if it never grows past it.
    Buffering(PutPayloadMut),
    /// A multipart upload, started once the object outgrew one part.
    Streaming(Multipart),
}

impl ObjectUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let len = chunk.len() as u64;
        if let ObjectUploadState::Buffering(buffer) = &mut self.state {
            if buffer.content_length() + chunk.len() <= S3_PART_BYTES {
                buffer.push(chunk);
                self.bytes += len;
                return Ok(());
            }
            let opts = PutMultipartOptions::from(self.attributes.clone());
            let upload = self.store.put_multipart_opts(&self.path, opts).await?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES);
            // At most one part: sent at once, in the background.
            for buffered in std::mem::take(buffer).freeze().iter() {
                multipart.put(buffered.clone());
            }
            self.state = ObjectUploadState::Streaming(Multipart(Some(multipart)));
        }
        if let ObjectUploadState::Streaming(Multipart(Some(multipart))) = &mut self.state {
            // Slices of at most one part, each after waiting for a free slot: at most
            // S3_MAX_PARTS_IN_FLIGHT parts are sent at once, plus the one being filled.
            let mut rest = chunk;
            while !rest.is_empty() {
                let slice = rest.split_to(rest.len().min(S3_PART_BYTES));
                multipart.wait_for_capacity(S3_MAX_PARTS_IN_FLIGHT).await?;
                multipart.put(slice);
            }
        }
        self.bytes += len;
        Ok(())
    }

    async fn finish(self) -> Result<Stored, StorageError> {
        match self.state {
            ObjectUploadState::Buffering(buffer) => {
                let opts = PutOptions::from(self.attributes);
                self.store
                    .put_opts(&self.path, buffer.freeze(), opts)
                    .await?;
            }
            // On failure `WriteMultipart::finish` aborts the upload itself.
            ObjectUploadState::Streaming(mut multipart) => {
                if let Some(multipart) = multipart.0.take() {
                    multipart.finish().await?;
                }
            }
        }
        Ok(Stored {
            location: self.location,
            bytes: self.bytes,
        })
    }

    async fn abort(self) {
        if let ObjectUploadState::Streaming(mut multipart) = self.state
            && let Some(multipart) = multipart.0.take()
            && let Err(error) = multipart.abort().await
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "could not abort a multipart upload; the bucket's lifecycle rule will"
            );
        }
    }
}

/// A multipart upload aborted in the background when dropped unfinished (a cancelled task).
#[derive(Debug)]
struct Multipart(Option<WriteMultipart>);

impl Drop for Multipart {
    fn drop(&mut self) {
        if let Some(multipart) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(error) = multipart.abort().await {
                    tracing::debug!(
                        error = &error as &dyn std::error::Error,
                        "could not abort a dropped multipart upload"
                    );
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A fresh local storage under the system's temporary directory, removed when dropped.
    struct TempRoot {
        storage: Storage,
        root: PathBuf,
    }

    impl TempRoot {
        fn new() -> Self {
            let root = std::env::temp_dir()
                .join(format!("aircall-ingest-storage-{:016x}", fastrand::u64(..)));
            let storage = Storage::Local(LocalStorage::new(&root).unwrap());
            Self { storage, root }
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    const KEY: &str = "acme/2026/11/29/5000000123.mp3";

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_streamed_write_is_visible_whole_after_finish() {
        let t = TempRoot::new();
        let expected = body(1_000_003);

        let mut upload = t.storage.begin(KEY, "audio/mpeg").await.unwrap();
        for chunk in expected.chunks(7_919) {
            upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
            assert_eq!(t.storage.size(KEY).await.unwrap(), None, "visible early");
        }
        let stored = upload.finish().await.unwrap();

        assert_eq!(stored.bytes, expected.len() as u64);
        assert_eq!(stored.location, t.storage.location(KEY));
        assert_eq!(
            stored.location,
            format!("file://{}/{KEY}", t.root.display())
        );
        assert_eq!(
            t.storage.size(KEY).await.unwrap(),
            Some(expected.len() as u64)
        );
        assert_eq!(t.storage.get(KEY).await.unwrap().unwrap(), expected);
        assert!(t.storage.partial_files().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_open_upload_shows_as_one_partial_file() {
        let t = TempRoot::new();

        let mut upload = t.storage.begin(KEY, "audio/mpeg").await.unwrap();
        upload.write(Bytes::from(body(10))).await.unwrap();

        let partials = t.storage.partial_files().unwrap();
        assert_eq!(partials.len(), 1, "{partials:?}");
        assert!(partials[0].starts_with("acme/2026/11/29/.partial/5000000123.mp3."));
        upload.abort().await;
    }

    #[tokio::test]
    async fn an_aborted_upload_leaves_nothing() {
        let t = TempRoot::new();

        let mut upload = t.storage.begin(KEY, "audio/mpeg").await.unwrap();
        upload.write(Bytes::from(body(300_000))).await.unwrap();
        upload.abort().await;

        assert_eq!(t.storage.size(KEY).await.unwrap(), None);
        assert_eq!(t.storage.get(KEY).await.unwrap(), None);
        assert!(t.storage.partial_files().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_no_partial_file() {
        let t = TempRoot::new();

        let mut upload = t.storage.begin(KEY, "audio/mpeg").await.unwrap();
        upload.write(Bytes::from(body(300_000))).await.unwrap();
        drop(upload);

        assert_eq!(t.storage.size(KEY).await.unwrap(), None);
        assert!(t.storage.partial_files().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_writing_task_leaves_no_partial_file() {
        let t = TempRoot::new();
        let storage = t.storage.clone();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();

        let task = tokio::spawn(async move {
            let mut upload = storage.begin(KEY, "audio/mpeg").await.unwrap();
            upload.write(Bytes::from(body(1_000))).await.unwrap();
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        started_rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());

        assert!(t.storage.partial_files().unwrap().is_empty());
        assert_eq!(t.storage.size(KEY).await.unwrap(), None);
    }

    #[tokio::test]
    async fn finishing_replaces_an_earlier_object() {
        let t = TempRoot::new();
        t.storage
            .put(KEY, Bytes::from_static(b"old"), "audio/mpeg")
            .await
            .unwrap();

        let mut upload = t.storage.begin(KEY, "audio/mpeg").await.unwrap();
        upload.write(Bytes::from_static(b"new!")).await.unwrap();
        assert_eq!(t.storage.get(KEY).await.unwrap().unwrap(), "old");
        upload.finish().await.unwrap();

        assert_eq!(t.storage.get(KEY).await.unwrap().unwrap(), "new!");
    }

    #[tokio::test]
    async fn put_then_get_round_trips() {
        let t = TempRoot::new();
        let key = "acme/2026/11/29/5000000123.json";
        let json = Bytes::from_static(br#"{"id":5000000123}"#);

        let stored = t
            .storage
            .put(key, json.clone(), "application/json")
            .await
            .unwrap();

        assert_eq!(stored.bytes, json.len() as u64);
        assert_eq!(stored.location, t.storage.location(key));
        assert_eq!(t.storage.get(key).await.unwrap(), Some(json));
        assert!(t.storage.partial_files().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_read_streams_the_object_in_bounded_chunks() {
        use futures_util::StreamExt as _;
        let t = TempRoot::new();
        let key = "acme/2026/11/29/5000000124.mp3";
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        t.storage
            .put(key, Bytes::from(body.clone()), "audio/mpeg")
            .await
            .unwrap();

        let reading = t.storage.read(key).await.unwrap().unwrap();
        assert_eq!(reading.bytes, body.len() as u64);
        let chunks: Vec<Bytes> = reading.body.map(|c| c.unwrap()).collect().await;
        assert!(chunks.iter().all(|c| c.len() <= READ_CHUNK_BYTES));
        assert_eq!(chunks.concat(), body);
        assert!(t.storage.read("acme/none.mp3").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn missing_objects_are_none() {
        let t = TempRoot::new();

        assert_eq!(t.storage.get(KEY).await.unwrap(), None);
        assert_eq!(t.storage.size(KEY).await.unwrap(), None);
        assert!(t.storage.partial_files().unwrap().is_empty());
        t.storage.clean_partials(KEY).await.unwrap();
    }

    #[tokio::test]
    async fn unclean_keys_are_rejected() {
        let t = TempRoot::new();
        for key in [
            "",
            "/acme/x.mp3",
            "acme/../x.mp3",
            "..",
            "acme/..x.mp3",
            "acme\\x.mp3",
            "acme//x.mp3",
            "acme/x.mp3/",
            "acme/./x.mp3",
            "acme/.x.mp3.0123456789abcdef.part",
            "acme/x\n.mp3",
        ] {
            let err = t.storage.begin(key, "audio/mpeg").await.unwrap_err();
            assert!(matches!(err, StorageError::InvalidKey(_)), "{key:?}: {err}");
            let err = t
                .storage
                .put(key, Bytes::new(), "audio/mpeg")
                .await
                .unwrap_err();
            assert!(matches!(err, StorageError::InvalidKey(_)), "{key:?}: {err}");
            assert!(t.storage.get(key).await.is_err(), "{key:?}");
            assert!(t.storage.size(key).await.is_err(), "{key:?}");
            assert!(t.storage.clean_partials(key).await.is_err(), "{key:?}");
        }
        assert!(!t.root.exists(), "nothing may be created for a bad key");
        t.storage
            .begin("acme/2026/x-1_y.mp3", "audio/mpeg")
            .await
            .unwrap()
            .abort()
            .await;
    }

    #[tokio::test]
    async fn clean_partials_removes_only_that_keys_temporary_files() {
        let t = TempRoot::new();
        let dir = t.root.join("acme/2026/11/29");
        let json_key = "acme/2026/11/29/5000000123.mp3.json";
        let other_key = "acme/2026/11/29/5000000124.mp3";
        // Two interrupted writes of KEY, and open writes of neighbouring keys.
        for _ in 0..2 {
            std::mem::forget(t.storage.begin(KEY, "audio/mpeg").await.unwrap());
        }
        let json = t.storage.begin(json_key, "application/json").await.unwrap();
        let other = t.storage.begin(other_key, "audio/mpeg").await.unwrap();
        t.storage
            .put(KEY, Bytes::from_static(b"done"), "audio/mpeg")
            .await
            .unwrap();
        std::fs::write(dir.join("notes.part"), b"not ours").unwrap();
        assert_eq!(t.storage.partial_files().unwrap().len(), 4);

        t.storage.clean_partials(KEY).await.unwrap();

        let left = t.storage.partial_files().unwrap();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter()
                .all(|p| !p.contains("/.partial/5000000123.mp3.") || p.contains(".json."))
        );
        assert!(dir.join("notes.part").exists());
        assert_eq!(t.storage.get(KEY).await.unwrap().unwrap(), "done");
        json.abort().await;
        other.abort().await;
        assert!(t.storage.partial_files().unwrap().is_empty());
    }

    #[test]
    fn partial_names_are_recognised_exactly() {
        assert_eq!(partial_of("x.mp3.0123456789abcdef.part"), Some("x.mp3"));
        assert_eq!(
            partial_of("x.mp3.json.0123456789abcdef.part"),
            Some("x.mp3.json")
        );
        assert_eq!(partial_of("x.mp3.0123.part"), None);
        assert_eq!(partial_of("x.mp3.0123456789abcdeg.part"), None);
        assert_eq!(partial_of(".0123456789abcdef.part"), None);
        assert_eq!(partial_of("x.mp3.0123456789abcdef"), None);
    }

    #[test]
    fn locations_name_the_backend() {
        let s3 = Storage::S3(
            ObjectStorage::new(
                Arc::new(object_store::memory::InMemory::new()),
                "bucket",
                "/recordings/",
            )
            .unwrap(),
        );
        assert_eq!(s3.location(KEY), format!("s3://bucket/recordings/{KEY}"));
        assert!(
            ObjectStorage::new(
                Arc::new(object_store::memory::InMemory::new()),
                "b",
                "a/../c"
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn object_storage_streams_large_objects_and_puts_small_ones() {
        let storage = Storage::S3(
            ObjectStorage::new(Arc::new(object_store::memory::InMemory::new()), "b", "p").unwrap(),
        );
        let large = body(2 * S3_PART_BYTES + 12_345);
        let small_key = "acme/small.mp3";

        let mut upload = storage.begin(KEY, "audio/mpeg").await.unwrap();
        for chunk in large.chunks(64 * 1024) {
            upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(storage.size(KEY).await.unwrap(), None, "visible early");
        let stored = upload.finish().await.unwrap();
        let mut small = storage.begin(small_key, "audio/mpeg").await.unwrap();
        small.write(Bytes::from_static(b"tiny")).await.unwrap();
        small.finish().await.unwrap();
        let mut aborted = storage
            .begin("acme/aborted.mp3", "audio/mpeg")
            .await
            .unwrap();
        aborted
            .write(Bytes::from(body(S3_PART_BYTES + 1)))
            .await
            .unwrap();
        aborted.abort().await;

        assert_eq!(stored.bytes, large.len() as u64);
        assert_eq!(stored.location, format!("s3://b/p/{KEY}"));
        assert_eq!(storage.get(KEY).await.unwrap().unwrap(), large);
        assert_eq!(storage.get(small_key).await.unwrap().unwrap(), "tiny");
        assert_eq!(storage.size("acme/aborted.mp3").await.unwrap(), None);
    }
}
