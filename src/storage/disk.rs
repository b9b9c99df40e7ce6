//! The store the server runs on: which database (`[storage] backend`), found in the data
//! directory, and the one-time migration of a sled database to redb. An installed site's
//! registrations, subscriptions and calls are never left behind by a change of default.

use super::group_commit::{Put, TREES};
use super::redb_store::REDB_FILE;
use super::{BindingStore, DialogStore, PresenceStore, RedbStore, SledStore, StorageError};
use crate::config::StorageBackend;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// sled's directory in the data directory.
pub const SLED_DIR: &str = "db";
/// Where a migrated sled database is kept (renamed, never deleted by busylamp).
pub const SLED_MIGRATED_DIR: &str = "db.sled-migrated";
/// The redb file while a migration writes it: only a finished one is renamed to its place.
const REDB_MIGRATING: &str = "busylamp.redb.migrating";

/// The backend when `[storage] backend` is not set.
pub const DEFAULT_BACKEND: StorageBackend = StorageBackend::Redb;

pub enum DiskStore {
    Sled(Arc<SledStore>),
    Redb(Arc<RedbStore>),
}

fn has_sled(dir: &Path) -> bool {
    dir.join(SLED_DIR).join("conf").is_file() || dir.join(SLED_DIR).join("db").is_file()
}

impl DiskStore {
    /// Opens the store in `dir`. `backend` unset: [`DEFAULT_BACKEND`]. Asked for redb where
    /// only a sled database exists (a site installed before redb), its records are copied to
    /// redb once, the sled directory kept as `db.sled-migrated`.
    pub fn open(
        dir: &Path,
        backend: Option<StorageBackend>,
        flush_interval: Duration,
        max_queued_writes: usize,
    ) -> Result<DiskStore, StorageError> {
        let backend = backend.unwrap_or(DEFAULT_BACKEND);
        if backend == StorageBackend::Sled {
            return SledStore::open_bounded(dir, flush_interval, max_queued_writes)
                .map(|s| DiskStore::Sled(Arc::new(s)));
        }
        if has_sled(dir) {
            if dir.join(REDB_FILE).exists() {
                tracing::warn!(
                    data_dir = %dir.display(),
                    "both a sled database (db/) and {REDB_FILE} are here: using {REDB_FILE}; \
                     db/ is not read (set [storage] backend = \"sled\" to use it)"
                );
            } else {
                migrate_sled_to_redb(dir)?;
            }
        }
        RedbStore::open_bounded(dir, flush_interval, max_queued_writes)
            .map(|s| DiskStore::Redb(Arc::new(s)))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DiskStore::Sled(_) => "sled",
            DiskStore::Redb(_) => "redb",
        }
    }

    pub fn bindings(&self) -> Arc<dyn BindingStore> {
        match self {
            DiskStore::Sled(s) => s.clone(),
            DiskStore::Redb(s) => s.clone(),
        }
    }

    pub fn presence(&self) -> Arc<dyn PresenceStore> {
        match self {
            DiskStore::Sled(s) => s.clone(),
            DiskStore::Redb(s) => s.clone(),
        }
    }

    pub fn dialogs(&self) -> Arc<dyn DialogStore> {
        match self {
            DiskStore::Sled(s) => s.clone(),
            DiskStore::Redb(s) => s.clone(),
        }
    }

    /// Refuses new writes, commits every queued one (blocking; for shutdown).
    pub fn close(&self) -> Result<(), StorageError> {
        match self {
            DiskStore::Sled(s) => s.close(),
            DiskStore::Redb(s) => s.close(),
        }
    }
}

/// Copies every record of the sled database in `dir` into a new redb file, in one durable
/// transaction, then renames the file into place and the sled directory aside. A crash at any
/// point leaves either the sled database in place (the next start migrates again) or the
/// complete redb file.
fn migrate_sled_to_redb(dir: &Path) -> Result<(), StorageError> {
    let open_err = |reason: String| StorageError::Open {
        path: dir.display().to_string(),
        reason,
    };
    let sled = SledStore::open(dir, Duration::ZERO)?;
    let mut records: Vec<Put> = Vec::new();
    for t in TREES {
        sled.for_each(t, |k, v| records.push((t, k.to_vec(), Some(v.to_vec()))))?;
    }
    sled.close()?;
    drop(sled);
    let n = records.len();
    let tmp = dir.join(REDB_MIGRATING);
    let _ = std::fs::remove_file(&tmp);
    {
        let db = redb::Database::create(&tmp).map_err(|e| open_err(e.to_string()))?;
        super::redb_store::write_all(&db, &records).map_err(|e| open_err(e.to_string()))?;
    }
    std::fs::rename(&tmp, dir.join(REDB_FILE)).map_err(|e| open_err(e.to_string()))?;
    std::fs::rename(dir.join(SLED_DIR), dir.join(SLED_MIGRATED_DIR))
        .map_err(|e| open_err(e.to_string()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::warn!(
        records = n,
        data_dir = %dir.display(),
        "migrated the sled database to redb ({REDB_FILE}); the sled files are kept in \
         {SLED_MIGRATED_DIR}/: delete them once the server runs well"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn temp_dir(name: &str) -> std::path::PathBuf {
        crate::storage::tests::temp_dir("disk", name)
    }
    use crate::storage::presence::tests::sample_subscription;
    use crate::storage::tests::plain_binding;
    use crate::storage::{durable, PresenceWrite};

    /// A site installed with sled: 50 bindings and a subscription with its NOTIFY counters.
    async fn sled_site(dir: &Path) {
        let s = SledStore::open(dir, Duration::ZERO).unwrap();
        for i in 0..50u32 {
            durable(s.save_bindings(
                &format!("sip:{i}@example.test"),
                &[plain_binding("sip:1001@192.0.2.7:5060", i)],
            ))
            .await
            .unwrap();
        }
        let sub = sample_subscription();
        durable(s.write(vec![
            PresenceWrite::subscription(&sub),
            PresenceWrite::reservation(&sub),
        ]))
        .await
        .unwrap();
        s.close().unwrap();
    }

    #[tokio::test]
    async fn a_sled_site_is_migrated_to_redb_once_and_keeps_every_record() {
        let dir = temp_dir("migrate");
        sled_site(&dir).await;
        let store = DiskStore::open(&dir, None, Duration::ZERO, 100).unwrap();
        assert_eq!(store.backend(), "redb");
        let bindings = store.bindings().load_bindings().unwrap();
        assert_eq!(bindings.len(), 50);
        assert!(bindings
            .iter()
            .any(|(aor, b)| aor == "sip:7@example.test" && b[0].cseq == 7));
        let subs = store.presence().load_subscriptions().unwrap();
        assert_eq!(subs, vec![sample_subscription()]);
        // The sled files are kept aside, not read again.
        assert!(dir.join(SLED_MIGRATED_DIR).join("conf").is_file());
        assert!(!dir.join(SLED_DIR).exists());
        assert!(!dir.join(REDB_MIGRATING).exists());
        // A write after the migration, then a restart: no second migration, nothing lost.
        durable(store.bindings().save_bindings(
            "sip:new@example.test",
            &[plain_binding("sip:1001@192.0.2.7:5060", 1)],
        ))
        .await
        .unwrap();
        store.close().unwrap();
        drop(store);
        let store = DiskStore::open(&dir, None, Duration::ZERO, 100).unwrap();
        assert_eq!(store.bindings().load_bindings().unwrap().len(), 51);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn backend_sled_keeps_using_the_sled_database() {
        let dir = temp_dir("keep-sled");
        sled_site(&dir).await;
        let store = DiskStore::open(&dir, Some(StorageBackend::Sled), Duration::ZERO, 100).unwrap();
        assert_eq!(store.backend(), "sled");
        assert_eq!(store.bindings().load_bindings().unwrap().len(), 50);
        assert!(!dir.join(REDB_FILE).exists(), "no redb file made");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_interrupted_migration_is_done_again_from_the_sled_files() {
        let dir = temp_dir("interrupted");
        sled_site(&dir).await;
        // What a crash mid-migration leaves: a partial file under the temporary name.
        std::fs::write(dir.join(REDB_MIGRATING), b"partial").unwrap();
        let store = DiskStore::open(&dir, Some(StorageBackend::Redb), Duration::ZERO, 100).unwrap();
        assert_eq!(store.bindings().load_bindings().unwrap().len(), 50);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
