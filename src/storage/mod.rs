//! Durable state. One trait per record kind; disk implementations (redb, sled) sharing one
//! group commit, and an in-memory one for tests. Nothing above this module sees a database
//! type.
//!
//! A write returns a [`Durable`] that resolves once the record is flushed to disk: the
//! registrar answers 2xx only after that (acknowledged means durable).

pub mod codec;
pub mod dialogs;
pub mod disk;
pub mod flush_times;
mod group_commit;
pub mod memory;
pub mod presence;
pub mod queue;
pub mod redb_store;
pub mod sled_store;
pub mod users;

pub use codec::DecodeError;
use codec::{Dec, Enc};
pub use dialogs::{DialogStore, DialogWrite};
pub use memory::{MemoryStore, PresenceWriteCounts};
pub use presence::{
    FlowRecord, PresenceStore, PresenceWrite, PublicationBody, PublicationRecord, RuleAction,
    RuleRecord, SubState, SubscriptionRecord,
};
pub use queue::{QueueStats, DEFAULT_MAX_QUEUED_WRITES};

pub use disk::DiskStore;
pub use redb_store::RedbStore;
pub use sled_store::SledStore;
pub use users::{UserFile, UserRecord};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the database at {path}: {reason}; check that the directory exists, is writable by the busylamp user and is not used by another busylamp process")]
    Open { path: String, reason: String },
    #[error("database write failed: {0}")]
    Write(String),
    #[error("database read failed: {0}")]
    Read(String),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("the storage writer has stopped")]
    WriterGone,
    /// The write queue is full (the disk is slower than the requests): refused at once.
    #[error("storage busy: {waiting} writes are waiting for the disk")]
    Busy { waiting: usize },
    #[error("user file {path}: {reason}")]
    UserFile { path: String, reason: String },
}

/// What a store tells of its writes: flush durations (apply and fsync of one group commit,
/// milliseconds; `None` before the first or for a store without a disk) and its queue.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StoreStats {
    pub flush_ms_last: Option<f64>,
    pub flush_ms_max: Option<f64>,
    /// Writes waiting for the disk now.
    pub queued: usize,
    /// Writes refused since the start because the queue was full.
    pub refused: u64,
}

/// What a store holds and what that takes on disk (the control API's `status.storage`):
/// computed on request by reading every record once, so cheap at a few thousand records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StorageSpace {
    /// Which database: "sled", "redb" or "memory".
    pub backend: &'static str,
    /// Bytes the database's files occupy (0 for a store without a disk).
    pub on_disk: u64,
    /// Key plus value bytes of every record: what a compact copy of the data would need.
    pub live_bytes: u64,
    pub records: u64,
    /// Per record kind (tree/table), in a fixed order.
    pub trees: Vec<TreeSpace>,
}

/// Records and their key plus value bytes in one tree (table) of a store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeSpace {
    pub name: &'static str,
    pub records: u64,
    pub bytes: u64,
}

impl StorageSpace {
    /// Sums the trees into `records` and `live_bytes`.
    pub fn from_trees(backend: &'static str, on_disk: u64, trees: Vec<TreeSpace>) -> Self {
        StorageSpace {
            backend,
            on_disk,
            live_bytes: trees.iter().map(|t| t.bytes).sum(),
            records: trees.iter().map(|t| t.records).sum(),
            trees,
        }
    }
}

/// Seconds a client is asked to wait (`Retry-After`) when the write queue is full.
pub const BUSY_RETRY_AFTER: u32 = 5;

/// How a request whose change could not be stored is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureAnswer {
    pub status: u16,
    pub reason: &'static str,
    /// Seconds for `Retry-After`, when trying again soon can succeed.
    pub retry_after: Option<u32>,
}

impl StorageError {
    /// A full write queue is `503 Storage busy` with `Retry-After` (the same request succeeds
    /// once the disk catches up); any other failure is `500` naming it.
    pub fn answer(&self) -> FailureAnswer {
        match self {
            StorageError::Busy { .. } => FailureAnswer {
                status: 503,
                reason: "Storage busy",
                retry_after: Some(BUSY_RETRY_AFTER),
            },
            _ => FailureAnswer {
                status: 500,
                reason: "Server Internal Error: storage failed",
                retry_after: None,
            },
        }
    }
}

/// Resolves once a write is on disk.
pub type Durable = tokio::sync::oneshot::Receiver<Result<(), StorageError>>;

/// Waits for a [`Durable`]; a writer that vanished counts as a failed write.
pub async fn durable(d: Durable) -> Result<(), StorageError> {
    d.await.unwrap_or(Err(StorageError::WriterGone))
}

/// A [`Durable`] whose outcome is already known.
pub fn resolved(result: Result<(), StorageError>) -> Durable {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(result);
    rx
}

/// The outcome of a write when it is known without waiting (the queue refused it, or the store
/// wrote at once), `None` while it is still queued. A caller that gets `Some(Ok(()))` holds
/// a spent `Durable`: pass on [`resolved`] instead.
pub fn settled(d: &mut Durable) -> Option<Result<(), StorageError>> {
    use tokio::sync::oneshot::error::TryRecvError;
    match d.try_recv() {
        Ok(result) => Some(result),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Closed) => Some(Err(StorageError::WriterGone)),
    }
}

/// One contact bound to an address-of-record (RFC 3261 §10.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as the phone registered it.
    pub contact: String,
    /// Contact header parameters other than `expires`, as received (q, +sip.instance, reg-id,
    /// methods...), echoed in every 200.
    pub params: String,
    /// q-value in thousandths (RFC 3261 §20.10), 1000 when absent.
    pub q: u16,
    /// Absolute expiry, unix seconds (wall clock: it must mean the same after a restart).
    pub expires_at: u64,
    pub call_id: String,
    pub cseq: u32,
    /// RFC 3327 Path values, in order.
    pub path: Vec<String>,
    /// RFC 5626 `+sip.instance` and `reg-id`.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub user_agent: Option<String>,
    /// Where the REGISTER came from: `udp:192.0.2.7:5060`.
    pub source: String,
    pub registered_at: u64,
}

const BINDING_V1: u8 = 1;

/// Encodes the whole binding set of one AOR: it is always written together, so a crash can
/// never leave half of a REGISTER applied.
pub fn encode_bindings(aor: &str, bindings: &[Binding]) -> Vec<u8> {
    let mut e = Enc::new(BINDING_V1);
    e.str(aor).u64(bindings.len() as u64);
    for b in bindings {
        e.str(&b.contact)
            .str(&b.params)
            .u64(u64::from(b.q))
            .u64(b.expires_at)
            .str(&b.call_id)
            .u64(u64::from(b.cseq))
            .strs(&b.path)
            .opt_str(b.instance.as_deref())
            .u64(b.reg_id.map(|r| u64::from(r) + 1).unwrap_or(0))
            .opt_str(b.user_agent.as_deref())
            .str(&b.source)
            .u64(b.registered_at);
    }
    e.finish()
}

pub fn decode_bindings(buf: &[u8]) -> Result<(String, Vec<Binding>), DecodeError> {
    let mut d = Dec::new(buf)?;
    if d.version != BINDING_V1 {
        return Err(DecodeError("unknown binding record version"));
    }
    let aor = d.str()?;
    let n = d.u64()?;
    if n > 10_000 {
        return Err(DecodeError("too many bindings"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(Binding {
            contact: d.str()?,
            params: d.str()?,
            q: u16::try_from(d.u64()?).map_err(|_| DecodeError("q out of range"))?,
            expires_at: d.u64()?,
            call_id: d.str()?,
            cseq: d.u32()?,
            path: d.strs()?,
            instance: d.opt_str()?,
            reg_id: match d.u64()? {
                0 => None,
                r => Some(u32::try_from(r - 1).map_err(|_| DecodeError("reg-id out of range"))?),
            },
            user_agent: d.opt_str()?,
            source: d.str()?,
            registered_at: d.u64()?,
        });
    }
    Ok((aor, out))
}

/// Registrar bindings, keyed by canonical AOR.
pub trait BindingStore: Send + Sync {
    fn load_bindings(&self) -> Result<Vec<(String, Vec<Binding>)>, StorageError>;
    /// Replaces the bindings of `aor` (an empty slice deletes it).
    fn save_bindings(&self, aor: &str, bindings: &[Binding]) -> Durable;
    /// How long the store's flushes take, when it measures them (the metrics endpoint's
    /// `busylamp_storage_flush_seconds`).
    fn flush_times(&self) -> Option<std::sync::Arc<flush_times::FlushTimes>> {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A binding with only a contact and a CSeq that matter: for the stores' own tests.
    pub(crate) fn plain_binding(contact: &str, cseq: u32) -> Binding {
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

    /// An empty directory under the system's temp dir for one test of one store.
    pub(crate) fn temp_dir(store: &str, name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("busylamp-{store}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    pub(crate) fn sample(contact: &str) -> Binding {
        Binding {
            contact: contact.into(),
            params: ";+sip.instance=\"<urn:uuid:1>\";reg-id=1".into(),
            q: 500,
            expires_at: 1_900_000_000,
            call_id: "c@h".into(),
            cseq: 7,
            path: vec!["<sip:edge;lr>".into()],
            instance: Some("<urn:uuid:1>".into()),
            reg_id: Some(1),
            user_agent: Some("PolycomVVX".into()),
            source: "udp:127.0.0.1:5062".into(),
            registered_at: 1_899_999_000,
        }
    }

    #[test]
    fn bindings_round_trip() {
        let b = vec![
            sample("sip:a@x"),
            Binding {
                reg_id: None,
                instance: None,
                ..sample("sip:b@y")
            },
        ];
        let bytes = encode_bindings("sip:1001@example.test", &b);
        let (aor, back) = decode_bindings(&bytes).unwrap();
        assert_eq!(aor, "sip:1001@example.test");
        assert_eq!(back, b);
        assert!(decode_bindings(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_bindings(&[9, 0]).is_err());
    }
}
