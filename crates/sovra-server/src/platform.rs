//! The platform key: the one credential of the tenant API
//! (`/sovra/v1/tenants`), distinct from every tenant's keys. Made on first
//! start, kept in `<data_dir>/platform.key` with mode 0600, printed once.

use std::path::Path;

use crate::data_dir::write_private;

/// The platform key and whether this call made it.
#[derive(Clone)]
pub struct PlatformKey {
    pub key: String,
    pub created: bool,
}

impl std::fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformKey")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Prefix of platform keys, so that one is recognisable in a leak scan.
pub const PREFIX: &str = "sovra_pk_";

/// A fresh key: 244 random bits (two v4 UUIDs, from the OS's source).
fn generate() -> String {
    format!(
        "{PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Loads the platform key at `path`, making it on first use.
pub fn load_or_create(path: &Path) -> std::io::Result<PlatformKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            if key.len() < PREFIX.len() + 32 {
                return Err(std::io::Error::other(format!(
                    "{} is damaged (too short); delete it to make a new platform key",
                    path.display()
                )));
            }
            Ok(PlatformKey {
                key,
                created: false,
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            write_private(path, format!("{key}\n").as_bytes())?;
            Ok(PlatformKey { key, created: true })
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_platform_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("platform.key");
        let first = load_or_create(&path).unwrap();
        assert!(first.created);
        assert!(first.key.starts_with(PREFIX));
        assert_eq!(first.key.len(), PREFIX.len() + 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(&path).unwrap();
        assert!(!again.created);
        assert_eq!(again.key, first.key);
        assert!(!format!("{again:?}").contains(&first.key));
        std::fs::write(&path, "short").unwrap();
        assert!(load_or_create(&path).is_err());
    }
}
