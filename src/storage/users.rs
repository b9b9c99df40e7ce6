//! The user store behind `busylamp users add|remove|list`: a small text file in the data
//! directory holding only HA1 hashes (`name:realm:md5-ha1:sha256-ha1`, like Apache's
//! htdigest). A file rather than the sled database because the server holds sled's lock while
//! it runs, and an admin must be able to add a phone without stopping it.
//!
//! The server keeps the users in memory: [`UserFile::get`] (the receive path) never touches
//! the disk. A watcher task ([`UserFile::watch`]) looks at the file's modification time every
//! [`RECHECK`] on a blocking thread and swaps in the new table when it changed.

use super::StorageError;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub realm: String,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

pub struct UserFile {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    /// How many times the table changed (a reload found a different file).
    reloads: tokio::sync::watch::Sender<u64>,
}

/// The users as last read, with what identified that version of the file.
#[derive(Default)]
struct Table {
    version: Option<FileVersion>,
    users: HashMap<String, UserRecord>,
}

/// Modification time, size and inode: `busylamp users` replaces the file by a rename, so a
/// change within one timestamp tick still shows as a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    mtime: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// How often the watcher looks at the file for changes.
pub const RECHECK: Duration = Duration::from_secs(1);

impl UserFile {
    pub fn new(data_dir: &Path) -> UserFile {
        UserFile {
            path: data_dir.join("users"),
            table: RwLock::new(Arc::default()),
            reloads: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: impl ToString) -> StorageError {
        StorageError::UserFile {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn read_all(&self) -> Result<Vec<UserRecord>, StorageError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 4 || f[0].is_empty() {
                return Err(self.err(format!("line {} is not name:realm:ha1:ha1_sha256", n + 1)));
            }
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_ascii_lowercase());
            out.push(UserRecord {
                name: f[0].to_string(),
                realm: f[1].to_string(),
                ha1_md5: opt(f[2]),
                ha1_sha256: opt(f[3]),
            });
        }
        Ok(out)
    }

    /// Writes the file (by a rename, so a reader sees the old or the new one) mode 0600: it
    /// holds password hashes. Owned by the owner of the data directory: `sudo busylamp users
    /// add` must leave a file the service user (who owns its data directory) can read.
    fn write_all(&self, users: &[UserRecord]) -> Result<(), StorageError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.err(e))?;
        // The umask can only take bits away, but say it outright.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| self.err(e))?;
        let owner = std::fs::metadata(dir).map_err(|e| self.err(e))?;
        let mine = f.metadata().map_err(|e| self.err(e))?;
        if (mine.uid(), mine.gid()) != (owner.uid(), owner.gid()) {
            if let Err(e) = std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid())) {
                let _ = std::fs::remove_file(&tmp);
                return Err(self.err(format!(
                    "cannot give it to the owner of {} (uid {}), who must read it: {e}; run this as root or as that user",
                    dir.display(),
                    owner.uid()
                )));
            }
        }
        let mut text = String::from(
            "# busylamp users: name:realm:md5-ha1:sha256-ha1 (managed by `busylamp users`)\n",
        );
        for u in users {
            text.push_str(&format!(
                "{}:{}:{}:{}\n",
                u.name,
                u.realm,
                u.ha1_md5.as_deref().unwrap_or(""),
                u.ha1_sha256.as_deref().unwrap_or("")
            ));
        }
        f.write_all(text.as_bytes()).map_err(|e| self.err(e))?;
        f.sync_all().map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn add(&self, rec: UserRecord) -> Result<(), StorageError> {
        let mut all = self.read_all()?;
        all.retain(|u| u.name != rec.name);
        all.push(rec);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_all(&all)
    }

    pub fn remove(&self, name: &str) -> Result<bool, StorageError> {
        let mut all = self.read_all()?;
        let before = all.len();
        all.retain(|u| u.name != name);
        if all.len() == before {
            return Ok(false);
        }
        self.write_all(&all)?;
        Ok(true)
    }

    /// Looks a user up in memory (the table the watcher keeps current): no file I/O, so a
    /// slow, missing or unreadable file never delays or breaks a request.
    pub fn get(&self, name: &str) -> Option<UserRecord> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        table.users.get(name).cloned()
    }

    /// The users as last read (by [`reload`](Self::reload) or the watcher).
    pub fn loaded(&self) -> Vec<UserRecord> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        table.users.values().cloned().collect()
    }

    /// Re-reads the file if it changed since the last read; returns whether the table
    /// changed. Blocking file I/O: call it off the receive path. A missing file means no
    /// users (as `busylamp users list` shows); an unreadable or malformed one keeps the users
    /// read before.
    pub fn reload(&self) -> bool {
        let version = match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() => Some(FileVersion {
                mtime: m.modified().ok(),
                len: m.len(),
                inode: std::os::unix::fs::MetadataExt::ino(&m),
            }),
            Ok(_) => {
                tracing::error!(path = %self.path.display(), "the user file is not a regular file; keeping the previous user list");
                return false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "keeping the previous user list");
                return false;
            }
        };
        let current = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        if current.version == version {
            return false;
        }
        let users = match self.read_all() {
            Ok(users) => users,
            Err(e) => {
                tracing::error!(error = %e, "keeping the previous user list");
                return false;
            }
        };
        let table = Table {
            version,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        };
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.reloads.send_modify(|n| *n += 1);
        tracing::info!(path = %self.path.display(), "user file (re)loaded");
        true
    }

    /// Loads the file now (on a blocking thread), then keeps the table current: a task that
    /// reloads every `every`, each time on a blocking thread.
    pub async fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let file = self.clone();
        let _ = tokio::task::spawn_blocking(move || file.reload()).await;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let file = self.clone();
                if tokio::task::spawn_blocking(move || file.reload())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    /// Changes each time a reload swapped in a new table.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_list_and_lookup() {
        let dir = std::env::temp_dir().join(format!("busylamp-users-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = UserFile::new(&dir);
        assert!(f.read_all().unwrap().is_empty());
        assert!(f.get("1001").is_none());
        let rec = UserRecord {
            name: "1001".into(),
            realm: "example.test".into(),
            ha1_md5: Some("a".repeat(32)),
            ha1_sha256: None,
        };
        f.add(rec.clone()).unwrap();
        f.add(UserRecord {
            name: "1000".into(),
            ..rec.clone()
        })
        .unwrap();
        assert_eq!(f.read_all().unwrap().len(), 2);
        // A fresh handle sees it once it has read the file (a running server's watcher does).
        let g = UserFile::new(&dir);
        assert!(g.reload());
        assert_eq!(g.get("1001"), Some(rec));
        assert!(f.remove("1001").unwrap());
        assert!(!f.remove("1001").unwrap());
        assert_eq!(f.read_all().unwrap().len(), 1);
        std::fs::write(f.path(), "junk\n").unwrap();
        assert!(f.read_all().unwrap_err().to_string().contains("line 1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("busylamp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn user(name: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            realm: "example.test".into(),
            ha1_md5: Some("b".repeat(32)),
            ha1_sha256: None,
        }
    }

    #[test]
    fn lookups_read_memory_only_so_a_missing_or_unreadable_file_does_not_break_known_users() {
        let dir = fresh_dir("users-memory");
        let admin = UserFile::new(&dir);
        admin.add(user("1001")).unwrap();
        let served = UserFile::new(&dir);
        assert!(served.reload());
        assert!(served.get("1001").is_some());
        // The file goes away: lookups still answer from memory (no stat, no read).
        std::fs::remove_file(served.path()).unwrap();
        assert_eq!(served.get("1001"), Some(user("1001")));
        // Unreadable (a directory where the file was): lookups still answer, and a reload
        // keeps the users it had.
        std::fs::create_dir(served.path()).unwrap();
        assert_eq!(served.get("1001"), Some(user("1001")));
        assert!(!served.reload());
        assert_eq!(served.get("1001"), Some(user("1001")));
        std::fs::remove_dir(served.path()).unwrap();
        // A malformed file keeps them too; a missing one (after a reload) means no users.
        std::fs::write(served.path(), "junk\n").unwrap();
        assert!(!served.reload());
        assert!(served.get("1001").is_some());
        std::fs::remove_file(served.path()).unwrap();
        assert!(served.reload());
        assert!(served.get("1001").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// HA1s are password equivalents: the file is 0600 whatever the umask, also when it
    /// replaces a file of another mode, and (run as root) it belongs to the data directory's
    /// owner, the service user, rather than to root who ran `sudo busylamp users add`.
    #[test]
    fn the_users_file_is_written_0600_and_owned_by_the_data_directorys_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = fresh_dir("users-mode");
        let f = UserFile::new(&dir);
        std::fs::write(f.path(), "").unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        f.add(user("1001")).unwrap();
        let meta = std::fs::metadata(f.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        if meta.uid() == 0 {
            // As root: a data directory of another user gets a file that user can read.
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            f.add(user("1002")).unwrap();
            let meta = std::fs::metadata(f.path()).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            f.read_all().unwrap().len(),
            1 + usize::from(meta.uid() == 0)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_added_to_the_file_is_known_after_the_watcher_reloads() {
        let dir = fresh_dir("users-watch");
        let admin = UserFile::new(&dir);
        admin.add(user("1001")).unwrap();
        let served = Arc::new(UserFile::new(&dir));
        let mut reloads = served.reloads();
        let watcher = served.clone().watch(RECHECK).await;
        // Loaded before `watch` returns: the server answers its first request with it.
        assert!(served.get("1001").is_some());
        assert_eq!(*reloads.borrow_and_update(), 1);

        admin.add(user("1002")).unwrap();
        // Until the watcher's next look, lookups see the table in memory, not the file.
        assert!(served.get("1002").is_none());
        tokio::time::timeout(2 * RECHECK, reloads.changed())
            .await
            .expect("reloaded within one interval")
            .unwrap();
        assert_eq!(served.get("1002"), Some(user("1002")));
        assert!(served.get("1001").is_some());

        // An unchanged file is not read again.
        tokio::time::sleep(5 * RECHECK).await;
        assert!(!reloads.has_changed().unwrap());

        admin.remove("1001").unwrap();
        tokio::time::timeout(2 * RECHECK, reloads.changed())
            .await
            .expect("reloaded within one interval")
            .unwrap();
        assert!(served.get("1001").is_none());
        watcher.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
