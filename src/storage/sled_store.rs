//! sled-backed store with group commit: one writer thread applies every write queued since its
//! last flush as one batch, flushes once, then acknowledges them all. Under load many
//! REGISTERs share one fsync; when idle a write is flushed at once. The queue is bounded
//! ([`WriteQueue`]): a write that finds it full is refused at once, never queued unboundedly.

use super::dialogs::{decode_call, DialogStore, DialogWrite};
use super::flush_times::FlushTimes;
use super::presence::{
    decode_notify_seq, decode_publication, decode_rule, decode_subscription, merge_notify_seq,
    PresenceStore, PresenceWrite, PublicationRecord, RuleRecord, SubscriptionRecord,
};
use super::queue::{QueueStats, WriteQueue, DEFAULT_MAX_QUEUED_WRITES};
use super::{decode_bindings, encode_bindings, Binding, BindingStore, Durable, StorageError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One queued write: a single record (a REGISTER), or several that belong together (a PUBLISH
/// and the NOTIFY state it causes). The writer applies them in queue order.
enum Writes {
    One(Tree, Vec<u8>, Option<Vec<u8>>),
    Many(Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>),
}

struct WriteOp {
    writes: Writes,
    done: oneshot::Sender<Result<(), StorageError>>,
}

impl WriteOp {
    /// Someone is waiting on this write to send a NOTIFY or answer a SUBSCRIBE/PUBLISH: a
    /// lamp is late by as long as it waits. Registrations (answered in bulk, where the
    /// minimum flush interval buys throughput) and call records (not waited for) are not.
    fn urgent(&self) -> bool {
        let presence = |t: &Tree| !matches!(t, Tree::Bindings | Tree::Dialogs);
        match &self.writes {
            Writes::One(t, _, _) => presence(t),
            Writes::Many(list) => list.iter().any(|(t, _, _)| presence(t)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tree {
    Bindings,
    Publications,
    Subscriptions,
    NotifySeq,
    Dialogs,
    Rules,
}

const TREES: [Tree; 6] = [
    Tree::Bindings,
    Tree::Publications,
    Tree::Subscriptions,
    Tree::NotifySeq,
    Tree::Dialogs,
    Tree::Rules,
];

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Bindings => "bindings",
            Tree::Publications => "publications",
            Tree::Subscriptions => "subscriptions",
            Tree::NotifySeq => "notify_seq",
            Tree::Dialogs => "dialogs",
            Tree::Rules => "presence_rules",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub struct SledStore {
    db: sled::Db,
    trees: [sled::Tree; TREES.len()],
    queue: Arc<WriteQueue<WriteOp>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    opened: Instant,
    /// Second (since `opened`, plus one) of the last warning about refused writes.
    last_refusal_warning: AtomicU64,
    /// How long each flush of the writer took.
    flush_times: Arc<FlushTimes>,
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Initial capacity of the writer's batch (it grows under bursts and keeps its size).
const MAX_BATCH: usize = 4096;

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
        let db = sled::Config::new()
            .path(dir.join("db"))
            .mode(sled::Mode::HighThroughput)
            // Our writer is the only one that flushes: one flush per group commit, and an
            // acknowledged write is never waiting on sled's own timer.
            .flush_every_ms(None)
            // sled's default page cache is 1 GiB; bindings are a few hundred bytes each and
            // all live in the registrar's memory anyway.
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let open_tree = |t: Tree| db.open_tree(t.name()).map_err(|e| open_err(e.to_string()));
        let trees = [
            open_tree(Tree::Bindings)?,
            open_tree(Tree::Publications)?,
            open_tree(Tree::Subscriptions)?,
            open_tree(Tree::NotifySeq)?,
            open_tree(Tree::Dialogs)?,
            open_tree(Tree::Rules)?,
        ];
        let queue = Arc::new(WriteQueue::new(max_queued_writes));
        let wdb = db.clone();
        let wtrees = trees.clone();
        let wqueue = queue.clone();
        let flush_times = Arc::new(FlushTimes::default());
        let wtimes = flush_times.clone();
        let writer = std::thread::Builder::new()
            .name("busylamp-store".into())
            .spawn(move || writer_loop(&wqueue, wdb, wtrees, flush_interval, &wtimes))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(SledStore {
            db,
            trees,
            queue,
            writer: Mutex::new(Some(writer)),
            opened: Instant::now(),
            last_refusal_warning: AtomicU64::new(0),
            flush_times,
        })
    }

    fn submit(&self, writes: Writes) -> Durable {
        let (done, rx) = oneshot::channel();
        let op = WriteOp { writes, done };
        let urgent = op.urgent();
        if let Err((op, e)) = self.queue.push_marked(op, urgent) {
            if matches!(e, StorageError::Busy { .. }) {
                self.warn_refused(&e);
            }
            let _ = op.done.send(Err(e));
        }
        rx
    }

    /// Warns of refused writes at most once a second (a flood refuses thousands).
    fn warn_refused(&self, e: &StorageError) {
        let now = self.opened.elapsed().as_secs() + 1;
        let last = self.last_refusal_warning.load(Ordering::Relaxed);
        if now > last
            && self
                .last_refusal_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.queue.stats().refused;
            tracing::warn!(error = %e, refused, "writes refused (503): the disk is behind");
        }
    }

    /// The write queue now: how many writes wait for the disk, the most ever, how many were
    /// refused.
    pub fn write_queue(&self) -> QueueStats {
        self.queue.stats()
    }

    /// Refuses new writes, flushes every queued one and waits for the writer thread to end
    /// (for shutdown: a write accepted before this is on disk when it returns). Blocking.
    pub fn close(&self) -> Result<(), StorageError> {
        self.queue.close();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            w.join()
                .map_err(|_| StorageError::Write("the writer thread panicked".into()))?;
        }
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StorageError::Write(e.to_string()))
    }

    /// Bytes the database occupies on disk (for the memory-per-binding report).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn writer_loop(
    queue: &WriteQueue<WriteOp>,
    db: sled::Db,
    trees: [sled::Tree; TREES.len()],
    interval: Duration,
    flush_times: &FlushTimes,
) {
    // Group commit with a minimum interval between flushes: when idle, a write is flushed at
    // once; under load, flushes are at least `interval` apart and each carries every write
    // that arrived meanwhile. The fsync per flush is what costs; this bounds their rate.
    // A batch with an urgent (presence) write is flushed as soon as the previous flush is
    // done: writes that arrived during that flush still share this one, so the fsync rate
    // stays bounded by the flush time, and a lamp waits one flush, not the interval.
    let mut last_flush: Option<Instant> = None;
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    while queue.take(&mut batch).is_some() {
        let urgent = batch.iter().any(WriteOp::urgent);
        if let (Some(last), false) = (last_flush, urgent) {
            // Writes that come in while we wait share this flush; an urgent one ends the wait.
            queue.wait_until(last + interval, &mut batch, WriteOp::urgent);
        }
        // One sled batch per tree, applied in queue order within each tree; records of
        // different trees never depend on their relative order.
        let mut batches: [Option<sled::Batch>; TREES.len()] = Default::default();
        let mut add = |tree: Tree, key: &[u8], value: &Option<Vec<u8>>| {
            let b = batches[tree.index()].get_or_insert_with(sled::Batch::default);
            match value {
                Some(v) => b.insert(key, v.as_slice()),
                None => b.remove(key),
            }
        };
        for op in &batch {
            match &op.writes {
                Writes::One(tree, key, value) => add(*tree, key, value),
                Writes::Many(list) => {
                    for (tree, key, value) in list {
                        add(*tree, key, value);
                    }
                }
            }
        }
        let flush_started = Instant::now();
        last_flush = Some(flush_started);
        let mut result = Ok(());
        for t in TREES {
            if let Some(b) = batches[t.index()].take() {
                if let Err(e) = trees[t.index()].apply_batch(b) {
                    result = Err(StorageError::Write(e.to_string()));
                }
            }
        }
        let result = result.and_then(|_| {
            db.flush()
                .map(|_| ())
                .map_err(|e| StorageError::Write(e.to_string()))
        });
        flush_times.record(flush_started.elapsed());
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = batch.len(), "storage flush failed");
        }
        let n = batch.len();
        for op in batch.drain(..) {
            let _ = op.done.send(result.clone());
        }
        queue.written(n);
    }
    let _ = db.flush();
}

impl BindingStore for SledStore {
    fn load_bindings(&self) -> Result<Vec<(String, Vec<Binding>)>, StorageError> {
        let mut out = Vec::new();
        for item in self.trees[Tree::Bindings.index()].iter() {
            let (key, value) = item.map_err(|e| StorageError::Read(e.to_string()))?;
            match decode_bindings(&value) {
                Ok(rec) => out.push(rec),
                Err(e) => {
                    // One bad record must not stop the registrar from starting.
                    tracing::error!(key = %String::from_utf8_lossy(&key), error = %e, "skipping corrupt binding record");
                }
            }
        }
        Ok(out)
    }

    fn flush_times(&self) -> Option<Arc<FlushTimes>> {
        Some(self.flush_times.clone())
    }

    fn save_bindings(&self, aor: &str, bindings: &[Binding]) -> Durable {
        let value = if bindings.is_empty() {
            None
        } else {
            Some(encode_bindings(aor, bindings))
        };
        self.submit(Writes::One(Tree::Bindings, aor.as_bytes().to_vec(), value))
    }
}

impl SledStore {
    /// Every record of a tree that decodes; corrupt ones are logged and skipped so one bad
    /// record cannot keep the server from starting.
    fn load_tree<T>(
        &self,
        tree: Tree,
        decode: impl Fn(&[u8]) -> Result<T, super::DecodeError>,
    ) -> Result<Vec<T>, StorageError> {
        let mut out = Vec::new();
        for item in self.trees[tree.index()].iter() {
            let (key, value) = item.map_err(|e| StorageError::Read(e.to_string()))?;
            match decode(&value) {
                Ok(rec) => out.push(rec),
                Err(e) => tracing::error!(
                    tree = tree.name(),
                    key = %String::from_utf8_lossy(&key),
                    error = %e,
                    "skipping corrupt record"
                ),
            }
        }
        Ok(out)
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
        let q = self.queue.stats();
        let f = self.flush_times.snapshot();
        let ms = |d: Duration| (f.count > 0).then_some(d.as_secs_f64() * 1000.0);
        Some(super::StoreStats {
            flush_ms_last: ms(f.last),
            flush_ms_max: ms(f.max),
            queued: q.waiting,
            refused: q.refused,
        })
    }

    fn write(&self, writes: Vec<PresenceWrite>) -> Durable {
        let mut list = Vec::with_capacity(writes.len());
        for w in writes {
            let item = match w {
                PresenceWrite::PutPublication { key, value } => {
                    (Tree::Publications, key, Some(value))
                }
                PresenceWrite::DeletePublication(k) => (Tree::Publications, k, None),
                PresenceWrite::PutSubscription { key, value } => {
                    (Tree::Subscriptions, key, Some(value))
                }
                PresenceWrite::DeleteSubscription(k) => {
                    list.push((Tree::NotifySeq, k.clone(), None));
                    (Tree::Subscriptions, k, None)
                }
                PresenceWrite::NotifySeq { key, value } => (Tree::NotifySeq, key, Some(value)),
                PresenceWrite::PutRule { key, value } => (Tree::Rules, key, Some(value)),
                PresenceWrite::DeleteRule(k) => (Tree::Rules, k, None),
            };
            list.push(item);
        }
        self.submit(Writes::Many(list))
    }
}

impl DialogStore for SledStore {
    fn load_calls(&self) -> Result<Vec<crate::dialog::Call>, StorageError> {
        self.load_tree(Tree::Dialogs, decode_call)
    }

    fn write_calls(&self, writes: Vec<DialogWrite>) -> Durable {
        let list = writes
            .into_iter()
            .map(|w| match w {
                DialogWrite::Put { key, value } => (Tree::Dialogs, key, Some(value)),
                DialogWrite::Delete(key) => (Tree::Dialogs, key, None),
            })
            .collect();
        self.submit(Writes::Many(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::durable;

    fn sample(contact: &str, cseq: u32) -> Binding {
        Binding {
            contact: contact.into(),
            params: String::new(),
            q: 1000,
            expires_at: 2_000_000_000,
            call_id: "x".into(),
            cseq,
            path: vec![],
            instance: None,
            reg_id: None,
            user_agent: None,
            source: "udp:127.0.0.1:1".into(),
            registered_at: 1,
        }
    }

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
