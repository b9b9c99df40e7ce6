//! redb-backed store with group commit ([`GroupCommit`]): the writer applies each group in one
//! redb write transaction, committed with `Durability::Immediate` (one fsync pair). redb is a
//! copy-on-write B-tree in one file: pages a commit frees are reused by later commits, so
//! the file stays near the live data however long the server runs (sled's log-structured
//! store grew without bound under the same load: README, "Disk use over time").

use super::dialogs::{decode_call, DialogStore, DialogWrite};
use super::flush_times::FlushTimes;
use super::group_commit::{
    decode_all, dialog_puts, presence_puts, Commit, GroupCommit, Put, Tree, WriteOp, Writes, TREES,
};
use super::presence::{
    decode_notify_seq, decode_publication, decode_rule, decode_subscription, merge_notify_seq,
    PresenceStore, PresenceWrite, PublicationRecord, RuleRecord, SubscriptionRecord,
};
use super::queue::{QueueStats, DEFAULT_MAX_QUEUED_WRITES};
use super::{decode_bindings, encode_bindings, Binding, BindingStore, Durable, StorageError};
use redb::{ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The database file in the data directory.
pub const REDB_FILE: &str = "busylamp.redb";

/// redb's page cache; its default is 1 GiB, and every record also lives in the services'
/// memory, so reads at start-up are all the cache serves.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

const TABLES: [Table; TREES.len()] = [
    TableDefinition::new("bindings"),
    TableDefinition::new("publications"),
    TableDefinition::new("subscriptions"),
    TableDefinition::new("notify_seq"),
    TableDefinition::new("dialogs"),
    TableDefinition::new("presence_rules"),
];

fn table(tree: Tree) -> Table {
    TABLES[tree.index()]
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Write(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Read(e.to_string())
}

pub struct RedbStore {
    /// `None` once closed: the last handle dropped lets redb mark the file cleanly shut
    /// down, so the next start does not repair it (a repair rebuilds its allocator state and
    /// grows the file).
    db: std::sync::RwLock<Option<Arc<redb::Database>>>,
    path: PathBuf,
    writer: GroupCommit,
}

impl RedbStore {
    /// Opens (or creates) `busylamp.redb` in `dir` with the default bound on writes waiting
    /// for the disk.
    pub fn open(dir: &Path, flush_interval: Duration) -> Result<RedbStore, StorageError> {
        Self::open_bounded(dir, flush_interval, DEFAULT_MAX_QUEUED_WRITES)
    }

    /// Opens with at most `max_queued_writes` writes waiting for the disk; more are refused
    /// with [`StorageError::Busy`].
    pub fn open_bounded(
        dir: &Path,
        flush_interval: Duration,
        max_queued_writes: usize,
    ) -> Result<RedbStore, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let path = dir.join(REDB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_err(e.to_string()))?;
        // Every table exists from the start: a read never meets a missing one.
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        for t in TREES {
            txn.open_table(table(t))
                .map_err(|e| open_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        let db = Arc::new(db);
        let engine = RedbCommit { db: db.clone() };
        let writer = GroupCommit::start(engine, flush_interval, max_queued_writes)
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(RedbStore {
            db: std::sync::RwLock::new(Some(db)),
            path,
            writer,
        })
    }

    fn submit(&self, writes: Writes) -> Durable {
        self.writer.submit(writes)
    }

    /// The write queue now: how many writes wait for the disk, the most ever, how many were
    /// refused.
    pub fn write_queue(&self) -> QueueStats {
        self.writer.write_queue()
    }

    /// Refuses new writes, commits every queued one and waits for the writer thread to end
    /// (for shutdown: a write accepted before this is on disk when it returns). Blocking.
    pub fn close(&self) -> Result<(), StorageError> {
        self.writer.stop()?;
        // The writer's handle went with its thread; this was the last one.
        self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }

    /// The database, unless closed.
    fn db(&self) -> Result<Arc<redb::Database>, StorageError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StorageError::Read("the database is closed".into()))
    }

    /// Bytes the database file occupies.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Every record of a tree, raw (for the space report and the migration from sled).
    pub(crate) fn for_each(
        &self,
        tree: Tree,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StorageError> {
        let txn = self.db()?.begin_read().map_err(read_err)?;
        let t = txn.open_table(table(tree)).map_err(read_err)?;
        for item in t.iter().map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    /// Records and key plus value bytes per table, and the file's size.
    pub fn space_now(&self) -> Result<super::StorageSpace, StorageError> {
        let mut trees = Vec::with_capacity(TREES.len());
        for t in TREES {
            let mut space = super::TreeSpace {
                name: t.name(),
                ..Default::default()
            };
            self.for_each(t, |k, v| {
                space.records += 1;
                space.bytes += (k.len() + v.len()) as u64;
            })?;
            trees.push(space);
        }
        Ok(super::StorageSpace::from_trees(
            "redb",
            self.size_on_disk(),
            trees,
        ))
    }

    fn load_tree<T>(
        &self,
        tree: Tree,
        decode: impl Fn(&[u8]) -> Result<T, super::DecodeError>,
    ) -> Result<Vec<T>, StorageError> {
        let mut records = Vec::new();
        self.for_each(tree, |k, v| records.push(Ok((k.to_vec(), v.to_vec()))))?;
        decode_all(tree, records, decode)
    }
}

/// The writer's handle: one write transaction per group, committed durably.
struct RedbCommit {
    db: Arc<redb::Database>,
}

impl Commit for RedbCommit {
    fn commit(&mut self, group: &[WriteOp]) -> Result<(), StorageError> {
        write_puts(&self.db, group.iter().flat_map(WriteOp::puts))
    }
}

/// Applies `puts` in order in one write transaction and commits it durably.
pub(crate) fn write_all(db: &redb::Database, puts: &[Put]) -> Result<(), StorageError> {
    write_puts(db, puts.iter())
}

fn write_puts<'a>(
    db: &redb::Database,
    puts: impl Iterator<Item = &'a Put>,
) -> Result<(), StorageError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(redb::Durability::Immediate);
    {
        let mut tables: [Option<redb::Table<'_, &[u8], &[u8]>>; TREES.len()] = Default::default();
        for (tree, key, value) in puts {
            let t = match &mut tables[tree.index()] {
                Some(t) => t,
                slot => slot.insert(txn.open_table(table(*tree)).map_err(write_err)?),
            };
            match value {
                Some(v) => {
                    t.insert(key.as_slice(), v.as_slice()).map_err(write_err)?;
                }
                None => {
                    t.remove(key.as_slice()).map_err(write_err)?;
                }
            }
        }
    }
    txn.commit().map_err(write_err)
}

impl BindingStore for RedbStore {
    fn load_bindings(&self) -> Result<Vec<(String, Vec<Binding>)>, StorageError> {
        self.load_tree(Tree::Bindings, decode_bindings)
    }

    fn flush_times(&self) -> Option<Arc<FlushTimes>> {
        Some(self.writer.flush_times())
    }

    fn save_bindings(&self, aor: &str, bindings: &[Binding]) -> Durable {
        let value = if bindings.is_empty() {
            None
        } else {
            Some(encode_bindings(aor, bindings))
        };
        self.submit(Writes::One((
            Tree::Bindings,
            aor.as_bytes().to_vec(),
            value,
        )))
    }
}

impl PresenceStore for RedbStore {
    fn load_publications(&self) -> Result<Vec<PublicationRecord>, StorageError> {
        self.load_tree(Tree::Publications, decode_publication)
    }

    fn load_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let txn = self.db()?.begin_read().map_err(read_err)?;
        let seqs = txn.open_table(table(Tree::NotifySeq)).map_err(read_err)?;
        let mut out = Vec::new();
        for rec in self.load_tree(Tree::Subscriptions, decode_subscription)? {
            let seq = seqs
                .get(rec.key().as_slice())
                .map_err(read_err)?
                .and_then(|v| decode_notify_seq(v.value()).ok());
            out.push(merge_notify_seq(rec, seq));
        }
        Ok(out)
    }

    fn load_rules(&self) -> Result<Vec<RuleRecord>, StorageError> {
        self.load_tree(Tree::Rules, decode_rule)
    }

    fn stats(&self) -> Option<super::StoreStats> {
        Some(self.writer.stats())
    }

    fn space(&self) -> Option<Result<super::StorageSpace, StorageError>> {
        Some(self.space_now())
    }

    fn write(&self, writes: Vec<PresenceWrite>) -> Durable {
        self.submit(presence_puts(writes))
    }

    fn write_unawaited(&self, writes: Vec<PresenceWrite>) -> Durable {
        self.writer.submit_unawaited(presence_puts(writes))
    }
}

impl DialogStore for RedbStore {
    fn load_calls(&self) -> Result<Vec<crate::dialog::Call>, StorageError> {
        self.load_tree(Tree::Dialogs, decode_call)
    }

    fn write_calls(&self, writes: Vec<DialogWrite>) -> Durable {
        self.submit(dialog_puts(writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn temp_dir(name: &str) -> std::path::PathBuf {
        crate::storage::tests::temp_dir("redb", name)
    }
    use crate::storage::durable;
    use crate::storage::tests::plain_binding as sample;

    #[tokio::test]
    async fn writes_are_durable_across_reopen_and_deletes_stick() {
        let dir = temp_dir("reopen");
        {
            let s = RedbStore::open(&dir, Duration::ZERO).unwrap();
            let mut waits = Vec::new();
            for i in 0..200u32 {
                waits.push(s.save_bindings(&format!("sip:{i}@x"), &[sample("sip:c@h", i)]));
            }
            waits.push(s.save_bindings("sip:5@x", &[]));
            for w in waits {
                durable(w).await.unwrap();
            }
            let sub = crate::storage::presence::tests::sample_subscription();
            durable(s.write(vec![
                PresenceWrite::subscription(&sub),
                PresenceWrite::reservation(&sub),
            ]))
            .await
            .unwrap();
            s.close().unwrap();
        }
        let s = RedbStore::open(&dir, Duration::ZERO).unwrap();
        let all = s.load_bindings().unwrap();
        assert_eq!(all.len(), 199);
        assert!(all.iter().all(|(aor, _)| aor != "sip:5@x"));
        assert_eq!(s.load_subscriptions().unwrap().len(), 1);
        let stats = s.stats().unwrap();
        assert_eq!(
            stats.flush_ms_last, None,
            "nothing committed since the reopen"
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn space_counts_live_bytes_and_rewrites_do_not_grow_the_file_without_bound() {
        let dir = temp_dir("space");
        let s = RedbStore::open(&dir, Duration::ZERO).unwrap();
        let b = [sample("sip:c@h", 1)];
        let value_len = encode_bindings("sip:1@x", &b).len() as u64;
        durable(s.save_bindings("sip:1@x", &b)).await.unwrap();
        let first = s.size_on_disk();
        // One record rewritten 2,000 times, one commit each: freed pages are reused.
        for i in 0..2000u32 {
            durable(s.save_bindings("sip:1@x", &[sample("sip:c@h", i)]))
                .await
                .unwrap();
        }
        durable(s.save_bindings("sip:1@x", &b)).await.unwrap();
        let space = s.space_now().unwrap();
        assert_eq!(space.backend, "redb");
        assert_eq!(space.records, 1);
        assert_eq!(space.live_bytes, "sip:1@x".len() as u64 + value_len);
        assert!(
            space.on_disk <= first.max(1 << 20) * 2,
            "{} bytes after rewrites, {first} at first",
            space.on_disk
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unawaited_presence_write_waits_for_the_next_commit_and_an_urgent_one_takes_it() {
        // An in-process publisher's state (write_unawaited) does not force a commit of its
        // own; a write someone waits for, queued after it, commits both at once, in order.
        let dir = temp_dir("unawaited");
        let store = RedbStore::open(&dir, Duration::from_millis(800)).unwrap();
        durable(store.save_bindings("sip:a@x", &[])).await.unwrap();
        let started = std::time::Instant::now();
        let mut background = store.write_unawaited(vec![PresenceWrite::NotifySeq {
            key: b"background".to_vec(),
            value: vec![0; 12],
        }]);
        let early = tokio::time::timeout(Duration::from_millis(250), &mut background).await;
        assert!(early.is_err(), "committed at once: {early:?}");
        durable(store.write(vec![PresenceWrite::NotifySeq {
            key: b"urgent".to_vec(),
            value: vec![0; 12],
        }]))
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "the urgent write waited for the interval: {:?}",
            started.elapsed()
        );
        assert!(
            matches!(background.try_recv(), Ok(Ok(()))),
            "the earlier write went with the urgent one"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_presence_write_does_not_wait_for_the_flush_interval_of_registrations() {
        let dir = temp_dir("urgent");
        let store = RedbStore::open(&dir, Duration::from_millis(800)).unwrap();
        durable(store.save_bindings("sip:a@x", &[])).await.unwrap();
        let waiting = store.save_bindings("sip:b@x", &[]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        durable(store.write(vec![PresenceWrite::NotifySeq {
            key: b"k".to_vec(),
            value: vec![0; 12],
        }]))
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "waited {:?}",
            started.elapsed()
        );
        durable(waiting).await.unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn after_close_the_next_open_needs_no_repair() {
        let dir = temp_dir("clean");
        let s = RedbStore::open(&dir, Duration::ZERO).unwrap();
        durable(s.save_bindings("sip:1@x", &[sample("sip:c@h", 1)]))
            .await
            .unwrap();
        s.close().unwrap();
        assert!(s.load_bindings().is_err(), "closed");
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = repaired.clone();
        let db = redb::Builder::new()
            .set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::SeqCst))
            .create(dir.join(REDB_FILE))
            .unwrap();
        assert!(
            !repaired.load(std::sync::atomic::Ordering::SeqCst),
            "repaired after a clean close"
        );
        drop(db);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_with_the_path() {
        let dir = temp_dir("twice");
        let _first = RedbStore::open(&dir, Duration::ZERO).unwrap();
        let e = match RedbStore::open(&dir, Duration::ZERO) {
            Err(e) => e,
            Ok(_) => panic!("opened twice"),
        };
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
