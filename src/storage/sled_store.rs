//! sled-backed store with group commit ([`GroupCommit`]): the writer applies each group as
//! one sled batch per tree, then flushes once.

use super::dialogs::{decode_call, DialogStore, DialogWrite};
use super::flush_times::FlushTimes;
use super::group_commit::{
    decode_all, dialog_puts, presence_puts, Commit, GroupCommit, Tree, WriteOp, Writes, TREES,
};
use super::presence::{
    decode_notify_seq, decode_publication, decode_rule, decode_subscription, merge_notify_seq,
    PresenceStore, PresenceWrite, PublicationRecord, RuleRecord, SubscriptionRecord,
};
use super::queue::{QueueStats, DEFAULT_MAX_QUEUED_WRITES};
use super::{decode_bindings, encode_bindings, Binding, BindingStore, Durable, StorageError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct SledStore {
    db: sled::Db,
    trees: [sled::Tree; TREES.len()],
    writer: GroupCommit,
}

/// sled's settings. The soak (tests/bench/soak.sh) tries others through the environment
/// (BUSYLAMP_SLED_MODE=low_space|high_throughput, BUSYLAMP_SLED_SEGMENT_SIZE bytes,
/// BUSYLAMP_SLED_CACHE_MB, BUSYLAMP_SLED_FLUSH_EVERY_MS): a measurement aid, not a setting.
struct SledTuning {
    mode: sled::Mode,
    segment_size: Option<usize>,
    cache_capacity: u64,
    flush_every_ms: Option<u64>,
}

impl SledTuning {
    fn from_env() -> SledTuning {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let num = |name: &str| var(name).and_then(|v| v.parse::<u64>().ok());
        let mode = match var("BUSYLAMP_SLED_MODE").as_deref() {
            Some("low_space") => sled::Mode::LowSpace,
            _ => sled::Mode::HighThroughput,
        };
        let tuning = SledTuning {
            mode,
            segment_size: num("BUSYLAMP_SLED_SEGMENT_SIZE").map(|n| n as usize),
            cache_capacity: num("BUSYLAMP_SLED_CACHE_MB").unwrap_or(64) * 1024 * 1024,
            flush_every_ms: num("BUSYLAMP_SLED_FLUSH_EVERY_MS"),
        };
        if var("BUSYLAMP_SLED_MODE").is_some()
            || tuning.segment_size.is_some()
            || tuning.flush_every_ms.is_some()
            || var("BUSYLAMP_SLED_CACHE_MB").is_some()
        {
            tracing::warn!(
                mode = ?tuning.mode,
                segment_size = ?tuning.segment_size,
                cache_capacity = tuning.cache_capacity,
                flush_every_ms = ?tuning.flush_every_ms,
                "sled tuning from the environment (a measurement aid)"
            );
        }
        tuning
    }
}

impl SledStore {
    /// Opens with the default bound on writes waiting for the disk.
    pub fn open(dir: &Path, flush_interval: Duration) -> Result<SledStore, StorageError> {
        Self::open_bounded(dir, flush_interval, DEFAULT_MAX_QUEUED_WRITES)
    }

    /// Opens with at most `max_queued_writes` writes waiting for the disk; more are refused
    /// with [`StorageError::Busy`].
    pub fn open_bounded(
        dir: &Path,
        flush_interval: Duration,
        max_queued_writes: usize,
    ) -> Result<SledStore, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let tuning = SledTuning::from_env();
        let mut config = sled::Config::new()
            .path(dir.join("db"))
            .mode(tuning.mode)
            // Our writer is the only one that flushes: one flush per group commit, and an
            // acknowledged write is never waiting on sled's own timer.
            .flush_every_ms(tuning.flush_every_ms)
            // sled's default page cache is 1 GiB; bindings are a few hundred bytes each and
            // all live in the registrar's memory anyway.
            .cache_capacity(tuning.cache_capacity);
        if let Some(seg) = tuning.segment_size {
            config = config.segment_size(seg);
        }
        let db = config.open().map_err(|e| open_err(e.to_string()))?;
        let open_tree = |t: Tree| db.open_tree(t.name()).map_err(|e| open_err(e.to_string()));
        let trees = [
            open_tree(Tree::Bindings)?,
            open_tree(Tree::Publications)?,
            open_tree(Tree::Subscriptions)?,
            open_tree(Tree::NotifySeq)?,
            open_tree(Tree::Dialogs)?,
            open_tree(Tree::Rules)?,
        ];
        let engine = SledCommit {
            db: db.clone(),
            trees: trees.clone(),
        };
        let writer = GroupCommit::start(engine, flush_interval, max_queued_writes)
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(SledStore { db, trees, writer })
    }

    fn submit(&self, writes: Writes) -> Durable {
        self.writer.submit(writes)
    }

    /// The write queue now: how many writes wait for the disk, the most ever, how many were
    /// refused.
    pub fn write_queue(&self) -> QueueStats {
        self.writer.write_queue()
    }

    /// Refuses new writes, flushes every queued one and waits for the writer thread to end
    /// (for shutdown: a write accepted before this is on disk when it returns). Blocking.
    pub fn close(&self) -> Result<(), StorageError> {
        self.writer.stop()?;
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StorageError::Write(e.to_string()))
    }

    /// Bytes the database occupies on disk (for the memory-per-binding report).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Every record of a tree, raw (the migration to redb).
    pub(crate) fn for_each(
        &self,
        tree: Tree,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StorageError> {
        for item in self.trees[tree.index()].iter() {
            let (k, v) = item.map_err(|e| StorageError::Read(e.to_string()))?;
            f(&k, &v);
        }
        Ok(())
    }

    /// Records and key plus value bytes per tree, and the size on disk.
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
            "sled",
            self.size_on_disk(),
            trees,
        ))
    }
}

/// The writer's handles: one sled batch per tree for each group, then one flush.
struct SledCommit {
    db: sled::Db,
    trees: [sled::Tree; TREES.len()],
}

impl Commit for SledCommit {
    fn commit(&mut self, group: &[WriteOp]) -> Result<(), StorageError> {
        // One sled batch per tree, applied in queue order within each tree; records of
        // different trees never depend on their relative order.
        let mut batches: [Option<sled::Batch>; TREES.len()] = Default::default();
        for (tree, key, value) in group.iter().flat_map(WriteOp::puts) {
            let b = batches[tree.index()].get_or_insert_with(sled::Batch::default);
            match value {
                Some(v) => b.insert(key.as_slice(), v.as_slice()),
                None => b.remove(key.as_slice()),
            }
        }
        let mut result = Ok(());
        for t in TREES {
            if let Some(b) = batches[t.index()].take() {
                if let Err(e) = self.trees[t.index()].apply_batch(b) {
                    result = Err(StorageError::Write(e.to_string()));
                }
            }
        }
        result.and_then(|_| {
            self.db
                .flush()
                .map(|_| ())
                .map_err(|e| StorageError::Write(e.to_string()))
        })
    }

    fn finish(&mut self) {
        let _ = self.db.flush();
    }
}

impl BindingStore for SledStore {
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

impl SledStore {
    /// Every record of a tree that decodes; corrupt ones are logged and skipped.
    fn load_tree<T>(
        &self,
        tree: Tree,
        decode: impl Fn(&[u8]) -> Result<T, super::DecodeError>,
    ) -> Result<Vec<T>, StorageError> {
        let records = self.trees[tree.index()]
            .iter()
            .map(|item| item.map_err(|e| StorageError::Read(e.to_string())));
        decode_all(tree, records, decode)
    }
}

impl PresenceStore for SledStore {
    fn load_publications(&self) -> Result<Vec<PublicationRecord>, StorageError> {
        self.load_tree(Tree::Publications, decode_publication)
    }

    fn load_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let seqs = &self.trees[Tree::NotifySeq.index()];
        let mut out = Vec::new();
        for rec in self.load_tree(Tree::Subscriptions, decode_subscription)? {
            let seq = seqs
                .get(rec.key())
                .map_err(|e| StorageError::Read(e.to_string()))?
                .and_then(|v| decode_notify_seq(&v).ok());
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

impl DialogStore for SledStore {
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
    use crate::storage::durable;
    use crate::storage::tests::plain_binding as sample;
    use std::time::Instant;

    #[tokio::test]
    async fn standing_rules_survive_reopen_deletes_stick_and_the_flush_is_timed() {
        use crate::storage::{RuleAction, RuleRecord};
        let dir = std::env::temp_dir().join(format!("busylamp-sled-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rule = |id: &str, action| RuleRecord {
            id: id.into(),
            presentity: "sip:1001@example.com".into(),
            watcher: "sip:eve@other.test".into(),
            event: None,
            action,
            created_at: 1_900_000_000,
        };
        {
            let s = SledStore::open(&dir, Duration::ZERO).unwrap();
            assert_eq!(
                s.stats().unwrap().flush_ms_last,
                None,
                "nothing flushed yet"
            );
            durable(s.write(vec![
                PresenceWrite::rule(&rule("a", RuleAction::Allow)),
                PresenceWrite::rule(&rule("b", RuleAction::Block)),
            ]))
            .await
            .unwrap();
            durable(s.write(vec![PresenceWrite::DeleteRule(b"a".to_vec())]))
                .await
                .unwrap();
            let stats = s.stats().unwrap();
            assert!(stats.flush_ms_last.is_some() && stats.flush_ms_max >= stats.flush_ms_last);
        }
        let mut reopened = None;
        for _ in 0..100 {
            match SledStore::open(&dir, Duration::ZERO) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let s = reopened.expect("reopen");
        assert_eq!(s.load_rules().unwrap(), vec![rule("b", RuleAction::Block)]);
        assert!(
            s.load_publications().unwrap().is_empty(),
            "a rule is no publication"
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn writes_are_durable_across_reopen_and_deletes_stick() {
        let dir = std::env::temp_dir().join(format!("busylamp-sled-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SledStore::open(&dir, Duration::ZERO).unwrap();
            let mut waits = Vec::new();
            for i in 0..200u32 {
                waits.push(s.save_bindings(&format!("sip:{i}@x"), &[sample("sip:c@h", i)]));
            }
            waits.push(s.save_bindings("sip:5@x", &[]));
            for w in waits {
                durable(w).await.unwrap();
            }
        }
        // Reopen: the writer thread of the first store has released the db when its sender
        // dropped; give the OS lock a moment by retrying.
        let mut reopened = None;
        for _ in 0..100 {
            match SledStore::open(&dir, Duration::ZERO) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let s = reopened.expect("reopen");
        let all = s.load_bindings().unwrap();
        assert_eq!(all.len(), 199);
        assert!(all.iter().all(|(aor, _)| aor != "sip:5@x"));
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dialog_calls_survive_reopen_deletes_stick_and_corrupt_records_are_skipped() {
        use crate::config::DialogConfig;
        use crate::dialog::{CallKey, DialogTracker, InviteInfo, Party};
        let dir = std::env::temp_dir().join(format!("busylamp-sled-dlg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut t = DialogTracker::new(&DialogConfig::default());
        let info = InviteInfo {
            caller: Party {
                uri: "sip:1001@example.com".into(),
                aor: Some("sip:1001@example.com".into()),
                ..Party::default()
            },
            callee: Party::default(),
            request_uri: "sip:1002@example.com".into(),
            caller_flow: "udp:192.0.2.7:5060".parse().unwrap(),
            cseq: 1,
        };
        let key = |i: u32| CallKey {
            call_id: format!("call-{i}"),
            from_tag: "f".into(),
        };
        {
            let s = SledStore::open(&dir, Duration::ZERO).unwrap();
            let mut writes = Vec::new();
            for i in 0..3 {
                writes.push(t.invite(key(i), info.clone(), 1_000).unwrap().write);
            }
            let answered = t
                .response(&key(1), Some("t"), 200, None, None, 2_000)
                .unwrap();
            writes.push(answered.write);
            writes.push(t.cancel(&key(2), 3_000).unwrap().write);
            durable(s.write_calls(writes)).await.unwrap();
            // A record from some future or broken version.
            s.trees[Tree::Dialogs.index()]
                .insert(b"junk", &[9u8, 1, 2][..])
                .unwrap();
            durable(s.save_call(b"junk2", vec![1, 0xff])).await.unwrap();
        }
        let mut reopened = None;
        for _ in 0..100 {
            match SledStore::open(&dir, Duration::ZERO) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let s = reopened.expect("reopen");
        let mut calls = s.load_calls().unwrap();
        calls.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(calls.len(), 2);
        assert_eq!(Some(&calls[0]), t.get(&key(0)));
        assert_eq!(Some(&calls[1]), t.get(&key(1)));
        durable(s.delete_call(&crate::storage::dialogs::call_key(&key(0))))
            .await
            .unwrap();
        assert_eq!(s.load_calls().unwrap().len(), 1);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_presence_write_does_not_wait_for_the_flush_interval_of_registrations() {
        let dir = std::env::temp_dir().join(format!("busylamp-sled-urgent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SledStore::open(&dir, Duration::from_millis(800)).unwrap();
        // The first write flushes at once; the second waits for the interval...
        durable(store.save_bindings("sip:a@x", &[])).await.unwrap();
        let waiting = store.save_bindings("sip:b@x", &[]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...and a NOTIFY reservation written meanwhile ends that wait: both are flushed now.
        let started = Instant::now();
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
    async fn writes_beyond_the_bound_are_refused_until_the_disk_catches_up() {
        let dir = std::env::temp_dir().join(format!("busylamp-sled-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The flush interval holds registrations back: the queue fills behind it.
        let s = SledStore::open_bounded(&dir, Duration::from_millis(500), 2).unwrap();
        durable(s.save_bindings("sip:0@x", &[sample("sip:c@h", 0)]))
            .await
            .unwrap();
        // The writer acknowledges first and makes room right after: until it has, the first
        // write still counts as waiting (and `two` below would be the refused one).
        let started = Instant::now();
        while s.write_queue().waiting > 0 && started.elapsed() < Duration::from_secs(5) {
            tokio::task::yield_now().await;
        }
        let one = s.save_bindings("sip:1@x", &[sample("sip:c@h", 1)]);
        let two = s.save_bindings("sip:2@x", &[sample("sip:c@h", 2)]);
        let mut three = s.save_bindings("sip:3@x", &[sample("sip:c@h", 3)]);
        match crate::storage::settled(&mut three) {
            Some(Err(e @ StorageError::Busy { .. })) => {
                assert_eq!(e.answer().status, 503);
                assert_eq!(e.answer().reason, "Storage busy");
                assert!(e.answer().retry_after.is_some());
            }
            other => panic!("a third waiting write was not refused: {other:?}"),
        }
        durable(one).await.unwrap();
        durable(two).await.unwrap();
        // The writer makes room right after acknowledging.
        let started = Instant::now();
        while s.write_queue().waiting > 0 && started.elapsed() < Duration::from_secs(5) {
            tokio::task::yield_now().await;
        }
        let q = s.write_queue();
        assert_eq!((q.waiting, q.high_water, q.refused), (0, 2, 1));
        durable(s.save_bindings("sip:3@x", &[sample("sip:c@h", 3)]))
            .await
            .unwrap();
        // Queued at close: on disk once close returns.
        let last = s.save_bindings("sip:4@x", &[sample("sip:c@h", 4)]);
        s.close().unwrap();
        durable(last).await.unwrap();
        assert!(matches!(
            durable(s.save_bindings("sip:5@x", &[])).await,
            Err(StorageError::WriterGone)
        ));
        drop(s);
        let s = SledStore::open(&dir, Duration::ZERO).unwrap();
        assert_eq!(s.load_bindings().unwrap().len(), 5);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn space_counts_live_key_and_value_bytes_per_tree_and_the_size_on_disk() {
        let dir = std::env::temp_dir().join(format!("busylamp-sled-space-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = SledStore::open(&dir, Duration::ZERO).unwrap();
        let b = [sample("sip:c@h", 1)];
        let value_len = encode_bindings("sip:1@x", &b).len() as u64;
        for round in 0..3 {
            // Rewriting the same records leaves the live data as it was.
            durable(s.save_bindings("sip:1@x", &b)).await.unwrap();
            durable(s.save_bindings("sip:2@x", &b)).await.unwrap();
            durable(s.save_bindings(&format!("sip:gone{round}@x"), &[]))
                .await
                .unwrap();
        }
        durable(s.write(vec![PresenceWrite::NotifySeq {
            key: b"k".to_vec(),
            value: vec![0; 12],
        }]))
        .await
        .unwrap();
        let space = s.space().unwrap().unwrap();
        assert_eq!(space.backend, "sled");
        let tree = |name| space.trees.iter().find(|t| t.name == name).unwrap();
        assert_eq!(tree("bindings").records, 2);
        assert_eq!(
            tree("bindings").bytes,
            2 * ("sip:1@x".len() as u64 + value_len)
        );
        assert_eq!(
            (tree("notify_seq").records, tree("notify_seq").bytes),
            (1, 13)
        );
        assert_eq!(space.records, 3);
        assert_eq!(space.live_bytes, tree("bindings").bytes + 13);
        assert!(space.on_disk > 0);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn open_failure_names_the_path_and_the_fix() {
        let e = match SledStore::open(Path::new("/proc/busylamp-cannot-be-here"), Duration::ZERO) {
            Err(e) => e,
            Ok(_) => panic!("opened in /proc"),
        };
        let msg = e.to_string();
        assert!(msg.contains("/proc/busylamp-cannot-be-here"), "{msg}");
        assert!(msg.contains("writable"), "{msg}");
    }
}
