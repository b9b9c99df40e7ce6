//! The user store behind `busylamp users add|remove|list`: a small text file in the data
//! directory holding only HA1 hashes (`name:realm:md5-ha1:sha256-ha1`, like Apache's
//! htdigest). A file rather than the sled database because the server holds sled's lock while
//! it runs, and an admin must be able to add a phone without stopping it; the server notices
//! the change by the file's modification time.

use super::StorageError;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub realm: String,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

pub struct UserFile {
    path: PathBuf,
    cache: RwLock<Cache>,
}

struct Cache {
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
    users: HashMap<String, UserRecord>,
}

/// How often a lookup may stat the file for changes.
const RECHECK: Duration = Duration::from_secs(1);

impl UserFile {
    pub fn new(data_dir: &Path) -> UserFile {
        UserFile {
            path: data_dir.join("users"),
            cache: RwLock::new(Cache {
                mtime: None,
                checked: None,
                users: HashMap::new(),
            }),
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

    fn write_all(&self, users: &[UserRecord]) -> Result<(), StorageError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.err(e))?;
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

    /// Looks a user up, re-reading the file when it changed (checked at most once a second).
    pub fn get(&self, name: &str) -> Option<UserRecord> {
        let now = Instant::now();
        let fresh = self
            .cache
            .read()
            .ok()
            .and_then(|c| c.checked)
            .is_some_and(|t| now.duration_since(t) < RECHECK);
        if !fresh {
            self.refresh(now);
        }
        self.cache.read().ok()?.users.get(name).cloned()
    }

    fn refresh(&self, now: Instant) {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let Ok(mut c) = self.cache.write() else {
            return;
        };
        c.checked = Some(now);
        if c.mtime == mtime && mtime.is_some() {
            return;
        }
        match self.read_all() {
            Ok(users) => {
                c.users = users.into_iter().map(|u| (u.name.clone(), u)).collect();
                c.mtime = mtime;
            }
            Err(e) => tracing::error!(error = %e, "keeping the previous user list"),
        }
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
        // A fresh handle sees it (a running server re-reads on change).
        let g = UserFile::new(&dir);
        assert_eq!(g.get("1001"), Some(rec));
        assert!(f.remove("1001").unwrap());
        assert!(!f.remove("1001").unwrap());
        assert_eq!(f.read_all().unwrap().len(), 1);
        std::fs::write(f.path(), "junk\n").unwrap();
        assert!(f.read_all().unwrap_err().to_string().contains("line 1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
