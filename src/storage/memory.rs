//! In-memory store for tests: same traits, writes "durable" at once, unless a test stalls the
//! "disk" ([`MemoryStore::stall_disk`]): writes then wait in the same bounded queue the sled
//! store uses, are refused with [`StorageError::Busy`] when it is full, and reach the store
//! only when the test flushes ([`MemoryStore::flush_disk`]). What `load_*` returns is what is
//! "on disk".

use super::dialogs::{decode_call, DialogStore, DialogWrite};
use super::presence::{
    decode_notify_seq, decode_publication, decode_rule, decode_subscription, merge_notify_seq,
    PresenceStore, PresenceWrite, PublicationRecord, RuleRecord, SubscriptionRecord,
};
use super::queue::{QueueStats, WriteQueue, DEFAULT_MAX_QUEUED_WRITES};
use super::{resolved, Binding, BindingStore, Durable, StorageError};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub struct MemoryStore {
    bindings: Mutex<BTreeMap<String, Vec<Binding>>>,
    publications: Mutex<BTreeMap<Vec<u8>, PublicationRecord>>,
    subscriptions: Mutex<BTreeMap<Vec<u8>, SubscriptionRecord>>,
    notify_seq: Mutex<BTreeMap<Vec<u8>, (u32, u32)>>,
    rules: Mutex<BTreeMap<Vec<u8>, RuleRecord>>,
    dialogs: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Whether the disk is stalled; held while writing, so writes reach the maps in order.
    stalled: Mutex<bool>,
    queue: WriteQueue<QueuedWrite>,
    /// Presence records handed to [`PresenceStore::write`], by kind.
    presence_writes: Mutex<PresenceWriteCounts>,
}

/// How many presence records of each kind were handed to the store (queued or written), for
/// tests that check what a request costs the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceWriteCounts {
    /// Publications put or deleted.
    pub publications: u64,
    /// Subscription records put or deleted.
    pub subscriptions: u64,
    /// Reservations of NOTIFY CSeqs and versions.
    pub reservations: u64,
    /// Calls to `write`.
    pub batches: u64,
}

enum Write {
    Bindings(String, Vec<Binding>),
    Presence(Vec<PresenceWrite>),
    Calls(Vec<DialogWrite>),
}

struct QueuedWrite {
    write: Write,
    done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_max_queued_writes(DEFAULT_MAX_QUEUED_WRITES)
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose queue holds at most `bound` writes while the disk is stalled.
    pub fn with_max_queued_writes(bound: usize) -> Self {
        MemoryStore {
            bindings: Default::default(),
            publications: Default::default(),
            subscriptions: Default::default(),
            notify_seq: Default::default(),
            rules: Default::default(),
            dialogs: Default::default(),
            stalled: Mutex::new(false),
            queue: WriteQueue::new(bound),
            presence_writes: Default::default(),
        }
    }

    /// From now on writes wait in the queue (a slow or stuck disk) until [`Self::flush_disk`]
    /// or [`Self::resume_disk`].
    pub fn stall_disk(&self) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// The disk catches up: every queued write is stored, in order, and acknowledged. The disk
    /// stays stalled for later writes. Returns how many were written.
    pub fn flush_disk(&self) -> usize {
        let _stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_queued()
    }

    /// Flushes what is queued and writes at once again.
    pub fn resume_disk(&self) -> usize {
        let mut stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        *stalled = false;
        self.flush_queued()
    }

    /// A crash: the writes waiting for the stalled disk are lost (their waiters hear of a
    /// failure). Returns how many.
    pub fn lose_queued(&self) -> usize {
        let _stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Vec::new();
        self.queue.take_now(&mut batch);
        let n = batch.len();
        for q in batch {
            let _ = q
                .done
                .send(Err(StorageError::Write("lost in a crash".into())));
        }
        self.queue.written(n);
        n
    }

    /// Presence records handed to the store so far, by kind.
    pub fn presence_writes(&self) -> PresenceWriteCounts {
        *self
            .presence_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The write queue now (how many writes wait, the most ever, how many were refused).
    pub fn write_queue(&self) -> QueueStats {
        self.queue.stats()
    }

    /// Called with `stalled` held.
    fn flush_queued(&self) -> usize {
        let mut batch = Vec::new();
        self.queue.take_now(&mut batch);
        let n = batch.len();
        for q in batch {
            self.apply(q.write);
            let _ = q.done.send(Ok(()));
        }
        self.queue.written(n);
        n
    }

    fn submit(&self, write: Write) -> Durable {
        let stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        if !*stalled {
            self.apply(write);
            return resolved(Ok(()));
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        match self.queue.push(QueuedWrite { write, done }) {
            Ok(()) => rx,
            Err((_, e)) => resolved(Err(e)),
        }
    }

    fn apply(&self, write: Write) {
        match write {
            Write::Bindings(aor, bindings) => {
                let mut map = self.bindings.lock().unwrap_or_else(|p| p.into_inner());
                if bindings.is_empty() {
                    map.remove(&aor);
                } else {
                    map.insert(aor, bindings);
                }
            }
            Write::Presence(writes) => self.apply_presence(writes),
            Write::Calls(writes) => {
                let mut map = self.dialogs.lock().unwrap_or_else(|p| p.into_inner());
                for w in writes {
                    match w {
                        DialogWrite::Put { key, value } => {
                            map.insert(key, value);
                        }
                        DialogWrite::Delete(key) => {
                            map.remove(&key);
                        }
                    }
                }
            }
        }
    }

    fn apply_presence(&self, writes: Vec<PresenceWrite>) {
        let mut pubs = self.publications.lock().unwrap_or_else(|p| p.into_inner());
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let mut seqs = self.notify_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        for w in writes {
            match w {
                PresenceWrite::PutPublication { key, value } => {
                    if let Ok(p) = decode_publication(&value) {
                        pubs.insert(key, p);
                    }
                }
                PresenceWrite::DeletePublication(k) => {
                    pubs.remove(&k);
                }
                PresenceWrite::PutSubscription { key, value } => {
                    if let Ok(s) = decode_subscription(&value) {
                        subs.insert(key, s);
                    }
                }
                PresenceWrite::DeleteSubscription(k) => {
                    seqs.remove(&k);
                    subs.remove(&k);
                }
                PresenceWrite::NotifySeq { key, value } => {
                    if let Ok(v) = decode_notify_seq(&value) {
                        seqs.insert(key, v);
                    }
                }
                PresenceWrite::PutRule { key, value } => {
                    if let Ok(r) = decode_rule(&value) {
                        rules.insert(key, r);
                    }
                }
                PresenceWrite::DeleteRule(k) => {
                    rules.remove(&k);
                }
            }
        }
    }
}

impl BindingStore for MemoryStore {
    fn load_bindings(&self) -> Result<Vec<(String, Vec<Binding>)>, StorageError> {
        let map = self
            .bindings
            .lock()
            .map_err(|_| StorageError::Read("poisoned".into()))?;
        Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn save_bindings(&self, aor: &str, bindings: &[Binding]) -> Durable {
        self.submit(Write::Bindings(aor.to_string(), bindings.to_vec()))
    }
}

impl PresenceStore for MemoryStore {
    fn load_publications(&self) -> Result<Vec<PublicationRecord>, StorageError> {
        let map = self
            .publications
            .lock()
            .map_err(|_| StorageError::Read("poisoned".into()))?;
        Ok(map.values().cloned().collect())
    }

    fn load_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let map = self
            .subscriptions
            .lock()
            .map_err(|_| StorageError::Read("poisoned".into()))?;
        let seqs = self.notify_seq.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .iter()
            .map(|(k, r)| merge_notify_seq(r.clone(), seqs.get(k).copied()))
            .collect())
    }

    fn stats(&self) -> Option<super::StoreStats> {
        let q = self.queue.stats();
        Some(super::StoreStats {
            flush_ms_last: None,
            flush_ms_max: None,
            queued: q.waiting,
            refused: q.refused,
        })
    }

    fn load_rules(&self) -> Result<Vec<RuleRecord>, StorageError> {
        let map = self
            .rules
            .lock()
            .map_err(|_| StorageError::Read("poisoned".into()))?;
        Ok(map.values().cloned().collect())
    }

    fn space(&self) -> Option<Result<super::StorageSpace, StorageError>> {
        use super::presence::{
            encode_notify_seq, encode_publication, encode_rule, encode_subscription,
        };
        use super::TreeSpace;
        // The records as the disk stores would encode them: the same live bytes.
        fn tree<K: AsRef<[u8]>, V>(
            name: &'static str,
            map: &Mutex<BTreeMap<K, V>>,
            encoded_len: impl Fn(&K, &V) -> usize,
        ) -> TreeSpace {
            let map = map.lock().unwrap_or_else(|p| p.into_inner());
            TreeSpace {
                name,
                records: map.len() as u64,
                bytes: map
                    .iter()
                    .map(|(k, v)| (k.as_ref().len() + encoded_len(k, v)) as u64)
                    .sum(),
            }
        }
        let trees = vec![
            tree("bindings", &self.bindings, |aor, b| {
                super::encode_bindings(aor, b).len()
            }),
            tree("publications", &self.publications, |_, p| {
                encode_publication(p).len()
            }),
            tree("subscriptions", &self.subscriptions, |_, s| {
                encode_subscription(s).len()
            }),
            tree("notify_seq", &self.notify_seq, |_, (c, v)| {
                encode_notify_seq(*c, *v).len()
            }),
            tree("dialogs", &self.dialogs, |_, v| v.len()),
            tree("presence_rules", &self.rules, |_, r| encode_rule(r).len()),
        ];
        Some(Ok(super::StorageSpace::from_trees("memory", 0, trees)))
    }

    fn write(&self, writes: Vec<PresenceWrite>) -> Durable {
        {
            let mut c = self
                .presence_writes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            c.batches += 1;
            for w in &writes {
                match w {
                    PresenceWrite::PutPublication { .. } | PresenceWrite::DeletePublication(_) => {
                        c.publications += 1
                    }
                    PresenceWrite::PutSubscription { .. }
                    | PresenceWrite::DeleteSubscription(_) => c.subscriptions += 1,
                    PresenceWrite::NotifySeq { .. } => c.reservations += 1,
                    PresenceWrite::PutRule { .. } | PresenceWrite::DeleteRule(_) => {}
                }
            }
        }
        self.submit(Write::Presence(writes))
    }
}

impl DialogStore for MemoryStore {
    fn load_calls(&self) -> Result<Vec<crate::dialog::Call>, StorageError> {
        let map = self
            .dialogs
            .lock()
            .map_err(|_| StorageError::Read("poisoned".into()))?;
        Ok(map.values().filter_map(|v| decode_call(v).ok()).collect())
    }

    fn write_calls(&self, writes: Vec<DialogWrite>) -> Durable {
        self.submit(Write::Calls(writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::dialogs::{call_key, encode_call};

    #[tokio::test]
    async fn dialog_calls_put_and_delete() {
        use crate::config::DialogConfig;
        use crate::dialog::{CallKey, DialogTracker, InviteInfo, Party};
        let mut t = DialogTracker::new(&DialogConfig::default());
        let key = CallKey {
            call_id: "c".into(),
            from_tag: "f".into(),
        };
        let info = InviteInfo {
            caller: Party::default(),
            callee: Party::default(),
            request_uri: "sip:x@y".into(),
            caller_flow: "udp:192.0.2.1:5060".parse().unwrap(),
            cseq: 1,
        };
        let u = t.invite(key.clone(), info, 0).unwrap();
        let m = MemoryStore::new();
        super::super::durable(m.apply_call(u.write)).await.unwrap();
        assert_eq!(m.load_calls().unwrap(), vec![u.call.clone()]);
        m.save_call(&call_key(&key), encode_call(&u.call));
        m.delete_call(&call_key(&key));
        assert!(m.load_calls().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stalled_disk_queues_up_to_the_bound_refuses_beyond_and_stores_on_flush() {
        use crate::storage::{durable, settled};
        let m = MemoryStore::with_max_queued_writes(2);
        m.stall_disk();
        let a = m.save_bindings("sip:a@x", &[crate::storage::tests::sample("sip:a@h")]);
        let b = m.save_bindings("sip:b@x", &[crate::storage::tests::sample("sip:b@h")]);
        let mut c = m.save_bindings("sip:c@x", &[crate::storage::tests::sample("sip:c@h")]);
        assert!(
            matches!(
                settled(&mut c),
                Some(Err(StorageError::Busy { waiting: 2 }))
            ),
            "the third write is refused at once"
        );
        assert!(m.load_bindings().unwrap().is_empty(), "nothing on disk yet");
        assert_eq!(m.write_queue().waiting, 2);
        assert_eq!(m.flush_disk(), 2);
        durable(a).await.unwrap();
        durable(b).await.unwrap();
        let stored: Vec<String> = m
            .load_bindings()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(stored, ["sip:a@x", "sip:b@x"]);
        let s = m.write_queue();
        assert_eq!((s.waiting, s.high_water, s.refused), (0, 2, 1));
        m.resume_disk();
        durable(m.save_bindings("sip:c@x", &[])).await.unwrap();
    }
}
