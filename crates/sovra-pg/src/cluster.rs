//! The embedded PostgreSQL cluster: found, created, started, supervised and
//! stopped by Sovra itself, so that `sovra serve` needs no database set up.
//!
//! The cluster listens on a Unix socket inside its own directory (mode 0700,
//! so only its owner reaches it) and on TCP only when a port is asked for.
//! When Sovra runs as root, PostgreSQL runs as an unprivileged system user
//! that owns the cluster directory. The server process gets a parent-death
//! signal, so that it shuts down when Sovra dies even by `kill -9`; a
//! postmaster left over from an earlier Sovra is stopped before a new one
//! starts.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown};
use rand::Rng as _;
use tokio::sync::watch;

/// The name of the superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";

/// Why the embedded cluster could not be set up, started or stopped. Each
/// message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries not found (looked in {searched}); install them (Debian/Ubuntu: `apt-get install postgresql`, or run scripts/setup.sh), set `embedded.bin_dir`, or set `database.url` to use an existing server"
    )]
    BinariesNotFound { searched: String },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed: {detail}")]
    Command { step: String, detail: String },
    #[error(
        "Sovra runs as root, and PostgreSQL refuses to: the system user `{0}` that should run it does not exist (install the postgresql package, which creates it, or set `embedded.system_user`)"
    )]
    NoSystemUser(String),
    #[error(
        "the system user `{user}` that runs PostgreSQL cannot reach {dir}: a parent directory is closed to other users; choose a data directory outside it (for example under /var/lib) or open it with `chmod o+x`"
    )]
    Unreachable { user: String, dir: PathBuf },
    #[error(
        "the cluster in {dir} was made by PostgreSQL {cluster}, but the binaries found are version {binaries}; set `embedded.bin_dir` to PostgreSQL {cluster}'s binaries"
    )]
    VersionMismatch {
        dir: PathBuf,
        cluster: String,
        binaries: String,
    },
    #[error(
        "the socket path {0} is longer than the 107 bytes Unix sockets allow; use a shorter data directory path"
    )]
    SocketPathTooLong(PathBuf),
    #[error("PostgreSQL exited during start-up; last lines of {log}:\n{tail}")]
    Exited { log: PathBuf, tail: String },
    #[error("PostgreSQL did not accept connections within {0:?}; see {1}")]
    StartTimeout(Duration, PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// The PostgreSQL server binaries Sovra found.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
    /// Full version, e.g. `15.8`.
    pub version: String,
}

impl PgBinaries {
    /// Finds `postgres` and `initdb`: in `configured` when given, else from
    /// `pg_config --bindir`, `/usr/lib/postgresql/*/bin` (newest first), and
    /// `PATH`.
    pub fn find(configured: Option<&Path>) -> Result<PgBinaries, ClusterError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = configured {
            candidates.push(dir.to_owned());
        } else {
            if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
                && out.status.success()
            {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !dir.is_empty() {
                    candidates.push(PathBuf::from(dir));
                }
            }
            let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((major, entry.path().join("bin")))
                })
                .collect();
            versioned.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path));
            }
        }
        for dir in &candidates {
            if dir.join("postgres").is_file() && dir.join("initdb").is_file() {
                let version = server_version(&dir.join("postgres"))?;
                return Ok(PgBinaries {
                    bin_dir: dir.clone(),
                    version,
                });
            }
        }
        Err(ClusterError::BinariesNotFound {
            searched: candidates
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The major version, e.g. `15`.
    pub fn major(&self) -> &str {
        self.version.split('.').next().unwrap_or(&self.version)
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

fn server_version(postgres: &Path) -> Result<String, ClusterError> {
    let out = Command::new(postgres)
        .arg("--version")
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: postgres.display().to_string(),
            source,
        })?;
    // "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or_else(|| ClusterError::Command {
            step: "postgres --version".to_owned(),
            detail: text.trim().to_owned(),
        })
}

/// How to run the embedded cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The cluster's own directory (PGDATA); created on first start.
    pub dir: PathBuf,
    /// Where PostgreSQL's own log goes.
    pub log_file: PathBuf,
    /// Server binaries directory; found automatically when `None`.
    pub bin_dir: Option<PathBuf>,
    /// Also listen on TCP 127.0.0.1 at this port.
    pub tcp_port: Option<u16>,
    /// The user that runs PostgreSQL when Sovra is root.
    pub system_user: String,
    pub start_timeout: Duration,
    /// Extra `postgresql.conf` settings passed with `-c`.
    pub settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Options for a cluster in `dir` with Sovra's defaults.
    pub fn new(dir: impl Into<PathBuf>) -> ClusterOptions {
        let dir = dir.into();
        let log_file = dir.with_extension("log");
        ClusterOptions {
            dir,
            log_file,
            bin_dir: None,
            tcp_port: None,
            system_user: SUPERUSER.to_owned(),
            start_timeout: Duration::from_secs(60),
            settings: Vec::new(),
        }
    }
}

/// A running embedded cluster. Stop it with [`Cluster::stop`]; if it is
/// dropped instead, PostgreSQL is told to shut down (fast) and not waited on.
#[derive(Debug)]
pub struct Cluster {
    options: ClusterOptions,
    binaries: PgBinaries,
    port: u16,
    pid: Pid,
    password: String,
    exited: watch::Receiver<bool>,
    stopped: bool,
    created: bool,
}

/// The socket port when no TCP port is configured; it only names the socket
/// file inside the cluster directory.
const SOCKET_PORT: u16 = 5432;
const PASSWORD_FILE: &str = "sovra-password";

impl Cluster {
    /// Creates the cluster when its directory is new, stops a postmaster
    /// left running by an earlier Sovra, starts PostgreSQL, and waits until
    /// it accepts connections.
    pub async fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let binaries = PgBinaries::find(options.bin_dir.as_deref())?;
        let run_as = run_as_user(&options.system_user)?;
        let port = options.tcp_port.unwrap_or(SOCKET_PORT);
        let socket = options.dir.join(format!(".s.PGSQL.{port}"));
        if socket.as_os_str().len() > 107 {
            return Err(ClusterError::SocketPathTooLong(socket));
        }

        let created = !options.dir.join("PG_VERSION").exists();
        let password = if created {
            init_cluster(&options, &binaries, run_as.as_ref())?
        } else {
            check_version(&options.dir, &binaries)?;
            fs::read_to_string(options.dir.join(PASSWORD_FILE))
                .map(|text| text.trim().to_owned())
                .unwrap_or_default()
        };
        if let Some(user) = &run_as {
            check_reachable(&options.dir, user)?;
        }
        stop_orphan(&options.dir).await;

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&options.log_file)
            .map_err(io_err(format!("opening {}", options.log_file.display())))?;
        fs::set_permissions(&options.log_file, fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("protecting {}", options.log_file.display())))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);

        let mut command = Command::new(binaries.program("postgres"));
        command.arg("-D").arg(&options.dir);
        let listen = if options.tcp_port.is_some() {
            "127.0.0.1"
        } else {
            ""
        };
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), listen.into()),
            ("port".into(), port.to_string()),
            (
                "unix_socket_directories".into(),
                options.dir.display().to_string(),
            ),
            ("unix_socket_permissions".into(), "0700".into()),
            ("wal_level".into(), "logical".into()),
            // One change-feed slot per tenant with realtime subscribers,
            // and a few connections per started tenant (#14); each feed
            // streams its slot over a replication connection (a walsender).
            ("max_wal_senders".into(), "128".into()),
            ("max_replication_slots".into(), "128".into()),
            ("max_connections".into(), "500".into()),
        ];
        settings.extend(options.settings.iter().cloned());
        for (name, value) in &settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))?;
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: Ctrl-C in a terminal reaches Sovra,
            // which drains requests before it stops PostgreSQL.
            .process_group(0);
        if let Some(user) = &run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        set_parent_death_signal(&mut command);

        let (pid, exited) = supervise(command, &binaries)?;
        let cluster = Cluster {
            options,
            binaries,
            port,
            pid,
            password,
            exited,
            stopped: false,
            created,
        };
        cluster.wait_ready(log_offset).await?;
        tracing::info!(
            pid = pid.as_raw(),
            dir = %cluster.options.dir.display(),
            version = %cluster.binaries.version,
            created,
            "embedded postgresql is ready"
        );
        Ok(cluster)
    }

    async fn wait_ready(&self, log_offset: u64) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.options.start_timeout;
        let mut exited = self.exited.clone();
        loop {
            if *exited.borrow() {
                return Err(ClusterError::Exited {
                    log: self.options.log_file.clone(),
                    tail: log_tail(&self.options.log_file, log_offset),
                });
            }
            let mut config = self.connect_config(SUPERUSER, "postgres");
            config.connect_timeout(Duration::from_secs(2));
            if let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await {
                drop(client);
                let _ = connection.await;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::StartTimeout(
                    self.options.start_timeout,
                    self.options.log_file.clone(),
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(25), exited.changed()).await;
        }
    }

    /// Connection settings for `user` on `dbname` over the Unix socket.
    pub fn connect_config(&self, user: &str, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.options.dir)
            .port(self.port)
            .user(user)
            .dbname(dbname)
            .application_name("sovra");
        config
    }

    /// The superuser's password, for TCP connections.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Whether this start created the cluster (ran `initdb`).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Copies this running cluster into the new directory `dir` with
    /// `pg_basebackup -R` (as the user PostgreSQL runs as), so that
    /// [`Cluster::start`] on `dir` starts a streaming standby of it (a read
    /// replica). For tests and benchmarks of read replicas.
    pub fn base_backup(&self, dir: &Path) -> Result<(), ClusterError> {
        let run_as = run_as_user(&self.options.system_user)?;
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("protecting {}", dir.display())))?;
        if let Some(user) = &run_as {
            chown(dir, Some(user.uid), Some(user.gid)).map_err(|err| {
                io_err(format!("giving {} to {}", dir.display(), user.name))(err.into())
            })?;
        }
        let mut command = Command::new(self.binaries.program("pg_basebackup"));
        command
            .arg("-D")
            .arg(dir)
            .arg("-R")
            .arg("-X")
            .arg("stream")
            .arg("--checkpoint=fast")
            .arg("-h")
            .arg(&self.options.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(SUPERUSER)
            .stdin(Stdio::null())
            .env_remove("PGDATA");
        if let Some(user) = &run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let out = command.output().map_err(|source| ClusterError::Spawn {
            program: self.binaries.program("pg_basebackup").display().to_string(),
            source,
        })?;
        if !out.status.success() {
            return Err(ClusterError::Command {
                step: "pg_basebackup".to_owned(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        // The primary's socket lock names the primary's postmaster.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Whether the postmaster is still running.
    pub fn is_running(&self) -> bool {
        !*self.exited.borrow()
    }

    /// Resolves when the postmaster exits (on its own or after [`Cluster::stop`]).
    pub async fn exited(&self) {
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|done| *done).await;
    }

    /// Shuts PostgreSQL down (fast: open transactions are rolled back) and
    /// waits until it has exited; escalates to immediate shutdown and then
    /// SIGKILL if it takes longer than `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        self.stopped = true;
        let mut exited = self.exited.clone();
        for (signal, wait) in [
            (Signal::SIGINT, timeout),
            (Signal::SIGQUIT, Duration::from_secs(5)),
            (Signal::SIGKILL, Duration::from_secs(5)),
        ] {
            if *exited.borrow() {
                break;
            }
            let _ = kill(self.pid, signal);
            if tokio::time::timeout(wait, exited.wait_for(|done| *done))
                .await
                .is_ok()
            {
                break;
            }
            tracing::warn!(?signal, "embedded postgresql did not stop in time");
        }
        tracing::info!("embedded postgresql stopped");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped && !*self.exited.borrow() {
            let _ = kill(self.pid, Signal::SIGINT);
        }
    }
}

/// Starts `command` on a thread of its own that lives as long as the child
/// does. The parent-death signal fires when the thread that forked the child
/// ends, so forking from a short-lived (test or worker) thread would kill
/// PostgreSQL early; this thread ends only after the child has exited.
fn supervise(
    mut command: Command,
    binaries: &PgBinaries,
) -> Result<(Pid, watch::Receiver<bool>), ClusterError> {
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = watch::channel(false);
    let program = binaries.program("postgres").display().to_string();
    std::thread::Builder::new()
        .name("postgres-supervisor".to_owned())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
                let _ = pid_tx.send(Ok(pid));
                let status = child.wait();
                tracing::debug!(?status, "embedded postgresql exited");
                let _ = exit_tx.send(true);
            }
            Err(err) => {
                let _ = pid_tx.send(Err(err));
                let _ = exit_tx.send(true);
            }
        })
        .map_err(io_err("starting the postgres supervisor thread"))?;
    let pid = pid_rx
        .recv()
        .map_err(|_| ClusterError::Command {
            step: "starting postgres".to_owned(),
            detail: "the supervisor thread ended early".to_owned(),
        })?
        .map_err(|source| ClusterError::Spawn { program, source })?;
    Ok((pid, exit_rx))
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl(2), which is async-signal-safe and touches no memory of the
    // parent. It runs after the user switch, which would otherwise clear it.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The user PostgreSQL must run as: `Some` only when Sovra runs as root.
fn run_as_user(name: &str) -> Result<Option<User>, ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name(name) {
        Ok(Some(user)) if !user.uid.is_root() => Ok(Some(user)),
        _ => Err(ClusterError::NoSystemUser(name.to_owned())),
    }
}

/// Every directory above the cluster must let the system user through.
fn check_reachable(dir: &Path, user: &User) -> Result<(), ClusterError> {
    let mut current = dir.parent();
    while let Some(path) = current {
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.mode();
            let passes = mode & 0o001 != 0
                || (meta.uid() == user.uid.as_raw() && mode & 0o100 != 0)
                || (meta.gid() == user.gid.as_raw() && mode & 0o010 != 0);
            if !passes {
                return Err(ClusterError::Unreachable {
                    user: user.name.clone(),
                    dir: path.to_owned(),
                });
            }
        }
        current = path.parent();
    }
    Ok(())
}

fn init_cluster(
    options: &ClusterOptions,
    binaries: &PgBinaries,
    run_as: Option<&User>,
) -> Result<String, ClusterError> {
    let dir = &options.dir;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
    }
    if let Some(user) = run_as {
        check_reachable(dir, user)?;
    }
    // A directory left by an interrupted initdb has no PG_VERSION; start over.
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err(format!("clearing {}", dir.display())))?;
    }
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("protecting {}", dir.display())))?;

    let password: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    // initdb reads the password from a file; it lives next to the cluster
    // only while initdb runs.
    let pwfile = dir.with_extension("pwfile");
    {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode_0600()
            .open(&pwfile)
            .map_err(io_err(format!("writing {}", pwfile.display())))?;
        writeln!(file, "{password}").map_err(io_err("writing the password file"))?;
    }
    if let Some(user) = run_as {
        chown(dir, Some(user.uid), Some(user.gid)).map_err(|err| {
            io_err(format!("giving {} to {}", dir.display(), user.name))(err.into())
        })?;
        chown(&pwfile, Some(user.uid), Some(user.gid)).map_err(|err| {
            io_err(format!("giving {} to {}", pwfile.display(), user.name))(err.into())
        })?;
    }

    let mut command = Command::new(binaries.program("initdb"));
    command
        .arg("-D")
        .arg(dir)
        .arg("-U")
        .arg(SUPERUSER)
        .arg("--encoding=UTF8")
        .arg("--locale=C")
        .arg("--auth-local=trust")
        .arg("--auth-host=scram-sha-256")
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .env_remove("PGDATA");
    if let Some(user) = run_as {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    tracing::info!(dir = %dir.display(), version = %binaries.version, "creating the embedded postgresql cluster (initdb)");
    let out = command.output().map_err(|source| ClusterError::Spawn {
        program: binaries.program("initdb").display().to_string(),
        source,
    });
    let _ = fs::remove_file(&pwfile);
    let out = out?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(dir);
        return Err(ClusterError::Command {
            step: "initdb".to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    // Kept for TCP clients (embedded.port); readable by the cluster's owner
    // only, like the rest of the directory.
    let stored = dir.join(PASSWORD_FILE);
    fs::write(&stored, format!("{password}\n"))
        .map_err(io_err(format!("writing {}", stored.display())))?;
    fs::set_permissions(&stored, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("protecting {}", stored.display())))?;
    if let Some(user) = run_as {
        let _ = chown(&stored, Some(user.uid), Some(user.gid));
    }
    Ok(password)
}

trait OpenOptionsExt600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsExt600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn check_version(dir: &Path, binaries: &PgBinaries) -> Result<(), ClusterError> {
    let cluster = fs::read_to_string(dir.join("PG_VERSION"))
        .map_err(io_err(format!("reading {}/PG_VERSION", dir.display())))?;
    let cluster = cluster.trim();
    if cluster != binaries.major() {
        return Err(ClusterError::VersionMismatch {
            dir: dir.to_owned(),
            cluster: cluster.to_owned(),
            binaries: binaries.version.clone(),
        });
    }
    Ok(())
}

/// A postmaster still running on this cluster was left by an earlier Sovra
/// (the caller holds the data directory's lock, so no live Sovra owns it):
/// stop it so that this start owns its PostgreSQL. A stale `postmaster.pid`
/// whose process is gone is left to PostgreSQL, which removes it.
async fn stop_orphan(dir: &Path) {
    // A postmaster that is already shutting down (its Sovra was killed) may
    // have removed `postmaster.pid` while it still holds the socket's lock
    // file, which would refuse the new one: look at both.
    let mut pids: Vec<Pid> = postmaster_pid(dir).into_iter().collect();
    pids.extend(socket_lock_pids(dir));
    // One lock file per port may name the same postmaster again.
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        stop_postmaster(pid, dir).await;
    }
}

/// The processes named by the socket lock files (`.s.PGSQL.<port>.lock`)
/// in `dir`, where the embedded cluster puts its socket.
fn socket_lock_pids(dir: &Path) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(".s.PGSQL.") && name.ends_with(".lock")
        })
        .filter_map(|entry| {
            let text = fs::read_to_string(entry.path()).ok()?;
            let pid: i32 = text.lines().next()?.trim().parse().ok()?;
            (pid > 0).then(|| Pid::from_raw(pid))
        })
        .collect()
}

/// Stops `pid` if it is a postgres serving `dir`: fast shutdown, then
/// quit, then kill, waiting for it to go after each.
async fn stop_postmaster(pid: Pid, dir: &Path) {
    if !is_postgres(pid, dir) {
        return;
    }
    tracing::warn!(
        pid = pid.as_raw(),
        "stopping a postgresql left running by an earlier sovra"
    );
    for (signal, wait) in [
        (Signal::SIGINT, Duration::from_secs(30)),
        (Signal::SIGQUIT, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        let _ = kill(pid, signal);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !is_postgres(pid, dir) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn postmaster_pid(dir: &Path) -> Option<Pid> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    (pid > 0).then(|| Pid::from_raw(pid))
}

/// Whether `pid` is a live (not zombie) postgres process serving `dir`.
fn is_postgres(pid: Pid, dir: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.as_raw()));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    if state == Some("Z") {
        return false;
    }
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("postgres") && cmdline.contains(&*dir.to_string_lossy())
}

fn log_tail(path: &Path, offset: u64) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(text.len());
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
