//! In-memory store for tests: same traits, writes "durable" at once.

use super::dialogs::{decode_call, DialogStore, DialogWrite};
use super::presence::{
    decode_notify_seq, decode_publication, decode_subscription, merge_notify_seq, PresenceStore,
    PresenceWrite, PublicationRecord, SubscriptionRecord,
};
use super::{Binding, BindingStore, Durable, StorageError};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    bindings: Mutex<BTreeMap<String, Vec<Binding>>>,
    publications: Mutex<BTreeMap<Vec<u8>, PublicationRecord>>,
    subscriptions: Mutex<BTreeMap<Vec<u8>, SubscriptionRecord>>,
    notify_seq: Mutex<BTreeMap<Vec<u8>, (u32, u32)>>,
    dialogs: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn done() -> Durable {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(Ok(()));
    rx
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
        if let Ok(mut map) = self.bindings.lock() {
            if bindings.is_empty() {
                map.remove(aor);
            } else {
                map.insert(aor.to_string(), bindings.to_vec());
            }
        }
        done()
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

    fn write(&self, writes: Vec<PresenceWrite>) -> Durable {
        let mut pubs = self.publications.lock().unwrap_or_else(|p| p.into_inner());
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let mut seqs = self.notify_seq.lock().unwrap_or_else(|p| p.into_inner());
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
            }
        }
        done()
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
        done()
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
}
