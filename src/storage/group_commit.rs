//! What the disk stores (sled, redb) share: the record trees, the bounded write queue and the
//! writer thread's group commit. One writer thread applies every write queued since its last
//! commit as one group, makes it durable once (one fsync), then acknowledges them all. Under
//! load many REGISTERs share one fsync; when idle a write is committed at once. The queue is
//! bounded ([`WriteQueue`]): a write that finds it full is refused at once, never queued
//! unboundedly. A database engine only says how one group is applied and made durable
//! ([`Commit`]).

use super::dialogs::DialogWrite;
use super::flush_times::FlushTimes;
use super::presence::PresenceWrite;
use super::queue::{QueueStats, WriteQueue};
use super::{Durable, StorageError, StoreStats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The kinds of records, one tree (sled) or table (redb) each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tree {
    Bindings,
    Publications,
    Subscriptions,
    NotifySeq,
    Dialogs,
    Rules,
}

pub(crate) const TREES: [Tree; 6] = [
    Tree::Bindings,
    Tree::Publications,
    Tree::Subscriptions,
    Tree::NotifySeq,
    Tree::Dialogs,
    Tree::Rules,
];

impl Tree {
    /// The tree's (table's) name in the database: never change one, it is on disk.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tree::Bindings => "bindings",
            Tree::Publications => "publications",
            Tree::Subscriptions => "subscriptions",
            Tree::NotifySeq => "notify_seq",
            Tree::Dialogs => "dialogs",
            Tree::Rules => "presence_rules",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One record written (`Some` value) or deleted (`None`).
pub(crate) type Put = (Tree, Vec<u8>, Option<Vec<u8>>);

/// One queued write: a single record (a REGISTER), or several that belong together (a PUBLISH
/// and the NOTIFY state it causes). The writer applies them in queue order.
pub(crate) enum Writes {
    One(Put),
    Many(Vec<Put>),
}

pub(crate) struct WriteOp {
    writes: Writes,
    done: oneshot::Sender<Result<(), StorageError>>,
    /// Decided when it is queued: see [`Writes::urgent`] and [`GroupCommit::submit_unawaited`].
    urgent: bool,
}

impl Writes {
    /// Someone is waiting on this write to send a NOTIFY or answer a SUBSCRIBE/PUBLISH: a
    /// lamp is late by as long as it waits. Registrations (answered in bulk, where the
    /// minimum flush interval buys throughput) and call records (not waited for) are not.
    fn urgent(&self) -> bool {
        let presence = |t: &Tree| !matches!(t, Tree::Bindings | Tree::Dialogs);
        match self {
            Writes::One((t, _, _)) => presence(t),
            Writes::Many(list) => list.iter().any(|(t, _, _)| presence(t)),
        }
    }
}

impl WriteOp {
    fn urgent(&self) -> bool {
        self.urgent
    }

    /// Each record of this write, in order.
    pub(crate) fn puts(&self) -> &[Put] {
        match &self.writes {
            Writes::One(put) => std::slice::from_ref(put),
            Writes::Many(list) => list,
        }
    }
}

/// How an engine applies one group of writes, in queue order, and makes it durable.
pub(crate) trait Commit: Send + 'static {
    fn commit(&mut self, group: &[WriteOp]) -> Result<(), StorageError>;
    /// Called once when the writer stops, after the last group.
    fn finish(&mut self) {}
}

/// Initial capacity of the writer's batch (it grows under bursts and keeps its size).
const MAX_BATCH: usize = 4096;

/// The queue and the writer thread of one store.
pub(crate) struct GroupCommit {
    queue: Arc<WriteQueue<WriteOp>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    opened: Instant,
    /// Second (since `opened`, plus one) of the last warning about refused writes.
    last_refusal_warning: AtomicU64,
    /// How long each commit of the writer took.
    flush_times: Arc<FlushTimes>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl GroupCommit {
    /// Starts the writer thread over `engine`: commits at least `interval` apart under load,
    /// at most `max_queued_writes` writes waiting.
    pub(crate) fn start(
        engine: impl Commit,
        interval: Duration,
        max_queued_writes: usize,
    ) -> std::io::Result<GroupCommit> {
        let queue = Arc::new(WriteQueue::new(max_queued_writes));
        let flush_times = Arc::new(FlushTimes::default());
        let (wqueue, wtimes) = (queue.clone(), flush_times.clone());
        let writer = std::thread::Builder::new()
            .name("busylamp-store".into())
            .spawn(move || writer_loop(&wqueue, engine, interval, &wtimes))?;
        Ok(GroupCommit {
            queue,
            writer: Mutex::new(Some(writer)),
            opened: Instant::now(),
            last_refusal_warning: AtomicU64::new(0),
            flush_times,
        })
    }

    pub(crate) fn submit(&self, writes: Writes) -> Durable {
        let urgent = writes.urgent();
        self.queue_op(writes, urgent)
    }

    /// As [`GroupCommit::submit`], for a write nobody answers or sends after (the state an
    /// in-process publisher sets: presence from a registration, a call's dialog state): it
    /// never ends a group commit's wait, and goes with the next commit. Before, each such
    /// publication ended the wait at once, so under a REGISTER storm with presence from
    /// registrations on, a commit carried about two registrations instead of a flush
    /// interval's worth (redb's cost is per commit). A write queued after it (a NOTIFY
    /// reservation, which is urgent) still takes it along: commits keep the queue's order.
    pub(crate) fn submit_unawaited(&self, writes: Writes) -> Durable {
        self.queue_op(writes, false)
    }

    fn queue_op(&self, writes: Writes, urgent: bool) -> Durable {
        let (done, rx) = oneshot::channel();
        let op = WriteOp {
            writes,
            done,
            urgent,
        };
        // A write that is not urgent does not wake a writer gathering a group commit.
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

    pub(crate) fn write_queue(&self) -> QueueStats {
        self.queue.stats()
    }

    /// Refuses new writes, commits every queued one and waits for the writer thread to end.
    pub(crate) fn stop(&self) -> Result<(), StorageError> {
        self.queue.close();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            w.join()
                .map_err(|_| StorageError::Write("the writer thread panicked".into()))?;
        }
        Ok(())
    }

    pub(crate) fn flush_times(&self) -> Arc<FlushTimes> {
        self.flush_times.clone()
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let q = self.queue.stats();
        let f = self.flush_times.snapshot();
        let ms = |d: Duration| (f.count > 0).then_some(d.as_secs_f64() * 1000.0);
        StoreStats {
            flush_ms_last: ms(f.last),
            flush_ms_max: ms(f.max),
            queued: q.waiting,
            refused: q.refused,
        }
    }
}

/// The records a presence write touches (a deleted subscription takes its NOTIFY counters).
pub(crate) fn presence_puts(writes: Vec<PresenceWrite>) -> Writes {
    let mut list = Vec::with_capacity(writes.len());
    for w in writes {
        let item = match w {
            PresenceWrite::PutPublication { key, value } => (Tree::Publications, key, Some(value)),
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
    Writes::Many(list)
}

pub(crate) fn dialog_puts(writes: Vec<DialogWrite>) -> Writes {
    Writes::Many(
        writes
            .into_iter()
            .map(|w| match w {
                DialogWrite::Put { key, value } => (Tree::Dialogs, key, Some(value)),
                DialogWrite::Delete(key) => (Tree::Dialogs, key, None),
            })
            .collect(),
    )
}

/// Decodes every record of a tree; corrupt ones are logged and skipped so one bad record
/// cannot keep the server from starting.
pub(crate) fn decode_all<T, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    tree: Tree,
    records: impl IntoIterator<Item = Result<(K, V), StorageError>>,
    decode: impl Fn(&[u8]) -> Result<T, super::DecodeError>,
) -> Result<Vec<T>, StorageError> {
    let mut out = Vec::new();
    for item in records {
        let (key, value) = item?;
        match decode(value.as_ref()) {
            Ok(rec) => out.push(rec),
            Err(e) => tracing::error!(
                tree = tree.name(),
                key = %String::from_utf8_lossy(key.as_ref()),
                error = %e,
                "skipping corrupt record"
            ),
        }
    }
    Ok(out)
}

fn writer_loop(
    queue: &WriteQueue<WriteOp>,
    mut engine: impl Commit,
    interval: Duration,
    flush_times: &FlushTimes,
) {
    // Group commit with a minimum interval between commits: when idle, a write is committed at
    // once; under load, commits are at least `interval` apart and each carries every write
    // that arrived meanwhile. The fsync per commit is what costs; this bounds their rate.
    // A batch with an urgent (presence) write is committed as soon as the previous commit is
    // done: writes that arrived during that commit still share this one, so the fsync rate
    // stays bounded by the commit time, and a lamp waits one commit, not the interval.
    let mut last_flush: Option<Instant> = None;
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    while queue.take(&mut batch).is_some() {
        let urgent = batch.iter().any(WriteOp::urgent);
        if let (Some(last), false) = (last_flush, urgent) {
            // Writes that come in while we wait share this commit; an urgent one ends the wait.
            queue.wait_until(last + interval, &mut batch, WriteOp::urgent);
        }
        let started = Instant::now();
        last_flush = Some(started);
        let result = engine.commit(&batch);
        flush_times.record(started.elapsed());
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = batch.len(), "storage flush failed");
        }
        let n = batch.len();
        for op in batch.drain(..) {
            let _ = op.done.send(result.clone());
        }
        queue.written(n);
    }
    engine.finish();
}
