//! Rendered images on disk, under a size cap.
//!
//! A rendering is kept in `<root>/<2 hex>/<key>.<ext>`, where the key is a
//! hash of the tenant, the object's version and the transformation (so an
//! object that changes gets a new version and never meets its old
//! renderings) and the extension names the format. An index in memory
//! holds each file's size and when it was last used; when the total goes
//! over the cap, the least recently used files are deleted until it is
//! back under 90 % of it. The index is built from the directory on first
//! use, so the cache survives restarts. Files are written under a
//! temporary name and renamed, so a reader never sees half a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::transform::Output;

#[derive(Debug)]
struct Entry {
    size: u64,
    format: Output,
    used: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    tick: u64,
}

/// The disk cache of one server (shared by its tenants).
#[derive(Debug)]
pub(crate) struct DiskCache {
    root: PathBuf,
    cap: u64,
    index: Mutex<Index>,
    loaded: tokio::sync::OnceCell<()>,
}

impl DiskCache {
    pub(crate) fn new(root: PathBuf, cap: u64) -> DiskCache {
        DiskCache {
            root,
            cap,
            index: Mutex::new(Index::default()),
            loaded: tokio::sync::OnceCell::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.cap > 0
    }

    fn path(&self, key: &str, format: Output) -> PathBuf {
        self.root
            .join(&key[..2])
            .join(format!("{key}.{}", format.extension()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the directory into the index once (off the async runtime).
    async fn load(&self) {
        self.loaded
            .get_or_init(|| async {
                let root = self.root.clone();
                let found = tokio::task::spawn_blocking(move || scan(&root))
                    .await
                    .unwrap_or_default();
                let over = {
                    let mut index = self.lock();
                    for (key, size, format, modified) in found {
                        index.total += size;
                        index.tick = index.tick.max(modified);
                        index.entries.insert(
                            key,
                            Entry {
                                size,
                                format,
                                used: modified,
                            },
                        );
                    }
                    index.total > self.cap
                };
                if over {
                    self.evict().await;
                }
            })
            .await;
    }

    /// The cached rendering of `key`, if there is one.
    pub(crate) async fn get(&self, key: &str) -> Option<(Vec<u8>, Output)> {
        if !self.enabled() {
            return None;
        }
        self.load().await;
        let format = {
            let mut index = self.lock();
            index.tick += 1;
            let tick = index.tick;
            let entry = index.entries.get_mut(key)?;
            entry.used = tick;
            entry.format
        };
        match tokio::fs::read(self.path(key, format)).await {
            Ok(bytes) => Some((bytes, format)),
            Err(_) => {
                // Deleted behind our back: forget it.
                let mut index = self.lock();
                if let Some(entry) = index.entries.remove(key) {
                    index.total = index.total.saturating_sub(entry.size);
                }
                None
            }
        }
    }

    /// Keeps a rendering; failures are logged, never the request's.
    pub(crate) async fn put(&self, key: &str, format: Output, bytes: &[u8]) {
        let size = bytes.len() as u64;
        if !self.enabled() || size > self.cap / 2 {
            return;
        }
        self.load().await;
        let path = self.path(key, format);
        let tmp = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let written = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::create_dir_all(self.root.join("tmp")).await?;
            tokio::fs::write(&tmp, bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, "could not keep a rendered image in the cache");
            let _ = tokio::fs::remove_file(&tmp).await;
            return;
        }
        let over = {
            let mut index = self.lock();
            index.tick += 1;
            let used = index.tick;
            if let Some(old) = index
                .entries
                .insert(key.to_owned(), Entry { size, format, used })
            {
                index.total = index.total.saturating_sub(old.size);
            }
            index.total += size;
            index.total > self.cap
        };
        if over {
            self.evict().await;
        }
    }

    /// Deletes the least recently used files until the total is under
    /// 90 % of the cap.
    async fn evict(&self) {
        let victims: Vec<(String, Output)> = {
            let mut index = self.lock();
            let target = self.cap / 10 * 9;
            let mut order: Vec<(u64, String)> = index
                .entries
                .iter()
                .map(|(key, entry)| (entry.used, key.clone()))
                .collect();
            order.sort_unstable();
            let mut victims = Vec::new();
            for (_, key) in order {
                if index.total <= target {
                    break;
                }
                if let Some(entry) = index.entries.remove(&key) {
                    index.total = index.total.saturating_sub(entry.size);
                    victims.push((key, entry.format));
                }
            }
            victims
        };
        for (key, format) in victims {
            let _ = tokio::fs::remove_file(self.path(&key, format)).await;
        }
    }

    /// Bytes the cache holds now.
    #[cfg(test)]
    async fn size(&self) -> u64 {
        self.load().await;
        self.lock().total
    }
}

/// The renderings found under `root`: key, size, format and a use order
/// (modification time). Leftover temporary files are deleted.
fn scan(root: &Path) -> Vec<(String, u64, Output, u64)> {
    let _ = std::fs::remove_dir_all(root.join("tmp"));
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root) else {
        return found;
    };
    for dir in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some((key, ext)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            let (Some(format), Ok(meta)) = (Output::from_extension(ext), file.metadata()) else {
                continue;
            };
            if key.len() < 2 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            found.push((key.to_owned(), meta.len(), format, modified));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        format!("{n:02x}{}", "0".repeat(30))
    }

    #[tokio::test]
    async fn keeps_evicts_by_size_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().to_path_buf(), 1000);
        cache.put(&key(1), Output::Png, &[1; 400]).await;
        cache.put(&key(2), Output::Webp, &[2; 400]).await;
        // Using 1 makes 2 the least recently used.
        assert_eq!(cache.get(&key(1)).await.unwrap().1, Output::Png);
        cache.put(&key(3), Output::Jpeg, &[3; 400]).await;
        assert!(cache.size().await <= 900);
        assert!(cache.get(&key(2)).await.is_none());
        assert_eq!(cache.get(&key(1)).await.unwrap().0, vec![1; 400]);
        assert_eq!(cache.get(&key(3)).await.unwrap().1, Output::Jpeg);
        // Too large for the cache: not kept.
        cache.put(&key(4), Output::Png, &[4; 600]).await;
        assert!(cache.get(&key(4)).await.is_none());
        // A new cache on the same directory finds what is there.
        let again = DiskCache::new(dir.path().to_path_buf(), 1000);
        assert_eq!(again.size().await, 800);
        assert_eq!(again.get(&key(3)).await.unwrap().0, vec![3; 400]);
        // Cap 0: nothing is kept.
        let off = DiskCache::new(dir.path().join("off"), 0);
        off.put(&key(5), Output::Png, &[5; 10]).await;
        assert!(off.get(&key(5)).await.is_none());
    }
}
