//! Where the bytes live: `object_store` over the local filesystem (the
//! embedded default, under the data directory) or an S3-compatible store.
//!
//! Bytes are kept under a random version id, never under the object's
//! name: `<tenant>/objects/<v0v1>/<version>` for objects and
//! `<tenant>/uploads/<upload id>/<part>` for resumable uploads in progress.
//! An upload writes a new version and becomes visible only when its row in
//! `storage.objects` names that version, in the same commit that replaces
//! the old one; a move is a metadata change; names cannot escape anything.
//!
//! On the local disk, files are private to Sovra's user (0600 in 0700
//! directories), written to a temporary file that is synced, renamed into
//! place and made durable by syncing its directory. Every blocking file
//! call (open, one read or write of a chunk, sync, rename) runs on
//! tokio's blocking pool while holding one of a bounded number of IO slots
//! (`storage.io_threads`), and never while waiting for the network: a
//! chunk is received from the client asynchronously and only then
//! written, and a download reads its next chunk only when the client has
//! taken the previous one. A slow client therefore holds memory for one
//! chunk, never a thread.

use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, PutPayload, WriteMultipart,
};

use crate::names::ByteRange;

/// Size of the parts an upload is cut into (S3 needs at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight per upload: memory per upload stays near
/// `PART_SIZE * (PARTS_IN_FLIGHT + 1)`.
const PARTS_IN_FLIGHT: usize = 2;
/// Chunk size of downloads read from the local disk.
const READ_CHUNK: usize = 1024 * 1024;
/// Received bytes are written to the local disk in batches of this size.
const WRITE_BATCH: usize = 256 * 1024;
/// How long a request waits for a free IO slot before it is refused with
/// 503 (the disk, not a client, is then the bottleneck), unless
/// `storage.io_wait` says otherwise ([`Backend::with_io_wait`]).
const IO_WAIT: Duration = Duration::from_secs(30);

/// How bytes are stored.
#[derive(Clone, Debug)]
pub enum BackendConfig {
    /// A directory on the local disk.
    Fs { root: PathBuf },
    /// An S3-compatible bucket.
    S3 {
        endpoint: Option<String>,
        region: String,
        bucket: String,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        path_style: bool,
    },
}

/// Why writing bytes failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the body exceeds the size limit")]
    TooLarge,
    #[error("the request body broke off: {0}")]
    Body(String),
    #[error("every file IO slot stayed busy")]
    Busy,
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Bytes read back: the stream and the total size of the object.
pub struct Download {
    pub stream: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    pub size: u64,
}

/// One tenant's byte store.
#[derive(Clone, Debug)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The local disk, when bytes live there.
    local: Option<LocalDisk>,
}

/// The local disk: its root and the IO slots blocking file calls take.
#[derive(Clone, Debug)]
struct LocalDisk {
    root: PathBuf,
    io: Arc<tokio::sync::Semaphore>,
    io_wait: Duration,
}

impl LocalDisk {
    /// Runs one blocking file call on the blocking pool, holding an IO
    /// slot for exactly as long as it runs (the slot moves into the task,
    /// so a request that goes away does not free it early).
    async fn run<T, F>(&self, call: F) -> Result<T, LocalError>
    where
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = tokio::time::timeout(self.io_wait, self.io.clone().acquire_owned())
            .await
            .map_err(|_| LocalError::Busy)?
            .map_err(|_| LocalError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            call()
        })
        .await
        .map_err(|err| LocalError::Io(std::io::Error::other(err)))?
        .map_err(LocalError::Io)
    }
}

/// Why a local file call failed.
#[derive(Debug)]
enum LocalError {
    Busy,
    Io(std::io::Error),
}

impl LocalError {
    fn into_store(self, location: &str) -> WriteError {
        match self {
            LocalError::Busy => WriteError::Busy,
            LocalError::Io(err) => WriteError::Store(io_to_store(err, location)),
        }
    }

    fn into_io(self) -> std::io::Error {
        match self {
            LocalError::Busy => std::io::Error::other("every file IO slot stayed busy"),
            LocalError::Io(err) => err,
        }
    }
}

fn io_to_store(err: std::io::Error, location: &str) -> object_store::Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: location.to_owned(),
            source: Box::new(err),
        }
    } else {
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(err),
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700.
fn create_private_dirs(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Backend {
    /// How long a blocking file call of the local disk waits for a free IO
    /// slot before the request is refused (503).
    pub fn with_io_wait(mut self, wait: Duration) -> Backend {
        if let Some(local) = &mut self.local {
            local.io_wait = wait;
        }
        self
    }

    /// Takes one of the local disk's IO slots until the permit is dropped,
    /// as a long blocking file call would; `None` for other stores. For
    /// tests that need the disk saturated.
    #[doc(hidden)]
    pub async fn hold_io_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let local = self.local.as_ref()?;
        local.io.clone().acquire_owned().await.ok()
    }

    /// Opens the store for `tenant`; on the local disk, at most
    /// `io_threads` blocking file calls run at once.
    pub fn open(
        config: &BackendConfig,
        tenant: &str,
        io_threads: usize,
    ) -> Result<Backend, object_store::Error> {
        match config {
            BackendConfig::Fs { root } => {
                let generic = |err: std::io::Error| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(err),
                };
                // The tenant's tree is Sovra's alone, whatever the root
                // (which may be a directory the operator chose) allows;
                // files written by earlier versions with wider modes are
                // unreachable through it.
                let tenant_dir = root.join(tenant);
                create_private_dirs(&tenant_dir).map_err(generic)?;
                {
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(&tenant_dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(generic)?;
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(root)?
                    .with_automatic_cleanup(true);
                Ok(Backend {
                    store: Arc::new(store),
                    prefix: tenant.to_owned(),
                    local: Some(LocalDisk {
                        root: root.clone(),
                        io: Arc::new(tokio::sync::Semaphore::new(io_threads.max(1))),
                        io_wait: IO_WAIT,
                    }),
                })
            }
            BackendConfig::S3 {
                endpoint,
                region,
                bucket,
                access_key_id,
                secret_access_key,
                path_style,
            } => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_region(region)
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(!path_style);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(key) = access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                Ok(Backend {
                    store: Arc::new(builder.build()?),
                    prefix: tenant.to_owned(),
                    local: None,
                })
            }
        }
    }

    /// Where the bytes of object version `version` live.
    pub fn object_path(&self, version: &str) -> Path {
        let fan = version.get(..2).unwrap_or("00");
        Path::from(format!("{}/objects/{fan}/{version}", self.prefix))
    }

    /// Where part `part` of resumable upload `upload` lives.
    pub fn part_path(&self, upload: &str, part: i32) -> Path {
        Path::from(format!("{}/uploads/{upload}/{part:08}", self.prefix))
    }

    /// Streams `body` to `path`, refusing more than `limit` bytes. Small
    /// bodies are one put; larger ones a multipart upload with bounded
    /// parts in flight. Nothing is left at `path` when this fails.
    pub async fn write<S, E>(&self, path: &Path, body: S, limit: u64) -> Result<u64, WriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if let Some(disk) = &self.local {
            return write_local(disk, path, body, limit).await;
        }
        let mut body = body;
        let mut first = BytesMut::new();
        let mut size: u64 = 0;
        // Collect the first part; most objects end here.
        while first.len() < PART_SIZE {
            match body.next().await {
                None => {
                    self.store
                        .put(path, PutPayload::from(first.freeze()))
                        .await?;
                    return Ok(size);
                }
                Some(Err(err)) => return Err(WriteError::Body(err.to_string())),
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(WriteError::TooLarge);
                    }
                    first.extend_from_slice(&chunk);
                }
            }
        }
        let upload = self.store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(first.freeze());
        loop {
            if let Err(err) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(err.into());
            }
            match body.next().await {
                None => break,
                Some(Err(err)) => {
                    let _ = writer.abort().await;
                    return Err(WriteError::Body(err.to_string()));
                }
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        let _ = writer.abort().await;
                        return Err(WriteError::TooLarge);
                    }
                    writer.put(chunk);
                }
            }
        }
        writer.finish().await?;
        Ok(size)
    }

    /// Reads `path`, or the `range` of it.
    pub async fn read(
        &self,
        path: &Path,
        range: Option<ByteRange>,
    ) -> Result<Download, WriteError> {
        if let Some(disk) = &self.local {
            return read_local(disk, path, range).await;
        }
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end)),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(path, options).await?;
        let size = result.meta.size;
        let span = result.range.clone();
        let stream = match result.payload {
            // Only the local file system gives files, and it is read above.
            GetResultPayload::File(..) => {
                return Err(WriteError::Store(object_store::Error::NotImplemented));
            }
            GetResultPayload::Stream(stream) => stream
                .map(|chunk| chunk.map_err(std::io::Error::other))
                .boxed(),
        };
        let _ = span;
        Ok(Download { stream, size })
    }

    /// Copies the bytes of one version to another path.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), WriteError> {
        let Some(disk) = &self.local else {
            return Ok(self.store.copy(from, to).await?);
        };
        let source = disk.root.join(from.as_ref());
        let target = disk.root.join(to.as_ref());
        let location = from.to_string();
        disk.run(move || {
            let dir = target.parent().unwrap_or(&target).to_owned();
            create_private_dirs(&dir)?;
            let tmp = temp_name(&target);
            let result = (|| {
                let mut input = std::fs::File::open(&source)?;
                let mut out = private_file(&tmp)?;
                std::io::copy(&mut input, &mut out)?;
                out.sync_all()?;
                std::fs::rename(&tmp, &target)?;
                sync_dir(&dir)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(|err| err.into_store(&location))
    }

    /// Deletes `path`; a missing file is not an error.
    pub async fn delete(&self, path: &Path) -> Result<(), object_store::Error> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Deletes object versions after their rows are gone, a few at a time.
    /// Failures are logged: the rows no longer point at these bytes.
    pub async fn delete_versions(&self, versions: Vec<String>) {
        futures_util::stream::iter(versions)
            .map(|version| async move {
                let path = self.object_path(&version);
                if let Err(err) = self.delete(&path).await {
                    tracing::warn!(error = %err, %path, "could not delete stored bytes");
                }
            })
            .buffer_unordered(16)
            .collect::<()>()
            .await;
    }

    /// Streams the parts of a resumable upload, in order, into `to`:
    /// one part is open at a time.
    pub async fn concat_parts(
        &self,
        upload: &str,
        parts: i32,
        to: &Path,
    ) -> Result<u64, WriteError> {
        let joined = futures_util::stream::unfold(
            Parts {
                backend: self.clone(),
                upload: upload.to_owned(),
                next: 0,
                count: parts,
                current: None,
            },
            next_part_chunk,
        );
        self.write(to, Box::pin(joined), u64::MAX).await
    }

    /// Deletes every file of this store's tenant (its whole prefix:
    /// objects and upload parts); returns how many. For a tenant being
    /// deleted.
    pub async fn delete_all(&self) -> Result<usize, object_store::Error> {
        let prefix = Path::from(self.prefix.as_str());
        let mut listed = self.store.list(Some(&prefix));
        let mut deleted = 0;
        while let Some(meta) = listed.next().await {
            let meta = meta?;
            self.store.delete(&meta.location).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Deletes every part of a resumable upload.
    pub async fn delete_parts(&self, upload: &str, parts: i32) {
        for part in 0..parts {
            let path = self.part_path(upload, part);
            if let Err(err) = self.delete(&path).await {
                tracing::warn!(error = %err, %path, "could not delete an upload part");
            }
        }
    }
}

impl Backend {
    /// Where part `part` of S3 multipart upload `upload` lives.
    pub fn s3_part_path(&self, upload: &str, part: i32) -> Path {
        Path::from(format!("{}/uploads/s3-{upload}/{part:05}", self.prefix))
    }

    /// Streams the files at `paths`, in order, into `to`: one is open at
    /// a time.
    pub async fn join_paths(&self, paths: Vec<Path>, to: &Path) -> Result<u64, WriteError> {
        let joined = futures_util::stream::unfold(
            Files {
                backend: self.clone(),
                paths: paths.into_iter(),
                current: None,
            },
            next_file_chunk,
        );
        self.write(to, Box::pin(joined), u64::MAX).await
    }
}

/// Files being read back one after the other, one open at a time.
struct Files {
    backend: Backend,
    paths: std::vec::IntoIter<Path>,
    current: Option<futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>>,
}

async fn next_file_chunk(mut files: Files) -> Option<(Result<Bytes, std::io::Error>, Files)> {
    loop {
        if let Some(stream) = &mut files.current {
            match stream.next().await {
                Some(item) => return Some((item, files)),
                None => files.current = None,
            }
        }
        let path = files.paths.next()?;
        match files.backend.read(&path, None).await {
            Ok(download) => files.current = Some(download.stream),
            Err(err) => {
                files.paths = Vec::new().into_iter();
                return Some((Err(std::io::Error::other(err)), files));
            }
        }
    }
}

/// The parts of a resumable upload being read back, one open at a time.
struct Parts {
    backend: Backend,
    upload: String,
    next: i32,
    count: i32,
    current: Option<futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>>,
}

/// The next chunk of the joined parts (a named function rather than a
/// closure, so that the stream's future is `Send` for every lifetime).
async fn next_part_chunk(mut parts: Parts) -> Option<(Result<Bytes, std::io::Error>, Parts)> {
    loop {
        if let Some(stream) = &mut parts.current {
            match stream.next().await {
                Some(item) => return Some((item, parts)),
                None => parts.current = None,
            }
        }
        if parts.next >= parts.count {
            return None;
        }
        let path = parts.backend.part_path(&parts.upload, parts.next);
        parts.next += 1;
        match parts.backend.read(&path, None).await {
            Ok(download) => parts.current = Some(download.stream),
            Err(err) => {
                parts.next = parts.count;
                return Some((Err(std::io::Error::other(err)), parts));
            }
        }
    }
}

/// `<file>.tmp-<random>`, next to `file`.
fn temp_name(file: &std::path::Path) -> PathBuf {
    file.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()))
}

/// Creates a new file readable and writable by Sovra's user only.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Removes a temporary file unless it was renamed into place.
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Off the async thread when a runtime is there.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || {
                        let _ = std::fs::remove_file(&path);
                    });
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// Streams `body` into a temporary file next to its destination: chunks
/// are received asynchronously and written in batches (each write takes
/// an IO slot only while it runs), then the file is synced, renamed into
/// place and its directory synced. The temporary file is removed if
/// anything fails or the body stops.
async fn write_local<S, E>(
    disk: &LocalDisk,
    path: &Path,
    body: S,
    limit: u64,
) -> Result<u64, WriteError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let location = path.to_string();
    let file = disk.root.join(path.as_ref());
    let dir = file.parent().unwrap_or(&disk.root).to_owned();
    let tmp = temp_name(&file);
    let out = {
        let (dir, tmp) = (dir.clone(), tmp.clone());
        disk.run(move || {
            create_private_dirs(&dir)?;
            private_file(&tmp)
        })
        .await
        .map_err(|err| err.into_store(&location))?
    };
    let mut guard = TempFile {
        path: Some(tmp.clone()),
    };
    let out = Arc::new(out);
    let mut body = body;
    let mut size: u64 = 0;
    let mut batch = BytesMut::new();
    loop {
        let next = body.next().await;
        let done = match next {
            None => true,
            Some(Err(err)) => return Err(WriteError::Body(err.to_string())),
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                if size > limit {
                    return Err(WriteError::TooLarge);
                }
                batch.extend_from_slice(&chunk);
                false
            }
        };
        if !batch.is_empty() && (done || batch.len() >= WRITE_BATCH) {
            let bytes = batch.split().freeze();
            let out = out.clone();
            disk.run(move || {
                use std::io::Write as _;
                (&*out).write_all(&bytes)
            })
            .await
            .map_err(|err| err.into_store(&location))?;
        }
        if done {
            break;
        }
    }
    disk.run(move || {
        out.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        sync_dir(&dir)
    })
    .await
    .map_err(|err| err.into_store(&location))?;
    guard.path = None;
    Ok(size)
}

/// Opens a local file (and reads it whole when small) with one IO slot;
/// larger ranges are read one chunk per slot as the client takes them.
async fn read_local(
    disk: &LocalDisk,
    path: &Path,
    range: Option<ByteRange>,
) -> Result<Download, WriteError> {
    let location = path.to_string();
    let file = disk.root.join(path.as_ref());
    let opened = disk
        .run(
            move || -> std::io::Result<(std::fs::File, u64, Option<Bytes>)> {
                let handle = std::fs::File::open(&file)?;
                let size = handle.metadata()?.len();
                let (start, end) = range.map_or((0, size), |r| (r.start, r.end.min(size)));
                let len = end.saturating_sub(start);
                if len <= READ_CHUNK as u64 {
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                    handle.read_exact_at(&mut buf, start)?;
                    return Ok((handle, size, Some(Bytes::from(buf))));
                }
                Ok((handle, size, None))
            },
        )
        .await;
    let (handle, size, whole) = opened.map_err(|err| err.into_store(&location))?;
    let stream = match whole {
        Some(bytes) => futures_util::stream::once(async move { Ok(bytes) }).boxed(),
        None => {
            let (start, end) = range.map_or((0, size), |r| (r.start, r.end.min(size)));
            read_chunks(disk.clone(), Arc::new(handle), start, end)
        }
    };
    Ok(Download { stream, size })
}

/// Reads `start..end` of a local file in large chunks, each read taking
/// an IO slot only while it runs and only when the client has taken the
/// previous chunk: memory stays at one chunk per download, and a slow
/// client holds no thread.
fn read_chunks(
    disk: LocalDisk,
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(start), move |at| {
        let disk = disk.clone();
        let file = file.clone();
        async move {
            let at = at?;
            if at >= end {
                return None;
            }
            let want = usize::try_from((end - at).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
            let read = disk
                .run(move || {
                    let mut buf = BytesMut::zeroed(want);
                    let mut filled = 0;
                    while filled < want {
                        match file.read_at(&mut buf[filled..], at + filled as u64) {
                            Ok(0) => {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "stored file is shorter than its metadata",
                                ));
                            }
                            Ok(n) => filled += n,
                            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(err) => return Err(err),
                        }
                    }
                    Ok(buf.freeze())
                })
                .await;
            match read {
                Ok(bytes) => {
                    let next = at + bytes.len() as u64;
                    Some((Ok(bytes), Some(next)))
                }
                Err(err) => Some((Err(err.into_io()), None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn stored_files_are_private_and_reads_and_copies_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let backend = Backend::open(&BackendConfig::Fs { root: root.clone() }, "t1", 2).unwrap();
        assert_eq!(mode(&root.join("t1")), 0o700);
        let data: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let path = backend.object_path("ab12");
        let written = backend
            .write(&path, futures_util::stream::iter(chunks), u64::MAX)
            .await
            .unwrap();
        assert_eq!(written, data.len() as u64);
        let file = root.join(path.as_ref());
        assert_eq!(mode(&file), 0o600, "stored files are not world-readable");
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(mode(file.parent().unwrap().parent().unwrap()), 0o700);
        let read = |range| {
            let backend = backend.clone();
            let path = path.clone();
            async move {
                let download = backend.read(&path, range).await.unwrap();
                let parts: Vec<Bytes> = download.stream.map(Result::unwrap).collect().await;
                parts.concat()
            }
        };
        assert_eq!(read(None).await, data);
        let range = ByteRange {
            start: 5,
            end: 2 * READ_CHUNK as u64 + 9,
        };
        assert_eq!(read(Some(range)).await, data[5..2 * READ_CHUNK + 9]);
        let copy = backend.object_path("cd34");
        backend.copy(&path, &copy).await.unwrap();
        assert_eq!(mode(&root.join(copy.as_ref())), 0o600);
        assert_eq!(std::fs::read(root.join(copy.as_ref())).unwrap(), data);
        // Nothing temporary is left behind.
        let names: Vec<String> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp-")), "{names:?}");
    }

    #[tokio::test]
    async fn a_refused_or_broken_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let backend = Backend::open(&BackendConfig::Fs { root: root.clone() }, "t1", 1).unwrap();
        let path = backend.object_path("ef56");
        let too_big = vec![Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 100]))];
        assert!(matches!(
            backend
                .write(&path, futures_util::stream::iter(too_big), 10)
                .await,
            Err(WriteError::TooLarge)
        ));
        let broken = vec![
            Ok(Bytes::from(vec![1u8; 100])),
            Err(std::io::Error::other("gone")),
        ];
        assert!(matches!(
            backend
                .write(&path, futures_util::stream::iter(broken), 1000)
                .await,
            Err(WriteError::Body(_))
        ));
        // The temporary files are removed on the blocking pool.
        let dir_of = root.join(path.as_ref()).parent().unwrap().to_owned();
        for _ in 0..100 {
            if std::fs::read_dir(&dir_of).unwrap().next().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a temporary file was left behind");
    }
}
