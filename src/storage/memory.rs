//! In-memory store for tests: same traits, writes "durable" at once.

use super::{Binding, BindingStore, Durable, StorageError};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    bindings: Mutex<BTreeMap<String, Vec<Binding>>>,
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
