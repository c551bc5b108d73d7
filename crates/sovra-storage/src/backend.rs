//! Where the bytes live: `object_store` over the local filesystem (the
//! embedded default, under the data directory) or an S3-compatible store.
//!
//! Bytes are kept under a random version id, never under the object's
//! name: `<tenant>/objects/<v0v1>/<version>` for objects and
//! `<tenant>/uploads/<upload id>/<part>` for resumable uploads in progress.
//! An upload writes a new version and becomes visible only when its row in
//! `storage.objects` names that version, in the same commit that replaces
//! the old one; a move is a metadata change; names cannot escape anything.

use std::path::PathBuf;
use std::sync::Arc;

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
    /// Local stores sync files to disk before a write is acknowledged.
    local_root: Option<PathBuf>,
}

impl Backend {
    /// Opens the store for `tenant`.
    pub fn open(config: &BackendConfig, tenant: &str) -> Result<Backend, object_store::Error> {
        match config {
            BackendConfig::Fs { root } => {
                std::fs::create_dir_all(root).map_err(|err| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(err),
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(root)?
                    .with_automatic_cleanup(true);
                Ok(Backend {
                    store: Arc::new(store),
                    prefix: tenant.to_owned(),
                    local_root: Some(root.clone()),
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
                    local_root: None,
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
        if let Some(root) = &self.local_root {
            return write_local(root.join(path.as_ref()), body, limit).await;
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
        self.sync(path).await;
        Ok(size)
    }

    /// On the local disk, flushes a written file so that an acknowledged
    /// upload survives a power cut (object stores do this themselves).
    async fn sync(&self, path: &Path) {
        let Some(root) = &self.local_root else { return };
        let file = root.join(path.as_ref());
        let result = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file).and_then(|f| f.sync_all())
        })
        .await;
        if let Ok(Err(err)) = result {
            tracing::warn!(error = %err, "could not sync a stored file");
        }
    }

    /// Reads `path`, or the `range` of it.
    pub async fn read(
        &self,
        path: &Path,
        range: Option<ByteRange>,
    ) -> Result<Download, object_store::Error> {
        if let Some(root) = &self.local_root {
            return read_local(root.join(path.as_ref()), path, range).await;
        }
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end)),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(path, options).await?;
        let size = result.meta.size;
        let span = result.range.clone();
        let stream = match result.payload {
            GetResultPayload::File(file, _) => read_file(file, span.start, span.end),
            GetResultPayload::Stream(stream) => stream
                .map(|chunk| chunk.map_err(std::io::Error::other))
                .boxed(),
        };
        Ok(Download { stream, size })
    }

    /// Copies the bytes of one version to another path.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), object_store::Error> {
        self.store.copy(from, to).await?;
        self.sync(to).await;
        Ok(())
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

    /// Streams the parts of a resumable upload, in order, into `to`.
    pub async fn concat_parts(
        &self,
        upload: &str,
        parts: i32,
        to: &Path,
    ) -> Result<u64, WriteError> {
        let mut streams = Vec::new();
        for part in 0..parts {
            let path = self.part_path(upload, part);
            streams.push(self.read(&path, None).await?.stream);
        }
        let joined = futures_util::stream::iter(streams).flatten();
        self.write(to, Box::pin(joined), u64::MAX).await
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

/// What the request side hands the writer thread of a local upload.
enum Chunk {
    Data(Bytes),
    Finish,
}

/// Streams `body` into a temporary file next to `file` on one blocking
/// thread (chunks are written as they arrive, without copies or buffering
/// beyond a few in flight), then syncs it and renames it into place. The
/// temporary file is removed if anything fails or the body stops.
async fn write_local<S, E>(file: PathBuf, body: S, limit: u64) -> Result<u64, WriteError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(16);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            loop {
                match rx.blocking_recv() {
                    Some(Chunk::Data(bytes)) => out.write_all(&bytes)?,
                    Some(Chunk::Finish) => break,
                    None => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::Interrupted,
                            "upload abandoned",
                        ));
                    }
                }
            }
            out.sync_all()?;
            std::fs::rename(&tmp, &file)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    });
    let mut body = body;
    let mut size: u64 = 0;
    let outcome = loop {
        match body.next().await {
            None => break Ok(()),
            Some(Err(err)) => break Err(WriteError::Body(err.to_string())),
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                if size > limit {
                    break Err(WriteError::TooLarge);
                }
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    break Ok(()); // the writer failed; its error follows
                }
            }
        }
    };
    if outcome.is_ok() {
        let _ = tx.send(Chunk::Finish).await;
    }
    drop(tx);
    let written = writer.await.map_err(|err| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(err),
    })?;
    outcome?;
    written.map_err(|err| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(err),
    })?;
    Ok(size)
}

/// Opens a local file (and reads it whole when small) in one blocking task.
async fn read_local(
    file: PathBuf,
    path: &Path,
    range: Option<ByteRange>,
) -> Result<Download, object_store::Error> {
    let location = path.to_string();
    let opened = tokio::task::spawn_blocking(
        move || -> std::io::Result<(std::fs::File, u64, Option<Bytes>)> {
            use std::io::{Read as _, Seek as _, SeekFrom};
            let mut handle = std::fs::File::open(&file)?;
            let size = handle.metadata()?.len();
            let (start, end) = range.map_or((0, size), |r| (r.start, r.end.min(size)));
            let len = end.saturating_sub(start);
            if len <= READ_CHUNK as u64 {
                handle.seek(SeekFrom::Start(start))?;
                let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                handle.read_exact(&mut buf)?;
                return Ok((handle, size, Some(Bytes::from(buf))));
            }
            Ok((handle, size, None))
        },
    )
    .await
    .map_err(|err| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(err),
    })?;
    let (handle, size, whole) = opened.map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            object_store::Error::NotFound {
                path: location,
                source: Box::new(err),
            }
        } else {
            object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(err),
            }
        }
    })?;
    let stream = match whole {
        Some(bytes) => futures_util::stream::once(async move { Ok(bytes) }).boxed(),
        None => {
            let (start, end) = range.map_or((0, size), |r| (r.start, r.end.min(size)));
            read_file(handle, start, end)
        }
    };
    Ok(Download { stream, size })
}

/// Reads a local file range on one blocking thread in large chunks, handed
/// over through a small channel: memory stays at a few chunks per download.
fn read_file(
    file: std::fs::File,
    start: u64,
    end: u64,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut file = file;
        if let Err(err) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(err));
            return;
        }
        let mut left = end.saturating_sub(start);
        while left > 0 {
            let want = usize::try_from(left.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
            let mut buf = BytesMut::zeroed(want);
            match file.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stored file is shorter than its metadata",
                    )));
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(buf.freeze())).is_err() {
                        return; // the client went away
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}
