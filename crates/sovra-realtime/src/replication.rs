//! A logical replication connection: PostgreSQL's walsender streams a
//! slot's decoded changes as they commit (`START_REPLICATION ... LOGICAL`),
//! where `pg_logical_slot_peek_binary_changes` would decode the slot's WAL
//! again from its restart point on every poll.
//!
//! tokio-postgres does not speak the replication protocol, so this is a
//! small client of its own over the same connection settings: a socket
//! (Unix or TCP, no TLS, as every Sovra connection), the startup message
//! with `replication=database`, authentication (trust, cleartext, MD5,
//! SCRAM-SHA-256 through `postgres-protocol`), then `CopyBoth`. The bytes
//! are framed and read by `sovra_realtime_proto::replication` (pure).
//!
//! [`Pump`] reads the stream on a task of its own and hands the messages on
//! through a bounded channel, so that reading (and PostgreSQL's decoding)
//! goes on while a batch is being delivered. It reports the position the
//! consumer confirmed (a standby status update) when told to, when the
//! server asks, and every [`STATUS_EVERY`], so that the server never takes
//! a busy consumer for a dead one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postgres_protocol::authentication::{md5_hash, sasl};
use sovra_pg::tokio_postgres::{self, config::Host};
use sovra_realtime_proto::replication::{self as proto, Auth, Backend, ServerError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc};

/// How often the position is reported when nothing else prompts it
/// (PostgreSQL's `wal_sender_timeout` is 60 s by default).
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Bytes read from the socket at a time.
const READ_SIZE: usize = 256 * 1024;

/// Why a replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("replication connection: the server answered {0}")]
    Server(ServerError),
    #[error(transparent)]
    Protocol(#[from] proto::ProtocolError),
    #[error("replication connection: {0}")]
    Unsupported(String),
}

impl ReplicationError {
    /// PostgreSQL (or what stands in front of it) refuses replication
    /// connections for this role: its rights, pg_hba, the walsender limit
    /// (`max_wal_senders`), a connection pooler. Not a passing failure.
    pub fn refused(&self) -> bool {
        match self {
            ReplicationError::Server(err) => {
                err.code.starts_with("28")
                    || matches!(err.code.as_str(), "42501" | "53300" | "08P01" | "0A000")
            }
            ReplicationError::Unsupported(_) => true,
            ReplicationError::Io(_) | ReplicationError::Protocol(_) => false,
        }
    }

    /// Another connection still streams the slot (a consumer that just
    /// went away, whose walsender has not yet ended).
    pub fn slot_in_use(&self) -> bool {
        matches!(self, ReplicationError::Server(err) if err.code == "55006")
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Unix(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Unix(s) => s.write_all(bytes).await,
        }
    }
}

/// A message of the replication stream, as the consumer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One `pgoutput` message.
    Data(Vec<u8>),
    /// The server has sent everything up to `wal_end`.
    Keepalive { wal_end: u64 },
}

/// An open replication connection (after startup and authentication).
pub struct ReplicationConnection {
    stream: Stream,
    buf: Vec<u8>,
    /// Keepalives that asked for an answer since the last read.
    reply_wanted: bool,
    /// Stream messages read and not yet taken ([`Self::take_items`]).
    items: Vec<Item>,
    /// Bytes of `pgoutput` data in `items`.
    item_bytes: usize,
}

async fn open(config: &tokio_postgres::Config) -> Result<Stream, ReplicationError> {
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        return Err(ReplicationError::Unsupported(
            "the database URL names no host".to_owned(),
        ));
    }
    let ports = config.get_ports();
    let mut last = None;
    for (i, host) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let opened = match host {
            Host::Unix(dir) => {
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                    .await
                    .map(Stream::Unix)
            }
            Host::Tcp(name) => {
                let stream = match config.get_hostaddrs().get(i) {
                    Some(addr) => tokio::net::TcpStream::connect((*addr, port)).await,
                    None => tokio::net::TcpStream::connect((name.as_str(), port)).await,
                };
                stream.map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                })
            }
        };
        match opened {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(last.map_or_else(
        || ReplicationError::Unsupported("no host to connect to".to_owned()),
        ReplicationError::Io,
    ))
}

impl ReplicationConnection {
    /// Connects with `config`'s host, port, user, password and database as
    /// a logical replication connection, and authenticates.
    pub async fn connect(
        config: &tokio_postgres::Config,
    ) -> Result<ReplicationConnection, ReplicationError> {
        let wait = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        tokio::time::timeout(wait, ReplicationConnection::connect_now(config))
            .await
            .map_err(|_| {
                ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting timed out",
                ))
            })?
    }

    async fn connect_now(
        config: &tokio_postgres::Config,
    ) -> Result<ReplicationConnection, ReplicationError> {
        let user = config.get_user().ok_or_else(|| {
            ReplicationError::Unsupported("the database URL names no user".into())
        })?;
        let database = config.get_dbname().unwrap_or(user);
        let mut params = vec![
            ("user", user),
            ("database", database),
            ("replication", "database"),
            ("application_name", "sovra_realtime"),
            ("client_encoding", "UTF8"),
        ];
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        let mut conn = ReplicationConnection {
            stream: open(config).await?,
            buf: Vec::with_capacity(READ_SIZE),
            reply_wanted: false,
            items: Vec::new(),
            item_bytes: 0,
        };
        conn.stream.write_all(&proto::startup(&params)?).await?;
        let password = config.get_password();
        let need_password = || {
            password.ok_or_else(|| {
                ReplicationError::Unsupported("the server asks for a password; none is set".into())
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let reply = match conn.message().await? {
                Owned::Auth(Auth::Ok) => break,
                Owned::Auth(Auth::Cleartext) => proto::password(need_password()?),
                Owned::Auth(Auth::Md5(salt)) => {
                    proto::password(md5_hash(user.as_bytes(), need_password()?, salt).as_bytes())
                }
                Owned::Sasl(mechanisms) => {
                    if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(ReplicationError::Unsupported(format!(
                            "no supported SASL mechanism among {mechanisms:?}"
                        )));
                    }
                    let state = sasl::ScramSha256::new(
                        need_password()?,
                        sasl::ChannelBinding::unsupported(),
                    );
                    let out = proto::sasl_initial(sasl::SCRAM_SHA_256, state.message());
                    scram = Some(state);
                    out
                }
                Owned::SaslContinue(data) => {
                    let state = scram
                        .as_mut()
                        .ok_or(proto::ProtocolError("SASL out of order"))?;
                    state.update(&data)?;
                    proto::sasl_response(state.message())
                }
                Owned::SaslFinal(data) => {
                    let state = scram
                        .as_mut()
                        .ok_or(proto::ProtocolError("SASL out of order"))?;
                    state.finish(&data)?;
                    continue;
                }
                Owned::Auth(Auth::Unsupported(method)) => {
                    return Err(ReplicationError::Unsupported(format!(
                        "authentication method {method} is not supported"
                    )));
                }
                Owned::Error(err) => return Err(ReplicationError::Server(err)),
                _ => continue,
            };
            conn.stream.write_all(&reply).await?;
        }
        loop {
            match conn.message().await? {
                Owned::Ready => return Ok(conn),
                Owned::Error(err) => return Err(ReplicationError::Server(err)),
                _ => {}
            }
        }
    }

    /// Starts streaming `slot` from `start` (0: from the position the slot's
    /// consumer last confirmed) with the `pgoutput` publications given.
    pub async fn start(
        &mut self,
        slot: &str,
        start: u64,
        publications: &[&str],
    ) -> Result<(), ReplicationError> {
        let command = proto::start_replication(slot, start, publications);
        self.stream.write_all(&proto::query(&command)?).await?;
        loop {
            match self.message().await? {
                Owned::CopyBoth => return Ok(()),
                Owned::Error(err) => return Err(ReplicationError::Server(err)),
                _ => {}
            }
        }
    }

    /// Runs a replication command that answers without streaming (e.g.
    /// `IDENTIFY_SYSTEM`), until the server is ready again.
    pub async fn command(&mut self, command: &str) -> Result<(), ReplicationError> {
        self.stream.write_all(&proto::query(command)?).await?;
        let mut failed = None;
        loop {
            match self.message().await? {
                Owned::Ready => {
                    return failed.map_or(Ok(()), |err| Err(ReplicationError::Server(err)));
                }
                Owned::Error(err) => failed = Some(err),
                _ => {}
            }
        }
    }

    /// The next message outside the stream (startup, commands).
    async fn message(&mut self) -> Result<Owned, ReplicationError> {
        loop {
            if let Some((message, used)) = proto::backend(&self.buf)? {
                let owned = Owned::from(message);
                self.buf.drain(..used);
                return Ok(owned);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ReplicationError> {
        self.buf.reserve(READ_SIZE);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(ReplicationError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// Reads once from the socket and keeps the whole stream messages it
    /// completed (see [`Self::take_items`]). Cancel-safe: the only await is
    /// the read.
    pub async fn read_items(&mut self) -> Result<(), ReplicationError> {
        self.fill().await?;
        let mut at = 0;
        while let Some((message, used)) = proto::backend(&self.buf[at..])? {
            match message {
                Backend::CopyData(payload) => match proto::replication(payload)? {
                    proto::Replication::XLogData { data, .. } => {
                        self.item_bytes += data.len();
                        self.items.push(Item::Data(data.to_vec()));
                    }
                    proto::Replication::Keepalive {
                        wal_end,
                        reply_requested,
                        ..
                    } => {
                        self.reply_wanted |= reply_requested;
                        self.items.push(Item::Keepalive { wal_end });
                    }
                },
                Backend::Error(err) => return Err(ReplicationError::Server(err)),
                Backend::CopyDone => {
                    return Err(ReplicationError::Unsupported(
                        "the server ended the replication stream".to_owned(),
                    ));
                }
                _ => {}
            }
            at += used;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// The stream messages read so far, in order.
    pub fn take_items(&mut self) -> Vec<Item> {
        self.item_bytes = 0;
        std::mem::take(&mut self.items)
    }

    /// Reports that WAL up to `flushed` is durably handled.
    pub async fn send_status(&mut self, flushed: u64) -> Result<(), ReplicationError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let status = proto::standby_status(flushed, proto::pg_time(now), false);
        self.stream.write_all(&proto::copy_data(&status)).await?;
        Ok(())
    }
}

/// A backend message outside the stream, owned (it outlives the buffer).
enum Owned {
    Auth(Auth<'static>),
    Sasl(Vec<String>),
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    Error(ServerError),
    Ready,
    CopyBoth,
    Other,
}

impl From<Backend<'_>> for Owned {
    fn from(message: Backend<'_>) -> Owned {
        match message {
            Backend::Auth(Auth::Ok) => Owned::Auth(Auth::Ok),
            Backend::Auth(Auth::Cleartext) => Owned::Auth(Auth::Cleartext),
            Backend::Auth(Auth::Md5(salt)) => Owned::Auth(Auth::Md5(salt)),
            Backend::Auth(Auth::Unsupported(n)) => Owned::Auth(Auth::Unsupported(n)),
            Backend::Auth(Auth::Sasl(m)) => Owned::Sasl(m.into_iter().map(str::to_owned).collect()),
            Backend::Auth(Auth::SaslContinue(d)) => Owned::SaslContinue(d.to_vec()),
            Backend::Auth(Auth::SaslFinal(d)) => Owned::SaslFinal(d.to_vec()),
            Backend::Error(err) => Owned::Error(err),
            Backend::ReadyForQuery(_) => Owned::Ready,
            Backend::CopyBothResponse => Owned::CopyBoth,
            _ => Owned::Other,
        }
    }
}

/// The position the consumer has durably handled, shared with the
/// [`Pump`] that reports it.
#[derive(Default)]
pub struct Confirmed {
    lsn: AtomicU64,
    changed: Notify,
}

impl Confirmed {
    /// Everything up to `lsn` is handled: report it now.
    pub fn advance(&self, lsn: u64) {
        if self.lsn.fetch_max(lsn, Ordering::AcqRel) < lsn {
            self.changed.notify_one();
        }
    }

    pub fn get(&self) -> u64 {
        self.lsn.load(Ordering::Acquire)
    }
}

/// Reads a started stream on a task of its own; the task (and with it the
/// connection) ends when the pump is dropped.
pub struct Pump {
    pub items: mpsc::Receiver<Vec<Item>>,
    task: tokio::task::JoinHandle<Result<(), ReplicationError>>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pump {
    /// Hands `conn`'s stream on: everything read while the consumer is
    /// busy goes into one chunk (up to about `chunk_bytes` of `pgoutput`
    /// data, then reading waits), so a consumer that falls behind takes
    /// larger batches. Reports `confirmed` as it moves.
    pub fn start(
        conn: ReplicationConnection,
        confirmed: Arc<Confirmed>,
        chunk_bytes: usize,
    ) -> Pump {
        let (tx, items) = mpsc::channel(1);
        let task = tokio::spawn(pump(conn, confirmed, tx, chunk_bytes.max(1)));
        Pump { items, task }
    }

    /// Why the stream ended (once `items` is closed).
    pub async fn error(&mut self) -> ReplicationError {
        match (&mut self.task).await {
            Ok(Err(err)) => err,
            Ok(Ok(())) => ReplicationError::Unsupported("the replication stream ended".to_owned()),
            Err(err) => {
                ReplicationError::Unsupported(format!("the replication reader failed: {err}"))
            }
        }
    }
}

async fn pump(
    mut conn: ReplicationConnection,
    confirmed: Arc<Confirmed>,
    tx: mpsc::Sender<Vec<Item>>,
    chunk_bytes: usize,
) -> Result<(), ReplicationError> {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let waiting = !conn.items.is_empty();
        let room = conn.item_bytes < chunk_bytes;
        tokio::select! {
            biased;
            _ = confirmed.changed.notified() => conn.send_status(confirmed.get()).await?,
            _ = tick.tick() => conn.send_status(confirmed.get()).await?,
            // The consumer is free: hand on what was read.
            permit = tx.reserve(), if waiting => match permit {
                Ok(permit) => permit.send(conn.take_items()),
                // The consumer went away.
                Err(_) => return Ok(()),
            },
            // Read on while the consumer is busy, up to the chunk's size.
            read = conn.read_items(), if room => {
                read?;
                if std::mem::take(&mut conn.reply_wanted) {
                    conn.send_status(confirmed.get()).await?;
                }
            }
        }
    }
}
