//! The bounded queue between the request paths and a store's writer. A write that finds
//! `bound` writes already waiting for the disk (queued, or taken by the writer and not yet
//! flushed) is refused at once with [`StorageError::Busy`]: the request that needed it is
//! answered `503` with `Retry-After`, never acknowledged, and memory stays bounded however slow
//! the disk is.
//!
//! The writer takes everything queued in one go (group commit wants exactly that): a plain
//! vector swapped out whole, one lock per write, no allocation per write.

use super::StorageError;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Writes waiting for the disk, per store, unless `[storage] max_queued_writes` says otherwise.
pub const DEFAULT_MAX_QUEUED_WRITES: usize = 16_384;

pub(crate) struct WriteQueue<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
    bound: usize,
}

struct State<T> {
    ops: Vec<T>,
    /// Taken by the writer, not yet acknowledged.
    in_flight: usize,
    /// The most writes ever waiting at once.
    high_water: usize,
    /// Writes refused because the queue was full.
    refused: u64,
    /// What would wake the writer now.
    writer: Writer,
    /// Wake-ups (a futex syscall each, and a context switch for the writer) sent to it.
    wakeups: u64,
    closed: bool,
}

/// Whether the writer sleeps, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Busy,
    /// In `take`: any write wakes it.
    AwaitsAny,
    /// In `wait_until`, gathering a group commit: only an urgent write ends that wait early;
    /// waking it for any other would cost a context switch per write for nothing (at 5,000
    /// registrations/s, about one per registration).
    AwaitsUrgent,
}

impl<T> WriteQueue<T> {
    /// `bound` is at least 1.
    pub fn new(bound: usize) -> WriteQueue<T> {
        let bound = bound.max(1);
        WriteQueue {
            state: Mutex::new(State {
                ops: Vec::with_capacity(bound.min(4096)),
                in_flight: 0,
                high_water: 0,
                refused: 0,
                writer: Writer::Busy,
                wakeups: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            bound,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write, or hands it back with why not: [`StorageError::Busy`] when `bound`
    /// writes are waiting for the disk, [`StorageError::WriterGone`] once closed. Treated as
    /// urgent: it also ends a group-commit wait (see [`WriteQueue::push_marked`]).
    pub fn push(&self, op: T) -> Result<(), (T, StorageError)> {
        self.push_marked(op, true)
    }

    /// [`WriteQueue::push`] for a writer whose `wait_until` is given an `urgent` predicate:
    /// `urgent` must be what that predicate says of `op`. A write that is not urgent does not
    /// wake a writer that is gathering a group commit; it is taken when the wait ends.
    pub fn push_marked(&self, op: T, urgent: bool) -> Result<(), (T, StorageError)> {
        let mut st = self.lock();
        if st.closed {
            return Err((op, StorageError::WriterGone));
        }
        let waiting = st.ops.len() + st.in_flight;
        if waiting >= self.bound {
            st.refused += 1;
            drop(st);
            return Err((op, StorageError::Busy { waiting }));
        }
        st.ops.push(op);
        st.high_water = st.high_water.max(waiting + 1);
        // Only a sleeping writer needs the (syscall) wake-up, and one gathering a group commit
        // only for an urgent write.
        let wake = match st.writer {
            Writer::Busy => false,
            Writer::AwaitsAny => true,
            Writer::AwaitsUrgent => urgent,
        };
        if wake {
            st.writer = Writer::Busy;
            st.wakeups += 1;
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Blocks until there is work and takes all of it; `None` once closed and drained.
    pub fn take(&self, into: &mut Vec<T>) -> Option<()> {
        let mut st = self.lock();
        loop {
            if !st.ops.is_empty() {
                st.in_flight += st.ops.len();
                std::mem::swap(&mut st.ops, into);
                return Some(());
            }
            if st.closed {
                return None;
            }
            st.writer = Writer::AwaitsAny;
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes what is queued without waiting.
    pub fn take_now(&self, into: &mut Vec<T>) {
        let mut st = self.lock();
        st.in_flight += st.ops.len();
        into.append(&mut st.ops);
    }

    /// Waits until `deadline` or until an `urgent` write is queued, whichever comes first,
    /// and takes what was queued meanwhile. Writes queued with `push_marked(op, false)` do not
    /// wake it.
    pub fn wait_until(&self, deadline: Instant, into: &mut Vec<T>, urgent: impl Fn(&T) -> bool) {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            if now >= deadline || st.closed || st.ops.iter().any(&urgent) {
                break;
            }
            st.writer = Writer::AwaitsUrgent;
            st = self
                .wake
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        st.writer = Writer::Busy;
        st.in_flight += st.ops.len();
        into.append(&mut st.ops);
    }

    /// The writer acknowledged `n` writes it had taken: room for as many new ones.
    pub fn written(&self, n: usize) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(n);
    }

    /// Refuses new writes; the writer still drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            waiting: st.ops.len() + st.in_flight,
            high_water: st.high_water,
            refused: st.refused,
            bound: self.bound,
            wakeups: st.wakeups,
        }
    }
}

/// A snapshot of a store's write queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Writes queued or being flushed now.
    pub waiting: usize,
    /// The most ever waiting at once (never above `bound`).
    pub high_water: usize,
    /// Writes refused because `bound` were waiting.
    pub refused: u64,
    pub bound: usize,
    /// Times a write woke the sleeping writer.
    pub wakeups: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_until_the_writer_acknowledges() {
        let q = WriteQueue::new(3);
        for i in 0..3 {
            q.push(i).unwrap();
        }
        let (op, e) = q.push(9).unwrap_err();
        assert_eq!(op, 9, "the refused write is handed back");
        assert!(matches!(e, StorageError::Busy { waiting: 3 }), "{e}");
        // Taken but not yet flushed still counts: memory is held until the ack.
        let mut batch = Vec::new();
        q.take(&mut batch).unwrap();
        assert_eq!(batch, vec![0, 1, 2]);
        assert!(q.push(9).is_err());
        q.written(2);
        q.push(3).unwrap();
        q.push(4).unwrap();
        assert!(q.push(5).is_err());
        let s = q.stats();
        assert_eq!((s.waiting, s.high_water, s.refused, s.bound), (3, 3, 3, 3));
        q.close();
        assert!(matches!(q.push(6), Err((6, StorageError::WriterGone))));
        // Closed, the queued writes still reach the writer, then it stops.
        let mut rest = Vec::new();
        q.take(&mut rest).unwrap();
        assert_eq!(rest, vec![3, 4]);
        rest.clear();
        assert!(q.take(&mut rest).is_none());
    }

    #[test]
    fn a_group_commit_wait_is_ended_by_an_urgent_write_only() {
        use std::sync::Arc;
        use std::time::Duration;
        let q = Arc::new(WriteQueue::new(100));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                let started = Instant::now();
                // A deadline far away: only an urgent write (odd numbers here) ends the wait.
                q.wait_until(started + Duration::from_secs(60), &mut batch, |op| {
                    op % 2 == 1
                });
                (batch, started.elapsed())
            })
        };
        let asleep = |q: &WriteQueue<u32>| q.lock().writer == Writer::AwaitsUrgent;
        while !asleep(&q) {
            std::thread::yield_now();
        }
        for op in [0, 2, 4, 6] {
            q.push_marked(op, false).unwrap();
        }
        assert_eq!(
            q.stats().wakeups,
            0,
            "writes that are not urgent wake nobody"
        );
        assert!(asleep(&q), "the writer still gathers");
        q.push_marked(7, true).unwrap();
        let (batch, took) = writer.join().unwrap();
        assert_eq!(
            batch,
            vec![0, 2, 4, 6, 7],
            "the wait takes everything queued meanwhile"
        );
        assert!(
            took < Duration::from_secs(30),
            "ended by the urgent write: {took:?}"
        );
        assert_eq!(q.stats().wakeups, 1);
    }

    #[test]
    fn a_writer_waiting_for_work_is_woken_by_any_write() {
        use std::sync::Arc;
        let q = Arc::new(WriteQueue::new(100));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                q.take(&mut batch).unwrap();
                batch
            })
        };
        while q.lock().writer != Writer::AwaitsAny {
            std::thread::yield_now();
        }
        q.push_marked(2, false).unwrap();
        assert_eq!(writer.join().unwrap(), vec![2]);
        assert_eq!(q.stats().wakeups, 1);
    }
}
