//! The data directory: one place for everything Sovra keeps on disk, owned
//! by one Sovra process at a time.

use std::fs;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {dir} is in use by another Sovra (pid {pid}); stop it first or choose another `data_dir`"
    )]
    InUse { dir: PathBuf, pid: String },
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An opened and locked data directory. The lock is an `flock` on
/// `sovra.lock`, so the kernel releases it when the process dies, even by
/// `kill -9`.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: Flock<fs::File>,
}

impl DataDir {
    /// Creates the directory (mode 0700) when missing and takes its lock.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io {
            dir: root.to_owned(),
            source,
        };
        fs::create_dir_all(root).map_err(io)?;
        let root = root.canonicalize().map_err(io)?;
        let io = |source| DataDirError::Io {
            dir: root.clone(),
            source,
        };
        let meta = fs::metadata(&root).map_err(io)?;
        if meta.permissions().mode() & 0o777 != 0o700 {
            // Keys and stored files live here: nobody else may list it or
            // pass through it (see `let_group_through` for the embedded
            // cluster's user when Sovra is root).
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let path = root.join("sovra.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(DataDirError::InUse {
                    dir: root,
                    pid: pid.trim().to_owned(),
                });
            }
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(DataDir { root, _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lets members of group `gid` (and nobody else) pass through the
    /// directory, mode 0710: when Sovra is root, the embedded cluster runs
    /// as an unprivileged system user that must reach its own directory
    /// inside. Nothing else of the data directory is opened to it.
    pub fn let_group_through(&self, gid: nix::unistd::Gid) -> Result<(), DataDirError> {
        let io = |source| DataDirError::Io {
            dir: self.root.clone(),
            source,
        };
        nix::unistd::chown(&self.root, None, Some(gid)).map_err(|err| io(err.into()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o710)).map_err(io)
    }

    /// The embedded cluster's directory.
    pub fn pg_dir(&self) -> PathBuf {
        self.root.join("pg")
    }

    /// The embedded cluster's log.
    pub fn pg_log(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The platform key of the tenant API (mode 0600).
    pub fn platform_key_file(&self) -> PathBuf {
        self.root.join("platform.key")
    }

    /// The signing keys and API keys (mode 0600).
    pub fn keys_file(&self) -> PathBuf {
        self.root.join("keys.json")
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file,
/// then rename), so a crash never leaves a half-written key file.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_private() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = DataDir::open(&root).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        dir.let_group_through(nix::unistd::getegid()).unwrap();
        assert_eq!(mode(&root), 0o710);
        drop(dir);
        // A fresh one is private from the start.
        let fresh = scratch.path().join("fresh");
        let _dir = DataDir::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
